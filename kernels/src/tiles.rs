//! What every SIMD tier's tile kernels share: the bounds checks in front of
//! their unchecked loads (checked arithmetic throughout, so no size wraps in
//! a release build), storing a row block's lanes, and the loop over row
//! blocks and runs of tokens ([`drive_tiles!`]). The geometry itself is
//! [`ferrite_format::quant`]'s.

#![cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]

use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};
use half::f16;

use crate::reference::{Matrix, Weights};
use crate::{Acts, Out};

/// The integer-product weight types (`matmul_q`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntKind {
    /// q4: nibbles `q + 8`.
    Q4,
    /// q8: bytes `q + 128`.
    Q8,
    /// q5_0: nibbles and one high bit, `q + 16`.
    Q5_0,
    /// q5_1: nibbles and one high bit, unsigned, with a minimum.
    Q5_1,
    /// q4k: nibbles, unsigned, 6-bit sub-scales and minimums.
    Q4K,
    /// q5k: q4k with one high bit.
    Q5K,
    /// q6k: nibbles and two high bits, `q + 32`, int8 half-group scales.
    Q6K,
}

impl IntKind {
    /// Bytes of one tile of the quants plane.
    pub(crate) fn tile_bytes(self) -> usize {
        match self {
            IntKind::Q8 => quant::Q8_TILE_BYTES,
            _ => quant::Q4_TILE_BYTES,
        }
    }
}

/// What a tier's tile kernel reads: a quantized matrix's planes (those its
/// type has; the others empty), its groups (and super-blocks) per row and
/// the activations, after [`check_shapes`] and [`Matrix::new`]'s checks of
/// every plane (which is what makes the kernels' unchecked loads sound).
#[derive(Clone, Copy)]
pub(crate) struct Planes<'a> {
    /// The quants plane's tiles (`tile_bytes` each).
    pub(crate) qs: &'a [u8],
    /// The high plane (q5_0, q5_1, q5k: 32 bytes per tile; q6k: 64).
    pub(crate) qh: &'a [u8],
    /// One f16 scale per row and group, in tile order (q4, q8, q5_0, q5_1).
    pub(crate) scales: &'a [f16],
    /// q5_1's minimums, laid out like the scales.
    pub(crate) mins: &'a [f16],
    /// The K types' group scales: a byte per row and group (q4k, q5k; 8
    /// per tile), q6k's two int8 per row and group (16 per tile).
    pub(crate) sub: &'a [u8],
    /// q4k's and q5k's group minimums, a byte per row and group.
    pub(crate) sub_mins: &'a [u8],
    /// The K types' `d` per row and super-block (8 f16 per tile).
    pub(crate) d: &'a [f16],
    /// q4k's and q5k's `dmin`, laid out like `d`.
    pub(crate) dmin: &'a [f16],
    /// Groups of 32 per row.
    pub(crate) groups: usize,
    /// Super-blocks of 256 per row.
    pub(crate) supers: usize,
    /// The quantized activations.
    pub(crate) acts: &'a Acts<'a>,
}

impl Planes<'_> {
    /// Index of the first of the 8 `d` (or `dmin`) values of group `g`'s
    /// super-block in row block `block`.
    #[inline(always)]
    pub(crate) fn super_at(&self, block: usize, g: usize) -> usize {
        quant::tile_index(self.supers, block, g / quant::SUPER_GROUPS) * ROW_BLOCK
    }
}

/// The quantized planes of `m` and their type, after [`check_shapes`] for
/// `rows` and `n` tokens of `acts` (`None` for float weights and q4a, which
/// `matmul_q` leaves alone, and for no rows).
///
/// # Panics
/// If the shapes do not fit (see [`check_shapes`]).
pub(crate) fn int_planes<'a>(
    m: &Matrix<'a>,
    rows: &Range<usize>,
    acts: &'a Acts<'a>,
    n: usize,
) -> Option<(Planes<'a>, IntKind)> {
    let mut p = Planes {
        qs: &[],
        qh: &[],
        scales: &[],
        mins: &[],
        sub: &[],
        sub_mins: &[],
        d: &[],
        dmin: &[],
        groups: m.cols.div_ceil(GROUP),
        supers: m.cols.div_ceil(quant::SUPER),
        acts,
    };
    let kind = match m.w {
        Weights::Q4 { qs, scales } => {
            (p.qs, p.scales) = (qs, scales);
            IntKind::Q4
        }
        Weights::Q8 { qs, scales } => {
            (p.qs, p.scales) = (qs, scales);
            IntKind::Q8
        }
        Weights::Q5_0 { qs, qh, scales } => {
            (p.qs, p.qh, p.scales) = (qs, qh, scales);
            IntKind::Q5_0
        }
        Weights::Q5_1 { qs, qh, scales, mins } => {
            (p.qs, p.qh, p.scales, p.mins) = (qs, qh, scales, mins);
            IntKind::Q5_1
        }
        Weights::Q4K { qs, scales, mins, d, dmin } => {
            (p.qs, p.sub, p.sub_mins, p.d, p.dmin) = (qs, scales, mins, d, dmin);
            IntKind::Q4K
        }
        Weights::Q5K { qs, qh, scales, mins, d, dmin } => {
            (p.qs, p.qh, p.sub, p.sub_mins, p.d, p.dmin) = (qs, qh, scales, mins, d, dmin);
            IntKind::Q5K
        }
        Weights::Q6K { qs, qh, scales, d } => {
            (p.qs, p.qh, p.sub, p.d) = (qs, qh, bytemuck::cast_slice(scales), d);
            IntKind::Q6K
        }
        Weights::F32(_) | Weights::F16(_) | Weights::Q4A { .. } => return None,
    };
    m.check_rows(rows);
    if rows.is_empty() {
        // Nothing to write (and no token loop over a block of no rows).
        return None;
    }
    // The group scales' plane where the type has one (the other planes:
    // `Matrix::new` checked them all against the shape).
    let scales = if p.scales.is_empty() { None } else { Some(p.scales) };
    check_shapes(p.qs, scales, kind.tile_bytes(), p.groups, rows, acts, n);
    Some((p, kind))
}

/// A quantized weight type as the float product sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowKind {
    /// Nibbles `q + 8` (4 words per group of a row).
    Q4,
    /// Nibbles `u`, value `u * scale + min` (4 words).
    Q4A,
    /// Bytes `q + 128` (8 words).
    Q8,
}

/// The body of a tier's `matmul_f` (`reference::matmul_f`): per row, f32
/// weights dotted in place (`dot`), f16 through `dot_f16(x, w)`, quantized
/// rows dequantized once into `row` (`dequantize(r, &mut row[..cols])`,
/// which must give `Matrix::dequantize_row`'s values) and dotted with
/// every token; per (row, token) the tier's `dot` arithmetic.
///
/// # Panics
/// If a buffer is shorter than the shapes say (callers validate shapes).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn matmul_f_rows(
    m: &Matrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut Out<'_>,
    row: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
    dot_f16: impl Fn(&[f32], &[f16]) -> f32,
    mut dequantize: impl FnMut(usize, &mut [f32]),
) {
    m.check_rows(&rows);
    let cols = m.cols;
    let xt = |t: usize| &x[t * x_stride..t * x_stride + cols];
    for r in rows {
        for t in 0..n {
            let v = match m.w {
                Weights::F32(w) => dot(&w[r * cols..(r + 1) * cols], xt(t)),
                Weights::F16(w) => dot_f16(xt(t), &w[r * cols..(r + 1) * cols]),
                _ => {
                    if t == 0 {
                        dequantize(r, &mut row[..cols]);
                    }
                    dot(&row[..cols], xt(t))
                }
            };
            out.set(t, r, v);
        }
    }
}

/// Defines a tier's `unsafe fn matmul_f` (doc comments first, then the
/// visibility and the tier's features) as [`matmul_f_rows`] over the
/// enclosing module's `dot`, `dot_f16` and `dequantize_row(m, r, dst)`, all
/// `unsafe fn`s that need only those features.
#[allow(unused_macros)]
macro_rules! float_matmul {
    ($(#[$doc:meta])* $vis:vis, $feature:literal) => {
        $(#[$doc])*
        #[target_feature(enable = $feature)]
        $vis unsafe fn matmul_f(
            m: &$crate::Matrix<'_>,
            rows: core::ops::Range<usize>,
            x: &[f32],
            x_stride: usize,
            n: usize,
            out: &mut $crate::Out<'_>,
            row: &mut [f32],
        ) {
            // SAFETY (the three closures): the tier's features present (the
            // caller's guarantee), all that `dot`, `dot_f16` and
            // `dequantize_row` need.
            let dot = |a: &[f32], b: &[f32]| unsafe { dot(a, b) };
            let dot_f16 = |a: &[f32], b: &[half::f16]| unsafe { dot_f16(a, b) };
            let dequantize = |r: usize, dst: &mut [f32]| unsafe { dequantize_row(m, r, dst) };
            $crate::tiles::matmul_f_rows(m, rows, x, x_stride, n, out, row, dot, dot_f16, dequantize);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use float_matmul;

/// Row `r` of a quantized matrix group by group, for a tier's SIMD
/// dequantization into `dst` (`cols` floats): `unpack(kind, words, scale,
/// min, group)` gets the row's 4-byte words of each group's tile in element
/// order (q4/q4a: 4, q8: 8; [`quant::tile_byte`]), the group's scale and
/// minimum (0 but for q4a) and fills the group's 32 values; the real ones
/// are copied into `dst`. Float weights are left alone; q5_0, q5_1 and the
/// K types are dequantized by [`Matrix::dequantize_row`] (tiers with their
/// own unpack of those types, as AVX2's, do not call this for them).
///
/// # Panics
/// If the planes do not hold row `r` (callers validate shapes).
#[inline]
pub(crate) fn dequantize_row_by(
    m: &Matrix<'_>,
    r: usize,
    dst: &mut [f32],
    mut unpack: impl FnMut(RowKind, &[u32; 8], f32, f32, &mut [f32; GROUP]),
) {
    let groups = m.cols.div_ceil(GROUP);
    let (qs, scales, mins, kind) = match m.w {
        Weights::Q4 { qs, scales } => (qs, scales, None, RowKind::Q4),
        Weights::Q4A { qs, scales, mins } => (qs, scales, Some(mins), RowKind::Q4A),
        Weights::Q8 { qs, scales } => (qs, scales, None, RowKind::Q8),
        Weights::F32(_) | Weights::F16(_) => return,
        // The types without a SIMD unpack yet: the reference, bit for bit.
        _ => return m.dequantize_row(r, dst),
    };
    let bytes = if kind == RowKind::Q8 { quant::Q8_TILE_BYTES } else { quant::Q4_TILE_BYTES };
    let (block, rr) = (r / ROW_BLOCK, r % ROW_BLOCK);
    let mut full = [0f32; GROUP];
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let ti = quant::tile_index(groups, block, g);
        let tile = &qs[ti * bytes..(ti + 1) * bytes];
        let mut words = [0u32; 8];
        for (c, w) in words.iter_mut().enumerate().take(bytes / quant::CHUNK_BYTES) {
            let at = quant::tile_byte(c, rr, 0);
            *w = u32::from_le_bytes([tile[at], tile[at + 1], tile[at + 2], tile[at + 3]]);
        }
        let si = quant::scale_index(groups, r, g);
        unpack(kind, &words, scales[si].to_f32(), mins.map_or(0.0, |m| m[si].to_f32()), &mut full);
        chunk.copy_from_slice(&full[..chunk.len()]);
    }
}

/// Whether activation buffers of these lengths hold `n` tokens of `groups`
/// groups (quants, scales, sums).
pub(crate) fn acts_fit(qs: usize, d: usize, sums: usize, n: usize, groups: usize) -> bool {
    let g = n.checked_mul(groups);
    g.and_then(|g| g.checked_mul(GROUP)).is_some_and(|q| q <= qs) && g.is_some_and(|g| g <= d && g <= sums)
}

/// Whether `x` holds `n` rows of `cols` floats, `stride` apart.
pub(crate) fn rows_fit(len: usize, n: usize, stride: usize, cols: usize) -> bool {
    match n.checked_sub(1) {
        None => true,
        Some(last) => last.checked_mul(stride).and_then(|e| e.checked_add(cols)).is_some_and(|e| e <= len),
    }
}

/// Checks that the quants plane (and the group scales, where given) hold
/// every tile (of `tile_bytes`) of the row blocks of `rows` and `acts`
/// every group of `n` tokens, so the kernels' unchecked loads stay in
/// bounds. (Every plane of a [`Matrix`] was checked against its shape by
/// [`Matrix::new`]; this is the last line for the loads it covers.)
///
/// # Panics
/// If they do not (callers validate shapes; this is the last line).
pub(crate) fn check_shapes(
    qs: &[u8],
    scales: Option<&[f16]>,
    tile_bytes: usize,
    groups: usize,
    rows: &Range<usize>,
    acts: &Acts<'_>,
    n: usize,
) {
    let tiles = rows.end.div_ceil(ROW_BLOCK).checked_mul(groups);
    let quants = tiles.and_then(|t| t.checked_mul(tile_bytes));
    let n_scales = tiles.and_then(|t| t.checked_mul(ROW_BLOCK));
    assert!(
        quants.is_some_and(|q| q <= qs.len()) && scales.is_none_or(|s| n_scales.is_some_and(|n| n <= s.len())),
        "weight planes too short"
    );
    assert!(acts_fit(acts.qs.len(), acts.d.len(), acts.sums.len(), n, groups), "activation buffers too short");
}

/// Stores the lanes of rows `8 * block ..+8` for token `t`, those that lie
/// in the call's `rows` (a block's other rows are not the caller's).
#[inline(always)]
pub(crate) fn store_rows(out: &mut Out<'_>, rows: &Range<usize>, t: usize, block: usize, lanes: &[f32; ROW_BLOCK]) {
    // The block's rows clipped to `rows`, written as one run (one check).
    let first = block * ROW_BLOCK;
    let lo = rows.start.max(first);
    let hi = rows.end.min(first + ROW_BLOCK);
    if lo == first && hi == first + ROW_BLOCK {
        // The common case, a whole block: a fixed-length run.
        out.set_run(t, first, lanes);
    } else if lo < hi {
        out.set_run(t, lo, &lanes[lo - first..hi - first]);
    }
}

/// Runs a tile kernel over the row blocks of `$rows` and the tokens
/// `0..$n` in runs of up to four (each tile unpacked once per run), storing
/// the lanes into `$out`: `$tiles` is evaluated with `$block`, `$t0` and the
/// constant `$T` (the run's length) in scope and gives `[[f32; 8]; $T]`.
#[allow(unused_macros)]
macro_rules! drive_tiles {
    ($rows:expr, $n:expr, $out:expr, |$block:ident, $t0:ident, $T:ident| $tiles:expr) => {{
        let (rows, n): (&core::ops::Range<usize>, usize) = (&$rows, $n);
        let rb = ferrite_format::quant::ROW_BLOCK;
        for $block in rows.start / rb..rows.end.div_ceil(rb) {
            let mut $t0 = 0;
            while $t0 < n {
                let mut lanes = [[0f32; 8]; 4];
                let used = match n - $t0 {
                    1 => {
                        const $T: usize = 1;
                        [lanes[0]] = $tiles;
                        1
                    }
                    2 => {
                        const $T: usize = 2;
                        [lanes[0], lanes[1]] = $tiles;
                        2
                    }
                    3 => {
                        const $T: usize = 3;
                        [lanes[0], lanes[1], lanes[2]] = $tiles;
                        3
                    }
                    _ => {
                        const $T: usize = 4;
                        lanes = $tiles;
                        4
                    }
                };
                for (i, l) in lanes.iter().take(used).enumerate() {
                    $crate::tiles::store_rows($out, rows, $t0 + i, $block, l);
                }
                $t0 += used;
            }
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use drive_tiles;

/// The body of a tier's `matmul_q` over its tile loops `$tiles::<Kind, T>`
/// (one or more, each for the kinds it implements: `IntKind::X =>
/// TierType`, ...): the checked
/// planes, then [`drive_tiles!`]; the kinds the tier has no tiles for go to
/// `reference::matmul_q` (the same values, bit for bit). The caller is the
/// tier's `unsafe fn matmul_q`, whose contract (the tier's features) the
/// loops need beyond the checks.
#[allow(unused_macros)]
macro_rules! int_matmul {
    ($m:expr, $rows:expr, $acts:expr, $n:expr, $out:expr, $($tiles:ident, { $($kind:ident => $ty:ty),* $(,)? }),+) => {{
        let Some((p, kind)) = $crate::tiles::int_planes($m, &$rows, $acts, $n) else { return };
        // SAFETY (all): shapes checked by `int_planes`; the tier's features
        // present (the caller's guarantee).
        match kind {
            $($(
                $crate::tiles::IntKind::$kind => {
                    drive_tiles!($rows, $n, $out, |b, t0, T| unsafe { $tiles::<$ty, T>(p, b, t0) })
                }
            )*)+
            #[allow(unreachable_patterns)]
            _ => $crate::reference::matmul_q($m, $rows, $acts, $n, $out),
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use int_matmul;
