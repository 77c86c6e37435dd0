//! Criterion benchmarks of every kernel of the table, for every tier this
//! CPU supports (`Kernels::for_tier`), at the shapes of SmolLM2-135M
//! (d_model 576, FFN 1536, vocab 49152, head_dim 64); the K-quant
//! products (q4k, q6k) at Qwen2.5-Coder-1.5B's (d_model 1536, FFN 8960).
//!
//! Run: `cargo bench --bench kernels` (all), or filter by name, e.g.
//! `cargo bench --bench kernels -- 'matmul_q/q4/decode'` or `-- avx512`.
//! Benchmark ids read `<kernel>/<type>/<phase>/<tier>/<rows>x<cols>`.
//!
//! Throughput, as criterion reports it:
//! - decode (one token, n = 1): `Throughput::Bytes` = bytes of weights
//!   streamed (quants + scales), so "GiB/s" is weight bandwidth;
//! - prefill (n = 32 tokens): `Throughput::Elements` = floating-point
//!   operations (2 · rows · cols · n), so "Gelem/s" reads as GFLOP/s;
//! - quantize_acts, rmsnorm: elements of input per second;
//! - dot/dot_f16/axpy/axpy_f16 (attention over a KV cache of `ctx` keys
//!   of head_dim 64): bytes of keys/values read.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use ferrite_format::quant;
use ferrite_format::DType;
use ferrite_kernels::reference::{Matrix, Weights};
use ferrite_kernels::{ActsMut, Kernels, Out, Tier};
use ferrite_test_support::quant::{host_acts, quantize_tiled};
use half::f16;

/// `[rows, cols]` of SmolLM2-135M's matrices: attention q/o, FFN gate/up,
/// FFN down, output head (the tied embedding table).
const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];
/// Tokens per prefill batch (the runtime's default `max_batch`).
const PREFILL_N: usize = 32;
/// Context lengths for the attention vector ops.
const CONTEXTS: [usize; 3] = [128, 512, 2048];
const HEAD_DIM: usize = 64;

/// Every tier this CPU can run.
fn tiers() -> Vec<&'static Kernels> {
    Tier::ALL.into_iter().filter_map(|t| Kernels::for_tier(t).ok()).collect()
}

/// A small deterministic generator (benchmarks need data, not quality).
type Rng = ferrite_test_support::rng::Lcg;

/// A random q4/q8 `[rows, cols]` matrix in the file's tiled layout
/// (quants, scales).
fn quantized(dtype: DType, rows: usize, cols: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f16>) {
    let src: Vec<f32> = (0..rows * cols).map(|_| rng.f32(1.0)).collect();
    quantize_tiled(&src, rows, cols, dtype)
}

/// Phases of a matrix product: (name, tokens).
const PHASES: [(&str, usize); 2] = [("decode", 1), ("prefill", PREFILL_N)];

fn throughput(phase_n: usize, weight_bytes: usize, rows: usize, cols: usize) -> Throughput {
    if phase_n == 1 {
        Throughput::Bytes(weight_bytes as u64)
    } else {
        Throughput::Elements((2 * rows * cols * phase_n) as u64)
    }
}

/// One benchmark group: `run(k)` for every tier `k`, ids `<tier>/<param>`.
/// `flat` (prefill batches, which take the scalar reference seconds) takes
/// 10 flat samples instead of criterion's default sampling.
fn every_tier(
    c: &mut Criterion,
    group: impl Into<String>,
    throughput: Throughput,
    param: &str,
    flat: bool,
    mut run: impl FnMut(&Kernels),
) {
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    if flat {
        g.sampling_mode(SamplingMode::Flat).sample_size(10);
    }
    for k in tiers() {
        g.bench_function(BenchmarkId::new(k.tier.name(), param), |b| b.iter(|| run(k)));
    }
    g.finish();
}

fn bench_matmul_q(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    for (dtype, name) in [(DType::Q4, "q4"), (DType::Q8, "q8")] {
        for &(rows, cols) in &SHAPES {
            let (qs, scales) = quantized(dtype, rows, cols, &mut rng);
            let weight_bytes = qs.len() + 2 * scales.len();
            let w = match dtype {
                DType::Q4 => Weights::Q4 { qs: &qs, scales: &scales },
                _ => Weights::Q8 { qs: &qs, scales: &scales },
            };
            let m = Matrix::new(w, rows, cols).expect("matrix shape");
            for (phase, n) in PHASES {
                let x = rng.vec(n * cols, 1.0);
                let acts = host_acts(&x, n, cols);
                let mut out = vec![0f32; n * rows];
                let group = format!("matmul_q/{name}/{phase}");
                let shape = format!("{rows}x{cols}");
                every_tier(c, group, throughput(n, weight_bytes, rows, cols), &shape, n > 1, |k| {
                    (k.matmul_q)(black_box(&m), 0..rows, &acts.acts(), n, &mut Out::new(&mut out, rows))
                });
                black_box(&out);
            }
        }
    }
}

/// `[rows, cols]` of Qwen2.5-Coder-1.5B's matrices (the K-quant model):
/// attention o, FFN gate/up, FFN down.
const K_SHAPES: [(usize, usize); 3] = [(1536, 1536), (8960, 1536), (1536, 8960)];

/// A random `dtype` (a plane type) `[rows, cols]` matrix's planes, in
/// `u16` storage (its f16 planes are read in place): random bytes, the
/// f16 planes a small finite value (benchmarks need data, not quality).
fn plane_matrix(dtype: DType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<Vec<u16>> {
    quant::planes(dtype)
        .iter()
        .map(|p| {
            let words = p.bytes(rows, cols).expect("plane size") / 2 + 1;
            let f16_plane = p.unit == 2 && !(dtype == DType::Q6K && p.name == "scales");
            (0..words)
                .map(|_| if f16_plane { f16::from_f32(0.01).to_bits() } else { (rng.step() >> 32) as u16 })
                .collect()
        })
        .collect()
}

/// The K-quant types' integer products on Qwen's shapes: q4k (most of
/// Q4_K_M) and q6k (its output table, attn_v and half of ffn_down).
fn bench_matmul_k(c: &mut Criterion) {
    let mut rng = Rng::new(6);
    for dtype in [DType::Q4K, DType::Q6K] {
        for &(rows, cols) in &K_SHAPES {
            let planes = plane_matrix(dtype, rows, cols, &mut rng);
            let weight_bytes = dtype.tensor_bytes(rows as u64, cols as u64).expect("size") as usize;
            let views: [&[u8]; quant::MAX_PLANES] = core::array::from_fn(|i| {
                let p = quant::planes(dtype).get(i).map_or(0, |p| p.bytes(rows, cols).expect("plane size"));
                planes.get(i).map_or(&[][..], |w| &bytemuck::cast_slice(w)[..p])
            });
            let w = Weights::from_planes(dtype, views).expect("planes");
            let m = Matrix::new(w, rows, cols).expect("matrix shape");
            for (phase, n) in PHASES {
                let x = rng.vec(n * cols, 1.0);
                let acts = host_acts(&x, n, cols);
                let mut out = vec![0f32; n * rows];
                let group = format!("matmul_q/{}/{phase}", dtype.name());
                let shape = format!("{rows}x{cols}");
                every_tier(c, group, throughput(n, weight_bytes, rows, cols), &shape, n > 1, |k| {
                    (k.matmul_q)(black_box(&m), 0..rows, &acts.acts(), n, &mut Out::new(&mut out, rows))
                });
                black_box(&out);
            }
        }
    }
}

fn bench_matmul_f(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    for (name, elem) in [("f32", 4usize), ("f16", 2)] {
        for &(rows, cols) in &SHAPES {
            let w32 = rng.vec(rows * cols, 1.0);
            let w16: Vec<f16> = if elem == 2 { w32.iter().map(|&v| f16::from_f32(v)).collect() } else { vec![] };
            let w = if elem == 4 { Weights::F32(&w32) } else { Weights::F16(&w16) };
            let m = Matrix::new(w, rows, cols).expect("matrix shape");
            let mut scratch = vec![0f32; cols];
            for (phase, n) in PHASES {
                let x = rng.vec(n * cols, 1.0);
                let mut out = vec![0f32; n * rows];
                let group = format!("matmul_f/{name}/{phase}");
                let shape = format!("{rows}x{cols}");
                every_tier(c, group, throughput(n, rows * cols * elem, rows, cols), &shape, n > 1, |k| {
                    (k.matmul_f)(black_box(&m), 0..rows, &x, cols, n, &mut Out::new(&mut out, rows), &mut scratch)
                });
            }
        }
    }
}

fn bench_quantize_acts(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    for cols in [576usize, 1536] {
        for (phase, n) in PHASES {
            let x = rng.vec(n * cols, 1.0);
            let g_cols = cols.div_ceil(quant::GROUP);
            let (mut qs, mut d, mut sums) =
                (vec![0i8; n * g_cols * 32], vec![0f32; n * g_cols], vec![0i32; n * g_cols]);
            let elements = Throughput::Elements((n * cols) as u64);
            every_tier(c, format!("quantize_acts/{phase}"), elements, &format!("{n}x{cols}"), false, |k| {
                (k.quantize_acts)(
                    black_box(&x),
                    cols,
                    n,
                    cols,
                    &mut ActsMut { qs: &mut qs, d: &mut d, sums: &mut sums },
                )
            });
        }
    }
}

fn bench_rmsnorm(c: &mut Criterion) {
    let mut rng = Rng::new(4);
    let cols = 576;
    let (x, w) = (rng.vec(cols, 1.0), rng.vec(cols, 1.0));
    let mut out = vec![0f32; cols];
    every_tier(c, "rmsnorm", Throughput::Elements(cols as u64), &cols.to_string(), false, |k| {
        (k.rmsnorm)(black_box(&x), &w, 1e-5, &mut out)
    });
}

/// Attention's vector ops over a KV cache of `ctx` rows of head_dim 64:
/// `dot`/`dot_f16` score a query against every key, `axpy`/`axpy_f16`
/// accumulate every value row weighted by its probability.
fn bench_vector_ops(c: &mut Criterion) {
    let mut rng = Rng::new(5);
    let q = rng.vec(HEAD_DIM, 1.0);
    for ctx in CONTEXTS {
        let keys = rng.vec(ctx * HEAD_DIM, 1.0);
        let keys16: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
        let probs = rng.vec(ctx, 1.0);
        let mut scores = vec![0f32; ctx];
        let mut acc = vec![0f32; HEAD_DIM];
        let shape = format!("{HEAD_DIM}x{ctx}");
        let (f32_bytes, f16_bytes) =
            (Throughput::Bytes((ctx * HEAD_DIM * 4) as u64), Throughput::Bytes((ctx * HEAD_DIM * 2) as u64));
        every_tier(c, "dot/f32", f32_bytes.clone(), &shape, false, |k| {
            for (s, key) in scores.iter_mut().zip(keys.chunks_exact(HEAD_DIM)) {
                *s = (k.dot)(black_box(&q), key);
            }
        });
        every_tier(c, "dot/f16", f16_bytes.clone(), &shape, false, |k| {
            for (s, key) in scores.iter_mut().zip(keys16.chunks_exact(HEAD_DIM)) {
                *s = (k.dot_f16)(black_box(&q), key);
            }
        });
        every_tier(c, "axpy/f32", f32_bytes, &shape, false, |k| {
            acc.fill(0.0);
            for (&p, v) in probs.iter().zip(keys.chunks_exact(HEAD_DIM)) {
                (k.axpy)(p, black_box(v), &mut acc);
            }
        });
        every_tier(c, "axpy/f16", f16_bytes, &shape, false, |k| {
            acc.fill(0.0);
            for (&p, v) in probs.iter().zip(keys16.chunks_exact(HEAD_DIM)) {
                (k.axpy_f16)(p, black_box(v), &mut acc);
            }
        });
        black_box((&scores, &acc));
    }
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_matmul_q, bench_matmul_k, bench_matmul_f, bench_quantize_acts, bench_rmsnorm, bench_vector_ops
}
criterion_main!(benches);
