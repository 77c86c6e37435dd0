//! The AVX-512 tier's integer matrix product: the same tiles as the AVX2
//! one, multiplied with VNNI's `vpdpbusd` (four unsigned weights times four
//! signed activations summed into a 32-bit lane, no saturation), which
//! needs neither `pmaddubsw`'s widening step nor q8's sign trick.

use core::arch::x86_64::*;
use core::ops::Range;

use half::f16;

use super::{bcast4, check_shapes, drive, lanes, planes, store_rows, GROUP, RB};
use crate::{Acts, Matrix, Out};

pub(super) fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: the AVX-512 table is only reachable after `has_avx512()`.
    unsafe { matmul_q_vnni(m, rows, acts, n, out) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matmul_q_vnni(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    let Some((qs, scales, q4, tile)) = planes(m) else { return };
    let groups = m.cols.div_ceil(GROUP);
    check_shapes(qs, scales, tile, groups, &rows, acts, n);
    if q4 {
        // SAFETY: shapes checked above; features present (module invariant).
        unsafe { drive!(rows, n, out, q4_tiles, qs, scales, groups, acts) }
    } else {
        // SAFETY: as above.
        unsafe { drive!(rows, n, out, q8_tiles, qs, scales, groups, acts) }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_tiles<const T: usize>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 8]; T] {
    let mask = _mm256_set1_epi8(0x0F);
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
            let mut dot = _mm256_setzero_si256();
            for c in 0..4 {
                dot = _mm256_dpbusd_epi32(dot, w[c], unsafe { bcast4(a.add(4 * c)) });
                dot = _mm256_dpbusd_epi32(dot, w[4 + c], unsafe { bcast4(a.add(16 + 4 * c)) });
            }
            let isum = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * acts.sums[ag]));
            let s = _mm256_mul_ps(wd, _mm256_set1_ps(acts.d[ag]));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), s));
        }
    }
    acc.map(|v| lanes(v))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_tiles<const T: usize>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 8]; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    for g in 0..groups {
        let ti = block * groups + g;
        // SAFETY (loads below): as in `q4_tiles`.
        let tile = unsafe { qs.as_ptr().add(ti * 256) };
        let w: [__m256i; 8] = core::array::from_fn(|c| unsafe { _mm256_loadu_si256(tile.add(c * 32).cast()) });
        let wd = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(ti * RB).cast())) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut dot = _mm256_setzero_si256();
            for (c, &wc) in w.iter().enumerate() {
                dot = _mm256_dpbusd_epi32(dot, wc, unsafe { bcast4(a.add(4 * c)) });
            }
            // Weights are stored as q + 128.
            let isum = _mm256_sub_epi32(dot, _mm256_set1_epi32(128 * acts.sums[ag]));
            let s = _mm256_mul_ps(wd, _mm256_set1_ps(acts.d[ag]));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), s));
        }
    }
    acc.map(|v| lanes(v))
}

// `store_rows` is used through `drive!`.
#[allow(unused_imports)]
use store_rows as _;
