//! The tile indexing of the q4/q8 kernels, mirrored on the host.
//!
//! Format version 2 stores quantized weights in 8-row tiles
//! ([`ferrite_format::quant`]). The CUDA kernels (`kernels/cuda/gemv.cu`,
//! `gemm.cu`, `elementwise.cu`) compute where each thread's bytes are with
//! the formulas below, written here once more in Rust so that the tests of
//! this module can check them without a GPU: they emulate each kernel's
//! loads with these functions on random tiled matrices and compare with
//! `ferrite_kernels::reference` (`Matrix::dequantize_row`, `matmul_q`).
//! The tile geometry itself is [`ferrite_format::quant`]'s (the functions
//! below only name it the way the kernels use it), and a test checks the
//! constants `kernels/cuda/common.cuh` defines against it; what is the
//! kernels' own (which lane loads which bytes) is mirrored here.

use ferrite_format::{quant, DType};

use crate::launch::{GEMM_TR, GEMV_THREADS};

/// Bytes one GEMV lane loads at once (a `uint4`).
pub const LANE_LOAD_BYTES: usize = 16;
/// Bytes one warp loads per step (32 lanes x 16 bytes).
pub const WARP_STEP_BYTES: usize = 32 * LANE_LOAD_BYTES;
/// Warps per GEMV block.
pub const GEMV_WARPS: usize = GEMV_THREADS as usize / 32;

/// Bytes of one tile of a quantized `dtype` (q4: 128, q8: 256).
pub fn tile_bytes(dtype: DType) -> usize {
    quant::tile_bytes(dtype)
}

/// Byte offset, from the start of the quants plane, of the tile holding
/// group `group` of row block `block` (`groups` groups per row).
pub fn tile_offset(dtype: DType, groups: usize, block: usize, group: usize) -> usize {
    quant::tile_index(groups, block, group) * tile_bytes(dtype)
}

/// Index, in the scales plane (in f16 units), of the scale of row `row`'s
/// group `group`.
pub fn scale_index(groups: usize, row: usize, group: usize) -> usize {
    quant::scale_index(groups, row, group)
}

/// Byte of a q4 tile holding element `j` (0..32) of its row `r` (0..8), and
/// whether it is the high nibble (`q4_at` of `common.cuh`).
pub fn q4_byte(r: usize, j: usize) -> (usize, bool) {
    quant::q4_tile_byte(r, j)
}

/// Byte of a q8 tile holding element `j` (0..32) of its row `r` (0..8)
/// (`q8_at` of `common.cuh`).
pub fn q8_byte(r: usize, j: usize) -> usize {
    quant::q8_tile_byte(r, j)
}

/// 32-bit words in one chunk of a tile (one per row).
const CHUNK_WORDS: usize = quant::CHUNK_BYTES / quant::CHUNK_ROW_BYTES;

/// The row (0..8) and chunk of the 32-bit word `w` of a tile: bytes
/// `4r..4r + 4` of a 32-byte chunk belong to row `r`.
pub fn tile_word(w: usize) -> (usize, usize) {
    (w % CHUNK_WORDS, w / CHUNK_WORDS)
}

/// One 16-byte load of a GEMV lane (`gemv_q4` / `gemv_q8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneLoad {
    /// Group (tile) of the row block.
    pub group: usize,
    /// Byte offset in the row block's run of tiles (`group * tile + 16 * segment`).
    pub byte: usize,
    /// Chunk of the tile: the load's four words are elements `4 * chunk ..
    /// 4 * chunk + 4` (q4: and `16 + 4 * chunk ..`) of four rows.
    pub chunk: usize,
    /// The rows are `4 * half .. 4 * half + 4` of the row block (word `k`
    /// is row `4 * half + k`).
    pub half: usize,
}

/// The load of lane `lane` of warp `warp` at iteration `step` of the GEMV
/// loop over a row block of `groups` tiles, or `None` past the last tile.
/// Each warp step covers [`WARP_STEP_BYTES`] consecutive bytes (q4: 4
/// tiles, q8: 2), the [`GEMV_WARPS`] warps interleaved.
pub fn gemv_lane_load(dtype: DType, groups: usize, warp: usize, lane: usize, step: usize) -> Option<LaneLoad> {
    let tiles_per_warp = WARP_STEP_BYTES / tile_bytes(dtype);
    let lanes_per_tile = 32 / tiles_per_warp;
    // gemv.cu: g = tiles_per_warp * warp + lane / lanes_per_tile, then
    // g += tiles_per_warp * GEMV_WARPS.
    let group = tiles_per_warp * warp + lane / lanes_per_tile + step * tiles_per_warp * GEMV_WARPS;
    if group >= groups {
        return None;
    }
    let segment = lane % lanes_per_tile;
    Some(LaneLoad {
        group,
        byte: group * tile_bytes(dtype) + LANE_LOAD_BYTES * segment,
        chunk: segment / 2,
        half: lane % 2,
    })
}

/// The GEMM weight loader (`load_w_words` of `gemm.cu`) for thread `tid`:
/// the row block within the block tile (0..8) and the tile words it reads
/// (q4: one, q8: two consecutive).
pub fn gemm_loader_words(dtype: DType, tid: usize) -> (usize, [Option<usize>; 2]) {
    let rb = tid / 32;
    match dtype {
        DType::Q4 => (rb, [Some(tid % 32), None]),
        _ => (rb, [Some(2 * (tid % 32)), Some(2 * (tid % 32) + 1)]),
    }
}

/// Row blocks per GEMM block tile.
pub const GEMM_ROW_BLOCKS: usize = GEMM_TR as usize / quant::ROW_BLOCK;

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_kernels::reference as k;
    use ferrite_kernels::Out;
    use ferrite_test_support::quant::{host_acts, quantize_tiled, HostActs};
    use ferrite_test_support::rng::values;
    use half::f16;

    /// A random `[rows, cols]` q4/q8 matrix in the file layout: tiled
    /// quants, then scales (as `quant::tile_rows` writes them).
    struct Tiled {
        qs: Vec<u8>,
        scales: Vec<f16>,
    }

    fn tiled(dtype: DType, rows: usize, cols: usize, seed: u64) -> Tiled {
        let (qs, scales) = quantize_tiled(&values(rows * cols, seed, 2.0), rows, cols, dtype);
        Tiled { qs, scales }
    }

    impl Tiled {
        fn matrix(&self, dtype: DType, rows: usize, cols: usize) -> k::Matrix<'_> {
            let w = match dtype {
                DType::Q4 => k::Weights::Q4 { qs: &self.qs, scales: &self.scales },
                _ => k::Weights::Q8 { qs: &self.qs, scales: &self.scales },
            };
            k::Matrix::new(w, rows, cols).expect("matrix shape")
        }
        fn word(&self, at: usize) -> u32 {
            u32::from_le_bytes([self.qs[at], self.qs[at + 1], self.qs[at + 2], self.qs[at + 3]])
        }
    }

    /// `__dp4a(a, b, c)` on signed bytes.
    fn dp4a(a: u32, b: u32, c: i32) -> i32 {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        c + (0..4).map(|i| a[i] as i8 as i32 * b[i] as i8 as i32).sum::<i32>()
    }

    /// Shapes with row and column tails: rows not a multiple of 8, columns
    /// not a multiple of 32, more groups than one GEMV block step.
    const SHAPES: [(usize, usize); 9] =
        [(1, 1), (7, 31), (8, 32), (9, 33), (33, 100), (64, 576), (65, 577), (17, 2080), (130, 64)];

    /// The element indexing of the embedding gathers (`embed_q4`/`embed_q8`)
    /// reproduces `Matrix::dequantize_row` exactly.
    #[test]
    fn element_indexing_matches_dequantize_row() {
        for dtype in [DType::Q4, DType::Q8] {
            for (case, &(rows, cols)) in SHAPES.iter().enumerate() {
                let t = tiled(dtype, rows, cols, case as u64);
                let m = t.matrix(dtype, rows, cols);
                let groups = cols.div_ceil(quant::GROUP);
                let mut want = vec![0f32; cols];
                for row in 0..rows {
                    m.dequantize_row(row, &mut want);
                    for (i, &e) in want.iter().enumerate() {
                        let (g, j) = (i / quant::GROUP, i % quant::GROUP);
                        let tile = tile_offset(dtype, groups, row / 8, g);
                        let q = match dtype {
                            DType::Q4 => {
                                let (at, high) = q4_byte(row % 8, j);
                                let b = t.qs[tile + at];
                                (if high { b >> 4 } else { b & 15 }) as i32 - 8
                            }
                            _ => t.qs[tile + q8_byte(row % 8, j)] as i32 - 128,
                        };
                        let got = q as f32 * t.scales[scale_index(groups, row, g)].to_f32();
                        assert_eq!(got.to_bits(), e.to_bits(), "{dtype:?} {rows}x{cols} row {row} element {i}");
                    }
                }
            }
        }
    }

    /// The GEMV lanes of a row block read every byte of its run exactly
    /// once, with 16-byte alignment, and a load's words are the rows and
    /// chunk `LaneLoad` says (checked against `tile_word`).
    #[test]
    fn gemv_loads_cover_each_run_once() {
        for dtype in [DType::Q4, DType::Q8] {
            for groups in [1usize, 3, 4, 15, 16, 17, 18, 48, 65, 257] {
                let tb = tile_bytes(dtype);
                let mut seen = vec![0u8; groups * tb];
                let mut step = 0;
                loop {
                    let mut any = false;
                    for warp in 0..GEMV_WARPS {
                        for lane in 0..32 {
                            let Some(l) = gemv_lane_load(dtype, groups, warp, lane, step) else { continue };
                            any = true;
                            assert_eq!(l.byte % LANE_LOAD_BYTES, 0);
                            assert_eq!(l.byte / tb, l.group);
                            for w in 0..4 {
                                let (row, chunk) = tile_word((l.byte % tb) / 4 + w);
                                assert_eq!((row, chunk), (4 * l.half + w, l.chunk), "{dtype:?} lane {lane}");
                            }
                            for b in &mut seen[l.byte..l.byte + LANE_LOAD_BYTES] {
                                *b += 1;
                            }
                        }
                    }
                    if !any {
                        break;
                    }
                    step += 1;
                }
                assert!(seen.iter().all(|&c| c == 1), "{dtype:?} groups {groups}: a byte read {:?} times", {
                    seen.iter().find(|&&c| c != 1)
                });
                // The warps' steps walk the run front to back: step s reads
                // bytes s * 4 * 512 .. (s + 1) * 4 * 512.
                assert_eq!(step, (groups * tb).div_ceil(GEMV_WARPS * WARP_STEP_BYTES));
            }
        }
    }

    /// Emulates `gemv_q4` / `gemv_q8` with the mirrored indexing: every
    /// lane's loads, its dp4a products and per-lane f32 accumulation, the
    /// reductions. Also returns each (row, group)'s exact integer sum,
    /// assembled from the lanes' partial sums.
    fn emulate_gemv(dtype: DType, t: &Tiled, a: &HostActs, rows: usize, cols: usize) -> (Vec<f32>, Vec<i32>) {
        let groups = cols.div_ceil(quant::GROUP);
        let mut y = vec![0f32; rows];
        let mut isums = vec![0i32; quant::padded_rows(rows) * groups];
        for b in 0..rows.div_ceil(8) {
            let run = tile_offset(dtype, groups, b, 0);
            let mut red = [[0f32; 8]; GEMV_WARPS];
            for (warp, red) in red.iter_mut().enumerate() {
                let mut lanes = [[0f32; 4]; 32];
                for (lane, acc) in lanes.iter_mut().enumerate() {
                    let mut step = 0;
                    while let Some(l) = gemv_lane_load(dtype, groups, warp, lane, step) {
                        step += 1;
                        let da = a.d[l.group];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let w = t.word(run + l.byte + 4 * r);
                            let row = 8 * b + 4 * l.half + r;
                            let s = if dtype == DType::Q4 {
                                let (alo, ahi) =
                                    (a.word(groups, 0, l.group, l.chunk), a.word(groups, 0, l.group, 4 + l.chunk));
                                let corr = dp4a(0x0808_0808, alo, dp4a(0x0808_0808, ahi, 0));
                                dp4a(w & 0x0F0F_0F0F, alo, dp4a((w >> 4) & 0x0F0F_0F0F, ahi, 0)) - corr
                            } else {
                                dp4a(w ^ 0x8080_8080, a.word(groups, 0, l.group, l.chunk), 0)
                            };
                            isums[row * groups + l.group] += s;
                            let wd = t.scales[scale_index(groups, row, l.group)].to_f32();
                            *acc += s as f32 * (wd * da);
                        }
                    }
                }
                // Shuffle reduction over lanes of equal parity.
                for (lane, acc) in lanes.iter().enumerate() {
                    for r in 0..4 {
                        red[4 * (lane % 2) + r] += acc[r];
                    }
                }
            }
            for r in 0..8 {
                let row = 8 * b + r;
                if row < rows {
                    y[row] = red.iter().map(|w| w[r]).sum();
                }
            }
        }
        (y, isums)
    }

    /// The emulated GEMV gives each (row, group) exactly the reference's
    /// integer sum `sum_j q[j] * a[j]` (so every lane meets the right
    /// activations), and y within 1e-5 of the sum of |terms| of
    /// `reference::matmul_q` (f32 partial sums in another order).
    #[test]
    fn gemv_emulation_matches_the_reference() {
        for dtype in [DType::Q4, DType::Q8] {
            for (case, &(rows, cols)) in SHAPES.iter().enumerate() {
                let t = tiled(dtype, rows, cols, 100 + case as u64);
                let m = t.matrix(dtype, rows, cols);
                let x = values(cols, 200 + case as u64, 1.0);
                let a = host_acts(&x, 1, cols);
                let (got, isums) = emulate_gemv(dtype, &t, &a, rows, cols);
                let groups = cols.div_ceil(quant::GROUP);
                let mut want = vec![0f32; rows];
                let ra = ferrite_kernels::Acts { qs: &a.qs, d: &a.d, sums: &a.sums };
                k::matmul_q(&m, 0..rows, &ra, 1, &mut Out::new(&mut want, rows));
                let mut deq = vec![0f32; cols];
                for row in 0..rows {
                    m.dequantize_row(row, &mut deq);
                    let mut mag = 0f32;
                    for g in 0..groups {
                        let wd = t.scales[scale_index(groups, row, g)].to_f32();
                        let isum: i32 = (0..quant::GROUP)
                            .filter(|j| g * quant::GROUP + j < cols)
                            .map(|j| {
                                let q = (deq[g * quant::GROUP + j] / wd).round() as i32;
                                q * a.qs[g * quant::GROUP + j] as i32
                            })
                            .sum();
                        if wd != 0.0 {
                            assert_eq!(isums[row * groups + g], isum, "{dtype:?} {rows}x{cols} row {row} group {g}");
                        }
                        mag += (isum as f32 * wd * a.d[g]).abs();
                    }
                    let (g, e) = (got[row], want[row]);
                    assert!((g - e).abs() <= 1e-5 * mag + 1e-6, "{dtype:?} {rows}x{cols} row {row}: {g} vs {e}");
                }
            }
        }
    }

    /// Emulates `gemm_q4` / `gemm_q8`: the loader threads fill the
    /// shared-memory words of each group, the compute threads take dp4a
    /// sums and accumulate in the kernel's order.
    fn emulate_gemm(dtype: DType, t: &Tiled, a: &HostActs, rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let groups = cols.div_ceil(quant::GROUP);
        let n_rb = rows.div_ceil(8);
        let mut out = vec![0f32; n * rows];
        let tt_max = 32usize;
        for bx in 0..rows.div_ceil(GEMM_TR as usize) {
            let rb0 = bx * GEMM_ROW_BLOCKS;
            for by in 0..n.div_ceil(tt_max) {
                let mut acc = vec![[0f32; 32]; GEMM_TR as usize];
                for g in 0..groups {
                    let mut ws = [[0u32; 8]; GEMM_TR as usize];
                    let mut off = 0i32;
                    for tid in 0..256 {
                        let (rb, words) = gemm_loader_words(dtype, tid);
                        for w in words.into_iter().flatten() {
                            let (r, c) = tile_word(w);
                            let word = if rb0 + rb < n_rb {
                                t.word(tile_offset(dtype, groups, rb0 + rb, g) + 4 * w)
                            } else if dtype == DType::Q4 {
                                0x8888_8888
                            } else {
                                0x8080_8080
                            };
                            if dtype == DType::Q4 {
                                ws[8 * rb + r][c] = word & 0x0F0F_0F0F;
                                ws[8 * rb + r][4 + c] = (word >> 4) & 0x0F0F_0F0F;
                                off = 8;
                            } else {
                                ws[8 * rb + r][c] = word ^ 0x8080_8080;
                            }
                        }
                    }
                    for (i, ws) in ws.iter().enumerate() {
                        let row = bx * GEMM_TR as usize + i;
                        let wd = if row / 8 < n_rb { t.scales[scale_index(groups, row, g)].to_f32() } else { 0.0 };
                        for (j, acc) in acc[i].iter_mut().enumerate() {
                            let tok = by * tt_max + j;
                            if tok >= n {
                                continue;
                            }
                            let mut isum = 0;
                            for (kw, &w) in ws.iter().enumerate() {
                                isum = dp4a(w, a.word(groups, tok, g, kw), isum);
                            }
                            let s = isum - off * a.sums[tok * groups + g];
                            *acc += s as f32 * (wd * a.d[tok * groups + g]);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    for (j, &v) in acc.iter().enumerate() {
                        let (row, tok) = (bx * GEMM_TR as usize + i, by * tt_max + j);
                        if row < rows && tok < n {
                            out[tok * rows + row] = v;
                        }
                    }
                }
            }
        }
        out
    }

    /// The emulated GEMM equals `reference::matmul_q` bit for bit (the
    /// kernel's accumulation is the reference's, with no fused
    /// multiply-add).
    #[test]
    fn gemm_emulation_equals_the_reference() {
        for dtype in [DType::Q4, DType::Q8] {
            for (case, &(rows, cols)) in SHAPES.iter().enumerate() {
                for n in [2usize, 5, 33] {
                    let t = tiled(dtype, rows, cols, 300 + case as u64);
                    let m = t.matrix(dtype, rows, cols);
                    let x = values(n * cols, 400 + case as u64, 1.0);
                    let a = host_acts(&x, n, cols);
                    let got = emulate_gemm(dtype, &t, &a, rows, cols, n);
                    let mut want = vec![0f32; n * rows];
                    let ra = ferrite_kernels::Acts { qs: &a.qs, d: &a.d, sums: &a.sums };
                    k::matmul_q(&m, 0..rows, &ra, n, &mut Out::new(&mut want, rows));
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{dtype:?} {rows}x{cols} n {n} out[{}][{}]",
                            i / rows,
                            i % rows
                        );
                    }
                }
            }
        }
    }

    /// The `#define NAME VALUE` constants of `kernels/cuda/common.cuh`.
    fn cuh_defines() -> Vec<(String, usize)> {
        include_str!("../../kernels/cuda/common.cuh")
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("#define ")?.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.parse().ok()?))
            })
            .collect()
    }

    /// The tile constants the CUDA kernels compile with are the format's.
    #[test]
    fn common_cuh_constants_match_the_format() {
        let defines = cuh_defines();
        let get = |name: &str| defines.iter().find(|(n, _)| n == name).map(|&(_, v)| v);
        assert_eq!(get("GROUP"), Some(quant::GROUP), "GROUP");
        assert_eq!(get("Q4_TILE"), Some(quant::Q4_TILE_BYTES), "Q4_TILE");
        assert_eq!(get("Q8_TILE"), Some(quant::Q8_TILE_BYTES), "Q8_TILE");
        // The element formulas of `q4_at` / `q8_at` (`(k >> 2) * 32 + r * 4
        // + (k & 3)`) name the chunk and row widths literally.
        let src = include_str!("../../kernels/cuda/common.cuh");
        assert_eq!((quant::CHUNK_BYTES, quant::CHUNK_ROW_BYTES), (32, 4));
        assert!(
            src.contains("tile[(k >> 2) * 32 + r * 4 + (k & 3)]")
                && src.contains("tile[(j >> 2) * 32 + r * 4 + (j & 3)]")
        );
    }

    #[test]
    fn tile_geometry_matches_the_format() {
        assert_eq!(tile_bytes(DType::Q4), 128);
        assert_eq!(tile_bytes(DType::Q8), 256);
        assert_eq!(GEMM_TR as usize % quant::ROW_BLOCK, 0, "GEMM row tiles hold whole row blocks");
        assert_eq!(crate::launch::GEMV_ROWS as usize, quant::ROW_BLOCK, "one GEMV block per row block");
        // The GEMM loader covers every word of its 8 tiles once.
        for dtype in [DType::Q4, DType::Q8] {
            let mut seen = vec![0u8; GEMM_ROW_BLOCKS * tile_bytes(dtype) / 4];
            for tid in 0..crate::launch::GEMM_THREADS as usize {
                let (rb, words) = gemm_loader_words(dtype, tid);
                for w in words.into_iter().flatten() {
                    seen[rb * tile_bytes(dtype) / 4 + w] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{dtype:?}");
        }
        // The scales of a row block's group are 8 consecutive f16.
        assert_eq!(scale_index(5, 8, 2) + 7, scale_index(5, 15, 2));
        assert_eq!(scale_index(5, 16, 0), scale_index(5, 15, 4) + 1);
    }
}
