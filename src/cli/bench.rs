//! `ferrite bench`: prefill and decode speed, measured like llama-bench.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ferrite_kernels::Tier;
use ferrite_runtime::generate::{generate, End, GenBuffers, GenOptions, History};
use ferrite_runtime::sampler::{Sampler, SamplerConfig};
use ferrite_runtime::{Model, Session};
use serde_json::json;

use super::engine::{self, KvArg};
use super::CliResult;

/// `ferrite bench --help`.
pub const LONG_ABOUT: &str = "\
Measure prefill and decode speed (tokens per second), like llama-bench.

Test ppP prefills P token ids (pseudo-random, fixed seed) into an empty KV
cache as one prompt; test tgN generates N tokens one step at a time from an
empty cache through the runtime's generation loop (the first id fed is BOS
when the model adds one, else a pseudo-random id; then each greedy choice is
fed back, so the time includes sampling). With -d DEPTH, each run first
fills the cache with DEPTH pseudo-random tokens (not timed; batched like a
prompt) and the test then runs on top of them, as llama-bench's -d:
`tg128 @ d1920` is decode speed with 1920 tokens already in the cache. Each
test runs once to warm up, then -r times; the table gives the mean ± sample
standard deviation of the tokens per second of the repetitions, for each thread count. Peak RSS is the
process's high-water mark (VmHWM) when the test ended; the mapped model file
counts once its pages are read.

The table goes to stdout; with --json, stdout is one JSON array with an
object per test: test, threads, tok_s_mean, tok_s_sd, peak_rss_bytes,
samples_tok_s, n_prompt, n_gen, n_depth, kernels, kv, batch, repetitions, model,
model_bytes, model_params.";

/// Options of `ferrite bench` (see [`LONG_ABOUT`]).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .frt model file.
    #[arg(short, long, value_name = "FILE")]
    pub model: PathBuf,
    /// Prompt lengths to prefill (tests ppP), comma-separated; 0 skips.
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512", value_name = "P")]
    pub n_prompt: Vec<usize>,
    /// Tokens to generate (tests tgN), comma-separated; 0 skips.
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128", value_name = "N")]
    pub n_gen: Vec<usize>,
    /// Thread counts, comma-separated [default: all available CPUs].
    #[arg(short = 't', long, value_delimiter = ',', value_name = "T")]
    pub threads: Vec<usize>,
    /// Tokens already in the KV cache when each test starts (filled, not
    /// timed, before every run), comma-separated.
    #[arg(short = 'd', long = "n-depth", value_delimiter = ',', default_value = "0", value_name = "DEPTH")]
    pub n_depth: Vec<usize>,
    /// Timed repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5, value_name = "R")]
    pub repetitions: usize,
    /// Print one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
    /// KV cache element type.
    #[arg(long, value_enum, default_value = "f16")]
    pub kv: KvArg,
    /// Most prompt tokens per prefill batch [default: the runtime's, as
    /// `ferrite run` uses].
    #[arg(short = 'b', long, value_name = "TOKENS")]
    pub batch: Option<usize>,
    /// Kernel tier: reference, avx2 or avx512 [default: FERRITE_KERNELS if
    /// set, else the best this CPU supports].
    #[arg(long, value_parser = parse_tier, value_name = "TIER")]
    pub kernels: Option<Tier>,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::from_name(s).ok_or_else(|| {
        let names: Vec<_> = Tier::ALL.iter().map(|t| t.name()).collect();
        format!("unknown kernel tier {s:?}: one of {}", names.join(", "))
    })
}

/// What one test times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Prefill of this many tokens.
    Prompt(usize),
    /// This many single decode steps.
    Gen(usize),
}

/// One test to run: what it times, on top of `depth` tokens in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Test {
    kind: Kind,
    depth: usize,
}

impl Test {
    fn name(self) -> String {
        let base = match self.kind {
            Kind::Prompt(p) => format!("pp{p}"),
            Kind::Gen(n) => format!("tg{n}"),
        };
        if self.depth > 0 {
            format!("{base} @ d{}", self.depth)
        } else {
            base
        }
    }
    fn tokens(self) -> usize {
        match self.kind {
            Kind::Prompt(n) | Kind::Gen(n) => n,
        }
    }
}

/// What one test measured.
struct Measured {
    test: Test,
    threads: usize,
    samples: Vec<f64>,
    peak_rss: u64,
}

/// Mean and sample standard deviation (n - 1; 0 for one sample).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (v.len() - 1) as f64;
    (mean, var.sqrt())
}

/// Pseudo-random token ids below `vocab` (splitmix64, fixed seed: every run
/// feeds the same ids).
fn token_ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % u64::from(vocab.max(1))) as u32
        })
        .collect()
}

/// Parameters stored in the file (a tied output head counts once).
fn n_params(model: &Model<'_>, path: &Path) -> CliResult<u64> {
    let file = model.file();
    let mut n = 0u64;
    for i in 0..file.n_tensors() {
        let t = file.tensor_at(i).map_err(|e| format!("{}: {e}", path.display()))?;
        n += u64::from(t.rows) * u64::from(t.cols);
    }
    Ok(n)
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    if args.repetitions == 0 {
        return Err("-r must be at least 1".into());
    }
    let threads = if args.threads.is_empty() { vec![engine::default_threads()] } else { args.threads.clone() };
    if threads.contains(&0) {
        return Err("thread counts must be at least 1".into());
    }
    let mut kinds: Vec<Kind> = args.n_prompt.iter().filter(|&&p| p > 0).map(|&p| Kind::Prompt(p)).collect();
    kinds.extend(args.n_gen.iter().filter(|&&n| n > 0).map(|&n| Kind::Gen(n)));
    let depths = if args.n_depth.is_empty() { vec![0] } else { args.n_depth.clone() };
    let tests: Vec<Test> =
        depths.iter().flat_map(|&depth| kinds.iter().map(move |&kind| Test { kind, depth })).collect();
    if tests.is_empty() {
        return Err("nothing to measure: both -p and -n are 0".into());
    }
    if args.batch == Some(0) {
        return Err("--batch must be at least 1".into());
    }

    let model = engine::open_model(&args.model)?;
    let tier = ferrite_kernels::select(args.kernels)?.tier;
    let model_bytes = std::fs::metadata(&args.model).map_err(|e| format!("{}: {e}", args.model.display()))?.len();
    let params = n_params(&model, &args.model)?;
    let name = args.model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ctx = tests
        .iter()
        .map(|t| t.tokens().checked_add(t.depth))
        .try_fold(1usize, |m, n| n.map(|n| m.max(n)))
        .ok_or("-d plus the test length overflows")?;

    let mut table = String::new();
    if !args.json {
        table.push_str("| model | size | params | kernels | threads | test | t/s |\n");
        table.push_str("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
        super::print_stdout(&table)?;
    }
    let mut results = Vec::new();
    for &t in &threads {
        let model = &model;
        let args = &args;
        let tests = &tests;
        let name = &name;
        let measured = {
            let mut cfg = engine::session_config(model, ctx, args.kv, t);
            // Speed, not quality, is measured: a test may run past the
            // trained context; the cache holds every token (no eviction).
            cfg.max_ctx = ctx;
            cfg.streaming = false;
            cfg.kernels = Some(tier);
            if let Some(b) = args.batch {
                cfg.max_batch = b;
            }
            let plan = model.plan(&cfg)?;
            let mut arena = vec![0u8; plan.arena_bytes()];
            let mut session = Session::new(model, &plan, &mut arena)?;
            let mut out = Vec::new();
            for &test in tests {
                let samples = measure(model, &mut session, test, args.repetitions)?;
                out.push(Measured { test, threads: t, samples, peak_rss: engine::peak_rss_bytes().unwrap_or(0) });
                if !args.json {
                    let m = out.last().map(|m| row(name, model_bytes, params, tier, m)).unwrap_or_default();
                    super::print_stdout(&m)?;
                }
            }
            out
        };
        results.extend(measured);
    }

    if args.json {
        let arr: Vec<_> = results
            .iter()
            .map(|m| {
                let (mean, sd) = mean_sd(&m.samples);
                json!({
                    "test": m.test.name(),
                    "threads": m.threads,
                    "tok_s_mean": mean,
                    "tok_s_sd": sd,
                    "peak_rss_bytes": m.peak_rss,
                    "samples_tok_s": m.samples,
                    "n_prompt": if let Kind::Prompt(p) = m.test.kind { p } else { 0 },
                    "n_gen": if let Kind::Gen(n) = m.test.kind { n } else { 0 },
                    "n_depth": m.test.depth,
                    "kernels": tier.name(),
                    "kv": format!("{:?}", args.kv).to_lowercase(),
                    "batch": args.batch.unwrap_or(ferrite_runtime::SessionConfig::default().max_batch),
                    "repetitions": args.repetitions,
                    "model": args.model.display().to_string(),
                    "model_bytes": model_bytes,
                    "model_params": params,
                })
            })
            .collect();
        super::print_stdout(&format!("{}\n", serde_json::Value::Array(arr)))?;
    } else {
        let peak = results.iter().map(|m| m.peak_rss).max().unwrap_or(0);
        super::print_stdout(&format!("\npeak RSS {:.1} MiB\n", peak as f64 / (1u64 << 20) as f64))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One table row.
fn row(name: &str, bytes: u64, params: u64, tier: Tier, m: &Measured) -> String {
    let (mean, sd) = mean_sd(&m.samples);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| {name} | {:.2} MiB | {:.2} M | {tier} | {} | {} | {mean:.2} ± {sd:.2} |",
        bytes as f64 / (1u64 << 20) as f64,
        params as f64 / 1e6,
        m.threads,
        m.test.name(),
    );
    s
}

/// Runs `test` once to warm up, then `reps` times; returns tokens per
/// second of each timed run.
fn measure(model: &Model<'_>, session: &mut Session<'_, '_>, test: Test, reps: usize) -> CliResult<Vec<f64>> {
    let vocab = model.config().vocab_size;
    let mut samples = Vec::with_capacity(reps);
    let mut sampler = Sampler::new(SamplerConfig::greedy())?;
    let mut bufs = (vec![0f32; vocab as usize], vec![0u32; vocab as usize], vec![0u32; 256]);
    for rep in 0..=reps {
        // Different ids each repetition, the same every run of the tool.
        let mut ids = token_ids(test.tokens(), vocab, 0x5EED + rep as u64);
        session.reset();
        if test.depth > 0 {
            let mut fill = token_ids(test.depth, vocab, 0xDE97 + rep as u64);
            if let (true, Some(bos)) = (model.config().add_bos(), model.config().bos()) {
                fill[0] = bos;
            }
            session.prefill(&fill)?;
        }
        let secs = match test.kind {
            Kind::Prompt(_) => {
                let start = Instant::now();
                session.prefill(&ids)?;
                start.elapsed().as_secs_f64()
            }
            Kind::Gen(n) => {
                if let (0, true, Some(bos)) = (test.depth, model.config().add_bos(), model.config().bos()) {
                    ids[0] = bos;
                }
                // The runtime's generation loop, greedy: the first id is fed
                // as a one-token prompt, then n - 1 sampled ids are fed back.
                let opts = GenOptions { max_new: n, ignore_eos: true };
                let buffers = GenBuffers { logits: &mut bufs.0, scratch: &mut bufs.1 };
                let mut history = History::new(&mut bufs.2);
                let start = Instant::now();
                let done = generate(
                    session,
                    model.config(),
                    None,
                    &mut sampler,
                    &ids[..1],
                    &opts,
                    buffers,
                    &mut history,
                    &mut (),
                )
                .map_err(|e| e.to_string())?;
                let secs = start.elapsed().as_secs_f64();
                if let End::Backend(e) = done.end {
                    return Err(e.into());
                }
                secs
            }
        };
        if rep > 0 {
            samples.push(test.tokens() as f64 / secs.max(1e-9));
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn token_ids_are_in_range_and_repeatable() {
        let a = token_ids(1000, 7, 1);
        assert!(a.iter().all(|&i| i < 7));
        assert_eq!(a, token_ids(1000, 7, 1));
        assert_ne!(a, token_ids(1000, 7, 2));
    }
}
