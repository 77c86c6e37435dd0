//! The NEON tier's matrix products: activation quantization, the integer
//! product (`SMULL`/`SADALP`) over q4/q8 tiles, one loop for every
//! [`NeonKind`], and the float product, which dequantizes q4/q4a/q8 rows
//! with NEON. The [`NeonKind`]s (how a tile is unpacked) serve the dotprod
//! and i8mm tiers too.

use core::arch::aarch64::*;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};

use super::kquant::{self, fold_k, NeonK};
use super::load_f16x8;
use super::vector::{dot, dot_f16};
use super::{fold_group, token_lanes};
use crate::reference::Matrix;
use crate::tiles::{acts_fit, dequantize_row_by, drive_tiles, float_matmul, int_matmul, rows_fit, Planes, RowKind};
use crate::{Acts, ActsMut, Out, Weights};

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
    let (d, id) = crate::reference::int8_scale(amax);
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
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_acts(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    let groups = cols.div_ceil(GROUP);
    assert!(acts_fit(acts.qs.len(), acts.d.len(), acts.sums.len(), n, groups), "activation buffers too short");
    assert!(rows_fit(x.len(), n, x_stride, cols), "activations too short");
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

/// How one integer weight type's tile is unpacked, as unsigned stored
/// quants `OFFSET` above their signed values. A new integer weight type
/// adds an implementation (and its reference), not a loop.
pub(crate) trait NeonKind {
    /// Bytes of one tile.
    const BYTES: usize;
    /// What a stored quant exceeds its signed value by.
    const OFFSET: u8;
    /// The whole tile as 16 vectors in q8 chunk order: vector `2c` holds
    /// elements `4c..4c+4` of rows 0..4, vector `2c + 1` the same of rows
    /// 4..8 (a q4 tile's low nibbles are chunks 0..4, its high ones 4..8).
    ///
    /// # Safety
    /// `BYTES` readable at `tile`; NEON present.
    unsafe fn unpack(tile: *const u8) -> [uint8x16_t; 16];
    /// Chunks `2k`, `2k + 1` (`k < 4`) in [`chunk_pair_neon`]'s order:
    /// `[rows 0..4 of 2k, rows 0..4 of 2k + 1, rows 4..8 of 2k, rows 4..8
    /// of 2k + 1]`.
    ///
    /// # Safety
    /// As [`NeonKind::unpack`].
    unsafe fn chunk_pair(tile: *const u8, k: usize) -> [uint8x16_t; 4];
}

/// q4 tiles (nibbles `q + 8`).
pub(crate) struct Q4;
/// q8 tiles (bytes `q + 128`).
pub(crate) struct Q8;

impl NeonKind for Q4 {
    const BYTES: usize = quant::Q4_TILE_BYTES;
    const OFFSET: u8 = quant::Q4_OFFSET as u8;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn unpack(tile: *const u8) -> [uint8x16_t; 16] {
        let mask = vdupq_n_u8(0x0F);
        let mut w = [vdupq_n_u8(0); 16];
        for v in 0..8 {
            // SAFETY: inside the 128-byte tile (the caller's guarantee).
            let b = unsafe { vld1q_u8(tile.add(16 * v)) };
            w[v] = vandq_u8(b, mask);
            w[8 + v] = vshrq_n_u8::<4>(b);
        }
        w
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn chunk_pair(tile: *const u8, k: usize) -> [uint8x16_t; 4] {
        // SAFETY: inside the 128-byte tile (the caller's guarantee).
        let v = unsafe { load_pair(tile.add(2 * quant::CHUNK_BYTES * (k % 2))) };
        let mut w = [vdupq_n_u8(0); 4];
        for (w, v) in w.iter_mut().zip(v) {
            *w = if k < 2 { vandq_u8(v, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(v) };
        }
        w
    }
}

impl NeonKind for Q8 {
    const BYTES: usize = quant::Q8_TILE_BYTES;
    const OFFSET: u8 = quant::Q8_OFFSET as u8;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn unpack(tile: *const u8) -> [uint8x16_t; 16] {
        let mut w = [vdupq_n_u8(0); 16];
        for (v, w) in w.iter_mut().enumerate() {
            // SAFETY: inside the 256-byte tile (the caller's guarantee).
            *w = unsafe { vld1q_u8(tile.add(16 * v)) };
        }
        w
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn chunk_pair(tile: *const u8, k: usize) -> [uint8x16_t; 4] {
        // SAFETY: inside the 256-byte tile (the caller's guarantee).
        unsafe { load_pair(tile.add(2 * quant::CHUNK_BYTES * k)) }
    }
}

/// Two consecutive chunks at `p` as `[rows 0..4 of the first, of the
/// second, rows 4..8 of the first, of the second]`.
///
/// # Safety
/// 64 bytes readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_pair(p: *const u8) -> [uint8x16_t; 4] {
    // SAFETY: the caller's guarantee.
    unsafe { [vld1q_u8(p), vld1q_u8(p.add(32)), vld1q_u8(p.add(16)), vld1q_u8(p.add(48))] }
}

/// Unsigned stored quants as signed values (the offset subtracted,
/// wrapping: a q8 byte `b` becomes `b - 128` as `i8`).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn signed<const N: usize>(w: [uint8x16_t; N], offset: u8) -> [int8x16_t; N] {
    let off = vdupq_n_u8(offset);
    // (A loop, not `array::map`: `map` is not inlined into target-feature
    // code, which would leave the tile in memory.)
    let mut s = [vdupq_n_s8(0); N];
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

/// Rows `8 * block ..+8` × tokens `t0 ..+T` with [`chunk_pair_neon`]: each
/// pair of chunks is unpacked once and applied to every token, so only four
/// weight vectors and `4 * T` integer accumulators are live.
///
/// # Safety
/// Shapes checked by `check_shapes` for these rows and tokens; NEON present.
#[target_feature(enable = "neon")]
unsafe fn neon_tiles<K: NeonKind, const T: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[f32; 8]; T] {
    let Planes { qs, scales, groups, acts, .. } = p;
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for g in 0..groups {
        let ti = quant::tile_index(groups, block, g);
        // SAFETY (loads below): `check_shapes` covered every tile of the row
        // blocks and every activation group of the tokens.
        let tile = unsafe { qs.as_ptr().add(ti * K::BYTES) };
        let mut isum = [[vdupq_n_s32(0); 4]; T];
        for k in 0..4 {
            let w = unsafe { signed(K::chunk_pair(tile, k), K::OFFSET) };
            for (t, isum) in isum.iter_mut().enumerate() {
                let a = unsafe { acts.qs.as_ptr().add(((t0 + t) * groups + g) * GROUP + 8 * k) };
                unsafe { chunk_pair_neon(isum, w, a) };
            }
        }
        let (wd_lo, wd_hi) = unsafe { load_f16x8(scales.as_ptr().add(ti * ROW_BLOCK)) };
        for (t, (acc, isum)) in acc.iter_mut().zip(&isum).enumerate() {
            let ag = (t0 + t) * groups + g;
            let (lo, hi) = (vpaddq_s32(isum[0], isum[1]), vpaddq_s32(isum[2], isum[3]));
            fold_group(acc, [lo, hi], (wd_lo, wd_hi), acts.d[ag]);
        }
    }
    token_lanes(&acc)
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` of a K-family matrix
/// ([`NeonK`]) with [`chunk_pair_neon`]: the tile unpacked once per group,
/// chunks 0..4 (elements 0..16) and 4..8 summed apart for [`fold_k`].
///
/// # Safety
/// Shapes checked by `check_shapes` for these rows and tokens; NEON present.
#[target_feature(enable = "neon")]
unsafe fn neon_k_tiles<K: NeonK, const T: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[f32; 8]; T] {
    let (groups, acts) = (p.groups, p.acts);
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for g in 0..groups {
        let ti = quant::tile_index(groups, block, g);
        // SAFETY (below): `check_shapes` covered every tile of the row
        // blocks and every activation group of the tokens.
        let (w, f) = unsafe { (K::levels(&p, ti), K::factors(&p, block, g, ti)) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut halves = [[vdupq_n_s32(0); 4]; 2];
            for k in 0..4 {
                let c = 2 * k;
                unsafe {
                    chunk_pair_neon(
                        &mut halves[k / 2],
                        [w[2 * c], w[2 * c + 2], w[2 * c + 1], w[2 * c + 3]],
                        a.add(4 * c),
                    )
                };
            }
            let sums = |h: &[int32x4_t; 4]| [vpaddq_s32(h[0], h[1]), vpaddq_s32(h[2], h[3])];
            fold_k::<K>(acc, sums(&halves[0]), sums(&halves[1]), &f, acts.d[ag], acts.sums[ag]);
        }
    }
    token_lanes(&acc)
}

/// `reference::matmul_q` with `SMULL`/`SADALP`.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    int_matmul!(m, rows, acts, n, out, neon_tiles, { Q4 => Q4, Q8 => Q8 }, neon_k_tiles, {
        Q5_0 => kquant::Q5_0, Q5_1 => kquant::Q5_1, Q4K => kquant::Q4K, Q5K => kquant::Q5K, Q6K => kquant::Q6K,
    })
}

float_matmul! {
    /// `reference::matmul_f`: f32 weights dotted in place, f16 through
    /// `FCVTL`, quantized rows dequantized once per row ([`dequantize_row`])
    /// for all the tokens; per (row, token) exactly [`dot`]'s arithmetic.
    ///
    /// # Safety
    /// The CPU has NEON (the tier's detection).
    pub(crate), "neon"
}

/// Row `r` of a quantized matrix into `dst` (`cols` floats), the values of
/// `Matrix::dequantize_row` ([`dequantize_row_by`]): the row's words of a
/// group's chunks as vectors (in element order), widened to 32-bit
/// integers and converted exactly, times the scale (plus the minimum for
/// q4a: a product, then a sum, never fused).
///
/// # Safety
/// NEON present.
#[target_feature(enable = "neon")]
unsafe fn dequantize_row(m: &Matrix<'_>, r: usize, dst: &mut [f32]) {
    if let Weights::Q5_0 { .. }
    | Weights::Q5_1 { .. }
    | Weights::Q4K { .. }
    | Weights::Q5K { .. }
    | Weights::Q6K { .. } = m.w
    {
        // SAFETY: the caller's guarantee (NEON).
        return unsafe { kquant::dequantize_planes_row(m, r, dst) };
    }
    dequantize_row_by(m, r, dst, |kind, words, d, min, group| {
        // SAFETY: `words` holds 32 bytes.
        let (b0, b1) = unsafe { (vld1q_u8(words.as_ptr().cast()), vld1q_u8(words.as_ptr().add(4).cast())) };
        // 32 values as signed 16-bit integers, in element order.
        let v: [int16x8_t; 4] = if kind == RowKind::Q8 {
            let flip = vdupq_n_u8(0x80);
            let (s0, s1) = (vreinterpretq_s8_u8(veorq_u8(b0, flip)), vreinterpretq_s8_u8(veorq_u8(b1, flip)));
            [vmovl_s8(vget_low_s8(s0)), vmovl_high_s8(s0), vmovl_s8(vget_low_s8(s1)), vmovl_high_s8(s1)]
        } else {
            let (lo, hi) = (vandq_u8(b0, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(b0));
            let off = vdupq_n_s16(if kind == RowKind::Q4 { quant::Q4_OFFSET as i16 } else { 0 });
            [vmovl_u8(vget_low_u8(lo)), vmovl_high_u8(lo), vmovl_u8(vget_low_u8(hi)), vmovl_high_u8(hi)]
                .map(|u| vsubq_s16(vreinterpretq_s16_u16(u), off))
        };
        for (k, &h) in v.iter().enumerate() {
            for (half, i) in [vmovl_s16(vget_low_s16(h)), vmovl_high_s16(h)].into_iter().enumerate() {
                let mut f = vmulq_n_f32(vcvtq_f32_s32(i), d);
                if kind == RowKind::Q4A {
                    f = vaddq_f32(f, vdupq_n_f32(min));
                }
                // SAFETY: `group` holds 32 floats, `8k + 4 half + 4 <= 32`.
                unsafe { vst1q_f32(group.as_mut_ptr().add(8 * k + 4 * half), f) };
            }
        }
    })
}
