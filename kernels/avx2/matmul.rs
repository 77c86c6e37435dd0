//! The AVX2 tier's matrix products: activation quantization, the integer
//! product over the quantized tiles (one loop, [`tiles`], for every
//! [`TileKind`]), and the float product, which dequantizes every quantized
//! type's rows with SIMD.

use core::arch::x86_64::*;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};
use half::f16;

use super::vector::{dot, dot_f16};
use crate::reference::{self, Matrix, Weights};
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
    /// How much each unpacked weight exceeds its signed value (symmetric
    /// kinds; corrected by `OFFSET * sum(activations)` per group).
    const OFFSET: i32;
    /// Whether the kind is affine (`reference::matmul_q`'s `min` term).
    const AFFINE: bool;
    /// Bytes of one tile in the quants plane and in the high plane (0:
    /// none), for [`prefetch`].
    const QS_BYTES: usize = quant::Q4_TILE_BYTES;
    const QH_BYTES: usize = 0;
    /// An unpacked tile.
    type W: Copy;
    /// Unpacks row block `block`'s group `g`: the weights and the eight
    /// rows' float factors (`IntGroup`'s `scale` and, affine kinds, `min`).
    ///
    /// # Safety
    /// The planes hold that tile (`check_shapes`, `Matrix::new`); the CPU
    /// has AVX2 and F16C.
    unsafe fn unpack(p: &Planes<'_>, block: usize, g: usize) -> (Self::W, Factors);
    /// The eight rows' exact integer sums of unpacked weights times the 32
    /// activation quants at `a` (before the offset correction).
    ///
    /// # Safety
    /// 32 bytes readable at `a`; the CPU has AVX2.
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i;
}

/// The eight rows' float factors of a group (`IntGroup::scale`, `min`).
#[derive(Clone, Copy)]
pub(super) struct Factors {
    pub(super) scale: __m256,
    pub(super) min: __m256,
}

/// Eight f16 at `p` as f32.
///
/// # Safety
/// 16 readable bytes at `p`; the CPU has F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn f16x8(p: *const f16) -> __m256 {
    // SAFETY: the caller's guarantee.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// Eight bytes at `p` (unsigned) as f32.
///
/// # Safety
/// 8 readable bytes at `p`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn u8x8(p: *const u8) -> __m256 {
    // SAFETY: the caller's guarantee.
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) }))
}

/// The group scale (and q5_1's minimum) of tile `ti`, as f32.
///
/// # Safety
/// As [`TileKind::unpack`].
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn group_factors(p: &Planes<'_>, ti: usize) -> Factors {
    // SAFETY: the caller's guarantee (the mins plane only for q5_1).
    unsafe {
        let scale = f16x8(p.scales.as_ptr().add(ti * ROW_BLOCK));
        let min = if p.mins.is_empty() { _mm256_setzero_ps() } else { f16x8(p.mins.as_ptr().add(ti * ROW_BLOCK)) };
        Factors { scale, min }
    }
}

/// q4k's and q5k's factors of tile `ti` in row block `block`, group `g`:
/// `d * sc` and `-(dmin * m)`, each one f32 product (the reference's).
///
/// # Safety
/// As [`TileKind::unpack`].
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn k_factors(p: &Planes<'_>, block: usize, g: usize, ti: usize) -> Factors {
    let at = p.super_at(block, g);
    // SAFETY: the caller's guarantee.
    unsafe {
        let scale = _mm256_mul_ps(f16x8(p.d.as_ptr().add(at)), u8x8(p.sub.as_ptr().add(ti * ROW_BLOCK)));
        let min = _mm256_mul_ps(f16x8(p.dmin.as_ptr().add(at)), u8x8(p.sub_mins.as_ptr().add(ti * ROW_BLOCK)));
        Factors { scale, min: _mm256_xor_ps(min, _mm256_set1_ps(-0.0)) }
    }
}

/// The nibble tile at byte `ti * 128` of the quants plane as 8 chunks:
/// chunk `c < 4` is the low nibbles of stored chunk `c` (elements
/// `4c..4c+4`), chunk `4 + c` its high nibbles (elements `16 + 4c..`), so
/// chunk `k` always meets activation quants `4k..4k+4`.
///
/// # Safety
/// As [`TileKind::unpack`].
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn nibbles(p: &Planes<'_>, ti: usize) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0F);
    let tile = p.qs.as_ptr().wrapping_add(ti * quant::Q4_TILE_BYTES);
    let mut w = [_mm256_setzero_si256(); 8];
    for c in 0..4 {
        // SAFETY: chunk `c` of the 128-byte tile (the caller's guarantee).
        let v = unsafe { _mm256_loadu_si256(tile.add(c * quant::CHUNK_BYTES).cast()) };
        w[c] = _mm256_and_si256(v, mask);
        w[4 + c] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
    }
    w
}

/// Adds bit 4 of the levels (the 1-bit high plane, 32 bytes per tile:
/// byte `i` of row `r`'s word, bit `k`, for element `4k + i`) to the
/// nibble chunks: chunk `k` takes the words' bit `k` of each byte, shifted
/// to bit 4 (within each byte: the 16-bit shifts' carries are masked off).
///
/// # Safety
/// As [`TileKind::unpack`].
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_high1(p: &Planes<'_>, ti: usize, w: &mut [__m256i; 8]) {
    // SAFETY: tile `ti` of the high plane (the caller's guarantee).
    let h = unsafe { _mm256_loadu_si256(p.qh.as_ptr().add(ti * quant::CHUNK_BYTES).cast()) };
    let bit = _mm256_set1_epi8(0x10);
    let at = |v: __m256i| _mm256_and_si256(v, bit);
    let shifted = [
        _mm256_slli_epi16::<4>(h),
        _mm256_slli_epi16::<3>(h),
        _mm256_slli_epi16::<2>(h),
        _mm256_slli_epi16::<1>(h),
        h,
        _mm256_srli_epi16::<1>(h),
        _mm256_srli_epi16::<2>(h),
        _mm256_srli_epi16::<3>(h),
    ];
    for (w, s) in w.iter_mut().zip(shifted) {
        *w = _mm256_or_si256(*w, at(s));
    }
}

/// Adds bits 4..6 of q6k's levels (the 2-bit high plane, 64 bytes per
/// tile: word `k / 4` of each row, bits `2 * (k % 4)` of each byte, for
/// chunk `k`) to the nibble chunks.
///
/// # Safety
/// As [`TileKind::unpack`].
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_high2(p: &Planes<'_>, ti: usize, w: &mut [__m256i; 8]) {
    let base = p.qh.as_ptr().wrapping_add(ti * 2 * quant::CHUNK_BYTES);
    let bits = _mm256_set1_epi8(0x30);
    for h in 0..2 {
        // SAFETY: chunk `h` of tile `ti` of the high plane (the caller's guarantee).
        let v = unsafe { _mm256_loadu_si256(base.add(h * quant::CHUNK_BYTES).cast()) };
        let shifted = [_mm256_slli_epi16::<4>(v), _mm256_slli_epi16::<2>(v), v, _mm256_srli_epi16::<2>(v)];
        for (m, s) in shifted.into_iter().enumerate() {
            w[4 * h + m] = _mm256_or_si256(w[4 * h + m], _mm256_and_si256(s, bits));
        }
    }
}

/// `sum_c pmaddubsw(w[c], a[4c..4c + 4])` over `chunks` in 16 bits, then
/// widened: exact while `chunks * 2 * max(w) * 127 < 2^15`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_chunks(w: &[__m256i], a: *const i8, first: usize) -> __m256i {
    let mut s16 = _mm256_setzero_si256();
    for (c, &w) in w.iter().enumerate() {
        // SAFETY: activation quants `4(first + c)..+4` of the 32 (the caller's guarantee).
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w, unsafe { bcast4(a.add(4 * (first + c))) }));
    }
    _mm256_madd_epi16(s16, _mm256_set1_epi16(1))
}

/// Two halves of four chunks each through [`dot_chunks`] (5-bit levels:
/// `4 * 2 * 31 * 127 < 2^15`).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot_halves(w: &[__m256i; 8], a: *const i8) -> __m256i {
    // SAFETY: forwarded from the caller.
    unsafe { _mm256_add_epi32(dot_chunks(&w[..4], a, 0), dot_chunks(&w[4..], a, 4)) }
}

/// q4 tiles (nibbles `q + 8`).
pub(super) struct Q4;

impl TileKind for Q4 {
    const OFFSET: i32 = quant::Q4_OFFSET;
    const AFFINE: bool = false;
    type W = [__m256i; 8];

    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn unpack(p: &Planes<'_>, block: usize, g: usize) -> (Self::W, Factors) {
        let ti = quant::tile_index(p.groups, block, g);
        // SAFETY: the caller's guarantee.
        unsafe { (nibbles(p, ti), group_factors(p, ti)) }
    }

    /// Pairs of products summed in 16 bits (`8 * 2 * 15 * 127 < 2^15`: no
    /// saturation), then widened once.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i {
        // SAFETY: forwarded from the caller.
        unsafe { dot_chunks(w, a, 0) }
    }
}

/// q8 tiles, made signed (excess-128 flipped) with their magnitudes for
/// `pmaddubsw`'s unsigned side and the signs moved onto the activations.
pub(super) struct Q8;

impl TileKind for Q8 {
    const OFFSET: i32 = 0;
    const AFFINE: bool = false;
    const QS_BYTES: usize = quant::Q8_TILE_BYTES;
    type W = ([__m256i; 8], [__m256i; 8]);

    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn unpack(p: &Planes<'_>, block: usize, g: usize) -> (Self::W, Factors) {
        let ti = quant::tile_index(p.groups, block, g);
        let tile = p.qs.as_ptr().wrapping_add(ti * quant::Q8_TILE_BYTES);
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let (mut w, mut wa) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
        for c in 0..8 {
            // SAFETY: chunk `c` of the 256-byte tile (the caller's guarantee).
            w[c] = _mm256_xor_si256(unsafe { _mm256_loadu_si256(tile.add(c * quant::CHUNK_BYTES).cast()) }, flip);
            wa[c] = _mm256_abs_epi8(w[c]);
        }
        // SAFETY: the caller's guarantee.
        ((w, wa), unsafe { group_factors(p, ti) })
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

/// q5_0 tiles: 5-bit levels `q + 16`, a group scale.
pub(super) struct Q5_0;
/// q5_1 tiles: 5-bit unsigned levels, a group scale and minimum.
pub(super) struct Q5_1;
/// q5k tiles: 5-bit unsigned levels, the K factors.
pub(super) struct Q5K;

/// The 5-bit kinds: nibbles plus the 1-bit plane, [`dot_halves`].
macro_rules! five_bit {
    ($kind:ty, $offset:expr, $affine:expr, |$p:ident, $block:ident, $g:ident, $ti:ident| $factors:expr) => {
        impl TileKind for $kind {
            const OFFSET: i32 = $offset;
            const AFFINE: bool = $affine;
            const QH_BYTES: usize = quant::CHUNK_BYTES;
            type W = [__m256i; 8];

            #[target_feature(enable = "avx2,f16c")]
            #[inline]
            unsafe fn unpack($p: &Planes<'_>, $block: usize, $g: usize) -> (Self::W, Factors) {
                let $ti = quant::tile_index($p.groups, $block, $g);
                // SAFETY: the caller's guarantee.
                unsafe {
                    let mut w = nibbles($p, $ti);
                    add_high1($p, $ti, &mut w);
                    (w, $factors)
                }
            }

            #[target_feature(enable = "avx2")]
            #[inline]
            unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i {
                // SAFETY: forwarded from the caller.
                unsafe { dot_halves(w, a) }
            }
        }
    };
}

five_bit!(Q5_0, quant::Q5_OFFSET, false, |p, _block, _g, ti| group_factors(p, ti));
five_bit!(Q5_1, 0, true, |p, _block, _g, ti| group_factors(p, ti));
five_bit!(Q5K, 0, true, |p, block, g, ti| k_factors(p, block, g, ti));

/// q4k tiles: unsigned nibbles (q4's dot), the K factors.
pub(super) struct Q4K;

impl TileKind for Q4K {
    const OFFSET: i32 = 0;
    const AFFINE: bool = true;
    type W = [__m256i; 8];

    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn unpack(p: &Planes<'_>, block: usize, g: usize) -> (Self::W, Factors) {
        let ti = quant::tile_index(p.groups, block, g);
        // SAFETY: the caller's guarantee.
        unsafe { (nibbles(p, ti), k_factors(p, block, g, ti)) }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i {
        // SAFETY: forwarded from the caller.
        unsafe { dot_chunks(w, a, 0) }
    }
}

/// q6k tiles: 6-bit levels made signed (`u - 32`, magnitudes for
/// `pmaddubsw` and the signs moved onto the activations, as q8), each half
/// group's sum weighted by its int8 scale with `pmaddwd`.
pub(super) struct Q6K;

impl TileKind for Q6K {
    const OFFSET: i32 = 0;
    const AFFINE: bool = false;
    const QH_BYTES: usize = 2 * quant::CHUNK_BYTES;
    /// Signed levels, their magnitudes, and each half's scales as 16-bit
    /// pairs (both halves of row `r`'s 32-bit lane).
    type W = ([__m256i; 8], [__m256i; 8], [__m256i; 2]);

    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn unpack(p: &Planes<'_>, block: usize, g: usize) -> (Self::W, Factors) {
        let ti = quant::tile_index(p.groups, block, g);
        // SAFETY: the caller's guarantee (16 scale bytes per tile: row `r`'s
        // two at `2r`).
        unsafe {
            let mut w = nibbles(p, ti);
            add_high2(p, ti, &mut w);
            let off = _mm256_set1_epi8(quant::Q6_OFFSET as i8);
            let signed = w.map(|u| _mm256_sub_epi8(u, off));
            let sc = _mm_loadu_si128(p.sub.as_ptr().add(ti * 2 * ROW_BLOCK).cast());
            let pick = |h: i8| {
                let idx = _mm_setr_epi8(
                    h,
                    h,
                    2 + h,
                    2 + h,
                    4 + h,
                    4 + h,
                    6 + h,
                    6 + h,
                    8 + h,
                    8 + h,
                    10 + h,
                    10 + h,
                    12 + h,
                    12 + h,
                    14 + h,
                    14 + h,
                );
                _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, idx))
            };
            let scale = f16x8(p.d.as_ptr().add(p.super_at(block, g)));
            ((signed, signed.map(|v| _mm256_abs_epi8(v)), [pick(0), pick(1)]), Factors { scale, min: scale })
        }
    }

    /// Per half, four chunks' pairs in 16 bits (`4 * 2 * 32 * 127 <
    /// 2^15`), weighted by the half's scale and widened by one `pmaddwd`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(w: &Self::W, a: *const i8) -> __m256i {
        let mut isum = _mm256_setzero_si256();
        for h in 0..2 {
            let mut s16 = _mm256_setzero_si256();
            for c in 4 * h..4 * h + 4 {
                // SAFETY: activation quants `4c..4c+4` of the 32 (the caller's guarantee).
                let b = _mm256_sign_epi8(unsafe { bcast4(a.add(4 * c)) }, w.0[c]);
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w.1[c], b));
            }
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(s16, w.2[h]));
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
    int_matmul!(m, rows, acts, n, out, tiles, {
        Q4 => Q4, Q8 => Q8, Q5_0 => Q5_0, Q5_1 => Q5_1, Q4K => Q4K, Q5K => Q5K, Q6K => Q6K,
    })
}

/// Defines `$name::<K, T>`: rows `8 * block ..+8` × tokens `t0 ..+T` of a
/// `K: $bound` matrix with `$features`, integer sums from `K::$dot` (the
/// AVX2 [`tiles`]' `pmaddubsw`; the AVX-512 decode's VNNI on ymm): per
/// group the tile unpacked once, each token's exact sums corrected by the
/// offset and folded as `reference::matmul_q` does (`acc + isum * (scale *
/// ad)`, or affine `acc + (isum * scale + sum * min) * ad`, never fused).
macro_rules! k_tiles {
    ($(#[$attr:meta])* $vis:vis $name:ident, $features:literal, $bound:path, $dot:ident) => {
        $(#[$attr])*
        #[target_feature(enable = $features)]
        $vis unsafe fn $name<K: $bound, const T: usize>(p: $crate::tiles::Planes<'_>, block: usize, t0: usize) -> [[f32; 8]; T] {
            let (groups, acts) = (p.groups, p.acts);
            let mut acc = [_mm256_setzero_ps(); T];
            for g in 0..groups {
                // SAFETY (loads below): `check_shapes` and `Matrix::new` covered
                // every tile of the row blocks and every activation group of the
                // tokens.
                $crate::x86::matmul::prefetch::<K>(&p, quant::tile_index(groups, block, g) + $crate::x86::matmul::PREFETCH_TILES);
                let (w, f) = unsafe { K::unpack(&p, block, g) };
                for (t, acc) in acc.iter_mut().enumerate() {
                    let ag = (t0 + t) * groups + g;
                    let dot = unsafe { K::$dot(&w, acts.qs.as_ptr().add(ag * GROUP)) };
                    let ad = _mm256_set1_ps(acts.d[ag]);
                    *acc = if K::AFFINE {
                        let s = _mm256_mul_ps(_mm256_set1_ps(acts.sums[ag] as f32), f.min);
                        _mm256_add_ps(
                            *acc,
                            _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), f.scale), s), ad),
                        )
                    } else {
                        // (A kind without offset reads no sums: `K::OFFSET` is a constant.)
                        let isum = if K::OFFSET == 0 {
                            dot
                        } else {
                            _mm256_sub_epi32(dot, _mm256_set1_epi32(K::OFFSET * acts.sums[ag]))
                        };
                        _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(f.scale, ad)))
                    };
                }
            }
            acc.map(|v| $crate::x86::lanes(v))
        }
    };
}
pub(super) use k_tiles;

k_tiles! {
    /// [`k_tiles!`] with `pmaddubsw` ([`TileKind::dot`]).
    ///
    /// # Safety
    /// `check_shapes` passed for these rows and tokens; AVX2, FMA, F16C.
    pub(super) tiles, "avx2,fma,f16c", TileKind, dot
}

/// How many tiles ahead of the one being multiplied [`tiles`] asks for the
/// weights: the hardware prefetcher alone leaves the loads waiting
/// (measured on the Qwen decode).
pub(super) const PREFETCH_TILES: usize = 24;

/// Asks the cache for tile `ti` of a `K` matrix's quants and high planes
/// (a hint: any address is allowed, nothing is read).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn prefetch<K: TileKind>(p: &Planes<'_>, ti: usize) {
    let qs = p.qs.as_ptr().wrapping_add(ti.wrapping_mul(K::QS_BYTES));
    let mut line = 0;
    while line < K::QS_BYTES {
        _mm_prefetch::<_MM_HINT_T0>(qs.wrapping_add(line).cast());
        line += 64;
    }
    if K::QH_BYTES > 0 {
        _mm_prefetch::<_MM_HINT_T0>(p.qh.as_ptr().wrapping_add(ti.wrapping_mul(K::QH_BYTES)).cast());
    }
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
    if let Weights::Q5_0 { .. }
    | Weights::Q5_1 { .. }
    | Weights::Q4K { .. }
    | Weights::Q5K { .. }
    | Weights::Q6K { .. } = m.w
    {
        // SAFETY: the caller's guarantee (AVX2).
        return unsafe { dequantize_planes_row(m, r, dst) };
    }
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

/// Row `r` of a q5_0, q5_1, q4k, q5k or q6k matrix into `dst` (`cols`
/// floats), the values of `Matrix::dequantize_row`: per group the row's
/// four nibble words (element order: low nibbles 0..16, high 16..32) and
/// its high-plane word(s) give the 32 levels in one vector (a level's high
/// bits found by a byte mask: 1-bit plane, byte `j % 4` bit `j / 4`; 2-bit,
/// word `j / 16`, byte `j % 4`, bits `2 * ((j / 4) % 4)`), then the
/// reference's factors (`Matrix::factors`) and its float operations per
/// element (no fused multiply-add).
///
/// # Panics
/// If the planes do not hold row `r` (callers validate shapes).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn dequantize_planes_row(m: &Matrix<'_>, r: usize, dst: &mut [f32]) {
    let (qs, qh, high_bits) = match m.w {
        Weights::Q5_0 { qs, qh, .. } | Weights::Q5_1 { qs, qh, .. } | Weights::Q5K { qs, qh, .. } => (qs, qh, 1),
        Weights::Q6K { qs, qh, .. } => (qs, qh, 2),
        Weights::Q4K { qs, .. } => (qs, &[][..], 0),
        _ => return,
    };
    let groups = m.cols.div_ceil(GROUP);
    let (block, rr) = (r / ROW_BLOCK, r % ROW_BLOCK);
    let word = |t: &[u8], at: usize| i32::from_le_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]);
    let nibble = _mm_set1_epi8(0x0F);
    // Element `j`'s bit in its byte: 1-bit plane `1 << (j / 4)`; 2-bit plane
    // `1 << 2 * ((j / 4) % 4)` for bit 4 of the level (and twice that for bit 5).
    let bytes = |b: [u8; 32]| {
        // SAFETY: `b` holds 32 bytes.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    };
    let bit1 = bytes(core::array::from_fn(|j| 1 << (j / 4)));
    let bit2_lo = bytes(core::array::from_fn(|j| 1 << (2 * ((j / 4) % 4))));
    let bit2_hi = _mm256_add_epi8(bit2_lo, bit2_lo);
    let is_set = |v: __m256i, mask: __m256i, to: i8| {
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask), _mm256_set1_epi8(to))
    };
    let mut full = [0f32; GROUP];
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let ti = quant::tile_index(groups, block, g);
        let tile = &qs[ti * quant::Q4_TILE_BYTES..(ti + 1) * quant::Q4_TILE_BYTES];
        let w = core::array::from_fn::<i32, 4, _>(|c| word(tile, quant::tile_byte(c, rr, 0)));
        let w16 = _mm_setr_epi32(w[0], w[1], w[2], w[3]);
        let lo = _mm_and_si128(w16, nibble);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(w16), nibble);
        let mut levels = _mm256_set_m128i(hi, lo);
        if high_bits == 1 {
            let h = &qh[ti * quant::CHUNK_BYTES..(ti + 1) * quant::CHUNK_BYTES];
            levels = _mm256_or_si256(levels, is_set(_mm256_set1_epi32(word(h, 4 * rr)), bit1, 0x10));
        } else if high_bits == 2 {
            let h = &qh[ti * 2 * quant::CHUNK_BYTES..(ti + 1) * 2 * quant::CHUNK_BYTES];
            let hw = _mm256_setr_m128i(
                _mm_set1_epi32(word(h, 4 * rr)),
                _mm_set1_epi32(word(h, quant::CHUNK_BYTES + 4 * rr)),
            );
            levels = _mm256_or_si256(levels, _mm256_or_si256(is_set(hw, bit2_lo, 0x10), is_set(hw, bit2_hi, 0x20)));
        }
        let [f0, f1] = m.factors(r, g);
        let (f0, f1) = (_mm256_set1_ps(f0), _mm256_set1_ps(f1));
        let halves = [_mm256_castsi256_si128(levels), _mm256_extracti128_si256::<1>(levels)];
        for k in 0..4 {
            let b8 = if k % 2 == 0 { halves[k / 2] } else { _mm_srli_si128::<8>(halves[k / 2]) };
            let u = _mm256_cvtepu8_epi32(b8);
            let v = match m.w {
                Weights::Q5_0 { .. } => {
                    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(u, _mm256_set1_epi32(quant::Q5_OFFSET))), f0)
                }
                Weights::Q5_1 { .. } => _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(u), f0), f1),
                Weights::Q6K { .. } => _mm256_mul_ps(
                    if k < 2 { f0 } else { f1 },
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(u, _mm256_set1_epi32(quant::Q6_OFFSET))),
                ),
                _ => _mm256_sub_ps(_mm256_mul_ps(f0, _mm256_cvtepi32_ps(u)), f1),
            };
            // SAFETY: `full` holds 32 floats, `8k + 8 <= 32`.
            unsafe { _mm256_storeu_ps(full.as_mut_ptr().add(8 * k), v) };
        }
        chunk.copy_from_slice(&full[..chunk.len()]);
    }
}
