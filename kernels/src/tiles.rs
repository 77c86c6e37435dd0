//! What every SIMD tier's tile kernels share: the bounds checks in front of
//! their unchecked loads (checked arithmetic throughout, so no size wraps in
//! a release build), storing a row block's lanes, and the loop over row
//! blocks and runs of tokens ([`drive_tiles!`]). The geometry itself is
//! [`ferrite_format::quant`]'s.

#![cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]

use core::ops::Range;

use ferrite_format::quant::{GROUP, ROW_BLOCK};
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
}

/// The quantized planes of `m` and their type (`None` for float weights).
pub(crate) fn int_planes<'w>(m: &Matrix<'w>) -> Option<(&'w [u8], &'w [f16], IntKind)> {
    match m.w {
        Weights::Q4 { qs, scales } => Some((qs, scales, IntKind::Q4)),
        Weights::Q8 { qs, scales } => Some((qs, scales, IntKind::Q8)),
        _ => None,
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

/// Checks that the planes hold every tile (of `tile_bytes`) of the row
/// blocks of `rows` and `acts` every group of `n` tokens, so the kernels'
/// unchecked loads stay in bounds.
///
/// # Panics
/// If they do not (callers validate shapes; this is the last line).
pub(crate) fn check_shapes(
    qs: &[u8],
    scales: &[f16],
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
        quants.is_some_and(|q| q <= qs.len()) && n_scales.is_some_and(|s| s <= scales.len()),
        "weight planes too short"
    );
    assert!(acts_fit(acts.qs.len(), acts.d.len(), acts.sums.len(), n, groups), "activation buffers too short");
}

/// Stores the lanes of rows `8 * block ..+8` for token `t`, those that lie
/// in `out`'s rows.
#[inline]
pub(crate) fn store_rows(out: &mut Out<'_>, t: usize, block: usize, lanes: &[f32; ROW_BLOCK]) {
    let rows = out.rows();
    for (i, &v) in lanes.iter().enumerate() {
        let r = block * ROW_BLOCK + i;
        if rows.contains(&r) {
            out.set(t, r, v);
        }
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
                    $crate::tiles::store_rows($out, $t0 + i, $block, l);
                }
                $t0 += used;
            }
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use drive_tiles;
