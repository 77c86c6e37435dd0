//! `ferrite perplexity`.

use std::path::PathBuf;
use std::process::ExitCode;

use ferrite_runtime::{eval, Session};
use serde_json::json;

use super::engine::{self, KvArg};
use super::CliResult;

/// Perplexity of a model on a text file.
///
/// The whole file is tokenized (no BOS) and cut into non-overlapping
/// windows of --ctx tokens, each evaluated from a fresh context; the first
/// token of each window is not predicted; a final partial window counts.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .frt model file.
    #[arg(short, long, value_name = "FILE")]
    model: PathBuf,
    /// The text file.
    #[arg(short, long, value_name = "TEXT")]
    file: PathBuf,
    /// Window size in tokens.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Threads for the matrix products [default: all available CPUs].
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Run the whole text through one session with a streaming KV cache of
    /// --ctx tokens (no window resets; old tokens are evicted).
    #[arg(long)]
    streaming: bool,
    /// Attention-sink tokens kept by the streaming cache.
    #[arg(long, default_value_t = 4, requires = "streaming")]
    sinks: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value = "f16")]
    kv: KvArg,
    /// Print one JSON line on stdout: tokens, predicted, mean_nll, perplexity.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    let threads = args.threads.unwrap_or_else(engine::default_threads);
    engine::with_pool(threads, move || run_inner(args, threads))?
}

fn run_inner(args: Args, threads: usize) -> CliResult<ExitCode> {
    let model = engine::open_model(&args.model)?;
    let tok = engine::tokenizer(&model, &args.model)?;
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let tokens = engine::encode(&tok, &text)?;
    if tokens.len() < 2 {
        return Err(format!("{}: fewer than 2 tokens", args.file.display()).into());
    }
    let mut cfg = engine::session_config(&model, args.ctx, args.kv, threads);
    if cfg.max_ctx < args.ctx {
        return Err(format!("--ctx {} exceeds the model's trained context {}", args.ctx, cfg.max_ctx).into());
    }
    cfg.max_ctx = args.ctx;
    cfg.logits_all = true;
    cfg.streaming = args.streaming;
    cfg.sinks = args.sinks;
    let plan = model.plan(&cfg)?;
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena)?;
    let started = std::time::Instant::now();
    let n_windows = if args.streaming { tokens.len().div_ceil(256) } else { tokens.len().div_ceil(args.ctx) };
    let quiet = args.json;
    let streaming = args.streaming;
    let mut report = |i: usize, sum: f64, n: usize| {
        if !quiet {
            eprintln!(
                "[ferrite] {} {}/{n_windows}: {n} predicted, mean NLL {:.4}",
                if streaming { "chunk" } else { "window" },
                i + 1,
                sum / n.max(1) as f64
            );
        }
    };
    let result = if args.streaming {
        eval::streaming_perplexity(&mut session, &tokens, &mut report)?
    } else {
        eval::perplexity(&mut session, &tokens, args.ctx, &mut report)?
    };
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let line = json!({
            "tokens": result.tokens,
            "predicted": result.predicted,
            "mean_nll": result.mean_nll(),
            "perplexity": result.perplexity(),
        });
        super::print_stdout(&format!("{line}\n"))?;
    } else {
        super::print_stdout(&format!(
            "tokens {}  predicted {}  mean NLL {:.6}  perplexity {:.4}\n",
            result.tokens,
            result.predicted,
            result.mean_nll(),
            result.perplexity()
        ))?;
    }
    eprintln!("[ferrite] {:.1} s ({:.1} tok/s)", secs, result.tokens as f64 / secs.max(1e-9));
    Ok(ExitCode::SUCCESS)
}
