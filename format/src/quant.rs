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
//! **Tiles (since version 2).** On disk, rows are taken in blocks of
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
//!
//! **Planes (version 3, high-bit order of version 4).** Every quantized type, q5_0, q5_1 and the K
//! types (q4k, q5k, q6k: llama.cpp's semantics) included, is a list of
//! [`planes`] laid out by one rule ([`Plane`]); `SPEC.md` § The 5-bit and K
//! types gives the values.

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

/// Quant bytes of one logical row (the quants plane only) for a quantized
/// `dtype`.
pub fn row_quant_bytes(dtype: DType, cols: usize) -> usize {
    cols.div_ceil(GROUP) * tile_bytes(dtype) / ROW_BLOCK
}

/// Bytes of one tile of the quants plane (8 rows × one group).
pub fn tile_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q8 => Q8_TILE_BYTES,
        _ => Q4_TILE_BYTES,
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

/// Converts whole row blocks from the logical row-major form to tiles
/// (q8, q4 and q4a; the other types go plane by plane, [`tile_plane`]).
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

// ---------------------------------------------------------------------------
// Planes: every quantized type as a list of planes (version 3; version 4 high bits).

/// Elements per super-block of the K types ([`DType::is_k_quant`]).
pub const SUPER: usize = 256;
/// Groups per super-block.
pub const SUPER_GROUPS: usize = SUPER / GROUP;
/// What a stored q5_0 level adds to its signed value (`q + 16`).
pub const Q5_OFFSET: i32 = 16;
/// What a stored q6k level adds to its signed value (`q + 32`).
pub const Q6_OFFSET: i32 = 32;

/// How often a plane has a unit: once per group of 32 elements of a row,
/// or once per super-block of 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// One unit per (row, group).
    Group,
    /// One unit per (row, super-block).
    Super,
}

/// One plane of a quantized tensor: `unit` bytes per row and group (or
/// super-block), laid out in 8-row tiles (`SPEC.md` § Weight types):
/// tile `(b, i)` (row block `b`, group or super-block `i`) is at
/// `tile_index(count, b, i) * 8 * unit`; inside it, units of 4 bytes or
/// more are cut into 32-byte chunks (bytes `4c..4c + 4` of row `r` at
/// `32c + 4r`), smaller units are the 8 rows' units in row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plane {
    /// What it holds (`quants`, `high`, `scales`, `mins`, `d`, `dmin`).
    pub name: &'static str,
    /// Group or super-block.
    pub per: Per,
    /// Bytes per row and group (or super-block).
    pub unit: usize,
}

impl Plane {
    const fn new(name: &'static str, per: Per, unit: usize) -> Self {
        Plane { name, per, unit }
    }

    /// Units per row of `cols` elements (whole groups or super-blocks).
    pub fn count(&self, cols: u64) -> Option<u64> {
        let n = match self.per {
            Per::Group => GROUP as u64,
            Per::Super => SUPER as u64,
        };
        Some(cols.checked_add(n - 1)? / n)
    }

    /// Bytes per row of `cols` elements.
    pub fn row_bytes(&self, cols: u64) -> Option<u64> {
        self.count(cols)?.checked_mul(self.unit as u64)
    }

    /// Bytes of the plane for `[rows, cols]` (rows padded to whole blocks).
    pub fn bytes(&self, rows: usize, cols: usize) -> Option<usize> {
        let rows = rows.checked_next_multiple_of(ROW_BLOCK)?;
        rows.checked_mul(usize::try_from(self.row_bytes(cols as u64)?).ok()?)
    }

    /// Offset inside a tile of byte `k` (0..unit) of row `r` (0..8).
    #[inline]
    pub fn tile_byte(&self, r: usize, k: usize) -> usize {
        if self.unit.is_multiple_of(CHUNK_ROW_BYTES) {
            tile_byte(k / CHUNK_ROW_BYTES, r, k % CHUNK_ROW_BYTES)
        } else {
            r * self.unit + k
        }
    }

    /// Offset in the plane of byte `k` of row `row`'s unit `i`, `count`
    /// units per row.
    #[inline]
    pub fn byte(&self, count: usize, row: usize, i: usize, k: usize) -> usize {
        tile_index(count, row / ROW_BLOCK, i) * ROW_BLOCK * self.unit + self.tile_byte(row % ROW_BLOCK, k)
    }
}

const QUANTS8: Plane = Plane::new("quants", Per::Group, Q8_GROUP_BYTES);
const QUANTS4: Plane = Plane::new("quants", Per::Group, Q4_GROUP_BYTES);
const HIGH1: Plane = Plane::new("high", Per::Group, 4);
const HIGH2: Plane = Plane::new("high", Per::Group, 8);
const SCALES: Plane = Plane::new("scales", Per::Group, 2);
const MINS: Plane = Plane::new("mins", Per::Group, 2);
const SUB_SCALES: Plane = Plane::new("scales", Per::Group, 1);
const SUB_MINS: Plane = Plane::new("mins", Per::Group, 1);
const Q6_SCALES: Plane = Plane::new("scales", Per::Group, 2);
const D: Plane = Plane::new("d", Per::Super, 2);
const DMIN: Plane = Plane::new("dmin", Per::Super, 2);

/// The planes of a quantized type, in file order (empty for f32/f16).
///
/// - q8, q4: quants, scales (f16); q4a: quants, scales, mins (f16).
/// - q5_0: quants (low 4 bits), high (bit 4 of each level, 4 bytes per
///   group: [`high1_byte`]), scales (f16).
/// - q5_1: as q5_0, then mins (f16).
/// - q4k: quants, scales (u8, 6-bit), mins (u8, 6-bit), d, dmin (f16 per
///   super-block); q5k: quants, high, then as q4k.
/// - q6k: quants (low 4 bits), high (bits 4..6, 8 bytes per group:
///   [`high2_byte`]), scales (two i8 per group:
///   elements 0..16 and 16..32), d (f16 per super-block).
pub fn planes(dtype: DType) -> &'static [Plane] {
    match dtype {
        DType::F32 | DType::F16 => &[],
        DType::Q8 => &[QUANTS8, SCALES],
        DType::Q4 => &[QUANTS4, SCALES],
        DType::Q4A => &[QUANTS4, SCALES, MINS],
        DType::Q5_0 => &[QUANTS4, HIGH1, SCALES],
        DType::Q5_1 => &[QUANTS4, HIGH1, SCALES, MINS],
        DType::Q4K => &[QUANTS4, SUB_SCALES, SUB_MINS, D, DMIN],
        DType::Q5K => &[QUANTS4, HIGH1, SUB_SCALES, SUB_MINS, D, DMIN],
        DType::Q6K => &[QUANTS4, HIGH2, Q6_SCALES, D],
    }
}

/// The most planes a type has.
pub const MAX_PLANES: usize = 6;

/// Splits a quantized tensor's bytes into its planes (in [`planes`]'
/// order; the entries past them are empty), or `None` if `data` is shorter
/// than the planes or a size overflows. Longer data is allowed.
pub fn split_planes(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Option<[&[u8]; MAX_PLANES]> {
    let mut out: [&[u8]; MAX_PLANES] = [&[]; MAX_PLANES];
    let mut rest = data;
    for (o, p) in out.iter_mut().zip(planes(dtype)) {
        let (plane, tail) = rest.split_at_checked(p.bytes(rows, cols)?)?;
        *o = plane;
        rest = tail;
    }
    Some(out)
}

/// Tiles one plane: `logical` holds `n_rows` rows of `count` units of
/// `plane.unit` bytes, row-major; writes the `padded_rows(n_rows)` rows'
/// tiles into `tiled` (padding rows: `pad` bytes).
///
/// # Panics
/// If a buffer is shorter than those sizes (callers size them).
pub fn tile_plane(plane: &Plane, logical: &[u8], n_rows: usize, count: usize, pad: u8, tiled: &mut [u8]) {
    let u = plane.unit;
    for row in 0..padded_rows(n_rows) {
        for i in 0..count {
            for k in 0..u {
                let v = if row < n_rows { logical[(row * count + i) * u + k] } else { pad };
                tiled[plane.byte(count, row, i, k)] = v;
            }
        }
    }
}

/// Reads row `row`'s `count` units of one tiled plane back into the
/// logical row-major form (`count * plane.unit` bytes into `logical`).
///
/// # Panics
/// If `row` is beyond the plane or `logical` is too short.
pub fn untile_plane_row(plane: &Plane, tiled: &[u8], row: usize, count: usize, logical: &mut [u8]) {
    let u = plane.unit;
    for i in 0..count {
        for k in 0..u {
            logical[i * u + k] = tiled[plane.byte(count, row, i, k)];
        }
    }
}

/// Byte of a group's 1-bit `high` unit (q5_0, q5_1, q5k) holding bit 4
/// of element `j`'s level: byte `j % 4`, bit `j / 4` ([`high1_shift`]).
/// Element `4k + i` meets activation quants `4k..4k + 4` in chunk `k` of
/// the unpacked nibbles, so shifting the unit's 4 bytes of each row by `k`
/// puts every byte's bit where chunk `k` needs it (one shift per chunk).
#[inline]
pub fn high1_byte(j: usize) -> usize {
    j % 4
}

/// The bit of [`high1_byte`] holding element `j`'s bit 4.
#[inline]
pub fn high1_shift(j: usize) -> usize {
    j / 4
}

/// Byte of a group's 2-bit `high` unit (q6k) holding bits 4..6 of element
/// `j`'s level: byte `4 * (j / 16) + j % 4`, bits `2 * ((j / 4) % 4)..+2`
/// ([`high2_shift`]): the unit's two 4-byte words are its two tile chunks,
/// word `h` holding elements `16h..16h + 16`, and chunk `k` of the
/// unpacked nibbles finds its high bits in word `k / 4` shifted by `2 * (k
/// % 4)`.
#[inline]
pub fn high2_byte(j: usize) -> usize {
    4 * (j / 16) + j % 4
}

/// The lowest bit of [`high2_byte`] holding element `j`'s bits 4..6.
#[inline]
pub fn high2_shift(j: usize) -> usize {
    2 * ((j / 4) % 4)
}

/// The level (unsigned, before any offset) of element `j` (0..32) of row
/// `r` (0..8) of a tile of the nibble quants plane and, for q5_0/q5_1/q5k
/// (`high_bits` 1) and q6k (`high_bits` 2), the matching tile of the high
/// plane.
#[inline]
pub fn tile_level(quants: &[u8], high: &[u8], high_bits: u32, r: usize, j: usize) -> u8 {
    let low = q4_tile_nibble(quants, r, j);
    let hi = match high_bits {
        1 => (high[HIGH1.tile_byte(r, high1_byte(j))] >> high1_shift(j)) & 1,
        2 => (high[HIGH2.tile_byte(r, high2_byte(j))] >> high2_shift(j)) & 3,
        _ => 0,
    };
    low | (hi << 4)
}

/// Packs the 32 levels of one group into its logical quants unit (16
/// bytes, low 4 bits: byte `j` holds element `j` low, `j + 16` high) and,
/// when `high` is not empty, its high unit (`high.len()` 4: bit 4 of each
/// level; 8: bits 4..6).
pub fn pack_levels(levels: &[u8; GROUP], quants: &mut [u8], high: &mut [u8]) {
    for j in 0..16 {
        quants[j] = (levels[j] & 0x0F) | ((levels[j + 16] & 0x0F) << 4);
    }
    match high.len() {
        4 => {
            high.fill(0);
            for (j, &l) in levels.iter().enumerate() {
                high[high1_byte(j)] |= ((l >> 4) & 1) << high1_shift(j);
            }
        }
        8 => {
            high.fill(0);
            for (j, &l) in levels.iter().enumerate() {
                high[high2_byte(j)] |= ((l >> 4) & 3) << high2_shift(j);
            }
        }
        _ => {}
    }
}
