//! GPU tests of the CUDA backend (feature `cuda`). They need an NVIDIA GPU
//! with a CUDA 13 driver and are run by `scripts/gpu-check.sh` on such a
//! machine; without one every test fails and says so (CI only builds them).
//!
//! - every kernel against the scalar reference (kernels/src/reference.rs)
//!   or a formula, on random shapes with tails; q4/q8 weights in the
//!   8-row tiles of format version 2, multiplied with int8 activations:
//!   quantization and GEMM bit-exact, GEMV within a stated bound;
//! - the tiny goldens within the CPU's tolerance (5e-4, f32 weights and KV);
//! - SmolLM2-135M q4: greedy ids equal to the CPU's (default config: int8
//!   activations, as the GPU) on both golden prompts, and decode tok/s (the .frt from `FERRITE_SMOLLM2_Q4`, else converted
//!   from `FERRITE_SMOLLM2_DIR`);
//! - a q4 GEMV bandwidth benchmark over matrices totalling >= 4x the L2.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{argmax, convert_to_bytes, golden_f32, golden_ids, TINY};
use ferrite_cuda::launch::{self, Arg};
use ferrite_cuda::{Buf, CudaConfig, CudaModel, CudaSession, DevActs, DevMatrix, Gpu};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::{quant, DType};
use ferrite_kernels::reference as k;
use ferrite_kernels::{Acts, Out};
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use ferrite_test_support::quant::{host_acts, quantize_tiled};
use ferrite_test_support::rng::values;
use half::f16;
use safetensors::SafeTensors;

fn gpu() -> Arc<Gpu> {
    Gpu::new(0).unwrap_or_else(|e| {
        panic!(
            "the CUDA tests need an NVIDIA GPU and driver ({e}); run them with scripts/gpu-check.sh on a GPU machine"
        )
    })
}

/// The repository: the working directory when it holds the fixtures (the
/// GPU machine runs the prebuilt binary from its copy of the tree), else
/// the build's.
fn repo() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join("tests/fixtures/tiny").is_dir() {
        cwd
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn up(gpu: &Gpu, v: &[f32]) -> Buf {
    gpu.upload(&f32_bytes(v)).expect("upload")
}

fn down(gpu: &Gpu, b: &Buf, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    gpu.read_f32(b, 0, &mut out).expect("read");
    out
}

/// A `[rows, cols]` matrix of `dtype` in the file layout (q4/q8: logical
/// rows quantized by the reference, then tiled by `quant::tile_rows`), as
/// bytes.
fn matrix_bytes(src: &[f32], rows: usize, cols: usize, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => f32_bytes(src),
        DType::F16 => src.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        other => panic!("the CUDA kernels do not read {}", other.name()),
        DType::Q4 | DType::Q8 => {
            let (mut qs, scales) = quantize_tiled(src, rows, cols, dtype);
            qs.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
            qs
        }
    }
}

fn reference_matrix<'a>(bytes: &'a [u8], rows: usize, cols: usize, dtype: DType) -> k::Matrix<'a> {
    let at = quant::scales_offset(dtype, rows, cols);
    let w = match dtype {
        DType::F32 => k::Weights::F32(bytemuck::cast_slice(bytes)),
        DType::F16 => k::Weights::F16(bytemuck::cast_slice(bytes)),
        DType::Q8 => k::Weights::Q8 { qs: &bytes[..at], scales: bytemuck::cast_slice(&bytes[at..]) },
        DType::Q4 => k::Weights::Q4 { qs: &bytes[..at], scales: bytemuck::cast_slice(&bytes[at..]) },
        other => panic!("the CUDA kernels do not read {}", other.name()),
    };
    k::Matrix::new(w, rows, cols).expect("matrix shape")
}

/// Reads `len` bytes of `buf` (a multiple of 4).
fn down_bytes(gpu: &Gpu, b: &Buf, len: usize) -> Vec<u8> {
    down(gpu, b, len / 4).iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// Device buffers for the int8 activations of `n` rows of `cols`.
struct ActBufs {
    q: Buf,
    d: Buf,
    sums: Buf,
}

impl ActBufs {
    fn new(gpu: &Gpu, n: usize, cols: usize) -> ActBufs {
        let groups = cols.div_ceil(quant::GROUP);
        let alloc = |bytes| gpu.alloc(bytes).expect("alloc");
        ActBufs { q: alloc(n * groups * 32), d: alloc(n * groups * 4), sums: alloc(n * groups * 4) }
    }
    fn dev(&self) -> DevActs {
        DevActs { q: self.q.ptr(), d: self.d.ptr(), sums: self.sums.ptr() }
    }
}

/// GEMV (n = 1) and GEMM (n > 1) of every storage type against the
/// reference. q4/q8 (tiled) read int8 activations, quantized on the GPU:
/// the quants, scales and sums equal `reference::quantize_acts` exactly;
/// the GEMM equals `reference::matmul_q` bit for bit (same integer sums,
/// same f32 accumulation order, no fused multiply-add); the GEMV within
/// 1e-5 of the sum of |group terms| (its lanes add partial sums in another
/// order). f16/f32 read f32 x: within 1e-5 of the sum of |products| of
/// `reference::matmul`.
#[test]
fn matmul_matches_the_reference() {
    let gpu = gpu();
    let mut case = 0u64;
    for dtype in [DType::Q4, DType::Q8, DType::F16, DType::F32] {
        for &(rows, cols) in &[(1usize, 1usize), (7, 31), (33, 32), (65, 33), (100, 100), (37, 4129), (300, 576)] {
            for n in [1usize, 2, 5, 33] {
                case += 1;
                let src = values(rows * cols, case, 2.0);
                // Bytes aligned for the casts (f32 / f16 views).
                let bytes = AlignedBytes::new(&matrix_bytes(&src, rows, cols, dtype));
                let m = reference_matrix(&bytes, rows, cols, dtype);
                let x = values(n * cols, 1000 + case, 1.0);
                let w = gpu.upload(&bytes).expect("upload");
                let scales = match dtype {
                    DType::Q4 | DType::Q8 => w.ptr() + quant::scales_offset(dtype, rows, cols) as u64,
                    _ => 0,
                };
                let dm = DevMatrix { dtype, rows: rows as u32, cols: cols as u32, ptr: w.ptr(), scales };
                let xd = up(&gpu, &x);
                let ab = ActBufs::new(&gpu, n, cols);
                let out = gpu.alloc(n * rows * 4).expect("alloc");
                let mut want = vec![0f32; n * rows];
                let what = format!("{dtype:?} rows {rows} cols {cols} n {n}");
                if dm.is_quantized() {
                    ab.dev().quantize(&gpu, xd.ptr(), cols as u32, n as u32).expect("quantize");
                    let ha = host_acts(&x, n, cols);
                    let groups = cols.div_ceil(quant::GROUP);
                    let q = down_bytes(&gpu, &ab.q, n * groups * 32);
                    assert!(q.iter().zip(&ha.qs).all(|(&g, &e)| g as i8 == e), "{what}: activation quants");
                    let d = down(&gpu, &ab.d, n * groups);
                    assert!(d.iter().zip(&ha.d).all(|(g, e)| g.to_bits() == e.to_bits()), "{what}: activation scales");
                    let sums = down_bytes(&gpu, &ab.sums, n * groups * 4);
                    let sums: Vec<i32> =
                        sums.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    assert_eq!(sums, ha.sums, "{what}: activation sums");
                    let acts = Acts { qs: &ha.qs, d: &ha.d, sums: &ha.sums };
                    k::matmul_q(&m, 0..rows, &acts, n, &mut Out::new(&mut want, rows));
                    dm.matmul(&gpu, xd.ptr(), &ab.dev(), out.ptr(), n as u32).expect("matmul");
                    let got = down(&gpu, &out, n * rows);
                    if n > 1 {
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{what}: GEMM out[{}][{}] {g} vs {e}",
                                i / rows,
                                i % rows
                            );
                        }
                        continue;
                    }
                    // GEMV: bound by the sum of |isum * wd * ad| over the groups.
                    let mut deq = vec![0f32; cols];
                    for r in 0..rows {
                        m.dequantize_row(r, &mut deq);
                        let mag: f32 =
                            deq.iter().enumerate().map(|(j, w)| (w * ha.qs[j] as f32 * ha.d[j / 32]).abs()).sum();
                        let (g, e) = (got[r], want[r]);
                        assert!((g - e).abs() <= 1e-5 * mag + 1e-6, "{what}: GEMV out[{r}] {g} vs {e}");
                    }
                    continue;
                }
                let mut row = vec![0f32; cols];
                k::matmul(&m, &x, cols, n, &mut want, rows, &mut row);
                dm.matmul(&gpu, xd.ptr(), &ab.dev(), out.ptr(), n as u32).expect("matmul");
                let got = down(&gpu, &out, n * rows);
                for t in 0..n {
                    for r in 0..rows {
                        let mut deq = vec![0f32; cols];
                        m.dequantize_row(r, &mut deq);
                        let mag: f32 = deq.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| (a * b).abs()).sum();
                        let (g, e) = (got[t * rows + r], want[t * rows + r]);
                        assert!((g - e).abs() <= 1e-5 * mag + 1e-6, "{what}: out[{t}][{r}] {g} vs {e}");
                    }
                }
            }
        }
    }
}

/// RMSNorm, SwiGLU, add, bias add, RoPE, KV store and embedding gather
/// against their reference definitions.
#[test]
fn elementwise_kernels_match_the_reference() {
    let gpu = gpu();
    for (case, &d) in [1usize, 16, 33, 576, 1000].iter().enumerate() {
        let n = 3usize;
        let x = values(n * d, case as u64, 3.0);
        let w = values(d, 50 + case as u64, 1.5);
        let (xd, wd, out) = (up(&gpu, &x), up(&gpu, &w), gpu.alloc(n * d * 4).expect("alloc"));
        gpu.launch(
            "rmsnorm_rows",
            launch::rows(n as u32),
            &[Arg::Ptr(xd.ptr()), Arg::Ptr(wd.ptr()), Arg::Ptr(out.ptr()), Arg::U32(d as u32), Arg::F32(1e-5)],
        )
        .expect("rmsnorm");
        let got = down(&gpu, &out, n * d);
        for t in 0..n {
            let mut want = vec![0f32; d];
            k::rmsnorm(&x[t * d..(t + 1) * d], &w, 1e-5, &mut want);
            for i in 0..d {
                let (g, e) = (got[t * d + i], want[i]);
                assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "rmsnorm d {d}: {g} vs {e}");
            }
        }
        // swiglu and add over n * d elements.
        let len = (n * d) as u32;
        let up_v = values(n * d, 70 + case as u64, 2.0);
        let (gd, ud) = (up(&gpu, &x), up(&gpu, &up_v));
        gpu.launch("swiglu", launch::elementwise(len), &[Arg::Ptr(gd.ptr()), Arg::Ptr(ud.ptr()), Arg::U32(len)])
            .expect("swiglu");
        let mut want = x.clone();
        k::swiglu(&mut want, &up_v);
        for (g, e) in down(&gpu, &gd, n * d).iter().zip(&want) {
            assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "swiglu: {g} vs {e}");
        }
        let ad = up(&gpu, &x);
        gpu.launch("add", launch::elementwise(len), &[Arg::Ptr(ad.ptr()), Arg::Ptr(ud.ptr()), Arg::U32(len)])
            .expect("add");
        for (i, g) in down(&gpu, &ad, n * d).iter().enumerate() {
            assert_eq!(*g, x[i] + up_v[i], "add");
        }
        let bd = up(&gpu, &x);
        gpu.launch(
            "add_bias",
            launch::elementwise(len),
            &[Arg::Ptr(bd.ptr()), Arg::Ptr(wd.ptr()), Arg::U32(d as u32), Arg::U32(len)],
        )
        .expect("add_bias");
        for (i, g) in down(&gpu, &bd, n * d).iter().enumerate() {
            assert_eq!(*g, x[i] + w[i % d], "add_bias");
        }
    }
    // RoPE: 3 rows of 4 heads at positions 5.. against reference::rope.
    for hd in [16usize, 64, 128] {
        let (n, heads, pos0) = (3usize, 4usize, 5u32);
        let width = heads * hd;
        let x = values(n * width, hd as u64, 2.0);
        let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
        let (xd, fd) = (up(&gpu, &x), up(&gpu, &inv));
        gpu.launch(
            "rope_rows",
            launch::rope(n as u32, heads as u32, hd as u32),
            &[Arg::Ptr(xd.ptr()), Arg::Ptr(fd.ptr()), Arg::U32(width as u32), Arg::U32(hd as u32), Arg::U32(pos0)],
        )
        .expect("rope");
        let got = down(&gpu, &xd, n * width);
        let mut want = x.clone();
        for t in 0..n {
            for h in want[t * width..(t + 1) * width].chunks_exact_mut(hd) {
                k::rope(h, (pos0 as usize + t) as i64, &inv);
            }
        }
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= 2e-5 * e.abs().max(1.0), "rope hd {hd}: {g} vs {e}");
        }
    }
    // KV store: f16 rounding as the CPU cache (round to nearest even), f32 exact.
    let (kv_dim, n, pos0) = (48usize, 5usize, 7u32);
    let kx = values(n * kv_dim, 1, 100.0);
    let vx = values(n * kv_dim, 2, 0.01);
    let (kd, vd) = (up(&gpu, &kx), up(&gpu, &vx));
    for (name, elem) in [("kv_store_f16", 2usize), ("kv_store_f32", 4)] {
        let slots = pos0 as usize + n;
        let (kc, vc) = (gpu.alloc(slots * kv_dim * elem).expect("kc"), gpu.alloc(slots * kv_dim * elem).expect("vc"));
        gpu.launch(
            name,
            launch::elementwise((n * kv_dim) as u32),
            &[
                Arg::Ptr(kd.ptr()),
                Arg::Ptr(vd.ptr()),
                Arg::Ptr(kc.ptr()),
                Arg::Ptr(vc.ptr()),
                Arg::U32(kv_dim as u32),
                Arg::U32(pos0),
                Arg::U32(n as u32),
            ],
        )
        .expect(name);
        if elem == 4 {
            let got = down(&gpu, &kc, slots * kv_dim);
            assert_eq!(&got[pos0 as usize * kv_dim..], &kx[..], "{name}");
        } else {
            // Read the f16 cache back through an f16 GEMV with x = e_j... simpler: as raw bytes.
            let mut raw = vec![0f32; slots * kv_dim / 2];
            gpu.read_f32(&vc, 0, &mut raw).expect("read");
            let halves: Vec<f16> = raw.iter().flat_map(|f| bytemuck::cast::<f32, [f16; 2]>(*f)).collect();
            for (i, &v) in vx.iter().enumerate() {
                assert_eq!(halves[pos0 as usize * kv_dim + i], f16::from_f32(v), "{name} value {i}");
            }
        }
    }
    // Embedding gather of every storage type: exactly the dequantized row.
    let (vocab, cols) = (50usize, 77usize);
    let table = values(vocab * cols, 9, 1.0);
    let ids = [3u32, 0, 49, 3];
    let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let idd = gpu.upload(&id_bytes).expect("ids");
    for dtype in [DType::Q4, DType::Q8, DType::F16, DType::F32] {
        let bytes = AlignedBytes::new(&matrix_bytes(&table, vocab, cols, dtype));
        let m = reference_matrix(&bytes, vocab, cols, dtype);
        let w = gpu.upload(&bytes).expect("upload");
        let scales = match dtype {
            DType::Q4 | DType::Q8 => w.ptr() + quant::scales_offset(dtype, vocab, cols) as u64,
            _ => 0,
        };
        let out = gpu.alloc(ids.len() * cols * 4).expect("alloc");
        let name = format!("embed_{}", format!("{dtype:?}").to_lowercase());
        gpu.launch(
            &name,
            launch::rows(ids.len() as u32),
            &[Arg::Ptr(idd.ptr()), Arg::Ptr(w.ptr()), Arg::Ptr(scales), Arg::Ptr(out.ptr()), Arg::U32(cols as u32)],
        )
        .expect("embed");
        let got = down(&gpu, &out, ids.len() * cols);
        for (t, &id) in ids.iter().enumerate() {
            let mut want = vec![0f32; cols];
            m.dequantize_row(id as usize, &mut want);
            assert_eq!(&got[t * cols..(t + 1) * cols], &want[..], "{name} id {id}");
        }
    }
}

/// Attention of query `qh` over keys `lo..=pos` of a `[slots][kv_dim]`
/// cache, as the CPU session computes it (scores, softmax, weighted sum).
fn attention_reference(
    qh: &[f32],
    kc: &[f32],
    vc: &[f32],
    kv_dim: usize,
    off: usize,
    lo: usize,
    pos: usize,
) -> Vec<f32> {
    let hd = qh.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores: Vec<f32> =
        (lo..=pos).map(|j| scale * k::dot_f32(qh, &kc[j * kv_dim + off..j * kv_dim + off + hd])).collect();
    k::softmax(&mut scores);
    let mut out = vec![0f32; hd];
    for (p, j) in scores.iter().zip(lo..=pos) {
        for (o, &v) in out.iter_mut().zip(&vc[j * kv_dim + off..j * kv_dim + off + hd]) {
            *o += p * v;
        }
    }
    out
}

/// Decode (flash-decoding, several split counts) and causal prefill
/// attention over an f32 cache, with GQA and a sliding window, against the
/// CPU's formula: within 1e-5 (f32, other summation order).
#[test]
fn attention_matches_the_reference() {
    let gpu = gpu();
    for &(hd, n_heads, n_kv) in &[(16usize, 4usize, 2usize), (64, 9, 3), (128, 4, 4)] {
        let kv_dim = n_kv * hd;
        let q_dim = n_heads * hd;
        let group = n_heads / n_kv;
        let slots = 1100usize;
        let kc = values(slots * kv_dim, hd as u64, 1.0);
        let vc = values(slots * kv_dim, 1 + hd as u64, 1.0);
        let (kd, vd) = (up(&gpu, &kc), up(&gpu, &vc));
        let scale = 1.0 / (hd as f32).sqrt();
        for window in [0usize, 100] {
            // Decode at several lengths (1 key .. 1100 keys: 1 to 5 splits of up to 256).
            for &pos in &[0usize, 30, 31, 300, 1099] {
                let q = values(q_dim, (pos * 7 + hd) as u64, 1.0);
                let qd = up(&gpu, &q);
                let key_hi = pos + 1;
                let key_lo = if window > 0 { key_hi.saturating_sub(window) } else { 0 };
                let (splits, chunk) = launch::decode_splits((key_hi - key_lo) as u32);
                let part_o = gpu.alloc(n_heads * splits as usize * hd * 4).expect("part_o");
                let part_ml = gpu.alloc(n_heads * splits as usize * 8).expect("part_ml");
                let out = gpu.alloc(q_dim * 4).expect("out");
                gpu.launch(
                    "attn_decode_f32",
                    launch::attn_decode(n_heads as u32, splits),
                    &[
                        Arg::Ptr(qd.ptr()),
                        Arg::Ptr(kd.ptr()),
                        Arg::Ptr(vd.ptr()),
                        Arg::Ptr(part_o.ptr()),
                        Arg::Ptr(part_ml.ptr()),
                        Arg::U32(group as u32),
                        Arg::U32(hd as u32),
                        Arg::U32(kv_dim as u32),
                        Arg::U32(key_lo as u32),
                        Arg::U32(key_hi as u32),
                        Arg::U32(chunk),
                        Arg::F32(scale),
                    ],
                )
                .expect("decode");
                gpu.launch(
                    "attn_combine",
                    launch::attn_combine(n_heads as u32),
                    &[
                        Arg::Ptr(part_o.ptr()),
                        Arg::Ptr(part_ml.ptr()),
                        Arg::Ptr(out.ptr()),
                        Arg::U32(hd as u32),
                        Arg::U32(splits),
                    ],
                )
                .expect("combine");
                let got = down(&gpu, &out, q_dim);
                for h in 0..n_heads {
                    let want =
                        attention_reference(&q[h * hd..(h + 1) * hd], &kc, &vc, kv_dim, (h / group) * hd, key_lo, pos);
                    for (d, (g, e)) in got[h * hd..(h + 1) * hd].iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5,
                            "decode hd {hd} pos {pos} window {window} head {h} d {d}: {g} vs {e}"
                        );
                    }
                }
            }
            // Prefill: n queries at pos0.. (the batch's keys are already in the cache).
            for &(pos0, n) in &[(0usize, 1usize), (0, 17), (5, 33), (1000, 40)] {
                let q = values(n * q_dim, (pos0 + n) as u64, 1.0);
                let qd = up(&gpu, &q);
                let out = gpu.alloc(n * q_dim * 4).expect("out");
                gpu.launch(
                    "attn_prefill_f32",
                    launch::attn_prefill(n_heads as u32, n as u32),
                    &[
                        Arg::Ptr(qd.ptr()),
                        Arg::Ptr(kd.ptr()),
                        Arg::Ptr(vd.ptr()),
                        Arg::Ptr(out.ptr()),
                        Arg::U32(n as u32),
                        Arg::U32(pos0 as u32),
                        Arg::U32(group as u32),
                        Arg::U32(hd as u32),
                        Arg::U32(kv_dim as u32),
                        Arg::U32(window as u32),
                        Arg::F32(scale),
                    ],
                )
                .expect("prefill");
                let got = down(&gpu, &out, n * q_dim);
                for t in 0..n {
                    let pos = pos0 + t;
                    let lo = if window > 0 { (pos + 1).saturating_sub(window) } else { 0 };
                    for h in 0..n_heads {
                        let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                        let want = attention_reference(qh, &kc, &vc, kv_dim, (h / group) * hd, lo, pos);
                        let g = &got[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                        for (d, (g, e)) in g.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() <= 1e-5,
                                "prefill hd {hd} pos0 {pos0} t {t} window {window} head {h} d {d}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The tiny goldens on the GPU: f32 weights and KV cache, logits of every
/// position within the CPU's 5e-4 of transformers, greedy ids equal; batch
/// sizes 32 and 7 (several prefill chunks).
#[test]
fn tiny_goldens_match_transformers() {
    let gpu = gpu();
    for name in TINY {
        let dir = repo().join("tests/fixtures/tiny").join(name);
        let bytes = convert_to_bytes(&dir, DType::F32);
        let model = Model::from_bytes(&bytes).expect("model");
        let vocab = model.config().vocab_size as usize;
        let cm = CudaModel::new(gpu.clone(), &model).expect("upload");
        let golden_bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden");
        let golden = SafeTensors::deserialize(&golden_bytes).expect("golden parse");
        let ids = golden_ids(&golden, "input_ids");
        let (logits, shape) = golden_f32(&golden, "logits");
        let seq = shape[1];
        for max_batch in [32usize, 7] {
            let cfg = CudaConfig { max_ctx: 256, max_batch, kv: KvType::F32 };
            for row in 0..shape[0] {
                let want = &logits[row * seq * vocab..(row + 1) * seq * vocab];
                let mut s = CudaSession::new(&cm, &cfg).expect("session");
                let mut worst = 0.0f32;
                s.prefill_all(&ids[row * seq..(row + 1) * seq], &mut |pos, got| {
                    for (a, b) in got.iter().zip(&want[pos * vocab..(pos + 1) * vocab]) {
                        worst = worst.max((a - b).abs());
                    }
                })
                .expect("prefill");
                eprintln!("{name} row {row} batch {max_batch}: max |logit diff| {worst:.2e}");
                assert!(worst <= 5e-4, "{name} row {row} batch {max_batch}: max |logit diff| {worst} > 5e-4");
            }
            let greedy = golden_ids(&golden, "greedy_ids");
            let mut s = CudaSession::new(&cm, &cfg).expect("session");
            let mut next = argmax(s.prefill(&ids[..seq]).expect("prefill"));
            let mut got = vec![];
            for _ in 0..greedy.len() {
                got.push(next);
                next = argmax(s.step(next).expect("step"));
            }
            assert_eq!(got, greedy, "{name}: greedy ids differ");
        }
    }
}

fn smollm2_q4() -> AlignedBytes {
    match std::env::var_os("FERRITE_SMOLLM2_Q4") {
        Some(p) => AlignedBytes::read(std::path::Path::new(&p)).expect("FERRITE_SMOLLM2_Q4"),
        None => convert_to_bytes(&common::smollm2_dir(), DType::Q4),
    }
}

/// SmolLM2-135M q4 (f16 KV): the GPU's greedy ids equal the CPU's on both
/// golden prompts (32 tokens each); then decode speed. The CPU session runs
/// its default, int8 activations per group of 32 for q4/q8 products
/// (`f32_activations: false`), which is what the GPU computes.
#[test]
fn smollm2_q4_greedy_ids_equal_the_cpu() {
    let gpu = gpu();
    let bytes = smollm2_q4();
    let model = Model::from_bytes(&bytes).expect("model");
    let cm = CudaModel::new(gpu.clone(), &model).expect("upload");
    let golden_bytes = std::fs::read(repo().join("tests/fixtures/smollm2-135m/golden.safetensors")).expect("golden");
    let golden = SafeTensors::deserialize(&golden_bytes).expect("golden parse");
    let cpu_cfg =
        SessionConfig { max_ctx: 512, kv: KvType::F16, max_batch: 32, f32_activations: false, ..Default::default() };
    let plan = model.plan(&cpu_cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let gpu_cfg = CudaConfig { max_ctx: 512, max_batch: 32, kv: KvType::F16 };
    for prompt in ["prompt0", "prompt1"] {
        let ids = golden_ids(&golden, &format!("{prompt}_ids"));
        let steps = 32;
        let mut cpu = Session::new(&model, &plan, &mut arena).expect("session");
        let mut next = argmax(cpu.prefill(&ids).expect("prefill"));
        let mut want = vec![];
        for _ in 0..steps {
            want.push(next);
            next = argmax(cpu.step(next).expect("step"));
        }
        let mut s = CudaSession::new(&cm, &gpu_cfg).expect("session");
        let mut next = argmax(s.prefill(&ids).expect("prefill"));
        let mut got = vec![];
        for _ in 0..steps {
            got.push(next);
            next = argmax(s.step(next).expect("step"));
        }
        eprintln!("{prompt}: GPU {got:?}");
        assert_eq!(got, want, "{prompt}: GPU greedy ids differ from the CPU's");
    }
    // Decode speed: 256 steps after a 32-token prompt (logits copied back each step).
    let mut s = CudaSession::new(&cm, &gpu_cfg).expect("session");
    let prompt: Vec<u32> = (0..32).map(|i| (i * 97 + 13) % 49152).collect();
    let mut next = argmax(s.prefill(&prompt).expect("prefill"));
    for _ in 0..16 {
        next = argmax(s.step(next).expect("warm-up"));
    }
    let n = 256;
    let started = std::time::Instant::now();
    for _ in 0..n {
        next = argmax(s.step(next).expect("step"));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "RESULT smollm2-q4 decode on {}: {:.1} tok/s ({n} steps in {secs:.3} s, greedy, logits to host each step)",
        gpu.name(),
        n as f64 / secs
    );
}

/// q4 GEMV bandwidth: matrices of 8192 x 8192 (36 MiB each with scales),
/// as many as make >= 4x the L2, used in rotation so that every launch
/// streams its weights from HBM (the int8 activations, 8 KiB, stay in
/// cache). One result is checked against `reference::matmul_q` first.
#[test]
fn q4_gemv_bandwidth() {
    let gpu = gpu();
    let (rows, cols) = (8192usize, 8192usize);
    let one = quant::scales_offset(DType::Q4, rows, cols) + quant::padded_rows(rows) * cols.div_ceil(32) * 2;
    let l2 = gpu.l2_bytes().expect("L2 size");
    let count = (4 * l2).div_ceil(one).max(2);
    // Random quants; scales of a realistic magnitude.
    let mut mats = vec![];
    for i in 0..count {
        let mut bytes: Vec<u8> =
            values(one / 4, 77 + i as u64, 1.0).iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        bytes.resize(one, 0);
        let at = quant::scales_offset(DType::Q4, rows, cols);
        for (j, s) in bytes[at..].chunks_exact_mut(2).enumerate() {
            s.copy_from_slice(&f16::from_f32(0.01 + (j % 7) as f32 * 0.001).to_le_bytes());
        }
        let buf = gpu.upload(&bytes).expect("upload");
        let m = DevMatrix {
            dtype: DType::Q4,
            rows: rows as u32,
            cols: cols as u32,
            ptr: buf.ptr(),
            scales: buf.ptr() + at as u64,
        };
        if i == 0 {
            let x = values(cols, 5, 1.0);
            let (xd, out) = (up(&gpu, &x), gpu.alloc(rows * 4).expect("out"));
            let ab = ActBufs::new(&gpu, 1, cols);
            ab.dev().quantize(&gpu, xd.ptr(), cols as u32, 1).expect("quantize");
            m.matmul(&gpu, xd.ptr(), &ab.dev(), out.ptr(), 1).expect("gemv");
            let got = down(&gpu, &out, rows);
            let aligned = AlignedBytes::new(&bytes);
            let rm = reference_matrix(&aligned, rows, cols, DType::Q4);
            let ha = host_acts(&x, 1, cols);
            let acts = Acts { qs: &ha.qs, d: &ha.d, sums: &ha.sums };
            let mut want = vec![0f32; rows];
            let mut deq = vec![0f32; cols];
            for r in [0usize, 1, 4095, 8191] {
                k::matmul_q(&rm, r..r + 1, &acts, 1, &mut Out::new(&mut want, rows));
                rm.dequantize_row(r, &mut deq);
                let mag: f32 = deq.iter().enumerate().map(|(j, w)| (w * ha.qs[j] as f32 * ha.d[j / 32]).abs()).sum();
                assert!((got[r] - want[r]).abs() <= 1e-5 * mag + 1e-6, "row {r}: {} vs {}", got[r], want[r]);
            }
        }
        mats.push((buf, m));
    }
    let x = up(&gpu, &values(cols, 6, 1.0));
    let ab = ActBufs::new(&gpu, 1, cols);
    ab.dev().quantize(&gpu, x.ptr(), cols as u32, 1).expect("quantize");
    let y = gpu.alloc(rows * 4).expect("y");
    let rounds = 40;
    for (_, m) in &mats {
        m.matmul(&gpu, x.ptr(), &ab.dev(), y.ptr(), 1).expect("warm-up");
    }
    gpu.sync().expect("sync");
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        for (_, m) in &mats {
            m.matmul(&gpu, x.ptr(), &ab.dev(), y.ptr(), 1).expect("gemv");
        }
    }
    gpu.sync().expect("sync");
    let secs = started.elapsed().as_secs_f64();
    let bytes = (rounds * count * one) as f64;
    let gbs = bytes / secs / 1e9;
    let name = gpu.name().to_string();
    let peak = if name.contains("H200") {
        Some(4800.0)
    } else if name.contains("H100") {
        Some(3350.0)
    } else {
        None
    };
    let share = peak.map(|p| format!("{:.0} % of {p:.0} GB/s peak", 100.0 * gbs / p)).unwrap_or_default();
    eprintln!(
        "RESULT q4 GEMV {rows}x{cols} on {name} (L2 {:.0} MiB, {count} matrices, {:.0} MiB in rotation): {gbs:.0} GB/s {share}",
        l2 as f64 / (1 << 20) as f64,
        (count * one) as f64 / (1 << 20) as f64
    );
    assert!(count * one >= 4 * l2, "weights in rotation must be >= 4x the L2");
}
