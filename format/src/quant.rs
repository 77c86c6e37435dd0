//! The on-disk layout of the quantized weight types, defined here only.
//!
//! **Logical groups.** Each row of a quantized `[rows, cols]` tensor is cut
//! into `groups(cols)` groups of [`GROUP`] elements with one `f16` scale
//! each; element `j` of a group dequantizes to `q[j] * scale`. A row is
//! padded to whole groups with zero quants (the last group's scale covers
//! only the real elements); kernels read activations padded with zeros to
//! `groups(cols) * GROUP`, so the padding contributes exactly 0. In its
//! *logical* (row-major) form, as [`crate`]'s users quantize it, a q8 group
//! is 32 `i8` values and a q4 group is 16 bytes: byte `j` holds element `j`
//! in its low nibble and element `j + 16` in its high nibble, each stored as
//! the unsigned value `q + 8` (`q` in -8..=7).
//!
//! **Tiles (version 2).** On disk, rows are taken in blocks of
//! [`ROW_BLOCK`] = 8 (the row count is padded to a multiple of 8 with rows
//! of zero quants and zero scales) and each block's group `g` is one *tile*,
//! so that one 32-byte load holds four consecutive quants of each of eight
//! rows: exactly what a 4-byte integer dot-product instruction (x86
//! `vpdpbusd`/`pmaddubsw`, Arm `sdot`/`udot`) multiplies with four
//! broadcast activations, giving eight rows' partial sums in eight lanes at
//! once. The tensor is:
//!
//! 1. **quants**: for row block `b` (ascending), for group `g`: one tile of
//!    [`tile_bytes`] bytes. Chunk `c` of a tile is 32 bytes; its bytes
//!    `4r..4r + 4` belong to row `8b + r`:
//!    - q4 (4 chunks, 128 bytes): byte `4r + i` of chunk `c` is logical q4
//!      byte `4c + i` of the row's group, i.e. element `4c + i` (low nibble)
//!      and element `16 + 4c + i` (high nibble), each `q + 8`.
//!    - q8 (8 chunks, 256 bytes): byte `4r + i` of chunk `c` is element
//!      `4c + i` stored *excess-128*: the unsigned byte `q + 128` (`q` in
//!      -127..=127), so both types multiply unsigned weights by signed
//!      activations and correct with the activations' sum.
//! 2. **scales**: for row block `b`, for group `g`: the 8 rows' `f16`
//!    scales (16 bytes), in row order.
//!
//! 3. q4a only, **mins**: laid out like the scales, right after them.
//!
//! **q4a** (asymmetric): element `j` dequantizes to `u[j] * scale + min`
//! with the unsigned `u[j]` in 0..=15, stored in the q4 nibble positions as
//! `u` itself (no offset); its tiles are laid out like q4's.
//!
//! Padding rows hold q4 byte `0x88` / q8 byte `0x80` (value 0) / q4a byte
//! `0x00`, and scale (and minimum) 0.

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

/// Rows per tile (see the module documentation).
pub const ROW_BLOCK: usize = 8;
/// Bytes of one chunk of a tile: [`CHUNK_ROW_BYTES`] consecutive quant
/// bytes of each of the [`ROW_BLOCK`] rows.
pub const CHUNK_BYTES: usize = 32;
/// Bytes of one row in a chunk (`4r..4r + 4` belong to row `r`).
pub const CHUNK_ROW_BYTES: usize = CHUNK_BYTES / ROW_BLOCK;
/// Bytes of a q4 (and q4a) tile: 4 chunks.
pub const Q4_TILE_BYTES: usize = ROW_BLOCK * Q4_GROUP_BYTES;
/// Bytes of a q8 tile: 8 chunks.
pub const Q8_TILE_BYTES: usize = ROW_BLOCK * Q8_GROUP_BYTES;
/// What a stored q4 nibble adds to its signed value (`q + 8`).
pub const Q4_OFFSET: i32 = 8;
/// What a stored q8 byte adds to its signed value (excess-128).
pub const Q8_OFFSET: i32 = 128;

/// Index of the tile (and, times [`ROW_BLOCK`], of its first scale) that
/// holds group `g` of row block `block`, `groups` groups per row.
#[inline]
pub fn tile_index(groups: usize, block: usize, g: usize) -> usize {
    block * groups + g
}

/// Index in the scales (or mins) plane of row `row`'s group `g`.
#[inline]
pub fn scale_index(groups: usize, row: usize, g: usize) -> usize {
    tile_index(groups, row / ROW_BLOCK, g) * ROW_BLOCK + row % ROW_BLOCK
}

/// Byte of a tile holding quant byte `i` (0..4) of row `r` (0..8) in chunk `c`.
#[inline]
pub fn tile_byte(c: usize, r: usize, i: usize) -> usize {
    c * CHUNK_BYTES + r * CHUNK_ROW_BYTES + i
}

/// Byte of a q4/q4a tile holding element `j` (0..32) of its row `r`
/// (0..8), and whether the element is its high nibble.
#[inline]
pub fn q4_tile_byte(r: usize, j: usize) -> (usize, bool) {
    let k = j % 16;
    (tile_byte(k / 4, r, k % 4), j >= 16)
}

/// Byte of a q8 tile holding element `j` (0..32) of its row `r` (0..8).
#[inline]
pub fn q8_tile_byte(r: usize, j: usize) -> usize {
    tile_byte(j / 4, r, j % 4)
}

/// The stored (unsigned) nibble of element `j` of row `r` of a q4/q4a tile.
#[inline]
pub fn q4_tile_nibble(tile: &[u8], r: usize, j: usize) -> u8 {
    let (byte, high) = q4_tile_byte(r, j);
    if high {
        tile[byte] >> 4
    } else {
        tile[byte] & 0x0F
    }
}

/// Signed value of element `j` (0..32) of row `r` (0..8) of a q4 tile.
#[inline]
pub fn q4_tile_get(tile: &[u8], r: usize, j: usize) -> i32 {
    q4_tile_nibble(tile, r, j) as i32 - Q4_OFFSET
}

/// Signed value of element `j` (0..32) of row `r` (0..8) of a q8 tile.
#[inline]
pub fn q8_tile_get(tile: &[u8], r: usize, j: usize) -> i32 {
    tile[q8_tile_byte(r, j)] as i32 - Q8_OFFSET
}

/// `rows` rounded up to whole row blocks.
pub fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(ROW_BLOCK) * ROW_BLOCK
}

/// Quant bytes plus scale (and, for q4a, minimum) bytes per group of one row.
pub fn group_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q8 => Q8_GROUP_BYTES + 2,
        DType::Q4 => Q4_GROUP_BYTES + 2,
        DType::Q4A => Q4_GROUP_BYTES + 4,
        DType::F32 => GROUP * 4,
        DType::F16 => GROUP * 2,
    }
}

/// Quant bytes of one logical row (scales excluded) for a quantized `dtype`.
pub fn row_quant_bytes(dtype: DType, cols: usize) -> usize {
    let g = cols.div_ceil(GROUP);
    match dtype {
        DType::Q4 | DType::Q4A => g * Q4_GROUP_BYTES,
        _ => g * Q8_GROUP_BYTES,
    }
}

/// Bytes of one tile (8 rows × one group of quants).
pub fn tile_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q4 | DType::Q4A => Q4_TILE_BYTES,
        _ => Q8_TILE_BYTES,
    }
}

/// Byte offset of the scales plane in a quantized `[rows, cols]` tensor
/// (the size of its quants plane).
pub fn scales_offset(dtype: DType, rows: usize, cols: usize) -> usize {
    padded_rows(rows) * row_quant_bytes(dtype, cols)
}

/// Byte offset of the minimums plane of a q4a `[rows, cols]` tensor (right
/// after the scales plane).
pub fn mins_offset(rows: usize, cols: usize) -> usize {
    scales_offset(DType::Q4A, rows, cols) + padded_rows(rows) * cols.div_ceil(GROUP) * 2
}

/// Converts whole row blocks from the logical row-major form to tiles.
///
/// `logical` holds `n_rows` rows of `groups` logical groups (q4: 16 bytes,
/// q8: 32 `i8` as bytes), `scales` their `n_rows * groups` scales;
/// `n_rows` may end with a partial block, which is padded. Writes
/// `padded_rows(n_rows) * groups` groups of tiles into `tiles` and as many
/// scales into `tile_scales`.
///
/// # Panics
/// If a buffer is shorter than the sizes above (callers size them).
pub fn tile_rows<S: Copy + Default>(
    dtype: DType,
    logical: &[u8],
    scales: &[S],
    n_rows: usize,
    groups: usize,
    tiles: &mut [u8],
    tile_scales: &mut [S],
) {
    let (lg, zero, flip) = match dtype {
        DType::Q4 => (Q4_GROUP_BYTES, 0x88u8, 0u8),
        DType::Q4A => (Q4_GROUP_BYTES, 0u8, 0u8),
        _ => (Q8_GROUP_BYTES, 0x80u8, 0x80u8),
    };
    let tb = ROW_BLOCK * lg;
    for b in 0..n_rows.div_ceil(ROW_BLOCK) {
        for g in 0..groups {
            let tile = &mut tiles[(b * groups + g) * tb..(b * groups + g + 1) * tb];
            let ts = &mut tile_scales[(b * groups + g) * ROW_BLOCK..(b * groups + g + 1) * ROW_BLOCK];
            for r in 0..ROW_BLOCK {
                let row = b * ROW_BLOCK + r;
                let src = (row < n_rows).then(|| &logical[(row * groups + g) * lg..(row * groups + g + 1) * lg]);
                ts[r] = if row < n_rows { scales[row * groups + g] } else { S::default() };
                for c in 0..lg / CHUNK_ROW_BYTES {
                    for i in 0..CHUNK_ROW_BYTES {
                        tile[tile_byte(c, r, i)] = src.map_or(zero, |s| s[c * CHUNK_ROW_BYTES + i] ^ flip);
                    }
                }
            }
        }
    }
}

/// Reads row `row` of a tiled tensor back into its logical form: `groups`
/// logical groups into `logical` and their scales into `scales`.
///
/// # Panics
/// If `row` is beyond the planes or a buffer is too short.
pub fn untile_row<S: Copy>(
    dtype: DType,
    tiles: &[u8],
    tile_scales: &[S],
    row: usize,
    groups: usize,
    logical: &mut [u8],
    scales: &mut [S],
) {
    let (lg, flip) = match dtype {
        DType::Q4 | DType::Q4A => (Q4_GROUP_BYTES, 0u8),
        _ => (Q8_GROUP_BYTES, 0x80u8),
    };
    let tb = ROW_BLOCK * lg;
    let (b, r) = (row / ROW_BLOCK, row % ROW_BLOCK);
    for g in 0..groups {
        let tile = &tiles[(b * groups + g) * tb..(b * groups + g + 1) * tb];
        scales[g] = tile_scales[(b * groups + g) * ROW_BLOCK + r];
        for c in 0..lg / CHUNK_ROW_BYTES {
            for i in 0..CHUNK_ROW_BYTES {
                logical[g * lg + c * CHUNK_ROW_BYTES + i] = tile[tile_byte(c, r, i)] ^ flip;
            }
        }
    }
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

/// Unsigned value (0..=15) of element `j` (0..32) of a logical q4a group.
#[inline]
pub fn q4a_get(group: &[u8], j: usize) -> u8 {
    let byte = group[j % 16];
    if j < 16 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// Packs 32 unsigned values (each in 0..=15) into a 16-byte logical q4a group.
#[inline]
pub fn q4a_pack(values: &[u8; GROUP], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (values[j] & 0x0F) | ((values[j + 16] & 0x0F) << 4);
    }
}
