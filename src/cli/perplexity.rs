//! `ferrite perplexity`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use ferrite_runtime::eval::{self, Score};
use ferrite_runtime::Session;
use serde_json::json;

use super::engine::{self, KvArg};
use super::kld::{BaseReader, BaseWriter, Totals};
use super::CliResult;

/// Which positions are scored.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScoreArg {
    /// Every token but the first of each window; a final partial window counts.
    All,
    /// Only the second half of each whole window (its tokens see at least
    /// ctx/2 tokens of context); a partial last window is dropped. This is
    /// llama-perplexity's rule, so numbers compare directly.
    SecondHalf,
}

impl From<ScoreArg> for Score {
    fn from(s: ScoreArg) -> Score {
        match s {
            ScoreArg::All => Score::All,
            ScoreArg::SecondHalf => Score::SecondHalf,
        }
    }
}

/// Perplexity of a model on a text file, and its KL divergence from a
/// reference model.
///
/// The whole file is tokenized once and cut into non-overlapping windows of
/// --ctx tokens, each evaluated from a fresh context; --score chooses the
/// predicted tokens. For a model that adds BOS, the tokens start with BOS and
/// every window's first token is fed as BOS (llama-perplexity's rule, so
/// numbers compare directly with it for every model).
///
/// KL divergence: run the reference model (e.g. f32) once with
/// --kl-divergence-base BASE, which saves the log-probabilities of every
/// scored position (4·vocab bytes each); then run any other model of the same
/// vocabulary with --kl-divergence BASE and the same text, --ctx and --score:
/// it reports the perplexity ratio (this / base), the mean and the 99th
/// percentile of KL(base || this) per position, and how often both models
/// rank the same token first.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
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
    /// Multiply q8/q4 weights with f32 activations instead of int8 ones
    /// (slower; what the int8 activations cost shows against it).
    #[arg(long)]
    f32_activations: bool,
    /// Scored positions.
    #[arg(long, value_enum, default_value = "all", conflicts_with = "streaming")]
    score: ScoreArg,
    /// Save this (reference) model's log-probabilities of every scored
    /// position to BASE.
    #[arg(long, value_name = "BASE", conflicts_with_all = ["streaming", "kl_divergence"])]
    kl_divergence_base: Option<PathBuf>,
    /// Compare with the reference saved in BASE: perplexity ratio, mean
    /// and 99th-percentile KL divergence, top-1 agreement.
    #[arg(long, value_name = "BASE", conflicts_with = "streaming")]
    kl_divergence: Option<PathBuf>,
    /// Print one JSON line on stdout: tokens, predicted, mean_nll,
    /// perplexity; with --kl-divergence also kld_mean, kld_p99,
    /// top1_agreement, ppl_ratio and base_perplexity.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    let threads = engine::threads(args.threads);
    let model = engine::open_model(&args.model)?;
    let tok = engine::tokenizer(&model, &args.model)?;
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    // llama-perplexity's rule: BOS first when the model adds one, and each
    // window starts with BOS.
    let bos = if model.config().add_bos() { model.config().bos() } else { None };
    let tokens = match bos {
        Some(_) => engine::encode_prompt(&model, &tok, &text)?,
        None => engine::encode(&tok, &text)?,
    };
    if tokens.len() < 2 {
        return Err(format!("{}: fewer than 2 tokens", args.file.display()).into());
    }
    let mut cfg = engine::session_config(&model, args.ctx, args.kv, threads);
    if cfg.max_ctx < args.ctx {
        return Err(format!("--ctx {} exceeds the model's trained context {}", args.ctx, cfg.max_ctx).into());
    }
    cfg.max_ctx = args.ctx;
    cfg.logits_all = true;
    cfg.f32_activations = args.f32_activations;
    cfg.streaming = args.streaming;
    cfg.sinks = args.sinks;
    let plan = model.plan(&cfg)?;
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena)?;
    let started = std::time::Instant::now();
    let n_windows = if args.streaming {
        tokens.len().div_ceil(256)
    } else {
        Score::from(args.score).windows(tokens.len(), args.ctx).count()
    };
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
    let score: Score = args.score.into();
    if !args.streaming && score.scored(tokens.len(), args.ctx) == 0 {
        return Err(format!(
            "{}: {} tokens leave no position to score with --ctx {} --score {:?}",
            args.file.display(),
            tokens.len(),
            args.ctx,
            args.score
        )
        .into());
    }
    let vocab = model.config().vocab_size as usize;
    let mut writer = match &args.kl_divergence_base {
        Some(path) => Some(BaseWriter::create(path, vocab, args.ctx, score, &tokens)?),
        None => None,
    };
    let mut reader = match &args.kl_divergence {
        Some(path) => Some(BaseReader::open(path, vocab, args.ctx, score, &tokens)?),
        None => None,
    };
    let mut totals = Totals::default();
    // The first I/O error of the per-position work (reported after the run).
    let mut io_error: Option<std::io::Error> = None;
    let mut on_position = |logits: &[f32], target: u32| {
        if io_error.is_some() {
            return;
        }
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.push(logits) {
                io_error = Some(e);
            }
        }
        if let Some(r) = reader.as_mut() {
            match r.next_row() {
                Ok(base) => totals.add(base, logits, target),
                Err(e) => io_error = Some(e),
            }
        }
    };
    let result = if args.streaming {
        eval::streaming_perplexity(&mut session, &tokens, &mut report)?
    } else {
        eval::scored_perplexity(&mut session, &tokens, args.ctx, score, bos, &mut report, &mut on_position)?
    };
    if let Some(e) = io_error {
        let path = args.kl_divergence_base.as_ref().or(args.kl_divergence.as_ref());
        return Err(format!("{}: {e}", path.map(|p| p.display().to_string()).unwrap_or_default()).into());
    }
    if let Some(w) = writer {
        w.finish()?;
    }
    let kld = args.kl_divergence.is_some().then(|| {
        let base_ppl = (totals.base_nll_sum / result.predicted.max(1) as f64).exp();
        (
            totals.mean(),
            totals.percentile(0.99),
            totals.same_top as f64 / totals.kld.len().max(1) as f64,
            result.perplexity() / base_ppl,
            base_ppl,
        )
    });
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let mut line = json!({
            "tokens": result.tokens,
            "predicted": result.predicted,
            "mean_nll": result.mean_nll(),
            "perplexity": result.perplexity(),
        });
        if let (Some((mean, p99, top1, ratio, base_ppl)), Some(map)) = (kld, line.as_object_mut()) {
            map.insert("kld_mean".into(), json!(mean));
            map.insert("kld_p99".into(), json!(p99));
            map.insert("top1_agreement".into(), json!(top1));
            map.insert("ppl_ratio".into(), json!(ratio));
            map.insert("base_perplexity".into(), json!(base_ppl));
        }
        super::print_stdout(&format!("{line}\n"))?;
    } else {
        super::print_stdout(&format!(
            "tokens {}  predicted {}  mean NLL {:.6}  perplexity {:.4}\n",
            result.tokens,
            result.predicted,
            result.mean_nll(),
            result.perplexity()
        ))?;
        if let Some((mean, p99, top1, ratio, base_ppl)) = kld {
            super::print_stdout(&format!(
                "base perplexity {base_ppl:.4}  ratio {ratio:.5}  mean KLD {mean:.6}  99% KLD {p99:.6}  \
                 top-1 agreement {:.2} %\n",
                top1 * 100.0
            ))?;
        }
    }
    eprintln!("[ferrite] {:.1} s ({:.1} tok/s)", secs, result.tokens as f64 / secs.max(1e-9));
    Ok(ExitCode::SUCCESS)
}
