//! The AVX2 tier's matrix products: activation quantization, the integer
//! product over q4/q8 tiles (one loop, [`tiles`], for every [`TileKind`]),
//! and the float product, which dequantizes q4/q4a/q8 rows with SIMD.

use core::arch::x86_64::*;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};

use super::lanes;
use super::vector::{dot, dot_f16};
use crate::reference::{self, Matrix};
use crate::tiles::{acts_fit, dequantize_row_by, drive_tiles, float_matmul, int_matmul, rows_fit, Planes, RowKind};
use crate::{Acts, ActsMut, Out};

/// `reference::quantize_acts`, 32 values at a time.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_acts(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    let groups = cols.div_ceil(GROUP);
    let full = cols / GROUP;
    assert!(acts_fit(acts.qs.len(), acts.d.len(), acts.sums.len(), n, groups), "activation buffers too short");
    assert!(rows_fit(x.len(), n, x_stride, cols), "activations too short");
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
            let (d, id) = reference::int8_scale(amax);
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

/// How one weight type's tiles are unpacked and multiplied by
/// `pmaddubsw` (unsigned weights times signed activations). A new integer
/// weight type adds an implementation (and its reference), not a loop.
pub(super) trait TileKind {
    /// Bytes of one tile.
    const BYTES: usize;
    /// How much each unpacked weight exceeds its signed value (corrected by
    /// `OFFSET * sum(activations)` per group).
    const OFFSET: i32;
    /// An unpacked tile.
    type W: Copy;
    /// Unpacks the tile at `tile`.
    ///
    /// # Safety
    /// `BYTES` bytes readable at `tile`; the CPU has AVX2.
    unsafe fn unpack(tile: *const u8) -> Self::W;
    /// The eight rows' exact integer sums of unpacked weights times the 32
    /// activation quants at `a` (before the offset correction).
    ///
    /// # Safety
    /// 32 bytes readable at `a`; the CPU has AVX2.
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i;
}

/// q4 tiles: chunk `c < 4` is the low nibbles of stored chunk `c`
/// (elements `4c..4c+4`), chunk `4 + c` its high nibbles (elements
/// `16 + 4c..`), so chunk `k` always meets activation quants `4k..4k+4`.
pub(super) struct Q4;

impl TileKind for Q4 {
    const BYTES: usize = quant::Q4_TILE_BYTES;
    const OFFSET: i32 = quant::Q4_OFFSET;
    type W = [__m256i; 8];

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn unpack(tile: *const u8) -> Self::W {
        let mask = _mm256_set1_epi8(0x0F);
        let mut w = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            // SAFETY: chunk `c` of the 128-byte tile (the caller's guarantee).
            let v = unsafe { _mm256_loadu_si256(tile.add(c * quant::CHUNK_BYTES).cast()) };
            w[c] = _mm256_and_si256(v, mask);
            w[4 + c] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
        }
        w
    }

    /// Pairs of products summed in 16 bits (`8 * 2 * 15 * 127 < 2^15`: no
    /// saturation), then widened once.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i {
        let mut s16 = _mm256_setzero_si256();
        for (c, &w) in w.iter().enumerate() {
            // SAFETY: activation quants `4c..4c+4` of the 32 (the caller's guarantee).
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w, unsafe { bcast4(a.add(4 * c)) }));
        }
        _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
    }
}

/// q8 tiles, made signed (excess-128 flipped) with their magnitudes for
/// `pmaddubsw`'s unsigned side and the signs moved onto the activations.
pub(super) struct Q8;

impl TileKind for Q8 {
    const BYTES: usize = quant::Q8_TILE_BYTES;
    const OFFSET: i32 = 0;
    type W = ([__m256i; 8], [__m256i; 8]);

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn unpack(tile: *const u8) -> Self::W {
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let (mut w, mut wa) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
        for c in 0..8 {
            // SAFETY: chunk `c` of the 256-byte tile (the caller's guarantee).
            w[c] = _mm256_xor_si256(unsafe { _mm256_loadu_si256(tile.add(c * quant::CHUNK_BYTES).cast()) }, flip);
            wa[c] = _mm256_abs_epi8(w[c]);
        }
        (w, wa)
    }

    /// One chunk's pairs at a time (`2 * 128 * 127 < 2^15`), widened.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let mut isum = _mm256_setzero_si256();
        for c in 0..8 {
            // SAFETY: activation quants `4c..4c+4` of the 32 (the caller's guarantee).
            let b = _mm256_sign_epi8(unsafe { bcast4(a.add(4 * c)) }, w.0[c]);
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(w.1[c], b), ones));
        }
        isum
    }
}

/// Four activation quants starting at `p`, broadcast to every 32-bit lane.
///
/// # Safety
/// 4 readable bytes at `p`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// `reference::matmul_q` with `pmaddubsw`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    int_matmul!(m, rows, acts, n, out, tiles, Q4, Q8)
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` of a `K` matrix: per group the
/// tile is unpacked once, its exact integer sums for each token corrected
/// by the offset and accumulated as `acc + isum * (wd * ad)` (not fused),
/// as `reference::matmul_q` does.
///
/// # Safety
/// `check_shapes` passed for these rows and tokens; the CPU has AVX2, FMA
/// and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tiles<K: TileKind, const T: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[f32; 8]; T] {
    let Planes { qs, scales, groups, acts } = p;
    let mut acc = [_mm256_setzero_ps(); T];
    for g in 0..groups {
        let ti = quant::tile_index(groups, block, g);
        // SAFETY (loads below): `check_shapes` covered every tile of the
        // row blocks and every activation group of the tokens.
        let w = unsafe { K::unpack(qs.as_ptr().add(ti * K::BYTES)) };
        let wd = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(ti * ROW_BLOCK).cast())) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let dot = unsafe { K::dot(&w, acts.qs.as_ptr().add(ag * GROUP)) };
            // (A kind without offset reads no sums: `K::OFFSET` is a constant.)
            let isum =
                if K::OFFSET == 0 { dot } else { _mm256_sub_epi32(dot, _mm256_set1_epi32(K::OFFSET * acts.sums[ag])) };
            let s = _mm256_mul_ps(wd, _mm256_set1_ps(acts.d[ag]));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), s));
        }
    }
    acc.map(|v| lanes(v))
}

float_matmul! {
    /// `reference::matmul_f`: f32 weights dotted in place, f16 through F16C,
    /// quantized rows dequantized once per row ([`dequantize_row`]) for all
    /// the tokens; per (row, token) exactly [`dot`]'s arithmetic.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (the tier's detection).
    pub(super), "avx2,fma,f16c"
}

/// Row `r` of a quantized matrix into `dst` (`cols` floats), the values of
/// `Matrix::dequantize_row` ([`dequantize_row_by`]): the row's words of a
/// group's chunks as one vector (in element order), unpacked to 32-bit
/// integers and converted exactly, times the scale (plus the minimum for
/// q4a: a product, then a sum, never fused).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dequantize_row(m: &Matrix<'_>, r: usize, dst: &mut [f32]) {
    dequantize_row_by(m, r, dst, |kind, words, d, min, group| {
        // SAFETY: `words` holds 32 bytes.
        let (b0, b1) =
            unsafe { (_mm_loadu_si128(words.as_ptr().cast()), _mm_loadu_si128(words.as_ptr().add(4).cast())) };
        let v: [__m256i; 4] = if kind == RowKind::Q8 {
            // Elements 0..32, excess-128 flipped to signed.
            let flip = _mm_set1_epi8(0x80u8 as i8);
            let (lo, hi) = (_mm_xor_si128(b0, flip), _mm_xor_si128(b1, flip));
            [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)].map(|b| _mm256_cvtepi8_epi32(b))
        } else {
            // Low nibbles are elements 0..16, high ones 16..32.
            let mask = _mm_set1_epi8(0x0F);
            let (lo, hi) = (_mm_and_si128(b0, mask), _mm_and_si128(_mm_srli_epi16::<4>(b0), mask));
            let u = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)].map(|b| _mm256_cvtepu8_epi32(b));
            let off = _mm256_set1_epi32(if kind == RowKind::Q4 { quant::Q4_OFFSET } else { 0 });
            u.map(|u| _mm256_sub_epi32(u, off))
        };
        let (d, min) = (_mm256_set1_ps(d), _mm256_set1_ps(min));
        for (k, &v) in v.iter().enumerate() {
            let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), d);
            if kind == RowKind::Q4A {
                f = _mm256_add_ps(f, min);
            }
            // SAFETY: `group` holds 32 floats, `8k + 8 <= 32`.
            unsafe { _mm256_storeu_ps(group.as_mut_ptr().add(8 * k), f) };
        }
    })
}
