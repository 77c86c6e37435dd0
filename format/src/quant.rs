//! The on-disk layout of the quantized weight types, defined here only.
//!
//! A quantized `[rows, cols]` tensor is stored as two planes:
//!
//! 1. **quants**: `rows` rows of `groups(cols)` groups each, row after row;
//!    a q8 group is 32 `i8` values (32 bytes), a q4 group is 16 bytes
//!    holding 32 signed 4-bit values.
//! 2. **scales**: `rows * groups(cols)` `f16` scales, in the same order.
//! 3. q4a only, **mins**: `rows * groups(cols)` `f16` minimums, in the same
//!    order, right after the scales.
//!
//! Element `j` of a q8/q4 group dequantizes to `q[j] * scale`; of a q4a
//! group to `u[j] * scale + min`, with `u[j]` in 0..=15.
//!
//! **Tails.** When `cols` is not a multiple of [`GROUP`], each row is padded
//! to whole groups with zero quants (the last group's scale covers only the
//! real elements). Kernels read activations padded with zeros to
//! `groups(cols) * GROUP`, so the padding contributes exactly 0.
//!
//! **q4 nibbles.** Byte `j` (0..16) of a q4 group holds element `j` in its
//! low nibble and element `j + 16` in its high nibble, each stored as the
//! unsigned value `q + 8` (`q` in -8..=7). This split keeps a 16-byte SIMD
//! load, one mask and one shift away from 32 consecutive values. A q4a
//! group uses the same split with the unsigned value `u` (0..=15) itself.

use crate::DType;

/// Elements per quantization group (and per scale).
pub const GROUP: usize = 32;
/// Bytes of quants in a q8 group.
pub const Q8_GROUP_BYTES: usize = 32;
/// Bytes of quants in a q4 group.
pub const Q4_GROUP_BYTES: usize = 16;

/// Number of groups in a row of `cols` elements (rounded up).
pub fn groups(cols: u64) -> Option<u64> {
    Some(cols.checked_add(GROUP as u64 - 1)? / GROUP as u64)
}

/// `cols` rounded up to whole groups.
pub fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(GROUP) * GROUP
}

/// Quant bytes plus scale (and, for q4a, minimum) bytes per group.
pub fn group_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q8 => Q8_GROUP_BYTES + 2,
        DType::Q4 => Q4_GROUP_BYTES + 2,
        DType::Q4A => Q4_GROUP_BYTES + 4,
        DType::F32 => GROUP * 4,
        DType::F16 => GROUP * 2,
    }
}

/// Quant bytes of one row (scales excluded) for a quantized `dtype`.
pub fn row_quant_bytes(dtype: DType, cols: usize) -> usize {
    let g = cols.div_ceil(GROUP);
    match dtype {
        DType::Q4 | DType::Q4A => g * Q4_GROUP_BYTES,
        _ => g * Q8_GROUP_BYTES,
    }
}

/// Byte offset of the scales plane in a quantized `[rows, cols]` tensor.
pub fn scales_offset(dtype: DType, rows: usize, cols: usize) -> usize {
    rows * row_quant_bytes(dtype, cols)
}

/// Byte offset of the minimums plane of a q4a `[rows, cols]` tensor (right
/// after the scales plane).
pub fn mins_offset(rows: usize, cols: usize) -> usize {
    scales_offset(DType::Q4A, rows, cols) + rows * cols.div_ceil(GROUP) * 2
}

/// Signed value of element `j` (0..32) of a q4 group.
#[inline]
pub fn q4_get(group: &[u8], j: usize) -> i8 {
    let byte = group[j % 16];
    let nib = if j < 16 { byte & 0x0F } else { byte >> 4 };
    nib as i8 - 8
}

/// Packs 32 signed values (each in -8..=7) into a 16-byte q4 group.
#[inline]
pub fn q4_pack(values: &[i8; GROUP], out: &mut [u8]) {
    for j in 0..16 {
        let lo = (values[j] + 8) as u8 & 0x0F;
        let hi = (values[j + 16] + 8) as u8 & 0x0F;
        out[j] = lo | (hi << 4);
    }
}

/// Unsigned value (0..=15) of element `j` (0..32) of a q4a group.
#[inline]
pub fn q4a_get(group: &[u8], j: usize) -> u8 {
    let byte = group[j % 16];
    if j < 16 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// Packs 32 unsigned values (each in 0..=15) into a 16-byte q4a group.
#[inline]
pub fn q4a_pack(values: &[u8; GROUP], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (values[j] & 0x0F) | ((values[j + 16] & 0x0F) << 4);
    }
}
