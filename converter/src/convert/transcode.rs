//! Lossless GGUF import: each block's levels, scales and minimums re-laid
//! into the logical (row-major) planes of the Ferrite type that holds them
//! exactly ([`GgmlType::lossless_dtype`]; layouts in `format/src/quant.rs`),
//! without dequantizing. The one exception is a Q8_0 block holding −128,
//! which Ferrite's q8 (−127..=127) cannot store: it is requantized from its
//! values and counted.

use ferrite_format::quant::{self, GROUP, MAX_PLANES};
use ferrite_format::DType;
use ferrite_kernels::reference;
use half::f16;

use crate::gguf::{k_levels, k_scale_min, GgmlType};

/// The logical planes of some rows, one byte vector per plane of the
/// target type (in [`quant::planes`]' order), each row after row.
pub(super) type Logical = [Vec<u8>; MAX_PLANES];

/// Appends the logical units of `raw` (whole rows of `ty` blocks) to `out`
/// for `ty.lossless_dtype()` (q8 quants stored excess-128, as on disk).
/// Returns how many Q8_0 blocks had to be requantized, or the index of one
/// whose requantized scale would overflow f16 (a block scale above
/// ~65 000 with −128 in it).
///
/// Float types (f32/f16/bf16) append nothing: they go through the f32 path.
pub(super) fn transcode_blocks(ty: GgmlType, raw: &[u8], out: &mut Logical) -> Result<u64, usize> {
    let (_, block_bytes) = ty.block();
    let mut requantized = 0;
    for (index, b) in raw.chunks_exact(block_bytes as usize).enumerate() {
        match ty {
            GgmlType::Q8_0 => {
                let (mut qs, mut d) = ([0u8; GROUP], [f16::from_le_bytes([b[0], b[1]])]);
                if b[2..].contains(&0x80) {
                    // −128: requantize the block's values to −127..=127.
                    let values: [f32; GROUP] = core::array::from_fn(|j| d[0].to_f32() * (b[2 + j] as i8) as f32);
                    reference::quantize_row_q8(&values, &mut qs, &mut d);
                    if !d[0].is_finite() {
                        return Err(index);
                    }
                    requantized += 1;
                } else {
                    qs.copy_from_slice(&b[2..34]);
                }
                out[0].extend(qs.iter().map(|&q| q ^ 0x80));
                out[1].extend_from_slice(&d[0].to_le_bytes());
            }
            // Same nibble order and meaning as q4 (q + 8) and q4a.
            GgmlType::Q4_0 => {
                out[0].extend_from_slice(&b[2..18]);
                out[1].extend_from_slice(&b[..2]);
            }
            GgmlType::Q4_1 => {
                out[0].extend_from_slice(&b[4..20]);
                out[1].extend_from_slice(&b[..2]);
                out[2].extend_from_slice(&b[2..4]);
            }
            // The low nibbles in q5_0/q5_1's own order; the high bits
            // re-ordered into the file's high unit (`pack_levels`).
            GgmlType::Q5_0 => {
                push_levels(&q5_levels(&b[6..22], &b[2..6]), 4, out);
                out[2].extend_from_slice(&b[..2]);
            }
            GgmlType::Q5_1 => {
                push_levels(&q5_levels(&b[8..24], &b[4..8]), 4, out);
                out[2].extend_from_slice(&b[..2]);
                out[3].extend_from_slice(&b[2..4]);
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let five = ty == GgmlType::Q5_K;
                let mut scales = [0u8; 12];
                scales.copy_from_slice(&b[4..16]);
                // Planes: quants, [high,] scales, mins, d, dmin.
                let at = usize::from(five);
                for g in 0..quant::SUPER_GROUPS {
                    push_levels(&k_levels(ty, b, g), if five { 4 } else { 0 }, out);
                    let (sc, mn) = k_scale_min(&scales, g);
                    out[1 + at].push(sc);
                    out[2 + at].push(mn);
                }
                out[3 + at].extend_from_slice(&b[..2]);
                out[4 + at].extend_from_slice(&b[2..4]);
            }
            GgmlType::Q6_K => {
                for g in 0..quant::SUPER_GROUPS {
                    push_levels(&k_levels(ty, b, g), 8, out);
                    out[2].extend_from_slice(&b[192 + 2 * g..194 + 2 * g]);
                }
                out[3].extend_from_slice(&b[208..210]);
            }
            // Not block types: the encoder's f32 path stores them (the plan
            // transcodes only quantized types).
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {}
        }
    }
    Ok(requantized)
}

/// The 32 levels of a Q5_0/Q5_1 block from its 16 nibble bytes (element
/// `j` in the low nibble of byte `j`, `j + 16` in its high nibble) and its
/// little-endian u32 of high bits (bit `j` for element `j`).
fn q5_levels(qs: &[u8], qh: &[u8]) -> [u8; GROUP] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    core::array::from_fn(|j| {
        let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
        low | ((((high >> j) & 1) as u8) << 4)
    })
}

/// Appends one group's levels to the quants plane and, for `high` 4 or 8
/// bytes, to the high plane (plane 1).
pub(super) fn push_levels(levels: &[u8; GROUP], high: usize, out: &mut Logical) {
    let (mut q, mut h) = ([0u8; quant::Q4_GROUP_BYTES], [0u8; 8]);
    quant::pack_levels(levels, &mut q, &mut h[..high]);
    out[0].extend_from_slice(&q);
    out[1].extend_from_slice(&h[..high]);
}

/// The byte a plane's padding rows hold: q8/q4 quants of value 0 (`0x80`,
/// `0x88`, as `quant::tile_rows` writes them), else 0 (their scales are 0,
/// so every padding element is 0).
pub(super) fn pad_byte(dtype: DType, plane: usize) -> u8 {
    match (dtype, plane) {
        (DType::Q8, 0) => 0x80,
        (DType::Q4, 0) => 0x88,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_format::quant::{split_planes, tile_plane};
    use ferrite_kernels::{Matrix, Weights};
    use proptest::prelude::*;

    /// The f32 values of `rows` rows of raw `ty` blocks as the converter's
    /// GGUF reader (llama.cpp's formulas) gives them, and as the kernels'
    /// reference dequantizes the transcoded, tiled tensor.
    fn both_ways(ty: GgmlType, raw: &[u8], rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
        let mut want = Vec::new();
        crate::gguf::dequantize(ty, raw, &mut want);
        let dtype = ty.lossless_dtype();
        let mut logical: Logical = Default::default();
        transcode_blocks(ty, raw, &mut logical).expect("scales in range");
        let mut data = Vec::new();
        for (i, p) in quant::planes(dtype).iter().enumerate() {
            let count = p.count(cols as u64).unwrap() as usize;
            let mut tiled = vec![0u8; p.bytes(rows, cols).unwrap()];
            tile_plane(p, &logical[i], rows, count, pad_byte(dtype, i), &mut tiled);
            data.extend_from_slice(&tiled);
        }
        // f16 planes need 2-byte alignment: copy into u16 storage.
        let words: Vec<u16> = data.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let planes = split_planes(dtype, bytes, rows, cols).unwrap();
        let w = Weights::from_planes(dtype, planes).unwrap();
        let m = Matrix::new(w, rows, cols).unwrap();
        let mut got = vec![0f32; rows * cols];
        for (r, row) in got.chunks_mut(cols).enumerate() {
            m.dequantize_row(r, row);
        }
        (want, got)
    }

    fn block_type() -> impl Strategy<Value = GgmlType> {
        prop_oneof![
            Just(GgmlType::Q8_0),
            Just(GgmlType::Q4_0),
            Just(GgmlType::Q4_1),
            Just(GgmlType::Q5_0),
            Just(GgmlType::Q5_1),
            Just(GgmlType::Q4_K),
            Just(GgmlType::Q5_K),
            Just(GgmlType::Q6_K),
        ]
    }

    /// A random f16 of moderate size (below 256), as bytes.
    fn finite_f16(bits: u16) -> [u8; 2] {
        let h = f16::from_bits(bits & 0x5bff);
        let h = if h.is_finite() { h } else { f16::from_f32(0.5) };
        h.to_le_bytes()
    }

    /// Blocks of every type dequantized by the `gguf` package (an
    /// independent reference: `scripts/gguf_block_goldens.py`, committed in
    /// `tests/fixtures/gguf-blocks/`): the converter's GGUF reader gives
    /// exactly those values, and so do the transcoded tiles through the
    /// kernels' reference (but for Q8_0 blocks holding −128, requantized).
    #[test]
    fn reader_and_transcoded_tiles_match_the_gguf_package() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/gguf-blocks/goldens.json");
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect(path)).expect("json");
        let types = doc["types"].as_object().expect("types");
        assert_eq!(types.len(), 8);
        for (name, t) in types {
            let ty = [
                GgmlType::Q8_0,
                GgmlType::Q4_0,
                GgmlType::Q4_1,
                GgmlType::Q5_0,
                GgmlType::Q5_1,
                GgmlType::Q4_K,
                GgmlType::Q5_K,
                GgmlType::Q6_K,
            ]
            .into_iter()
            .find(|t| t.name() == name)
            .expect("type");
            let hex = t["hex"].as_str().unwrap();
            let raw: Vec<u8> =
                (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
            let (rows, cols) = (t["rows"].as_u64().unwrap() as usize, t["cols"].as_u64().unwrap() as usize);
            let bits: Vec<u32> = t["f32_bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let (want, got) = both_ways(ty, &raw, rows, cols);
            assert_eq!(want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits, "{name}: reader vs gguf");
            let mut exact = 0;
            for (i, (g, &b)) in got.iter().zip(&bits).enumerate() {
                if !(ty == GgmlType::Q8_0 && raw[i / 32 * 34 + 2..(i / 32 + 1) * 34].contains(&0x80)) {
                    assert_eq!(g.to_bits(), b, "{name} element {i}: transcoded {g} vs gguf {}", f32::from_bits(b));
                    exact += 1;
                }
            }
            assert!(exact > 0, "{name}: nothing compared");
        }
    }

    /// A Q8_0 block holding −128 whose requantized scale would overflow
    /// f16 is reported, not stored as infinity.
    #[test]
    fn a_q8_0_block_too_large_to_requantize_is_an_error() {
        let mut raw = vec![0u8; 2 * 34];
        raw[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        raw[34..36].copy_from_slice(&f16::MAX.to_le_bytes());
        raw[34 + 2] = 0x80;
        let mut out: Logical = Default::default();
        assert_eq!(transcode_blocks(GgmlType::Q8_0, &raw, &mut out), Err(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

        /// Random valid blocks of every block type, rows not a multiple of
        /// 8 included: the transcoded tiles dequantize to exactly (bit for
        /// bit) the values llama.cpp's formulas give for the blocks, except
        /// that a Q8_0 block holding −128 is requantized (and then close).
        #[test]
        fn transcoding_is_lossless(ty in block_type(), rows in 1usize..19, blocks in 1usize..4, seed in any::<u64>()) {
            let (block, block_bytes) = ty.block();
            let cols = block as usize * blocks;
            let mut x = seed | 1;
            let mut raw: Vec<u8> = (0..rows * blocks * block_bytes as usize)
                .map(|_| {
                    // xorshift64: bytes of every value, cheap.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            // f16 fields finite (a GGUF writer never stores NaN scales).
            let f16_at: &[usize] = match ty {
                GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
                _ => &[208],
            };
            for b in raw.chunks_exact_mut(block_bytes as usize) {
                for &o in f16_at {
                    let h = finite_f16(u16::from_le_bytes([b[o], b[o + 1]]));
                    b[o..o + 2].copy_from_slice(&h);
                }
            }
            let (want, got) = both_ways(ty, &raw, rows, cols);
            prop_assert_eq!(want.len(), got.len());
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                let q8_min = ty == GgmlType::Q8_0 && raw[i / 32 * 34 + 2..(i / 32 + 1) * 34].contains(&0x80);
                if q8_min {
                    // Requantized: within half a step of the new scale
                    // (max|x| / 127) plus the f16 rounding of that scale.
                    let amax = want[i / 32 * 32..(i / 32 + 1) * 32].iter().fold(0f32, |m, v| m.max(v.abs()));
                    prop_assert!((w - g).abs() <= amax / 127.0, "{:?} element {}: {} vs {}", ty, i, w, g);
                } else {
                    prop_assert_eq!(w.to_bits(), g.to_bits(), "{:?} element {}: {} vs {}", ty, i, w, g);
                }
            }
        }
    }
}
