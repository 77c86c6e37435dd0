//! Quantized matrices in the file layout (feature `quant`), for the tests
//! of what reads them: the CUDA backend's host mirror and its GPU tests.

use ferrite_format::{quant, DType};
use ferrite_kernels::reference as k;
use ferrite_kernels::{Acts, ActsMut};
use half::f16;

/// `src` (`[rows, cols]`, row-major) as a q4 or q8 matrix in the file
/// layout: each logical row quantized by the reference
/// (`quantize_row_q4`/`quantize_row_q8`), then tiled by `quant::tile_rows`.
/// Returns the quants plane (`quant::scales_offset` bytes: 8-row tiles,
/// rows padded to a multiple of 8) and the tiled scales plane
/// (`[padded_rows(rows) * groups]`).
///
/// # Panics
///
/// If `dtype` is not q4 or q8, or `src` is not `rows * cols` values.
pub fn quantize_tiled(src: &[f32], rows: usize, cols: usize, dtype: DType) -> (Vec<u8>, Vec<f16>) {
    assert!(matches!(dtype, DType::Q4 | DType::Q8), "quantize_tiled: {dtype:?} is not q4 or q8");
    assert_eq!(src.len(), rows * cols, "quantize_tiled: {rows}x{cols} values");
    let groups = cols.div_ceil(quant::GROUP);
    let gb = if dtype == DType::Q4 { quant::Q4_GROUP_BYTES } else { quant::Q8_GROUP_BYTES };
    let mut logical = vec![0u8; rows * groups * gb];
    let mut scales = vec![f16::ZERO; rows * groups];
    for r in 0..rows {
        let row = &src[r * cols..(r + 1) * cols];
        let q = &mut logical[r * groups * gb..(r + 1) * groups * gb];
        let s = &mut scales[r * groups..(r + 1) * groups];
        if dtype == DType::Q4 {
            k::quantize_row_q4(row, q, s);
        } else {
            k::quantize_row_q8(row, q, s);
        }
    }
    let mut qs = vec![0u8; quant::scales_offset(dtype, rows, cols)];
    let mut tile_scales = vec![f16::ZERO; quant::padded_rows(rows) * groups];
    quant::tile_rows(dtype, &logical, &scales, rows, groups, &mut qs, &mut tile_scales);
    (qs, tile_scales)
}

/// The int8 activations of `n` rows of `cols` values, as
/// `reference::quantize_acts` makes them (what the q4/q8 products read).
pub struct HostActs {
    /// `[n * groups * 32]`: the quants, group by group.
    pub qs: Vec<i8>,
    /// `[n * groups]`: each group's scale.
    pub d: Vec<f32>,
    /// `[n * groups]`: each group's sum of quants.
    pub sums: Vec<i32>,
}

/// The activations of `x` (`[n, cols]`).
pub fn host_acts(x: &[f32], n: usize, cols: usize) -> HostActs {
    let groups = cols.div_ceil(quant::GROUP);
    let mut a =
        HostActs { qs: vec![0; n * groups * quant::GROUP], d: vec![0.0; n * groups], sums: vec![0; n * groups] };
    k::quantize_acts(x, cols, n, cols, &mut ActsMut { qs: &mut a.qs, d: &mut a.d, sums: &mut a.sums });
    a
}

impl HostActs {
    /// The activations as the kernels take them.
    pub fn acts(&self) -> Acts<'_> {
        Acts { qs: &self.qs, d: &self.d, sums: &self.sums }
    }

    /// Activation word `w` (elements 4w .. 4w + 4, little-endian) of row
    /// `t`'s group `g`, `groups` groups a row.
    pub fn word(&self, groups: usize, t: usize, g: usize, w: usize) -> u32 {
        let at = (t * groups + g) * quant::GROUP + 4 * w;
        u32::from_le_bytes([self.qs[at] as u8, self.qs[at + 1] as u8, self.qs[at + 2] as u8, self.qs[at + 3] as u8])
    }
}
