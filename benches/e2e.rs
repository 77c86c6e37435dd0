//! End-to-end criterion benchmarks: prefill and decode through
//! `Session`, at the kernel tier `FERRITE_KERNELS` names (else the best
//! this CPU has).
//!
//! - Always: the tiny fixture `tests/fixtures/tiny/llama-gqa` (2 layers,
//!   d_model 64), converted here to q4 and q8; one thread.
//! - With `FERRITE_BENCH_FRT=a.frt[:b.frt...]`: those model files (e.g.
//!   SmolLM2-135M made by `ferrite convert`), at 1 and 2 threads.
//!
//! Throughput is in tokens (criterion's "elem/s" = tok/s). `prefill<P>`
//! feeds P tokens to an empty cache; `decode` times single steps at cache
//! positions 16..16+DECODE_SPAN (a short prompt, then one token at a time;
//! the cache is refilled, untimed, when it reaches the end of the span).
//!
//! Run: `cargo bench --bench e2e` or e.g.
//! `FERRITE_BENCH_FRT=smollm2-q4.frt cargo bench --bench e2e -- smollm2`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrite_converter::{convert, Options};
use ferrite_format::DType;
use ferrite_runtime::{Model, Session, SessionConfig};

/// Tokens of context before the timed decode steps.
const DECODE_CONTEXT: usize = 16;
/// Decode steps timed before the cache is refilled.
const DECODE_SPAN: usize = 128;

/// Deterministic token ids below `vocab`.
fn ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut rng = ferrite_test_support::rng::Lcg::new(seed);
    (0..n).map(|_| ((rng.step() >> 33) % vocab as u64) as u32).collect()
}

fn bench_model(c: &mut Criterion, name: &str, model: &Model<'_>, threads: &[usize], prompt_len: usize) {
    let vocab = model.config().vocab_size;
    let prompt = ids(prompt_len, vocab, 1);
    let steps = ids(DECODE_CONTEXT + DECODE_SPAN, vocab, 2);
    for &t in threads {
        let cfg = SessionConfig {
            max_ctx: prompt_len.max(DECODE_CONTEXT + DECODE_SPAN),
            threads: t,
            streaming: false,
            ..Default::default()
        };
        let plan = match model.plan(&cfg) {
            Ok(p) => p,
            Err(e) => panic!("{name}: plan: {e}"),
        };
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut session = match Session::new(model, &plan, &mut arena) {
            Ok(s) => s,
            Err(e) => panic!("{name}: session: {e}"),
        };
        let mut g = c.benchmark_group(format!("e2e/{name}/t{t}"));
        g.throughput(Throughput::Elements(prompt_len as u64));
        g.bench_function(format!("prefill{prompt_len}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    session.reset();
                    black_box(session.prefill(&prompt).expect("prefill"));
                }
                start.elapsed()
            })
        });
        g.throughput(Throughput::Elements(1));
        g.bench_function("decode", |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for i in 0..iters as usize {
                    if session.position() < DECODE_CONTEXT || session.position() >= DECODE_CONTEXT + DECODE_SPAN {
                        session.reset();
                        session.prefill(&steps[..DECODE_CONTEXT]).expect("prefill");
                    }
                    let id = steps[DECODE_CONTEXT + i % DECODE_SPAN];
                    let start = Instant::now();
                    black_box(session.step(id).expect("step"));
                    timed += start.elapsed();
                }
                timed
            })
        });
        g.finish();
    }
}

fn tiny(c: &mut Criterion) {
    let dir = ferrite_test_support::fixtures::tiny("llama-gqa");
    let tmp = tempfile::tempdir().expect("tempdir");
    for (dtype, name) in [(DType::Q4, "q4"), (DType::Q8, "q8")] {
        let out = tmp.path().join(format!("tiny-{name}.frt"));
        let opts = Options { weights: dtype, ..Default::default() };
        if let Err(e) = convert(&dir, &out, &opts, &mut |_| {}) {
            panic!("convert {}: {e}", dir.display());
        }
        let model = Model::open(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        bench_model(c, &format!("tiny-llama-gqa-{name}"), &model, &[1], 64);
    }
}

fn real_models(c: &mut Criterion) {
    let Some(list) = std::env::var_os("FERRITE_BENCH_FRT") else { return };
    for path in std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()) {
        let model = Model::open(&path).unwrap_or_else(|e| panic!("FERRITE_BENCH_FRT: {}: {e}", path.display()));
        let name = PathBuf::from(path.file_stem().unwrap_or(path.as_os_str())).display().to_string();
        bench_model(c, &name, &model, &[1, 2], 128);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = tiny, real_models
}
criterion_main!(benches);
