//! The AVX-512 tier's K-quant and 5-bit integer products (q5_0, q5_1,
//! q4k, q5k, q6k): two row blocks' tiles side by side in zmm, multiplied
//! with `vpdpbusd` ([`PairKind`], [`by_pairs`]); decode and an odd last
//! block run the AVX2 tier's tile loop one block at a time with
//! `vpdpbusd` on ymm ([`ymm_tiles`]; q6k keeps `pmaddubsw`): the same bits.

use core::arch::x86_64::*;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};
use half::f16;

use super::super::matmul::{self, k_tiles, TileKind};
use super::drive_pairs;
use crate::tiles::{drive_tiles, Planes};
use crate::Out;

/// A K-quant or 5-bit kind's tiles of two row blocks side by side in zmm
/// (block `b` in the low 256 bits, `b + 1` in the high), multiplied with
/// `vpdpbusd`; an odd last block goes through the AVX2 kind itself. Every
/// lane computes what the AVX2 [`TileKind`] computes for its row (exact
/// integer sums, the same float operations in the same order): the same
/// bits.
pub(super) trait PairKind: TileKind {
    /// An unpacked pair of tiles.
    type Z: Copy;
    /// Unpacks the two tiles at `at` (one group of two row blocks).
    ///
    /// # Safety
    /// The planes hold both tiles (`check_shapes`); AVX-512 present.
    unsafe fn unpack_pair(p: &Planes<'_>, at: PairAt) -> (Self::Z, PairFactors);
    /// The sixteen rows' exact integer sums of unpacked weights times the
    /// 32 activation quants at `a`, before the offset correction.
    ///
    /// # Safety
    /// 32 bytes readable at `a`; AVX-512 present.
    unsafe fn dot_pair(w: &Self::Z, a: *const i8) -> __m512i;
    /// [`TileKind::dot`] of one block's unpacked tile with VNNI on ymm
    /// (decode, [`ymm_tiles`]): the same exact sums.
    ///
    /// # Safety
    /// 32 bytes readable at `a`; AVX-512 present.
    unsafe fn dot_ymm(w: &Self::W, a: *const i8) -> __m256i;
}

k_tiles! {
    /// The AVX2 tier's tile loop ([`matmul::k_tiles!`]) with
    /// [`PairKind::dot_ymm`]: one row block at a time, for decode and an
    /// odd last block.
    ///
    /// # Safety
    /// `check_shapes` passed for these rows and tokens; AVX-512 present.
    ymm_tiles, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", PairKind, dot_ymm
}

/// `vpdpbusd` of eight chunks of unsigned levels `w` (chunk `c` against
/// activation quants `4c..4c + 4`), two accumulators.
///
/// # Safety
/// 32 bytes readable at `a`; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dpbusd8_ymm(w: &[__m256i; 8], a: *const i8) -> __m256i {
    let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for c in (0..8).step_by(2) {
        // SAFETY: activation quants `4c..4c + 8` of the 32 (the caller's guarantee).
        unsafe {
            even = _mm256_dpbusd_epi32(even, w[c], matmul::bcast4(a.add(4 * c)));
            odd = _mm256_dpbusd_epi32(odd, w[c + 1], matmul::bcast4(a.add(4 * c + 4)));
        }
    }
    _mm256_add_epi32(even, odd)
}

/// Where group `g`'s tiles of row blocks `block` and `block + 1` are.
#[derive(Clone, Copy)]
pub(super) struct PairAt {
    /// The two tiles' indices.
    ta: usize,
    tb: usize,
    /// The two super-blocks' first `d` index ([`Planes::super_at`]).
    sa: usize,
    sb: usize,
}

impl PairAt {
    fn new(p: &Planes<'_>, block: usize, g: usize) -> PairAt {
        PairAt {
            ta: quant::tile_index(p.groups, block, g),
            tb: quant::tile_index(p.groups, block + 1, g),
            sa: p.super_at(block, g),
            sb: p.super_at(block + 1, g),
        }
    }
}

/// Sixteen rows' float factors (the AVX2 `Factors` of two blocks).
#[derive(Clone, Copy)]
pub(super) struct PairFactors {
    scale: __m512,
    min: __m512,
}

/// 32 bytes at `base + a` (low half) and at `base + b` (high half).
///
/// # Safety
/// Both readable; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair32(base: *const u8, a: usize, b: usize) -> __m512i {
    // SAFETY: the caller's guarantee.
    unsafe {
        let lo = _mm256_loadu_si256(base.add(a).cast());
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(base.add(b).cast()))
    }
}

/// 8 f16 at `base + a` and 8 at `base + b`, as 16 f32.
///
/// # Safety
/// Both readable; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_f16(base: *const f16, a: usize, b: usize) -> __m512 {
    // SAFETY: the caller's guarantee.
    unsafe {
        let lo = _mm256_castsi128_si256(_mm_loadu_si128(base.add(a).cast()));
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(lo, _mm_loadu_si128(base.add(b).cast())))
    }
}

/// 8 bytes at `base + a` and 8 at `base + b` (unsigned), as 16 f32.
///
/// # Safety
/// Both readable; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_u8(base: *const u8, a: usize, b: usize) -> __m512 {
    // SAFETY: the caller's guarantee.
    let v = unsafe { _mm_unpacklo_epi64(_mm_loadl_epi64(base.add(a).cast()), _mm_loadl_epi64(base.add(b).cast())) };
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
}

/// The two tiles' nibbles as 8 chunks (the AVX2 `nibbles`' order).
///
/// # Safety
/// As [`PairKind::unpack_pair`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_nibbles(p: &Planes<'_>, at: PairAt) -> [__m512i; 8] {
    let mask = _mm512_set1_epi8(0x0F);
    let (a, b) = (at.ta * quant::Q4_TILE_BYTES, at.tb * quant::Q4_TILE_BYTES);
    let mut w = [_mm512_setzero_si512(); 8];
    for c in 0..4 {
        let off = c * quant::CHUNK_BYTES;
        // SAFETY: chunk `c` of both tiles (the caller's guarantee).
        let v = unsafe { pair32(p.qs.as_ptr(), a + off, b + off) };
        w[c] = _mm512_and_si512(v, mask);
        w[4 + c] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
    }
    w
}

/// The AVX2 `add_high1` on both tiles.
///
/// # Safety
/// As [`PairKind::unpack_pair`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_high1(p: &Planes<'_>, at: PairAt, w: &mut [__m512i; 8]) {
    // SAFETY: both tiles of the high plane (the caller's guarantee).
    let h = unsafe { pair32(p.qh.as_ptr(), at.ta * quant::CHUNK_BYTES, at.tb * quant::CHUNK_BYTES) };
    let shifted = [
        _mm512_slli_epi16::<4>(h),
        _mm512_slli_epi16::<3>(h),
        _mm512_slli_epi16::<2>(h),
        _mm512_slli_epi16::<1>(h),
        h,
        _mm512_srli_epi16::<1>(h),
        _mm512_srli_epi16::<2>(h),
        _mm512_srli_epi16::<3>(h),
    ];
    let bit = _mm512_set1_epi8(0x10);
    for (w, s) in w.iter_mut().zip(shifted) {
        *w = _mm512_or_si512(*w, _mm512_and_si512(s, bit));
    }
}

/// The AVX2 `add_high2` on both tiles.
///
/// # Safety
/// As [`PairKind::unpack_pair`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_high2(p: &Planes<'_>, at: PairAt, w: &mut [__m512i; 8]) {
    let bits = _mm512_set1_epi8(0x30);
    for h in 0..2 {
        let off = h * quant::CHUNK_BYTES;
        let (a, b) = (at.ta * 2 * quant::CHUNK_BYTES + off, at.tb * 2 * quant::CHUNK_BYTES + off);
        // SAFETY: chunk `h` of both tiles of the high plane (the caller's guarantee).
        let v = unsafe { pair32(p.qh.as_ptr(), a, b) };
        let shifted = [_mm512_slli_epi16::<4>(v), _mm512_slli_epi16::<2>(v), v, _mm512_srli_epi16::<2>(v)];
        for (m, s) in shifted.into_iter().enumerate() {
            w[4 * h + m] = _mm512_or_si512(w[4 * h + m], _mm512_and_si512(s, bits));
        }
    }
}

/// The AVX2 `group_factors` of both tiles.
///
/// # Safety
/// As [`PairKind::unpack_pair`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_group_factors(p: &Planes<'_>, at: PairAt) -> PairFactors {
    let (a, b) = (at.ta * ROW_BLOCK, at.tb * ROW_BLOCK);
    // SAFETY: the caller's guarantee (the mins plane only for q5_1).
    unsafe {
        let min = if p.mins.is_empty() { _mm512_setzero_ps() } else { pair_f16(p.mins.as_ptr(), a, b) };
        PairFactors { scale: pair_f16(p.scales.as_ptr(), a, b), min }
    }
}

/// The AVX2 `k_factors` of both tiles: `d * sc` and `-(dmin * m)`.
///
/// # Safety
/// As [`PairKind::unpack_pair`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_k_factors(p: &Planes<'_>, at: PairAt) -> PairFactors {
    let (a, b) = (at.ta * ROW_BLOCK, at.tb * ROW_BLOCK);
    // SAFETY: the caller's guarantee.
    unsafe {
        let scale = _mm512_mul_ps(pair_f16(p.d.as_ptr(), at.sa, at.sb), pair_u8(p.sub.as_ptr(), a, b));
        let min = _mm512_mul_ps(pair_f16(p.dmin.as_ptr(), at.sa, at.sb), pair_u8(p.sub_mins.as_ptr(), a, b));
        PairFactors { scale, min: _mm512_xor_ps(min, _mm512_set1_ps(-0.0)) }
    }
}

/// Four activation quants at `a`, broadcast to every 32-bit lane.
///
/// # Safety
/// 4 readable bytes at `a`; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn bcast4(a: *const i8) -> __m512i {
    // SAFETY: the caller's guarantee.
    _mm512_set1_epi32(unsafe { a.cast::<i32>().read_unaligned() })
}

/// `sum_c w[c] · a[4c..4c + 4]` per lane, exact (`vpdpbusd`, two chains).
///
/// # Safety
/// 32 readable bytes at `a`; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dpbusd8(w: &[__m512i; 8], a: *const i8) -> __m512i {
    let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for c in (0..8).step_by(2) {
        // SAFETY: activation quants `4c..4c + 8` of the 32 (the caller's guarantee).
        unsafe {
            even = _mm512_dpbusd_epi32(even, w[c], bcast4(a.add(4 * c)));
            odd = _mm512_dpbusd_epi32(odd, w[c + 1], bcast4(a.add(4 * c + 4)));
        }
    }
    _mm512_add_epi32(even, odd)
}

/// The unsigned-level kinds: nibbles (plus the 1-bit plane), their factors.
macro_rules! pair_kind {
    ($kind:ty, |$p:ident, $at:ident| $weights:expr, $factors:expr) => {
        impl PairKind for $kind {
            type Z = [__m512i; 8];
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn unpack_pair($p: &Planes<'_>, $at: PairAt) -> (Self::Z, PairFactors) {
                // SAFETY: the caller's guarantee.
                unsafe { ($weights, $factors) }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn dot_pair(w: &Self::Z, a: *const i8) -> __m512i {
                // SAFETY: forwarded from the caller.
                unsafe { dpbusd8(w, a) }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn dot_ymm(w: &Self::W, a: *const i8) -> __m256i {
                // SAFETY: forwarded from the caller.
                unsafe { dpbusd8_ymm(w, a) }
            }
        }
    };
}

/// Nibbles and the 1-bit high plane.
///
/// # Safety
/// As [`PairKind::unpack_pair`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn pair_five(p: &Planes<'_>, at: PairAt) -> [__m512i; 8] {
    // SAFETY: the caller's guarantee.
    unsafe {
        let mut w = pair_nibbles(p, at);
        pair_high1(p, at, &mut w);
        w
    }
}

pair_kind!(matmul::Q5_0, |p, at| pair_five(p, at), pair_group_factors(p, at));
pair_kind!(matmul::Q5_1, |p, at| pair_five(p, at), pair_group_factors(p, at));
pair_kind!(matmul::Q5K, |p, at| pair_five(p, at), pair_k_factors(p, at));
pair_kind!(matmul::Q4K, |p, at| pair_nibbles(p, at), pair_k_factors(p, at));

/// q6k: the levels made signed (`u - 32`), their magnitudes against the
/// activations negated where the level is negative (a masked subtraction:
/// AVX-512 has no `vpsignb`; a zero level's product is zero either way),
/// each half group's exact sum times its int8 scale.
impl PairKind for matmul::Q6K {
    /// Magnitudes, the negative levels' byte masks, each half's scales.
    type Z = ([__m512i; 8], [__mmask64; 8], [__m512i; 2]);

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn unpack_pair(p: &Planes<'_>, at: PairAt) -> (Self::Z, PairFactors) {
        // SAFETY: the caller's guarantee (16 scale bytes per tile: row `r`'s
        // two at `2r`).
        unsafe {
            let mut w = pair_nibbles(p, at);
            pair_high2(p, at, &mut w);
            let off = _mm512_set1_epi8(quant::Q6_OFFSET as i8);
            let signed = w.map(|u| _mm512_sub_epi8(u, off));
            let (a, b) = (at.ta * 2 * ROW_BLOCK, at.tb * 2 * ROW_BLOCK);
            let (sa, sb) =
                (_mm_loadu_si128(p.sub.as_ptr().add(a).cast()), _mm_loadu_si128(p.sub.as_ptr().add(b).cast()));
            // Half `h`'s scale of row `r` is byte `2r + h`.
            let pick = |h: i8| {
                let idx = _mm_setr_epi8(
                    h,
                    2 + h,
                    4 + h,
                    6 + h,
                    8 + h,
                    10 + h,
                    12 + h,
                    14 + h,
                    -1,
                    -1,
                    -1,
                    -1,
                    -1,
                    -1,
                    -1,
                    -1,
                );
                _mm512_cvtepi8_epi32(_mm_unpacklo_epi64(_mm_shuffle_epi8(sa, idx), _mm_shuffle_epi8(sb, idx)))
            };
            let scale = pair_f16(p.d.as_ptr(), at.sa, at.sb);
            let z = (signed.map(|v| _mm512_abs_epi8(v)), signed.map(|v| _mm512_movepi8_mask(v)), [pick(0), pick(1)]);
            (z, PairFactors { scale, min: scale })
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_pair(w: &Self::Z, a: *const i8) -> __m512i {
        let zero = _mm512_setzero_si512();
        let mut isum = zero;
        for h in 0..2 {
            let mut s = zero;
            for c in 4 * h..4 * h + 4 {
                // SAFETY: activation quants `4c..4c + 4` of the 32 (the caller's guarantee).
                let x = unsafe { bcast4(a.add(4 * c)) };
                s = _mm512_dpbusd_epi32(s, w.0[c], _mm512_mask_sub_epi8(x, w.1[c], zero, x));
            }
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(s, w.2[h]));
        }
        isum
    }

    /// The AVX2 kind's `pmaddubsw` dot (its scales are 16-bit pairs for
    /// `pmaddwd`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_ymm(w: &Self::W, a: *const i8) -> __m256i {
        // SAFETY: forwarded from the caller.
        unsafe { <Self as TileKind>::dot(w, a) }
    }
}

/// Tokens per run of [`pair_tiles`]: each pair of tiles is unpacked once
/// for up to 8 tokens (their 8 accumulators, the 8 unpacked chunks and the
/// factors fit zmm's 32 registers).
const PAIR_RUN: usize = 8;

/// [`pair_tiles`] over the pairs of row blocks of `rows`, the AVX2 tiles of
/// `K` for a last odd block (the same bits either way) and for decode: one
/// token streams the weights, and two tile streams (the pair's blocks lie
/// a row of tiles apart) ran at about half the speed of one (measured on
/// the Qwen decode, 12 vs 21 tok/s); prefill is compute-bound and gains
/// from zmm (pp512 59 vs 43 tok/s).
///
/// # Safety
/// As [`pair_tiles`], for every block of `rows` and tokens `0..n`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn by_pairs<K: PairKind>(rows: Range<usize>, p: Planes<'_>, n: usize, out: &mut Out<'_>) {
    let (first, end) = (rows.start / ROW_BLOCK, rows.end.div_ceil(ROW_BLOCK));
    let pairs_end = if n >= 2 { first + (end - first) / 2 * 2 } else { first };
    // SAFETY (all eight): forwarded from the caller (both blocks lie in `rows`'s blocks).
    drive_pairs(&rows, first..pairs_end, n, PAIR_RUN, out, |block, t0, used, lanes| match used {
        1 => lanes[..1].copy_from_slice(&unsafe { pair_tiles::<K, 1>(p, block, t0) }),
        2 => lanes[..2].copy_from_slice(&unsafe { pair_tiles::<K, 2>(p, block, t0) }),
        3 => lanes[..3].copy_from_slice(&unsafe { pair_tiles::<K, 3>(p, block, t0) }),
        4 => lanes[..4].copy_from_slice(&unsafe { pair_tiles::<K, 4>(p, block, t0) }),
        5 => lanes[..5].copy_from_slice(&unsafe { pair_tiles::<K, 5>(p, block, t0) }),
        6 => lanes[..6].copy_from_slice(&unsafe { pair_tiles::<K, 6>(p, block, t0) }),
        7 => lanes[..7].copy_from_slice(&unsafe { pair_tiles::<K, 7>(p, block, t0) }),
        _ => *lanes = unsafe { pair_tiles::<K, PAIR_RUN>(p, block, t0) },
    });
    let rest = (pairs_end * ROW_BLOCK).max(rows.start)..rows.end;
    // SAFETY: forwarded from the caller.
    drive_tiles!(rest, n, out, |b, t0, T| unsafe { ymm_tiles::<K, T>(p, b, t0) })
}

/// Rows `8 * block ..+16` × tokens `t0 ..+T` of a `K` matrix: the AVX2
/// `tiles` loop on two row blocks at once (per group the tiles unpacked
/// once; per token the exact sums corrected by the offset and folded in
/// the same float operations).
///
/// # Safety
/// `check_shapes` passed for both blocks and these tokens; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_tiles<K: PairKind, const T: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[f32; 16]; T] {
    let (groups, acts) = (p.groups, p.acts);
    let mut acc = [_mm512_setzero_ps(); T];
    for g in 0..groups {
        let at = PairAt::new(&p, block, g);
        matmul::prefetch::<K>(&p, at.ta + matmul::PREFETCH_TILES);
        matmul::prefetch::<K>(&p, at.tb + matmul::PREFETCH_TILES);
        // SAFETY (loads below): `check_shapes` and `Matrix::new` covered
        // every tile of the row blocks and every activation group of the
        // tokens.
        let (w, f) = unsafe { K::unpack_pair(&p, at) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let dot = unsafe { K::dot_pair(&w, acts.qs.as_ptr().add(ag * GROUP)) };
            let ad = _mm512_set1_ps(acts.d[ag]);
            *acc = if K::AFFINE {
                let s = _mm512_mul_ps(_mm512_set1_ps(acts.sums[ag] as f32), f.min);
                _mm512_add_ps(
                    *acc,
                    _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), f.scale), s), ad),
                )
            } else {
                let isum = if K::OFFSET == 0 {
                    dot
                } else {
                    _mm512_sub_epi32(dot, _mm512_set1_epi32(K::OFFSET * acts.sums[ag]))
                };
                _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(f.scale, ad)))
            };
        }
    }
    acc.map(|v| {
        let mut o = [0f32; 16];
        // SAFETY: `o` holds 16 floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        o
    })
}
