//! x86-64 kernels: an AVX2 tier (AVX2 + FMA + F16C) and an AVX-512 tier
//! (AVX-512 F/BW/VL + VNNI), each function the twin of one in
//! `reference.rs`.
//!
//! The integer matrix product works on the 8-row tiles of the file format
//! (`ferrite_format::quant`): one 32-byte load holds four quants of each of
//! eight rows, so one `pmaddubsw` (AVX2) or `vpdpbusd` (VNNI) multiplies
//! them by four broadcast activations and leaves eight rows' partial sums in
//! eight lanes; no horizontal sums. Per group, the lanes are corrected for
//! the unsigned storage (`- offset * sum(activations)`), converted to f32
//! and scaled exactly as `reference::matmul_q` does, so every tier gives
//! the same bits.
//!
//! Every `unsafe fn` here is `#[target_feature]` code: callers reach it
//! only through the [`AVX2`]/[`AVX512`] tables, which `Kernels::for_tier`
//! hands out only after [`has_avx2`]/[`has_avx512`] said yes.

// Scalar tails index like the vector code next to them.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use crate::reference::{self, Matrix, Weights};
use crate::{Acts, ActsMut, Kernels, Out, Tier};

mod avx512;

const GROUP: usize = 32;
const RB: usize = 8;

/// AVX2, FMA and F16C.
pub(crate) fn has_avx2() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))
    }
}

/// The AVX2 tier plus AVX-512 F/BW/VL and VNNI.
pub(crate) fn has_avx512() -> bool {
    #[cfg(feature = "std")]
    {
        has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        has_avx2()
            && cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512vnni"
            ))
    }
}

pub(crate) static AVX2: Kernels = Kernels {
    tier: Tier::Avx2,
    quantize_acts: quantize_acts_avx2,
    matmul_q: matmul_q_avx2,
    matmul_f: matmul_f_avx2,
    dot: dot_avx2,
    dot_f16: dot_f16_avx2,
    axpy: axpy_avx2,
    axpy_f16: axpy_f16_avx2,
    rmsnorm: rmsnorm_avx2,
    softmax: softmax_avx2,
    swiglu: swiglu_avx2,
    dot_rows: dot_rows_avx2,
    dot_rows_f16: dot_rows_f16_avx2,
    axpy_rows: axpy_rows_avx2,
    axpy_rows_f16: axpy_rows_f16_avx2,
    rope: rope_avx2,
    to_f16: to_f16_avx2,
    round_f16: round_f16_avx2,
};

pub(crate) static AVX512: Kernels = Kernels {
    tier: Tier::Avx512,
    quantize_acts: quantize_acts_avx2,
    matmul_q: avx512::matmul_q,
    matmul_f: matmul_f_avx2,
    dot: dot_avx2,
    dot_f16: dot_f16_avx2,
    axpy: axpy_avx2,
    axpy_f16: axpy_f16_avx2,
    rmsnorm: rmsnorm_avx2,
    softmax: softmax_avx2,
    swiglu: swiglu_avx2,
    dot_rows: dot_rows_avx2,
    dot_rows_f16: dot_rows_f16_avx2,
    axpy_rows: axpy_rows_avx2,
    axpy_rows_f16: axpy_rows_f16_avx2,
    rope: rope_avx2,
    to_f16: to_f16_avx2,
    round_f16: round_f16_avx2,
};

// Safe entry points of the AVX2 table. SAFETY (all of them): the table is
// only reachable after `has_avx2()` (see the module documentation).

fn quantize_acts_avx2(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    // SAFETY: see above.
    unsafe { quantize_acts(x, x_stride, n, cols, acts) }
}
fn matmul_q_avx2(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: see above.
    unsafe { matmul_q(m, rows, acts, n, out) }
}
fn matmul_f_avx2(
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
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: see above.
    unsafe { dot(a, b) }
}
fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
    // SAFETY: see above.
    unsafe { dot_f16(a, b) }
}
fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy(a, x, y) }
}
fn axpy_f16_avx2(a: f32, x: &[f16], y: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy_f16(a, x, y) }
}
fn rmsnorm_avx2(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { rmsnorm(x, weight, eps, out) }
}

fn softmax_avx2(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { softmax(x) }
}
fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    // SAFETY: see above.
    unsafe { swiglu(gate, up) }
}
fn dot_rows_avx2(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { dot_rows(q, k, stride, scale, out) }
}
fn dot_rows_f16_avx2(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { dot_rows_f16(q, k, stride, scale, out) }
}
fn axpy_rows_avx2(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy_rows(p, v, stride, out) }
}
fn axpy_rows_f16_avx2(p: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    // SAFETY: see above.
    unsafe { axpy_rows_f16(p, v, stride, out) }
}

fn rope_avx2(head: &mut [f32], cs: &[f32]) {
    // SAFETY: see above.
    unsafe { rope(head, cs) }
}
fn to_f16_avx2(src: &[f32], dst: &mut [f16]) {
    // SAFETY: see above.
    unsafe { to_f16(src, dst) }
}
fn round_f16_avx2(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { round_f16(x) }
}

/// Horizontal sum of 8 lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// `reference::quantize_acts`, 32 values at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_acts(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    let groups = cols.div_ceil(GROUP);
    let full = cols / GROUP;
    assert!(acts.qs.len() >= n * groups * GROUP && acts.d.len() >= n * groups && acts.sums.len() >= n * groups);
    assert!(n == 0 || x.len() >= (n - 1) * x_stride + cols);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for t in 0..n {
        let row = &x[t * x_stride..t * x_stride + cols];
        for g in 0..full {
            let src = &row[g * GROUP..(g + 1) * GROUP];
            // SAFETY: `src` has 32 floats: four 8-float loads.
            let v = unsafe { [0, 8, 16, 24].map(|o| _mm256_loadu_ps(src.as_ptr().add(o))) };
            let m01 = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
            let m23 = _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
            let m = _mm256_max_ps(m01, m23);
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
            let amax = _mm_cvtss_f32(m);
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            // Round to nearest even (the MXCSR default), as `roundevenf`.
            let q = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            let sum = _mm_cvtsi128_si32(s);
            let p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            let p = _mm256_permutevar8x32_epi32(p, order);
            let dst = &mut acts.qs[(t * groups + g) * GROUP..(t * groups + g + 1) * GROUP];
            // SAFETY: `dst` has 32 bytes.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), p) };
            acts.d[t * groups + g] = d;
            acts.sums[t * groups + g] = sum;
        }
        if full < groups {
            // The partial last group: the reference code on this one group.
            let g = full;
            let (d, id) = reference::act_scale(&row[g * GROUP..]);
            let mut sum = 0i32;
            let dst = &mut acts.qs[(t * groups + g) * GROUP..(t * groups + g + 1) * GROUP];
            for (j, o) in dst.iter_mut().enumerate() {
                let v = row.get(g * GROUP + j).map_or(0, |&x| reference::quant_act(x, id));
                *o = v;
                sum += v as i32;
            }
            acts.d[t * groups + g] = d;
            acts.sums[t * groups + g] = sum;
        }
    }
}

/// The quantized planes of `m`, whether they are q4, and the tile size.
pub(crate) fn planes<'w>(m: &Matrix<'w>) -> Option<(&'w [u8], &'w [f16], bool, usize)> {
    match m.w {
        Weights::Q4 { qs, scales } => Some((qs, scales, true, RB * 16)),
        Weights::Q8 { qs, scales } => Some((qs, scales, false, RB * 32)),
        _ => None,
    }
}

/// Checks that the planes hold every tile of `rows` and `acts` every group
/// of `n` tokens, so the kernels' unchecked loads stay in bounds.
pub(crate) fn check_shapes(
    qs: &[u8],
    scales: &[f16],
    tile: usize,
    groups: usize,
    rows: &Range<usize>,
    acts: &Acts<'_>,
    n: usize,
) {
    let blocks = rows.end.div_ceil(RB);
    assert!(qs.len() >= blocks * groups * tile && scales.len() >= blocks * groups * RB, "weight planes too short");
    assert!(
        acts.qs.len() >= n * groups * GROUP && acts.d.len() >= n * groups && acts.sums.len() >= n * groups,
        "activation buffers too short"
    );
}

/// Four activation quants starting at `p`, broadcast to every 32-bit lane.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// Stores the 8 lanes of `acc` (rows `8 * block ..`) for token `t`, those
/// that lie in `out`'s rows.
#[inline]
pub(crate) fn store_rows(out: &mut Out<'_>, t: usize, block: usize, lanes: [f32; 8]) {
    let rows = out.rows();
    for (i, &v) in lanes.iter().enumerate() {
        let r = block * RB + i;
        if rows.contains(&r) {
            out.set(t, r, v);
        }
    }
}

/// Runs `tile_fn` over the row blocks of `rows` and tokens in runs of up to
/// 4 (weights unpacked once per run), storing the lanes.
macro_rules! drive {
    ($rows:expr, $n:expr, $out:expr, $f:ident, $($arg:expr),*) => {{
        for block in $rows.start / RB..$rows.end.div_ceil(RB) {
            let mut t0 = 0;
            while t0 < $n {
                let left = $n - t0;
                let mut lanes = [[0f32; 8]; 4];
                let used = match left {
                    1 => { let [a] = $f::<1>(block, t0, $($arg),*); lanes[0] = a; 1 }
                    2 => { let [a, b] = $f::<2>(block, t0, $($arg),*); lanes[0] = a; lanes[1] = b; 2 }
                    3 => { let [a, b, c] = $f::<3>(block, t0, $($arg),*); lanes[0] = a; lanes[1] = b; lanes[2] = c; 3 }
                    _ => { lanes = $f::<4>(block, t0, $($arg),*); 4 }
                };
                for (i, l) in lanes.iter().take(used).enumerate() {
                    store_rows($out, t0 + i, block, *l);
                }
                t0 += used;
            }
        }
    }};
}
pub(crate) use drive;

/// `reference::matmul_q` with `pmaddubsw`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    let Some((qs, scales, q4, tile)) = planes(m) else { return };
    let groups = m.cols.div_ceil(GROUP);
    check_shapes(qs, scales, tile, groups, &rows, acts, n);
    if q4 {
        // SAFETY: shapes checked above; AVX2 present (module invariant).
        unsafe { drive!(rows, n, out, q4_tiles, qs, scales, groups, acts) }
    } else {
        // SAFETY: as above.
        unsafe { drive!(rows, n, out, q8_tiles, qs, scales, groups, acts) }
    }
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` of a q4 matrix.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_tiles<const T: usize>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 8]; T] {
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for g in 0..groups {
        let ti = block * groups + g;
        // SAFETY (loads below): `check_shapes` covered every tile of the
        // row blocks and every activation group of the tokens.
        let tile = unsafe { qs.as_ptr().add(ti * 128) };
        let mut w = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let v = unsafe { _mm256_loadu_si256(tile.add(c * 32).cast()) };
            w[c] = _mm256_and_si256(v, mask);
            w[4 + c] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
        }
        let wd = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(ti * RB).cast())) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut s16 = _mm256_setzero_si256();
            for c in 0..4 {
                let lo = unsafe { bcast4(a.add(4 * c)) };
                let hi = unsafe { bcast4(a.add(16 + 4 * c)) };
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[c], lo));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[4 + c], hi));
            }
            let dot = _mm256_madd_epi16(s16, ones);
            let isum = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * acts.sums[ag]));
            let s = _mm256_mul_ps(wd, _mm256_set1_ps(acts.d[ag]));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), s));
        }
    }
    acc.map(|v| lanes(v))
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` of a q8 matrix.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_tiles<const T: usize>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 8]; T] {
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for g in 0..groups {
        let ti = block * groups + g;
        // SAFETY (loads below): as in `q4_tiles`.
        let tile = unsafe { qs.as_ptr().add(ti * 256) };
        let mut w = [_mm256_setzero_si256(); 8];
        let mut wa = [_mm256_setzero_si256(); 8];
        for c in 0..8 {
            // Excess-128 to signed, then |w| for pmaddubsw's unsigned side.
            w[c] = _mm256_xor_si256(unsafe { _mm256_loadu_si256(tile.add(c * 32).cast()) }, flip);
            wa[c] = _mm256_abs_epi8(w[c]);
        }
        let wd = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(ti * RB).cast())) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut isum = _mm256_setzero_si256();
            for c in 0..8 {
                let b = _mm256_sign_epi8(unsafe { bcast4(a.add(4 * c)) }, w[c]);
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(wa[c], b), ones));
            }
            let s = _mm256_mul_ps(wd, _mm256_set1_ps(acts.d[ag]));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), s));
        }
    }
    acc.map(|v| lanes(v))
}

#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn lanes(v: __m256) -> [f32; 8] {
    let mut o = [0f32; 8];
    // SAFETY: `o` has 8 floats.
    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
    o
}

/// `reference::matmul_f`: f32 weights dotted in place, f16 through F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
        let quantized = !matches!(m.w, Weights::F32(_) | Weights::F16(_));
        if quantized {
            m.dequantize_row(r, row);
        }
        for t in 0..n {
            let xt = &x[t * x_stride..t * x_stride + cols];
            // SAFETY: AVX2/FMA/F16C present (module invariant).
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

/// Dot product: two 8-lane FMA accumulators over 16-element blocks, one
/// 8-element block, scalar tail: the same order as [`dot_f16`], so a key
/// scores identically from an f32 batch buffer and from the f16 cache.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    // SAFETY (loads): `i + 16 <= n` / `i + 8 <= n` and both slices have `n`.
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * k)), _mm256_loadu_ps(pb.add(i + 8 * k))) };
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 16;
    }
    while i + 8 <= n {
        let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}

/// Dot product with `b` in f16 (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    // SAFETY (loads): bounds as in `dot`; an f16 is 2 bytes, 8 of them 16.
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_loadu_ps(pa.add(i + 8 * k)) };
            let y = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8 * k).cast())) };
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 16;
    }
    while i + 8 <= n {
        let x = unsafe { _mm256_loadu_ps(pa.add(i)) };
        let y = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast())) };
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
    for j in i..n {
        s += a[j] * b[j].to_f32();
    }
    s
}

/// `y += a * x`.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: `i + 8 <= n` and both slices have `n` elements.
    while i + 8 <= n {
        unsafe {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)));
        }
        i += 8;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}

/// `y += a * x` with `x` in f16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: `i + 8 <= n` and both slices have `n` elements.
    while i + 8 <= n {
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
            _mm256_storeu_ps(p, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(p)));
        }
        i += 8;
    }
    for j in i..n {
        y[j] += a * x[j].to_f32();
    }
}

/// RMSNorm with a vector sum of squares.
#[target_feature(enable = "avx2,fma")]
unsafe fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    // SAFETY: AVX2/FMA present (module invariant).
    let ss = unsafe { dot(x, x) } / n as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

/// `exp(x)` on 8 lanes: `x = n ln2 + r` (`|r| <= ln2 / 2`, Cody-Waite
/// split), `exp(r)` by a degree-6 polynomial, `2^n` through the exponent
/// bits. Relative error within a few ulp of `expf` over the clamped range
/// [-87.3, 88]; below it the result is 0 (softmax weights of far-off
/// keys), above it `exp(88)` (SiLU of inputs below -88 is then -0).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(-87.33);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(core::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    let y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    // Flush what the clamp made tiny to an exact 0.
    _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_GT_OQ>(x, lo))
}

/// `softmax` with [`exp8`].
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    // SAFETY (loads/stores): `i + 8 <= n`.
    while i + 8 <= n {
        m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) });
        i += 8;
    }
    let mut max = lanes(m).iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[i..] {
        max = max.max(v);
    }
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    i = 0;
    while i + 8 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
            _mm256_storeu_ps(p, e);
            sum = _mm256_add_ps(sum, e);
        }
        i += 8;
    }
    let mut s = hsum(sum);
    if i < n {
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..n - i].copy_from_slice(&x[i..]);
        let e = lanes(exp8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(tail.as_ptr()) }, mv)));
        x[i..].copy_from_slice(&e[..n - i]);
        s += e[..n - i].iter().sum::<f32>();
    }
    let inv = _mm256_set1_ps(1.0 / s);
    i = 0;
    while i + 8 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), inv));
        }
        i += 8;
    }
    for v in &mut x[i..] {
        *v *= 1.0 / s;
    }
}

/// `gate = silu(gate) * up` with [`exp8`].
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    let step = |g: __m256, u: __m256| {
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
    };
    // SAFETY (loads/stores): `i + 8 <= n` for both slices.
    while i + 8 <= n {
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, step(_mm256_loadu_ps(p), _mm256_loadu_ps(up.as_ptr().add(i))));
        }
        i += 8;
    }
    if i < n {
        let (mut g, mut u) = ([0f32; 8], [0f32; 8]);
        g[..n - i].copy_from_slice(&gate[i..n]);
        u[..n - i].copy_from_slice(&up[i..n]);
        let r = lanes(unsafe { step(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) });
        gate[i..n].copy_from_slice(&r[..n - i]);
    }
}

/// Scores of one query over keys `stride` apart: per key exactly [`dot`]'s
/// arithmetic, four keys interleaved.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: loads read `k[i * stride + j..+8]` with `j + 8 <= hd`, inside
    // `k` (checked in `dot_rows_with`).
    unsafe {
        dot_rows_with(
            q,
            stride,
            scale,
            out,
            k.len(),
            |i, j| _mm256_loadu_ps(k.as_ptr().add(i * stride + j)),
            |i, j| k[i * stride + j],
        )
    }
}

/// [`dot_rows`] over f16 keys: per key exactly [`dot_f16`]'s arithmetic.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_f16(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: as in `dot_rows`; 8 f16 are 16 bytes.
    unsafe {
        dot_rows_with(
            q,
            stride,
            scale,
            out,
            k.len(),
            |i, j| _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i * stride + j).cast())),
            |i, j| k[i * stride + j].to_f32(),
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_rows_with(
    q: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
    k_len: usize,
    load8: impl Fn(usize, usize) -> __m256,
    load1: impl Fn(usize, usize) -> f32,
) {
    let hd = q.len();
    let n = out.len();
    if n == 0 {
        return;
    }
    assert!((n - 1) * stride + hd <= k_len, "key rows out of bounds");
    // SAFETY (q loads): `j + 8 <= hd`.
    let ql = |j: usize| unsafe { _mm256_loadu_ps(q.as_ptr().add(j)) };
    let one = |i: usize| {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut j = 0;
        while j + 16 <= hd {
            acc[0] = _mm256_fmadd_ps(ql(j), load8(i, j), acc[0]);
            acc[1] = _mm256_fmadd_ps(ql(j + 8), load8(i, j + 8), acc[1]);
            j += 16;
        }
        if j + 8 <= hd {
            acc[0] = _mm256_fmadd_ps(ql(j), load8(i, j), acc[0]);
            j += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
        for jj in j..hd {
            s += q[jj] * load1(i, jj);
        }
        scale * s
    };
    let mut i = 0;
    while i + 4 <= n {
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut j = 0;
        while j + 16 <= hd {
            let (q0, q1) = (ql(j), ql(j + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(q0, load8(i + r, j), a[0]);
                a[1] = _mm256_fmadd_ps(q1, load8(i + r, j + 8), a[1]);
            }
            j += 16;
        }
        if j + 8 <= hd {
            let q0 = ql(j);
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(q0, load8(i + r, j), a[0]);
            }
            j += 8;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut s = hsum(_mm256_add_ps(a[0], a[1]));
            for jj in j..hd {
                s += q[jj] * load1(i + r, jj);
            }
            out[i + r] = scale * s;
        }
        i += 4;
    }
    while i < n {
        out[i] = one(i);
        i += 1;
    }
}

/// Weighted sum of value rows: per element `out[j] = fma(p[i], v[i][j],
/// out[j])` over rows in order (as [`axpy`] row by row), with 64-float
/// chunks of `out` held in registers across the rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: loads read `v[i * stride + j..+8]` with `j + 8 <= hd` and
    // `i < p.len()`, inside `v` (checked below); stores write `out`.
    unsafe {
        axpy_rows_with(
            p,
            stride,
            out,
            v.len(),
            |i, j| _mm256_loadu_ps(v.as_ptr().add(i * stride + j)),
            |i, j| v[i * stride + j],
        )
    }
}

/// [`axpy_rows`] over f16 values (F16C), in the same order.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_rows_f16(p: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    // SAFETY: as in `axpy_rows`; 8 f16 are 16 bytes.
    unsafe {
        axpy_rows_with(
            p,
            stride,
            out,
            v.len(),
            |i, j| _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i * stride + j).cast())),
            |i, j| v[i * stride + j].to_f32(),
        )
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn axpy_rows_with(
    p: &[f32],
    stride: usize,
    out: &mut [f32],
    v_len: usize,
    load8: impl Fn(usize, usize) -> __m256,
    load1: impl Fn(usize, usize) -> f32,
) {
    let hd = out.len();
    if p.is_empty() || hd == 0 {
        return;
    }
    assert!((p.len() - 1) * stride + hd <= v_len, "value rows out of bounds");
    let full = hd / 8 * 8;
    let mut j0 = 0;
    while j0 < full {
        let w = (full - j0).min(64) / 8;
        let mut acc = [_mm256_setzero_ps(); 8];
        for (c, a) in acc.iter_mut().enumerate().take(w) {
            // SAFETY: `j0 + 8c + 8 <= full <= hd`.
            *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(j0 + 8 * c)) };
        }
        for (i, &pi) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pi);
            for (c, a) in acc.iter_mut().enumerate().take(w) {
                *a = _mm256_fmadd_ps(pv, load8(i, j0 + 8 * c), *a);
            }
        }
        for (c, a) in acc.iter().enumerate().take(w) {
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j0 + 8 * c), *a) };
        }
        j0 += 8 * w;
    }
    for (i, &pi) in p.iter().enumerate() {
        for j in full..hd {
            out[j] += pi * load1(i, j);
        }
    }
}

/// `reference::rope_with`, 8 pairs at a time (the same products and
/// differences, not fused).
#[target_feature(enable = "avx2,fma")]
unsafe fn rope(head: &mut [f32], cs: &[f32]) {
    let half = cs.len() / 2;
    assert!(head.len() >= 2 * half, "head shorter than the table");
    let mut i = 0;
    // SAFETY (loads/stores): `i + 8 <= half`, and `head`/`cs` hold `2 * half`.
    while i + 8 <= half {
        unsafe {
            let (c, s) = (_mm256_loadu_ps(cs.as_ptr().add(i)), _mm256_loadu_ps(cs.as_ptr().add(half + i)));
            let (pa, pb) = (head.as_mut_ptr().add(i), head.as_mut_ptr().add(half + i));
            let (a, b) = (_mm256_loadu_ps(pa), _mm256_loadu_ps(pb));
            _mm256_storeu_ps(pa, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(pb, _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s)));
        }
        i += 8;
    }
    for j in i..half {
        let (c, s) = (cs[j], cs[half + j]);
        let (a, b) = (head[j], head[j + half]);
        head[j] = a * c - b * s;
        head[j + half] = b * c + a * s;
    }
}

/// f32 to f16 with F16C (round to nearest even, as `half`).
#[target_feature(enable = "avx2,f16c")]
unsafe fn to_f16(src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    // SAFETY: `i + 8 <= n` for both slices; 8 f16 are 16 bytes.
    while i + 8 <= n {
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = f16::from_f32(src[j]);
    }
}

/// Rounds to f16 precision in place with F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn round_f16(x: &mut [f32]) {
    let n = x.len();
    let mut i = 0;
    // SAFETY: `i + 8 <= n`.
    while i + 8 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for v in &mut x[i..] {
        *v = f16::from_f32(*v).to_f32();
    }
}
