//! The AVX-512 tier's matrix products.
//!
//! - Integer ([`matmul_q`]): the AVX2 tier's tiles multiplied with VNNI's
//!   `vpdpbusd` (four unsigned weights times four signed activations summed
//!   into a 32-bit lane, no saturation), which needs neither `pmaddubsw`'s
//!   widening step nor q8's sign trick. One loop ([`vnni_tiles`]) serves
//!   both register widths ([`Width`]: one row block in ymm, a pair in zmm)
//!   and q4/q8 ([`VnniKind`]: how a tile is unpacked); the K-quant and
//!   5-bit types have their own pair loop in [`pairs`] (their factors and
//!   fold are the AVX2 `TileKind`'s), both over [`drive_pairs`].
//! - Float over q4/q4a ([`matmul_f`]): each row's group is unpacked with a
//!   two-register permute and its 16 levels looked up in a table of their
//!   dequantized values (`level * scale (+ min)`, the very products the
//!   reference computes), then multiplied in exactly the AVX2 `dot`'s
//!   order: its two 8-lane accumulators are the halves of one zmm.

use core::arch::x86_64::*;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};
use half::f16;

use super::hsum;
use super::matmul;
use crate::reference::{Matrix, Weights};
use crate::tiles::{drive_tiles, int_planes, rows_fit, store_rows, IntKind, Planes};
use crate::{Acts, Out};

mod pairs;
use pairs::by_pairs;

/// [`matmul_q_vnni`] (safe: the AVX-512 table is only reachable after
/// `has_avx512()`).
pub(super) fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: see above.
    unsafe { matmul_q_vnni(m, rows, acts, n, out) }
}

/// The float product: q4/q4a rows through [`row_dots`], other weights
/// through the AVX2 tier's (safe: as [`matmul_q`]).
pub(super) fn matmul_f(
    m: &Matrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut Out<'_>,
    row: &mut [f32],
) {
    match m.w {
        // SAFETY: see above.
        Weights::Q4 { .. } | Weights::Q4A { .. } => unsafe { matmul_f_lut(m, rows, x, x_stride, n, out) },
        _ => super::avx2::matmul_f(m, rows, x, x_stride, n, out, row),
    }
}

/// One register width of the integer loop: one row block (ymm) or two
/// side by side (zmm), 8 lanes each.
trait Width {
    type I: Copy;
    type F: Copy;
    /// 32 bytes at byte `off` of group `g`'s tile of each of the row blocks
    /// from `block`.
    ///
    /// # Safety
    /// Those tiles readable; AVX-512 present (for all methods).
    unsafe fn load(qs: *const u8, tile_bytes: usize, block: usize, groups: usize, g: usize, off: usize) -> Self::I;
    /// The blocks' scales of group `g`, as f32.
    unsafe fn scales(scales: *const f16, block: usize, groups: usize, g: usize) -> Self::F;
    unsafe fn low_nibbles(v: Self::I) -> Self::I;
    unsafe fn high_nibbles(v: Self::I) -> Self::I;
    unsafe fn zero() -> (Self::I, Self::F);
    /// `acc + (w · a[0..4] per lane)` (`vpdpbusd`, the 4 activation quants
    /// at `a` broadcast).
    unsafe fn dpbusd(acc: Self::I, w: Self::I, a: *const i8) -> Self::I;
    /// `acc + ((dot - corr) as f32) * (wd * ad)`, not fused.
    unsafe fn fold(acc: Self::F, dot: Self::I, corr: i32, wd: Self::F, ad: f32) -> Self::F;
    unsafe fn store(acc: Self::F) -> [f32; 16];
}

/// One row block in ymm registers.
struct Ymm;
/// Two row blocks side by side in zmm registers.
struct Zmm;

/// [`Width`] for a register type from its intrinsics (`load`, `scales`
/// written out, the lane-wise operations named).
macro_rules! width {
    ($w:ty, $i:ty, $f:ty, |$qs:ident, $tb:ident, $block:ident, $groups:ident, $g:ident, $off:ident| $load:expr,
     |$sc:ident| $scales:expr, $and:ident, $srli:ident, $set8:ident, $zi:ident, $zf:ident, $dp:ident, $set32:ident,
     $sub:ident, $add:ident, $mul:ident, $cvt:ident, $setf:ident, $store:ident) => {
        impl Width for $w {
            type I = $i;
            type F = $f;
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn load($qs: *const u8, $tb: usize, $block: usize, $groups: usize, $g: usize, $off: usize) -> $i {
                // SAFETY: the caller's guarantee.
                unsafe { $load }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn scales($sc: *const f16, $block: usize, $groups: usize, $g: usize) -> $f {
                // SAFETY: the caller's guarantee.
                unsafe { $scales }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn low_nibbles(v: $i) -> $i {
                $and(v, $set8(0x0F))
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn high_nibbles(v: $i) -> $i {
                $and($srli::<4>(v), $set8(0x0F))
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn zero() -> ($i, $f) {
                ($zi(), $zf())
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn dpbusd(acc: $i, w: $i, a: *const i8) -> $i {
                // SAFETY: the caller guarantees 4 readable bytes at `a`.
                $dp(acc, w, $set32(unsafe { a.cast::<i32>().read_unaligned() }))
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn fold(acc: $f, dot: $i, corr: i32, wd: $f, ad: f32) -> $f {
                $add(acc, $mul($cvt($sub(dot, $set32(corr))), $mul(wd, $setf(ad))))
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            #[inline]
            unsafe fn store(acc: $f) -> [f32; 16] {
                let mut o = [0f32; 16];
                // SAFETY: `o` holds 16 floats.
                unsafe { $store(o.as_mut_ptr(), acc) };
                o
            }
        }
    };
}

width!(
    Ymm,
    __m256i,
    __m256,
    |qs, tile_bytes, block, groups, g, off| _mm256_loadu_si256(
        qs.add(quant::tile_index(groups, block, g) * tile_bytes + off).cast()
    ),
    |scales| _mm256_cvtph_ps(_mm_loadu_si128(scales.add(quant::tile_index(groups, block, g) * ROW_BLOCK).cast())),
    _mm256_and_si256,
    _mm256_srli_epi16,
    _mm256_set1_epi8,
    _mm256_setzero_si256,
    _mm256_setzero_ps,
    _mm256_dpbusd_epi32,
    _mm256_set1_epi32,
    _mm256_sub_epi32,
    _mm256_add_ps,
    _mm256_mul_ps,
    _mm256_cvtepi32_ps,
    _mm256_set1_ps,
    _mm256_storeu_ps
);

width!(
    Zmm,
    __m512i,
    __m512,
    |qs, tile_bytes, block, groups, g, off| {
        let a = Ymm::load(qs, tile_bytes, block, groups, g, off);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), Ymm::load(qs, tile_bytes, block + 1, groups, g, off))
    },
    |scales| {
        let a = _mm_loadu_si128(scales.add(quant::tile_index(groups, block, g) * ROW_BLOCK).cast());
        let b = _mm_loadu_si128(scales.add(quant::tile_index(groups, block + 1, g) * ROW_BLOCK).cast());
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), b))
    },
    _mm512_and_si512,
    _mm512_srli_epi16,
    _mm512_set1_epi8,
    _mm512_setzero_si512,
    _mm512_setzero_ps,
    _mm512_dpbusd_epi32,
    _mm512_set1_epi32,
    _mm512_sub_epi32,
    _mm512_add_ps,
    _mm512_mul_ps,
    _mm512_cvtepi32_ps,
    _mm512_set1_ps,
    _mm512_storeu_ps
);

/// How one weight type's tiles are unpacked for `vpdpbusd`: eight chunks
/// of unsigned weights, chunk `c` meeting activation quants `4c..4c+4`.
/// A new integer weight type adds an implementation, not a loop.
trait VnniKind {
    const BYTES: usize;
    /// What a stored weight exceeds its signed value by.
    const OFFSET: i32;
    /// # Safety
    /// Group `g`'s tiles of the the width's row blocks from `block`
    /// readable; AVX-512 present.
    unsafe fn unpack<W: Width>(qs: *const u8, block: usize, groups: usize, g: usize) -> [W::I; 8];
}

/// q4: low nibbles of the 4 stored chunks are chunks 0..4, high ones 4..8.
struct Q4;
/// q8: the 8 stored chunks as they are (excess-128).
struct Q8;

impl VnniKind for Q4 {
    const BYTES: usize = quant::Q4_TILE_BYTES;
    const OFFSET: i32 = quant::Q4_OFFSET;
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn unpack<W: Width>(qs: *const u8, block: usize, groups: usize, g: usize) -> [W::I; 8] {
        // SAFETY (all): forwarded from the caller.
        let mut w = [unsafe { W::zero().0 }; 8];
        for c in 0..4 {
            let v = unsafe { W::load(qs, Self::BYTES, block, groups, g, c * quant::CHUNK_BYTES) };
            w[c] = unsafe { W::low_nibbles(v) };
            w[4 + c] = unsafe { W::high_nibbles(v) };
        }
        w
    }
}

impl VnniKind for Q8 {
    const BYTES: usize = quant::Q8_TILE_BYTES;
    const OFFSET: i32 = quant::Q8_OFFSET;
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn unpack<W: Width>(qs: *const u8, block: usize, groups: usize, g: usize) -> [W::I; 8] {
        // SAFETY (all): forwarded from the caller.
        let mut w = [unsafe { W::zero().0 }; 8];
        for (c, w) in w.iter_mut().enumerate() {
            *w = unsafe { W::load(qs, Self::BYTES, block, groups, g, c * quant::CHUNK_BYTES) };
        }
        w
    }
}

/// `reference::matmul_q` with VNNI.
///
/// # Safety
/// The CPU has the AVX-512 tier's features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matmul_q_vnni(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    let Some((p, kind)) = int_planes(m, &rows, acts, n) else { return };
    // SAFETY (both): shapes checked by `int_planes`; features present (the caller's
    // guarantee).
    match kind {
        IntKind::Q4 => unsafe { by_width::<Q4>(rows, p, n, out) },
        IntKind::Q8 => unsafe { by_width::<Q8>(rows, p, n, out) },
        IntKind::Q5_0 => unsafe { by_pairs::<matmul::Q5_0>(rows, p, n, out) },
        IntKind::Q5_1 => unsafe { by_pairs::<matmul::Q5_1>(rows, p, n, out) },
        IntKind::Q4K => unsafe { by_pairs::<matmul::Q4K>(rows, p, n, out) },
        IntKind::Q5K => unsafe { by_pairs::<matmul::Q5K>(rows, p, n, out) },
        IntKind::Q6K => unsafe { by_pairs::<matmul::Q6K>(rows, p, n, out) },
    }
}

/// Row blocks `blocks` two at a time (`blocks.len()` even) × tokens `0..n`
/// in runs of up to `max` (at most 8): `pair(block, t0, used, lanes)` fills
/// `lanes[..used]` with blocks `block` and `block + 1`'s 16 rows for tokens
/// `t0 ..+used`, which are stored into `out` (clipped to `rows`).
fn drive_pairs(
    rows: &Range<usize>,
    blocks: Range<usize>,
    n: usize,
    max: usize,
    out: &mut Out<'_>,
    mut pair: impl FnMut(usize, usize, usize, &mut [[f32; 16]; 8]),
) {
    for block in blocks.step_by(2) {
        let mut t0 = 0;
        while t0 < n {
            let used = (n - t0).min(max);
            let mut lanes = [[0f32; 16]; 8];
            pair(block, t0, used, &mut lanes);
            for (i, l) in lanes.iter().take(used).enumerate() {
                for half in 0..2 {
                    let mut h = [0f32; 8];
                    h.copy_from_slice(&l[8 * half..8 * half + 8]);
                    store_rows(out, rows, t0 + i, block + half, &h);
                }
            }
            t0 += used;
        }
    }
}

/// Pairs of row blocks (16 rows) in zmm registers, a last odd block in ymm:
/// per row the same operations in the same order, so the same bits.
/// Decode (one token) streams the weights and runs faster on one tile
/// stream in ymm (measured); prefill is compute-bound and gains from zmm.
///
/// # Safety
/// As [`vnni_tiles`], for every block of `rows` and tokens `0..n`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn by_width<K: VnniKind>(rows: Range<usize>, p: Planes<'_>, n: usize, out: &mut Out<'_>) {
    let (first, end) = (rows.start / ROW_BLOCK, rows.end.div_ceil(ROW_BLOCK));
    let pairs_end = if n >= 2 { first + (end - first) / 2 * 2 } else { first };
    // SAFETY (both): forwarded from the caller (the pairs' blocks lie in
    // `rows`'s blocks).
    drive_pairs(&rows, first..pairs_end, n, 4, out, |block, t0, used, lanes| match used {
        1 => lanes[..1].copy_from_slice(&unsafe { vnni_tiles::<Zmm, K, 1>(p, block, t0) }),
        2 => lanes[..2].copy_from_slice(&unsafe { vnni_tiles::<Zmm, K, 2>(p, block, t0) }),
        3 => lanes[..3].copy_from_slice(&unsafe { vnni_tiles::<Zmm, K, 3>(p, block, t0) }),
        _ => lanes[..4].copy_from_slice(&unsafe { vnni_tiles::<Zmm, K, 4>(p, block, t0) }),
    });
    let rest = (pairs_end * ROW_BLOCK).max(rows.start)..rows.end;
    drive_tiles!(rest, n, out, |b, t0, T| unsafe { vnni_tiles::<Ymm, K, T>(p, b, t0) }
        .map(|l| [l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]));
}

/// Rows `8 * block ..` (the width's row blocks) × tokens `t0 ..+T` of a `K`
/// matrix: per group the tiles are unpacked once; per token the exact sums
/// are corrected by the offset and accumulated as the reference does.
///
/// # Safety
/// `check_shapes` passed for these blocks and tokens; AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_tiles<W: Width, K: VnniKind, const T: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[f32; 16]; T] {
    let Planes { qs, scales, groups, acts, .. } = p;
    // SAFETY (loads below): `check_shapes` covered every tile of the row
    // blocks and every activation group of the tokens.
    let (zi, zf) = unsafe { W::zero() };
    let mut acc = [zf; T];
    for g in 0..groups {
        let w = unsafe { K::unpack::<W>(qs.as_ptr(), block, groups, g) };
        let wd = unsafe { W::scales(scales.as_ptr(), block, groups, g) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let mut dot = zi;
            for (c, &wc) in w.iter().enumerate() {
                dot = unsafe { W::dpbusd(dot, wc, a.add(4 * c)) };
            }
            *acc = unsafe { W::fold(*acc, dot, K::OFFSET * acts.sums[ag], wd, acts.d[ag]) };
        }
    }
    let mut out = [[0f32; 16]; T];
    for (o, &a) in out.iter_mut().zip(&acc) {
        *o = unsafe { W::store(a) };
    }
    out
}

/// [`matmul_f`] over q4/q4a: rows in order, tokens in runs of up to four
/// ([`row_dots`]).
///
/// # Safety
/// The CPU has the AVX-512 tier's features.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matmul_f_lut(m: &Matrix<'_>, rows: Range<usize>, x: &[f32], x_stride: usize, n: usize, out: &mut Out<'_>) {
    let (qs, scales, mins) = match m.w {
        Weights::Q4 { qs, scales } => (qs, scales, None),
        Weights::Q4A { qs, scales, mins } => (qs, scales, Some(mins)),
        _ => return,
    };
    m.check_rows(&rows);
    let groups = m.cols.div_ceil(GROUP);
    let tiles = rows.end.div_ceil(ROW_BLOCK).checked_mul(groups);
    let fits = |len: usize, per: usize| tiles.and_then(|t| t.checked_mul(per)).is_some_and(|b| b <= len);
    assert!(
        fits(qs.len(), quant::Q4_TILE_BYTES)
            && fits(scales.len(), ROW_BLOCK)
            && mins.is_none_or(|m| fits(m.len(), ROW_BLOCK)),
        "weight planes too short"
    );
    assert!(rows_fit(x.len(), n, x_stride, m.cols), "activations too short");
    let rows_of = RowsOf { qs, scales, mins, groups, cols: m.cols, x, x_stride };
    let mut r = rows.start;
    while r < rows.end {
        // One token (decode): four rows of a row block at once, so that
        // their accumulation chains (each bound to `dot`'s order) overlap
        // and they share the tile's loads.
        let block_end = ((r / ROW_BLOCK + 1) * ROW_BLOCK).min(rows.end);
        if n == 1 && block_end - r >= 4 {
            let mut v = [[0f32; 4]; ROW_BLOCK];
            let rows_here = if block_end - r == ROW_BLOCK { ROW_BLOCK } else { 4 };
            // SAFETY (both): planes and activations checked above; the rows
            // lie in one row block.
            if rows_here == ROW_BLOCK {
                unsafe { row_dots::<ROW_BLOCK, 1>(&rows_of, r, 0, &mut v) };
            } else {
                unsafe { row_dots::<4, 1>(&rows_of, r, 0, &mut v) };
            }
            for (i, v) in v.iter().take(rows_here).enumerate() {
                out.set(0, r + i, v[0]);
            }
            r += rows_here;
            continue;
        }
        let mut t0 = 0;
        while t0 < n {
            let mut v = [[0f32; 4]; 1];
            let used = (n - t0).min(4);
            // SAFETY (all four): planes and activations checked above.
            match used {
                1 => unsafe { row_dots::<1, 1>(&rows_of, r, t0, &mut v) },
                2 => unsafe { row_dots::<1, 2>(&rows_of, r, t0, &mut v) },
                3 => unsafe { row_dots::<1, 3>(&rows_of, r, t0, &mut v) },
                _ => unsafe { row_dots::<1, 4>(&rows_of, r, t0, &mut v) },
            }
            for (i, &v) in v[0].iter().take(used).enumerate() {
                out.set(t0 + i, r, v);
            }
            t0 += used;
        }
        r += 1;
    }
}

/// The operands of [`row_dots`].
struct RowsOf<'a> {
    qs: &'a [u8],
    scales: &'a [f16],
    mins: Option<&'a [f16]>,
    groups: usize,
    cols: usize,
    x: &'a [f32],
    x_stride: usize,
}

/// Rows `r0 ..+R` (q4 or q4a, in one row block) dotted with tokens `t0
/// ..+T` into `v[row][..T]`, each (row, token) in the AVX2 `dot`'s order
/// over the dequantized row: 16-element blocks into two 8-lane
/// accumulators (here the halves of one zmm), one 8-element block into the
/// first, their sum reduced as `hsum`, a scalar tail ([`finish_dot`]).
///
/// Per group the tile (128 bytes, two zmm) is loaded once for the rows; a
/// row's word of chunk `c` is permuted into lanes `4c..4c + 4`, shifted by
/// `8i` (low nibbles, elements `4c + i`) or `8i + 4` (high ones, `16 + 4c +
/// i`), and the lanes' low 4 bits index a table of the 16 dequantized
/// levels `level * scale (+ min)`: the reference's products.
///
/// # Safety
/// The planes hold the rows' tiles and `x` the tokens (checked by
/// [`matmul_f_lut`]); AVX-512 present.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_dots<const R: usize, const T: usize>(m: &RowsOf<'_>, r0: usize, t0: usize, v: &mut [[f32; 4]]) {
    let offset = if m.mins.is_some() { 0.0 } else { quant::Q4_OFFSET as f32 };
    let levels = _mm512_sub_ps(
        _mm512_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0),
        _mm512_set1_ps(offset),
    );
    let block = r0 / ROW_BLOCK;
    // Per row: its word of chunk `c` (word `8c + rr` of the tile) in lanes
    // `4c..4c + 4`, and its place among the group's 8 scales.
    let picks: [(__m512i, usize); R] = core::array::from_fn(|i| {
        let rr = (r0 + i) % ROW_BLOCK;
        let w = |c: usize| (8 * c + rr) as i32;
        (
            _mm512_setr_epi32(
                w(0),
                w(0),
                w(0),
                w(0),
                w(1),
                w(1),
                w(1),
                w(1),
                w(2),
                w(2),
                w(2),
                w(2),
                w(3),
                w(3),
                w(3),
                w(3),
            ),
            rr,
        )
    });
    let lo_shift = _mm512_setr_epi32(0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24);
    let hi_shift = _mm512_add_epi32(lo_shift, _mm512_set1_epi32(4));
    // Group `g`'s 32 dequantized values of each row, as two zmm (elements
    // 0..16, 16..32).
    let unpack = |g: usize| {
        let ti = quant::tile_index(m.groups, block, g);
        // The tile's 8 scales (and minimums) as f32, broadcast from memory
        // per row (a load, not a shuffle).
        let (mut d, mut min) = ([0f32; ROW_BLOCK], [0f32; ROW_BLOCK]);
        // SAFETY: tile `ti` (128 bytes) and its 8 scales (and minimums) are
        // inside the planes (the caller's guarantee); `d`/`min` hold 8.
        let (a, b) = unsafe {
            let eight = |plane: &[f16], to: &mut [f32; ROW_BLOCK]| {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(plane.as_ptr().add(ti * ROW_BLOCK).cast()));
                _mm256_storeu_ps(to.as_mut_ptr(), v);
            };
            eight(m.scales, &mut d);
            if let Some(mins) = m.mins {
                eight(mins, &mut min);
            }
            let p = m.qs.as_ptr().add(ti * quant::Q4_TILE_BYTES);
            (_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(p.add(64).cast()))
        };
        let mut w = [(_mm512_setzero_ps(), _mm512_setzero_ps()); R];
        for (w, &(pick, rr)) in w.iter_mut().zip(&picks) {
            let words = _mm512_permutex2var_epi32(a, pick, b);
            let mut table = _mm512_mul_ps(levels, _mm512_set1_ps(d[rr]));
            if m.mins.is_some() {
                table = _mm512_add_ps(table, _mm512_set1_ps(min[rr]));
            }
            *w = (
                _mm512_permutexvar_ps(_mm512_srlv_epi32(words, lo_shift), table),
                _mm512_permutexvar_ps(_mm512_srlv_epi32(words, hi_shift), table),
            );
        }
        w
    };
    let full = m.cols / GROUP;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for g in 0..full {
        let w = unpack(g);
        for t in 0..T {
            // SAFETY: elements `32g..32g + 32 <= cols` of token `t0 + t`.
            let (x0, x1) = unsafe {
                let xp = m.x.as_ptr().add((t0 + t) * m.x_stride + g * GROUP);
                (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)))
            };
            for (acc, &(w0, w1)) in acc.iter_mut().zip(&w) {
                acc[t] = _mm512_fmadd_ps(w1, x1, _mm512_fmadd_ps(w0, x0, acc[t]));
            }
        }
    }
    let rest = m.cols - full * GROUP;
    let tails = if rest > 0 { unpack(full) } else { [(_mm512_setzero_ps(), _mm512_setzero_ps()); R] };
    for ((acc, v), &(w0, w1)) in acc.iter().zip(v.iter_mut()).zip(&tails) {
        let mut tail = [0f32; GROUP];
        // SAFETY: `tail` holds 32 floats.
        unsafe {
            _mm512_storeu_ps(tail.as_mut_ptr(), w0);
            _mm512_storeu_ps(tail.as_mut_ptr().add(16), w1);
        }
        for (t, (acc, v)) in acc.iter().zip(v.iter_mut()).enumerate() {
            let at = (t0 + t) * m.x_stride + full * GROUP;
            *v = finish_dot(*acc, &tail[..rest], &m.x[at..at + rest]);
        }
    }
}

/// The end of the AVX2 `dot` from its accumulators `acc = [acc0 | acc1]`
/// over the last `a.len() < 32` elements: a 16-element block, an
/// 8-element one into `acc0`, `hsum(acc0 + acc1)`, the scalar tail.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn finish_dot(mut acc: __m512, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut i = 0;
    if n >= 16 {
        // SAFETY: 16 floats of `a` and of `b`.
        acc = unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr()), _mm512_loadu_ps(b.as_ptr()), acc) };
        i = 16;
    }
    let (mut lo, hi) =
        (_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc))));
    if n - i >= 8 {
        // SAFETY: floats `i..i + 8` of `a` and of `b`.
        lo = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), lo) };
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(lo, hi));
    for j in i..n {
        s += a[j] * b[j];
    }
    s
}
