//! aarch64 kernels in three tiers, each function the twin of one in
//! `reference.rs`:
//!
//! - **neon** (ARMv8.0 Advanced SIMD, every aarch64 core): the integer dot
//!   products widen with `SMULL`/`SMLAL` and pairwise-add with `SADALP`.
//! - **dotprod** (FEAT_DotProd): `SDOT` by element ([`dotprod`]).
//! - **i8mm** (FEAT_I8MM): `USDOT` by element for one token and `USMMLA`
//!   for pairs of tokens ([`i8mm`]).
//!
//! The float kernels (activation quantization, f32/f16 products, `dot`,
//! `axpy`, RMSNorm) are plain NEON and shared by the three tables; RoPE and
//! the f16 conversions of the KV cache are the reference's for now (scalar,
//! bit-identical by definition).
//!
//! The integer matrix product works on the 8-row tiles of the file format
//! (`ferrite_format::quant`): a 32-byte chunk holds four quants of each of
//! eight rows, i.e. two 16-byte vectors (rows 0..4 and rows 4..8), so one
//! 4-byte dot instruction against four broadcast activations leaves four
//! rows' partial sums in four lanes. Per group the exact integer sums are
//! converted to f32 and accumulated as `acc + isum * (wd * ad)` (multiply,
//! then add: never fused), exactly as `reference::matmul_q`, so every tier
//! gives the same bits. Activations are those of `quantize_acts`
//! (-127..=127), which keeps the 16-bit sums of the plain tier from
//! overflowing even for a file whose q8 bytes reach -128.
//!
//! Stable Rust does not expose the `SDOT`/`USDOT`/`USMMLA` intrinsics
//! (`stdarch_neon_dotprod`, `stdarch_neon_i8mm`) nor NEON's f16 vector type,
//! so those instructions (and `FCVTL` for f16 → f32) are one-instruction
//! `asm!` blocks inside functions that carry the matching
//! `#[target_feature]`.
//!
//! Every `unsafe fn` here is `#[target_feature]` code: callers reach it
//! only through the [`NEON`]/[`DOTPROD`]/[`I8MM`] tables, which
//! `Kernels::for_tier` hands out only after [`has_neon`]/[`has_dotprod`]/
//! [`has_i8mm`] said yes.

use core::arch::aarch64::*;
use core::arch::asm;
use core::ops::Range;

use half::f16;

use crate::reference::{self, Matrix, Weights};
use crate::{Acts, ActsMut, Kernels, Out, Tier};

mod dotprod;
mod i8mm;

const GROUP: usize = 32;
const RB: usize = 8;

/// Advanced SIMD (present on every aarch64 Linux system; checked anyway).
pub(crate) fn has_neon() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// NEON and the dot-product instructions (`SDOT`/`UDOT`).
pub(crate) fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        has_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        has_neon() && cfg!(target_feature = "dotprod")
    }
}

/// NEON and the int8 matrix multiplies (`USDOT`, `SMMLA`, `USMMLA`).
pub(crate) fn has_i8mm() -> bool {
    #[cfg(feature = "std")]
    {
        has_neon() && std::arch::is_aarch64_feature_detected!("i8mm")
    }
    #[cfg(not(feature = "std"))]
    {
        has_neon() && cfg!(target_feature = "i8mm")
    }
}

pub(crate) static NEON: Kernels = Kernels {
    tier: Tier::Neon,
    quantize_acts: quantize_acts_neon,
    matmul_q: matmul_q_neon,
    matmul_f: matmul_f_neon,
    dot: dot_neon,
    dot_f16: dot_f16_neon,
    axpy: axpy_neon,
    axpy_f16: axpy_f16_neon,
    rmsnorm: rmsnorm_neon,
    softmax: softmax_neon,
    swiglu: swiglu_neon,
    dot_rows: dot_rows_neon,
    dot_rows_f16: dot_rows_f16_neon,
    axpy_rows: axpy_rows_neon,
    axpy_rows_f16: axpy_rows_f16_neon,
    rope: reference::rope_with,
    to_f16: reference::to_f16,
    round_f16: reference::round_f16,
};

pub(crate) static DOTPROD: Kernels = Kernels {
    tier: Tier::Dotprod,
    quantize_acts: quantize_acts_neon,
    matmul_q: dotprod::matmul_q,
    matmul_f: matmul_f_neon,
    dot: dot_neon,
    dot_f16: dot_f16_neon,
    axpy: axpy_neon,
    axpy_f16: axpy_f16_neon,
    rmsnorm: rmsnorm_neon,
    softmax: softmax_neon,
    swiglu: swiglu_neon,
    dot_rows: dot_rows_neon,
    dot_rows_f16: dot_rows_f16_neon,
    axpy_rows: axpy_rows_neon,
    axpy_rows_f16: axpy_rows_f16_neon,
    rope: reference::rope_with,
    to_f16: reference::to_f16,
    round_f16: reference::round_f16,
};

pub(crate) static I8MM: Kernels = Kernels {
    tier: Tier::I8mm,
    quantize_acts: quantize_acts_neon,
    matmul_q: i8mm::matmul_q,
    matmul_f: matmul_f_neon,
    dot: dot_neon,
    dot_f16: dot_f16_neon,
    axpy: axpy_neon,
    axpy_f16: axpy_f16_neon,
    rmsnorm: rmsnorm_neon,
    softmax: softmax_neon,
    swiglu: swiglu_neon,
    dot_rows: dot_rows_neon,
    dot_rows_f16: dot_rows_f16_neon,
    axpy_rows: axpy_rows_neon,
    axpy_rows_f16: axpy_rows_f16_neon,
    rope: reference::rope_with,
    to_f16: reference::to_f16,
    round_f16: reference::round_f16,
};

// Safe entry points shared by the three tables. SAFETY (all of them): the
// tables are only reachable after `has_neon()` (see the module
// documentation), and every tier includes NEON.

fn quantize_acts_neon(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    // SAFETY: see above.
    unsafe { quantize_acts(x, x_stride, n, cols, acts) }
}
fn matmul_q_neon(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: see above.
    unsafe { matmul_q(m, rows, acts, n, out) }
}
fn matmul_f_neon(
    m: &Matrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut Out<'_>,
    row: &mut [f32],
) {
    // SAFETY: see above.
    unsafe { matmul_f(m, rows, x, x_stride, n, out, row) }
}
fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: see above.
    unsafe { dot(a, b) }
}
fn dot_f16_neon(a: &[f32], b: &[f16]) -> f32 {
    // SAFETY: see above.
    unsafe { dot_f16(a, b) }
}
fn axpy_neon(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy(a, x, y) }
}
fn axpy_f16_neon(a: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy_f16(a, x, y) }
}
fn rmsnorm_neon(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { rmsnorm(x, weight, eps, out) }
}
fn softmax_neon(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { softmax(x) }
}
fn swiglu_neon(gate: &mut [f32], up: &[f32]) {
    // SAFETY: see above.
    unsafe { swiglu(gate, up) }
}
fn dot_rows_neon(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { dot_rows(q, k, stride, scale, out) }
}
fn dot_rows_f16_neon(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { dot_rows_f16(q, k, stride, scale, out) }
}
fn axpy_rows_neon(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy_rows(p, v, stride, out) }
}
fn axpy_rows_f16_neon(p: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy_rows_f16(p, v, stride, out) }
}

/// Eight f16 values at `p` as two f32 vectors (`FCVTL`/`FCVTL2`: exact).
///
/// # Safety
/// 16 bytes must be readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_f16x8(p: *const f16) -> (float32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees 16 readable bytes.
    let h = unsafe { vld1q_u16(p.cast()) };
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only instructions of base ARMv8 (no memory or
    // stack; a signalling NaN may set FPSR's invalid-operation bit, so the
    // flags are not declared preserved); `out` (not `lateout`) keeps `lo`
    // from sharing `h`'s register, which the second instruction still reads.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack)
        )
    };
    (lo, hi)
}

/// Four f16 values at `p` as f32 (`FCVTL`: exact).
///
/// # Safety
/// 8 bytes must be readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_f16x4(p: *const f16) -> float32x4_t {
    // SAFETY: the caller guarantees 8 readable bytes.
    let h = unsafe { vld1_u16(p.cast()) };
    let v: float32x4_t;
    // SAFETY: a register-only instruction of base ARMv8 (flags: as in
    // `load_f16x8`).
    unsafe { asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = out(vreg) v, options(pure, nomem, nostack)) };
    v
}

/// Quantizes the 32 floats at `src` into `dst` (see
/// `reference::quantize_acts`) and returns the group's scale and the sum of
/// its quants.
///
/// # Safety
/// 32 floats readable at `src`, 32 bytes writable at `dst`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn quantize_group(src: *const f32, dst: *mut i8) -> (f32, i32) {
    let mut v = [vdupq_n_f32(0.0); 8];
    for (i, v) in v.iter_mut().enumerate() {
        // SAFETY: `4 * i + 4 <= 32` floats (the caller's guarantee).
        *v = unsafe { vld1q_f32(src.add(4 * i)) };
    }
    // max|x| starting from 0 with `FMAXNM` (a NaN loses), as the
    // reference's `fold(0.0, f32::max)`.
    let mut m = vdupq_n_f32(0.0);
    for &v in &v {
        m = vmaxnmq_f32(m, vabsq_f32(v));
    }
    let amax = vmaxnmvq_f32(m);
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let idv = vdupq_n_f32(id);
    let (lo, hi) = (vdupq_n_s32(-127), vdupq_n_s32(127));
    // One f32 product and round-to-nearest-even (`FCVTNS`; NaN gives 0)
    // per element, clamped to -127..=127: the reference's arithmetic.
    let mut q = [vdupq_n_s32(0); 8];
    for (q, &v) in q.iter_mut().zip(&v) {
        *q = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_f32(v, idv)), hi), lo);
    }
    let s = vaddq_s32(
        vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])),
        vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])),
    );
    let sum = vaddvq_s32(s);
    let h01 = (vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])), vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3])));
    let h23 = (vcombine_s16(vmovn_s32(q[4]), vmovn_s32(q[5])), vcombine_s16(vmovn_s32(q[6]), vmovn_s32(q[7])));
    let b0 = vcombine_s8(vmovn_s16(h01.0), vmovn_s16(h01.1));
    let b1 = vcombine_s8(vmovn_s16(h23.0), vmovn_s16(h23.1));
    // SAFETY: 32 writable bytes at `dst` (the caller's guarantee).
    unsafe {
        vst1q_s8(dst, b0);
        vst1q_s8(dst.add(16), b1);
    }
    (d, sum)
}

/// `reference::quantize_acts`, 32 values at a time; a partial last group
/// is copied into a zero-padded group first (zeros change neither the
/// scale nor the sum, and quantize to 0 as the padding must).
#[target_feature(enable = "neon")]
unsafe fn quantize_acts(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    let groups = cols.div_ceil(GROUP);
    assert!(acts.qs.len() >= n * groups * GROUP && acts.d.len() >= n * groups && acts.sums.len() >= n * groups);
    assert!(n == 0 || x.len() >= (n - 1) * x_stride + cols);
    for t in 0..n {
        let row = &x[t * x_stride..t * x_stride + cols];
        for g in 0..groups {
            let mut padded = [0f32; GROUP];
            let src = if (g + 1) * GROUP <= cols {
                &row[g * GROUP..(g + 1) * GROUP]
            } else {
                let part = &row[g * GROUP..];
                padded[..part.len()].copy_from_slice(part);
                &padded[..]
            };
            let dst = &mut acts.qs[(t * groups + g) * GROUP..(t * groups + g + 1) * GROUP];
            // SAFETY: `src` has 32 floats and `dst` 32 bytes (sliced above).
            let (d, sum) = unsafe { quantize_group(src.as_ptr(), dst.as_mut_ptr()) };
            acts.d[t * groups + g] = d;
            acts.sums[t * groups + g] = sum;
        }
    }
}

/// The quantized planes of `m`, whether they are q4, and the tile size.
fn planes<'w>(m: &Matrix<'w>) -> Option<(&'w [u8], &'w [f16], bool, usize)> {
    match m.w {
        Weights::Q4 { qs, scales } => Some((qs, scales, true, RB * 16)),
        Weights::Q8 { qs, scales } => Some((qs, scales, false, RB * 32)),
        _ => None,
    }
}

/// Checks that the planes hold every tile of `rows` and `acts` every group
/// of `n` tokens, so the kernels' unchecked loads stay in bounds.
fn check_shapes(qs: &[u8], scales: &[f16], tile: usize, groups: usize, rows: &Range<usize>, acts: &Acts<'_>, n: usize) {
    let blocks = rows.end.div_ceil(RB);
    assert!(qs.len() >= blocks * groups * tile && scales.len() >= blocks * groups * RB, "weight planes too short");
    assert!(
        acts.qs.len() >= n * groups * GROUP && acts.d.len() >= n * groups && acts.sums.len() >= n * groups,
        "activation buffers too short"
    );
}

/// Stores rows `8 * block ..+8` of token `t`, those that lie in `out`'s rows.
#[inline]
fn store_rows(out: &mut Out<'_>, t: usize, block: usize, lanes: &[f32; 8]) {
    let rows = out.rows();
    for (i, &v) in lanes.iter().enumerate() {
        let r = block * RB + i;
        if rows.contains(&r) {
            out.set(t, r, v);
        }
    }
}

/// The eight lanes of two vectors.
#[target_feature(enable = "neon")]
#[inline]
fn lanes(lo: float32x4_t, hi: float32x4_t) -> [f32; 8] {
    let mut o = [0f32; 8];
    // SAFETY: `o` has 8 floats.
    unsafe {
        vst1q_f32(o.as_mut_ptr(), lo);
        vst1q_f32(o.as_mut_ptr().add(4), hi);
    }
    o
}

/// One tile (`8 * (16 or 32)` bytes at `tile`) as 16 vectors of unsigned
/// stored quants in q8 chunk order: vector `2c` holds elements `4c..4c+4`
/// of rows 0..4, vector `2c + 1` the same of rows 4..8. A q4 tile's low
/// nibbles are chunks 0..4 and its high nibbles chunks 4..8.
///
/// # Safety
/// The tile's bytes must be readable; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn unpack_tile<const Q4: bool>(tile: *const u8) -> [uint8x16_t; 16] {
    let mut w = [vdupq_n_u8(0); 16];
    if Q4 {
        let mask = vdupq_n_u8(0x0F);
        for v in 0..8 {
            // SAFETY: a q4 tile has 128 bytes (the caller's guarantee).
            let b = unsafe { vld1q_u8(tile.add(16 * v)) };
            w[v] = vandq_u8(b, mask);
            w[8 + v] = vshrq_n_u8::<4>(b);
        }
    } else {
        for (v, w) in w.iter_mut().enumerate() {
            // SAFETY: a q8 tile has 256 bytes (the caller's guarantee).
            *w = unsafe { vld1q_u8(tile.add(16 * v)) };
        }
    }
    w
}

/// The storage offset of a quant: q4 is stored `q + 8`, q8 `q + 128`.
const fn offset(q4: bool) -> u8 {
    if q4 {
        8
    } else {
        128
    }
}

/// [`unpack_tile`] as signed quants (the offset subtracted, wrapping: a q8
/// byte `b` becomes `b - 128` as `i8`).
///
/// # Safety
/// As [`unpack_tile`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn unpack_tile_signed<const Q4: bool>(tile: *const u8) -> [int8x16_t; 16] {
    // SAFETY: forwarded from the caller.
    let w = unsafe { unpack_tile::<Q4>(tile) };
    let off = vdupq_n_u8(offset(Q4));
    // (A loop, not `array::map`: `map` is not inlined into target-feature
    // code, which would leave the tile in memory.)
    let mut s = [vdupq_n_s8(0); 16];
    for (s, &w) in s.iter_mut().zip(&w) {
        *s = vreinterpretq_s8_u8(vsubq_u8(w, off));
    }
    s
}

/// Four activation quants at `p`, broadcast to every 32-bit lane.
///
/// # Safety
/// 4 bytes readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn bcast4(p: *const i8) -> int8x16_t {
    // SAFETY: the caller guarantees 4 readable bytes.
    vreinterpretq_s8_s32(vdupq_n_s32(unsafe { p.cast::<i32>().read_unaligned() }))
}

/// Two chunks `c`, `c + 1` of a group, with ARMv8.0 instructions: products
/// of the two chunks summed in 16 bits (`|w·a| + |w'·a'| <= 2·128·127 <
/// 2^15`), then pairwise into 32-bit lanes: `acc[0]` gets lanes
/// `[r0, r0, r1, r1]`, `acc[1]` rows 2, 3, `acc[2]` rows 4, 5, `acc[3]` rows
/// 6, 7. `w` is `[rows 0..4 of c, rows 0..4 of c + 1, rows 4..8 of c,
/// rows 4..8 of c + 1]` (signed), `a` points at activation quant `4c`.
///
/// # Safety
/// 8 bytes readable at `a`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn chunk_pair_neon(acc: &mut [int32x4_t; 4], w: [int8x16_t; 4], a: *const i8) {
    let [wl0, wl1, wh0, wh1] = w;
    // SAFETY: 8 readable bytes (the caller's guarantee).
    let (b0, b1) = unsafe { (bcast4(a), bcast4(a.add(4))) };
    let (l0, l1) = (vget_low_s8(b0), vget_low_s8(b1));
    let p01 = vmlal_s8(vmull_s8(vget_low_s8(wl0), l0), vget_low_s8(wl1), l1);
    let p23 = vmlal_high_s8(vmull_high_s8(wl0, b0), wl1, b1);
    let p45 = vmlal_s8(vmull_s8(vget_low_s8(wh0), l0), vget_low_s8(wh1), l1);
    let p67 = vmlal_high_s8(vmull_high_s8(wh0, b0), wh1, b1);
    acc[0] = vpadalq_s16(acc[0], p01);
    acc[1] = vpadalq_s16(acc[1], p23);
    acc[2] = vpadalq_s16(acc[2], p45);
    acc[3] = vpadalq_s16(acc[3], p67);
}

/// Runs `$tiles::<T, $q4>` over the row blocks of `rows` and tokens in
/// runs of up to `$max` (2 or 4; each tile unpacked once per run), storing
/// the lanes.
macro_rules! drive {
    ($rows:expr, $n:expr, $out:expr, $max:literal, $tiles:ident, $q4:literal, $($arg:expr),*) => {{
        for block in $rows.start / RB..$rows.end.div_ceil(RB) {
            let mut t0 = 0;
            while t0 < $n {
                let mut lanes = [[0f32; 8]; 4];
                let used = match ($n - t0).min($max) {
                    1 => { [lanes[0]] = $tiles::<1, $q4>(block, t0, $($arg),*); 1 }
                    2 => { [lanes[0], lanes[1]] = $tiles::<2, $q4>(block, t0, $($arg),*); 2 }
                    3 => { [lanes[0], lanes[1], lanes[2]] = $tiles::<3, $q4>(block, t0, $($arg),*); 3 }
                    _ => { lanes = $tiles::<4, $q4>(block, t0, $($arg),*); 4 }
                };
                for (i, l) in lanes.iter().take(used).enumerate() {
                    store_rows($out, t0 + i, block, l);
                }
                t0 += used;
            }
        }
    }};
}
use drive;

/// Chunks `2k`, `2k + 1` of the tile at `tile` as signed quants, in
/// [`chunk_pair_neon`]'s order (q4: chunks 0..4 are the low nibbles of the
/// stored chunks, 4..8 the high ones).
///
/// # Safety
/// The tile's bytes readable at `tile`; `k < 4`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn chunk_pair_signed<const Q4: bool>(tile: *const u8, k: usize) -> [int8x16_t; 4] {
    // SAFETY (loads): inside the tile (128 bytes for q4, 256 for q8).
    let p = unsafe { tile.add(if Q4 { 64 * (k % 2) } else { 64 * k }) };
    let v = unsafe { [vld1q_u8(p), vld1q_u8(p.add(32)), vld1q_u8(p.add(16)), vld1q_u8(p.add(48))] };
    let mut w = [vdupq_n_s8(0); 4];
    for (w, v) in w.iter_mut().zip(v) {
        let v = if !Q4 {
            v
        } else if k < 2 {
            vandq_u8(v, vdupq_n_u8(0x0F))
        } else {
            vshrq_n_u8::<4>(v)
        };
        *w = vreinterpretq_s8_u8(vsubq_u8(v, vdupq_n_u8(offset(Q4))));
    }
    w
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` with [`chunk_pair_neon`]: each
/// pair of chunks is unpacked once and applied to every token, so only four
/// weight vectors and `4 * T` integer accumulators are live.
///
/// # Safety
/// Shapes checked by `check_shapes` for these rows and tokens; NEON present.
#[target_feature(enable = "neon")]
unsafe fn neon_tiles<const T: usize, const Q4: bool>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 8]; T] {
    let tile_bytes = if Q4 { 128 } else { 256 };
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for g in 0..groups {
        let ti = block * groups + g;
        // SAFETY (loads below): `check_shapes` covered every tile of the row
        // blocks and every activation group of the tokens.
        let tile = unsafe { qs.as_ptr().add(ti * tile_bytes) };
        let mut isum = [[vdupq_n_s32(0); 4]; T];
        for k in 0..4 {
            let w = unsafe { chunk_pair_signed::<Q4>(tile, k) };
            for (t, isum) in isum.iter_mut().enumerate() {
                let a = unsafe { acts.qs.as_ptr().add(((t0 + t) * groups + g) * GROUP + 8 * k) };
                unsafe { chunk_pair_neon(isum, w, a) };
            }
        }
        let (wd_lo, wd_hi) = unsafe { load_f16x8(scales.as_ptr().add(ti * RB)) };
        for (t, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
            let ag = (t0 + t) * groups + g;
            let (lo, hi) = (vpaddq_s32(isum[0], isum[1]), vpaddq_s32(isum[2], isum[3]));
            let ad = vdupq_n_f32(acts.d[ag]);
            acc[0] = vaddq_f32(acc[0], vmulq_f32(vcvtq_f32_s32(lo), vmulq_f32(wd_lo, ad)));
            acc[1] = vaddq_f32(acc[1], vmulq_f32(vcvtq_f32_s32(hi), vmulq_f32(wd_hi, ad)));
        }
    }
    let mut out = [[0f32; 8]; T];
    for (o, &[lo, hi]) in out.iter_mut().zip(&acc) {
        *o = lanes(lo, hi);
    }
    out
}

/// `reference::matmul_q` with `SMULL`/`SADALP`.
#[target_feature(enable = "neon")]
unsafe fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    let Some((qs, scales, q4, tile)) = planes(m) else { return };
    let groups = m.cols.div_ceil(GROUP);
    check_shapes(qs, scales, tile, groups, &rows, acts, n);
    if q4 {
        // SAFETY: shapes checked above; NEON present (module invariant).
        unsafe { drive!(rows, n, out, 4, neon_tiles, true, qs, scales, groups, acts) }
    } else {
        // SAFETY: as above.
        unsafe { drive!(rows, n, out, 4, neon_tiles, false, qs, scales, groups, acts) }
    }
}

/// `reference::matmul_f`: f32 weights dotted in place, f16 through `FCVTL`.
#[target_feature(enable = "neon")]
unsafe fn matmul_f(
    m: &Matrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut Out<'_>,
    row: &mut [f32],
) {
    let cols = m.cols;
    for r in rows {
        // Quantized weights (f32 activations asked for): each row is
        // dequantized once for all the tokens.
        if !matches!(m.w, Weights::F32(_) | Weights::F16(_)) {
            m.dequantize_row(r, row);
        }
        for t in 0..n {
            let xt = &x[t * x_stride..t * x_stride + cols];
            // SAFETY: NEON present (module invariant).
            let v = unsafe {
                match m.w {
                    Weights::F32(w) => dot(&w[r * cols..(r + 1) * cols], xt),
                    Weights::F16(w) => dot_f16(xt, &w[r * cols..(r + 1) * cols]),
                    _ => dot(&row[..cols], xt),
                }
            };
            out.set(t, r, v);
        }
    }
}

/// Sums four accumulators' lanes.
#[target_feature(enable = "neon")]
#[inline]
fn hsum4(acc: &[float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

/// Dot product: four 4-lane FMA accumulators over 16-element blocks, one
/// 4-element block at a time after that, scalar tail: the same order as
/// [`dot_f16`], so a key scores identically from an f32 batch buffer and
/// from the f16 cache.
#[target_feature(enable = "neon")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY (loads): `i + 16 <= n` / `i + 4 <= n` and both slices have `n`.
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let (x, y) = unsafe { (vld1q_f32(pa.add(i + 4 * k)), vld1q_f32(pb.add(i + 4 * k))) };
            *acc = vfmaq_f32(*acc, x, y);
        }
        i += 16;
    }
    while i + 4 <= n {
        let (x, y) = unsafe { (vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i))) };
        acc[0] = vfmaq_f32(acc[0], x, y);
        i += 4;
    }
    let mut s = hsum4(&acc);
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

/// Dot product with `b` in f16, in [`dot`]'s order.
#[target_feature(enable = "neon")]
unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY (loads): bounds as in `dot`; 8 f16 are 16 bytes, 4 are 8.
    while i + 16 <= n {
        let (y0, y1) = unsafe { load_f16x8(pb.add(i)) };
        let (y2, y3) = unsafe { load_f16x8(pb.add(i + 8)) };
        for (k, (acc, y)) in acc.iter_mut().zip([y0, y1, y2, y3]).enumerate() {
            let x = unsafe { vld1q_f32(pa.add(i + 4 * k)) };
            *acc = vfmaq_f32(*acc, x, y);
        }
        i += 16;
    }
    while i + 4 <= n {
        let (x, y) = unsafe { (vld1q_f32(pa.add(i)), load_f16x4(pb.add(i))) };
        acc[0] = vfmaq_f32(acc[0], x, y);
        i += 4;
    }
    let mut s = hsum4(&acc);
    for j in i..n {
        s += a[j] * b[j].to_f32();
    }
    s
}

/// `y += a * x` (fused per element in the vector part).
#[target_feature(enable = "neon")]
unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = vdupq_n_f32(a);
    let mut i = 0;
    // SAFETY: `i + 4 <= n` and both slices have `n` elements.
    while i + 4 <= n {
        unsafe {
            let p = y.as_mut_ptr().add(i);
            vst1q_f32(p, vfmaq_f32(vld1q_f32(p), av, vld1q_f32(x.as_ptr().add(i))));
        }
        i += 4;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}

/// `y += a * x` with `x` in f16, in [`axpy`]'s arithmetic.
#[target_feature(enable = "neon")]
unsafe fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = vdupq_n_f32(a);
    let mut i = 0;
    // SAFETY: `i + 4 <= n` and both slices have `n` elements.
    while i + 4 <= n {
        unsafe {
            let p = y.as_mut_ptr().add(i);
            vst1q_f32(p, vfmaq_f32(vld1q_f32(p), av, load_f16x4(x.as_ptr().add(i))));
        }
        i += 4;
    }
    for j in i..n {
        y[j] += a * x[j].to_f32();
    }
}

/// RMSNorm with a vector sum of squares; `w * (v * scale)` per element as
/// the reference.
#[target_feature(enable = "neon")]
unsafe fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    // SAFETY: NEON present (module invariant).
    let ss = unsafe { dot(x, x) } / n as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    let len = n.min(weight.len()).min(out.len());
    let sv = vdupq_n_f32(scale);
    let mut i = 0;
    // SAFETY: `i + 4 <= len` and the three slices have at least `len`.
    while i + 4 <= len {
        unsafe {
            let v = vmulq_f32(vld1q_f32(x.as_ptr().add(i)), sv);
            vst1q_f32(out.as_mut_ptr().add(i), vmulq_f32(vld1q_f32(weight.as_ptr().add(i)), v));
        }
        i += 4;
    }
    for j in i..len {
        out[j] = weight[j] * (x[j] * scale);
    }
}

/// `exp(x)` on 4 lanes: `x = n ln2 + r` (`|r| <= ln2 / 2`, Cody-Waite
/// split), `exp(r)` by a degree-6 polynomial, `2^n` through the exponent
/// bits; the same constants and clamping as the x86 tiers. Relative error
/// within a few ulp of `expf` over the clamped range [-87.33, 88]; below it
/// (and for NaN) the result is 0, above it `exp(88)`.
#[target_feature(enable = "neon")]
#[inline]
fn exp4(x: float32x4_t) -> float32x4_t {
    let lo = vdupq_n_f32(-87.33);
    // `FMAXNM`/`FMINNM`: a NaN becomes `lo`, then 0 below.
    let x = vminnmq_f32(vmaxnmq_f32(x, lo), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(core::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    p = vfmaq_f32(vdupq_n_f32(1.398_199_9e-3), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.333_452e-3), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.166_579_6e-2), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.666_666_5e-1), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    // `n` is a whole number in -126..=127: the biased exponent 1..=254.
    let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    let y = vmulq_f32(p, vreinterpretq_f32_s32(bits));
    // Flush what the clamp made tiny to an exact 0.
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), vcgtq_f32(x, lo)))
}

/// `softmax` with [`exp4`].
#[target_feature(enable = "neon")]
unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mut m = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    // SAFETY (loads/stores): `i + 4 <= n`.
    while i + 4 <= n {
        m = vmaxq_f32(m, unsafe { vld1q_f32(x.as_ptr().add(i)) });
        i += 4;
    }
    let mut max = vmaxvq_f32(m);
    for &v in &x[i..] {
        max = max.max(v);
    }
    let mv = vdupq_n_f32(max);
    let mut sum = vdupq_n_f32(0.0);
    i = 0;
    while i + 4 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp4(vsubq_f32(vld1q_f32(p), mv));
            vst1q_f32(p, e);
            sum = vaddq_f32(sum, e);
        }
        i += 4;
    }
    let mut s = vaddvq_f32(sum);
    if i < n {
        let mut tail = [f32::NEG_INFINITY; 4];
        tail[..n - i].copy_from_slice(&x[i..]);
        let mut e = [0f32; 4];
        // SAFETY: `tail` and `e` have 4 floats.
        unsafe { vst1q_f32(e.as_mut_ptr(), exp4(vsubq_f32(vld1q_f32(tail.as_ptr()), mv))) };
        x[i..].copy_from_slice(&e[..n - i]);
        s += e[..n - i].iter().sum::<f32>();
    }
    let inv = vdupq_n_f32(1.0 / s);
    i = 0;
    while i + 4 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, vmulq_f32(vld1q_f32(p), inv));
        }
        i += 4;
    }
    for v in &mut x[i..] {
        *v *= 1.0 / s;
    }
}

/// `gate = silu(gate) * up` with [`exp4`].
#[target_feature(enable = "neon")]
unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = vdupq_n_f32(1.0);
    let step = |g: float32x4_t, u: float32x4_t| vmulq_f32(vdivq_f32(g, vaddq_f32(one, exp4(vnegq_f32(g)))), u);
    let mut i = 0;
    // SAFETY (loads/stores): `i + 4 <= n` for both slices.
    while i + 4 <= n {
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            vst1q_f32(p, step(vld1q_f32(p), vld1q_f32(up.as_ptr().add(i))));
        }
        i += 4;
    }
    if i < n {
        let (mut g, mut u, mut r) = ([0f32; 4], [0f32; 4], [0f32; 4]);
        g[..n - i].copy_from_slice(&gate[i..n]);
        u[..n - i].copy_from_slice(&up[i..n]);
        // SAFETY: the three arrays have 4 floats.
        unsafe { vst1q_f32(r.as_mut_ptr(), step(vld1q_f32(g.as_ptr()), vld1q_f32(u.as_ptr()))) };
        gate[i..n].copy_from_slice(&r[..n - i]);
    }
}

/// Scores of one query over keys `stride` apart: `scale * dot(q, key)`
/// with exactly [`dot`]'s arithmetic per key.
#[target_feature(enable = "neon")]
unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON present (module invariant).
        *o = scale * unsafe { dot(q, &k[i * stride..i * stride + hd]) };
    }
}

/// [`dot_rows`] over f16 keys: [`dot_f16`] per key.
#[target_feature(enable = "neon")]
unsafe fn dot_rows_f16(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON present (module invariant).
        *o = scale * unsafe { dot_f16(q, &k[i * stride..i * stride + hd]) };
    }
}

/// Weighted sum of value rows: per element `out[j] = fma(p[i], v[i][j],
/// out[j])` over rows in order (as [`axpy`] row by row), with 64-float
/// chunks of `out` held in registers across the rows.
#[target_feature(enable = "neon")]
unsafe fn axpy_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: loads read `v[i * stride + j..+4]` with `j + 4 <= hd` and
    // `i < p.len()`, inside `v` (checked in `axpy_rows_with`).
    unsafe {
        axpy_rows_with(
            p,
            stride,
            out,
            v.len(),
            |i, j| vld1q_f32(v.as_ptr().add(i * stride + j)),
            |i, j| v[i * stride + j],
        )
    }
}

/// [`axpy_rows`] over f16 values, in the same order.
#[target_feature(enable = "neon")]
unsafe fn axpy_rows_f16(p: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    // SAFETY: as in `axpy_rows`; 4 f16 are 8 bytes.
    unsafe {
        axpy_rows_with(
            p,
            stride,
            out,
            v.len(),
            |i, j| load_f16x4(v.as_ptr().add(i * stride + j)),
            |i, j| v[i * stride + j].to_f32(),
        )
    }
}

/// # Safety
/// `load4(i, j)` must be sound for `i < p.len()`, `j + 4 <= out.len()`
/// whenever `(p.len() - 1) * stride + out.len() <= v_len`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn axpy_rows_with(
    p: &[f32],
    stride: usize,
    out: &mut [f32],
    v_len: usize,
    load4: impl Fn(usize, usize) -> float32x4_t,
    load1: impl Fn(usize, usize) -> f32,
) {
    let hd = out.len();
    if p.is_empty() || hd == 0 {
        return;
    }
    let end = (p.len() - 1).checked_mul(stride).and_then(|e| e.checked_add(hd));
    assert!(end.is_some_and(|e| e <= v_len), "value rows out of bounds");
    let full = hd / 4 * 4;
    let mut j0 = 0;
    while j0 < full {
        let w = (full - j0).min(64) / 4;
        let mut acc = [vdupq_n_f32(0.0); 16];
        for (c, a) in acc.iter_mut().enumerate().take(w) {
            // SAFETY: `j0 + 4c + 4 <= full <= hd`.
            *a = unsafe { vld1q_f32(out.as_ptr().add(j0 + 4 * c)) };
        }
        for (i, &pi) in p.iter().enumerate() {
            let pv = vdupq_n_f32(pi);
            for (c, a) in acc.iter_mut().enumerate().take(w) {
                *a = vfmaq_f32(*a, pv, load4(i, j0 + 4 * c));
            }
        }
        for (c, a) in acc.iter().enumerate().take(w) {
            // SAFETY: as for the loads.
            unsafe { vst1q_f32(out.as_mut_ptr().add(j0 + 4 * c), *a) };
        }
        j0 += 4 * w;
    }
    for (i, &pi) in p.iter().enumerate() {
        for (j, o) in out.iter_mut().enumerate().skip(full) {
            *o += pi * load1(i, j);
        }
    }
}
