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
    // Pairs of row blocks (16 rows) in zmm registers, a last odd block in
    // ymm: per row the same operations in the same order, so the same bits.
    // Decode (one token) streams the weights and runs faster on one tile
    // stream in ymm (measured); prefill is compute-bound and gains from zmm.
    let (first, end) = (rows.start / RB, rows.end.div_ceil(RB));
    let pairs_end = if n >= 2 { first + (end - first) / 2 * 2 } else { first };
    let mut block = first;
    while block < pairs_end {
        let mut t0 = 0;
        while t0 < n {
            let used = (n - t0).min(4);
            let mut lanes = [[0f32; 16]; 4];
            // SAFETY: shapes checked above (both blocks lie in `rows`);
            // features present (module invariant).
            unsafe {
                match (q4, used) {
                    (true, 1) => lanes[..1].copy_from_slice(&q4_pairs::<1>(block, t0, qs, scales, groups, acts)),
                    (true, 2) => lanes[..2].copy_from_slice(&q4_pairs::<2>(block, t0, qs, scales, groups, acts)),
                    (true, 3) => lanes[..3].copy_from_slice(&q4_pairs::<3>(block, t0, qs, scales, groups, acts)),
                    (true, _) => lanes = q4_pairs::<4>(block, t0, qs, scales, groups, acts),
                    (false, 1) => lanes[..1].copy_from_slice(&q8_pairs::<1>(block, t0, qs, scales, groups, acts)),
                    (false, 2) => lanes[..2].copy_from_slice(&q8_pairs::<2>(block, t0, qs, scales, groups, acts)),
                    (false, 3) => lanes[..3].copy_from_slice(&q8_pairs::<3>(block, t0, qs, scales, groups, acts)),
                    (false, _) => lanes = q8_pairs::<4>(block, t0, qs, scales, groups, acts),
                }
            }
            for (i, l) in lanes.iter().take(used).enumerate() {
                let (a, b) = l.split_at(8);
                store_rows(out, t0 + i, block, a.try_into().unwrap_or([0.0; 8]));
                store_rows(out, t0 + i, block + 1, b.try_into().unwrap_or([0.0; 8]));
            }
            t0 += used;
        }
        block += 2;
    }
    let rest = (pairs_end * RB).max(rows.start)..rows.end;
    if q4 {
        // SAFETY: shapes checked above; features present (module invariant).
        unsafe { drive!(rest, n, out, q4_tiles, qs, scales, groups, acts) }
    } else {
        // SAFETY: as above.
        unsafe { drive!(rest, n, out, q8_tiles, qs, scales, groups, acts) }
    }
}

/// Scales of row blocks `block` and `block + 1` for group `g`, as 16 f32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn scales16(scales: &[f16], block: usize, groups: usize, g: usize) -> __m512 {
    let p = scales.as_ptr();
    // SAFETY: the caller checked that both blocks' scales are in `scales`.
    unsafe {
        let a = _mm_loadu_si128(p.add((block * groups + g) * RB).cast());
        let b = _mm_loadu_si128(p.add(((block + 1) * groups + g) * RB).cast());
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), b))
    }
}

/// 32 bytes of row block `block`'s tile and 32 of `block + 1`'s, at byte
/// `off` of group `g`'s tiles (`tile` bytes each), as one zmm.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn load_pair(qs: &[u8], tile: usize, block: usize, groups: usize, g: usize, off: usize) -> __m512i {
    let p = qs.as_ptr();
    // SAFETY: the caller checked that both blocks' tiles are in `qs`.
    unsafe {
        let a = _mm256_loadu_si256(p.add((block * groups + g) * tile + off).cast());
        let b = _mm256_loadu_si256(p.add(((block + 1) * groups + g) * tile + off).cast());
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
    }
}

/// Four activation quants at `p`, broadcast to all 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bcast4_16(p: *const i8) -> __m512i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// Rows `8 * block ..+16` (two row blocks) × tokens `t0 ..+T` of a q4 matrix.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_pairs<const T: usize>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 16]; T] {
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for g in 0..groups {
        let mut w = [_mm512_setzero_si512(); 8];
        for c in 0..4 {
            // SAFETY (loads here and below): `check_shapes` covered both
            // blocks' tiles and every activation group of the tokens.
            let v = unsafe { load_pair(qs, 128, block, groups, g, c * 32) };
            w[c] = _mm512_and_si512(v, mask);
            w[4 + c] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
        }
        let wd = unsafe { scales16(scales, block, groups, g) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut dot = _mm512_setzero_si512();
            for c in 0..4 {
                dot = _mm512_dpbusd_epi32(dot, w[c], unsafe { bcast4_16(a.add(4 * c)) });
                dot = _mm512_dpbusd_epi32(dot, w[4 + c], unsafe { bcast4_16(a.add(16 + 4 * c)) });
            }
            let isum = _mm512_sub_epi32(dot, _mm512_set1_epi32(8 * acts.sums[ag]));
            let s = _mm512_mul_ps(wd, _mm512_set1_ps(acts.d[ag]));
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), s));
        }
    }
    let mut out = [[0f32; 16]; T];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: `o` holds 16 floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
}

/// Rows `8 * block ..+16` (two row blocks) × tokens `t0 ..+T` of a q8 matrix.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_pairs<const T: usize>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 16]; T] {
    let mut acc = [_mm512_setzero_ps(); T];
    for g in 0..groups {
        let mut w = [_mm512_setzero_si512(); 8];
        for (c, wc) in w.iter_mut().enumerate() {
            // SAFETY (loads here and below): as in `q4_pairs`.
            *wc = unsafe { load_pair(qs, 256, block, groups, g, c * 32) };
        }
        let wd = unsafe { scales16(scales, block, groups, g) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut dot = _mm512_setzero_si512();
            for (c, &wc) in w.iter().enumerate() {
                dot = _mm512_dpbusd_epi32(dot, wc, unsafe { bcast4_16(a.add(4 * c)) });
            }
            let isum = _mm512_sub_epi32(dot, _mm512_set1_epi32(128 * acts.sums[ag]));
            let s = _mm512_mul_ps(wd, _mm512_set1_ps(acts.d[ag]));
            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), s));
        }
    }
    let mut out = [[0f32; 16]; T];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: `o` holds 16 floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
    out
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
