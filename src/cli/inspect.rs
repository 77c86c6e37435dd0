//! `ferrite inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use ferrite_format::{File, ModelConfig};
use serde_json::{json, Value};

use super::{CliResult, MappedFile};

/// Show a Ferrite file: config, tokenizer summary and tensor table.
///
/// Parsing always validates the header, config, directory and tokenizer
/// (their checksums included). --verify also checks every tensor's data
/// checksum and exits non-zero on a mismatch.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .frt file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Verify every tensor's checksum (reads the whole file).
    #[arg(long)]
    verify: bool,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Print the exact arena a session needs (KV cache, activations,
    /// scratch; the weights are mapped, not counted) instead of the tables.
    #[arg(long)]
    plan: bool,
    /// Context size for --plan (capped at the model's trained context, as
    /// `ferrite run` does).
    #[arg(long, default_value_t = 4096, requires = "plan")]
    ctx: usize,
    /// KV cache type for --plan.
    #[arg(long, value_enum, default_value = "f16", requires = "plan")]
    kv: super::engine::KvArg,
    /// Streaming sinks for --plan (the count does not change the size).
    #[arg(long, default_value_t = 4, requires = "plan")]
    sinks: usize,
    /// Threads for --plan (each needs its own scratch row) [default: all
    /// available CPUs, as `ferrite run`].
    #[arg(short = 't', long, requires = "plan")]
    threads: Option<usize>,
    /// Most prompt tokens per prefill batch for --plan [default: the
    /// runtime's, as `ferrite run` uses].
    #[arg(long, requires = "plan")]
    batch: Option<usize>,
}

fn render_plan(args: &Args, file: &File<'_>, text: &mut String) -> CliResult<ExitCode> {
    use std::fmt::Write as _;
    let model = ferrite_runtime::Model::from_bytes(file.bytes())?;
    // The config `ferrite run` would use with the same options.
    let threads = args.threads.unwrap_or_else(super::engine::default_threads);
    let mut cfg = super::engine::session_config(&model, args.ctx, args.kv, threads);
    cfg.sinks = args.sinks;
    if let Some(b) = args.batch {
        cfg.max_batch = b;
    }
    let plan = model.plan(&cfg)?;
    let p = plan.parts();
    if args.json {
        let out = json!({
            "ctx": cfg.max_ctx, "kv": format!("{:?}", args.kv).to_lowercase(), "sinks": cfg.sinks,
            "threads": cfg.threads, "batch": cfg.max_batch,
            "kv_cache_bytes": p.kv_cache, "activation_bytes": p.activations, "scratch_bytes": p.scratch,
            "views_bytes": p.views, "arena_bytes": plan.arena_bytes(), "weights_bytes_mapped": file.bytes().len(),
        });
        writeln!(text, "{out}")?;
    } else {
        writeln!(
            text,
            "session plan: ctx {}, kv {:?}, sinks {}, batch {}, threads {}",
            cfg.max_ctx, args.kv, cfg.sinks, cfg.max_batch, cfg.threads
        )?;
        writeln!(text, "  kv cache     {:>12} bytes", p.kv_cache)?;
        writeln!(text, "  activations  {:>12} bytes", p.activations)?;
        writeln!(text, "  scratch      {:>12} bytes", p.scratch)?;
        writeln!(text, "  tensor views {:>12} bytes (each layer's tensors, resolved once)", p.views)?;
        writeln!(text, "  arena total  {:>12} bytes (parts + 64 bytes of alignment slack)", plan.arena_bytes())?;
        writeln!(text, "  weights      {:>12} bytes, mapped from the file (not in the arena)", file.bytes().len())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn config_json(c: &ModelConfig) -> Value {
    json!({
        "arch": c.arch().map(|a| a.hf_name()).unwrap_or("?"),
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "ffn_dim": c.ffn_dim,
        "vocab_size": c.vocab_size,
        "trained_ctx": c.trained_ctx,
        "rope_theta": c.rope_theta,
        "rope_scaling": match c.rope_scaling() { Ok(ferrite_format::RopeScaling::None) => "none", Ok(ferrite_format::RopeScaling::Llama3) => "llama3", Ok(ferrite_format::RopeScaling::Linear) => "linear", Err(_) => "?" },
        "rope_factor": c.rope_factor,
        "rope_low_freq_factor": c.rope_low_freq_factor,
        "rope_high_freq_factor": c.rope_high_freq_factor,
        "rope_original_ctx": c.rope_original_ctx,
        "norm_eps": c.norm_eps,
        "tied_embeddings": c.tied_embeddings(),
        "qkv_bias": c.qkv_bias(),
        "bos_id": c.bos(),
        "add_bos": c.add_bos(),
        "sliding_window": c.sliding_window(),
        "stop_ids": c.stop_ids(),
    })
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    let mut out = String::new();
    let code = render(&args, &mut out)?;
    super::print_stdout(&out)?;
    Ok(code)
}

fn render(args: &Args, text: &mut String) -> CliResult<ExitCode> {
    use std::fmt::Write as _;
    let mapped = MappedFile::open(&args.file)?;
    let file = File::parse(mapped.bytes()).map_err(|e| format!("{}: {e}", args.file.display()))?;
    if args.plan {
        return render_plan(args, &file, text);
    }
    let c = file.config();
    let mut tensors = Vec::new();
    let mut failures = Vec::new();
    for i in 0..file.n_tensors() {
        let t = file.tensor_at(i).map_err(|e| format!("{}: {e}", args.file.display()))?;
        let verified = if args.verify {
            match t.verify() {
                Ok(()) => Some(true),
                Err(e) => {
                    failures.push(format!("{} ({}): {e}", t.role, i));
                    Some(false)
                }
            }
        } else {
            None
        };
        tensors.push((t, verified));
    }
    let tok = file.tokenizer();
    if args.json {
        let out = json!({
            "file": args.file.display().to_string(),
            "file_bytes": mapped.bytes().len(),
            "version": file.header().version,
            "group_size": file.header().group_size,
            "config": config_json(c),
            "tokenizer": tok.map(|t| json!({
                "kind": format!("{:?}", t.kind()),
                "pretokenizer": format!("{:?}", t.pretokenizer()),
                "tokens": t.n_tokens(),
                "merges": t.n_merges(),
                "specials": t.specials().len(),
                "eot_id": t.eot(),
                "chat_template_bytes": t.chat_template().len(),
            })),
            "tensors": tensors.iter().map(|(t, v)| json!({
                "role": t.role.to_string(),
                "rows": t.rows,
                "cols": t.cols,
                "dtype": t.dtype.name(),
                "bytes": t.data.len(),
                "offset": file.directory()[t.index as usize].offset,
                "crc32": format!("{:08x}", t.crc),
                "verified": v,
            })).collect::<Vec<_>>(),
            "verify_failures": failures,
        });
        writeln!(text, "{out}")?;
    } else {
        writeln!(
            text,
            "file      {} ({} bytes, format v{})",
            args.file.display(),
            mapped.bytes().len(),
            file.header().version
        )?;
        writeln!(text, "model     {}", config_json(c))?;
        match tok {
            Some(t) => writeln!(text,
                "tokenizer {:?} ({:?} pre-tokenizer): {} tokens, {} merges, {} added tokens, eot {:?}, chat template {}",
                t.kind(),
                t.pretokenizer(),
                t.n_tokens(),
                t.n_merges(),
                t.specials().len(),
                t.eot(),
                if t.chat_template().is_empty() { "none".to_string() } else { format!("{} bytes", t.chat_template().len()) }
            ),
            None => writeln!(text, "tokenizer none"),
        }?;
        writeln!(
            text,
            "{:>4}  {:<22} {:>14} {:>5} {:>12} {:>12}  {}",
            "#", "role", "shape", "type", "bytes", "offset", "crc32"
        )?;
        for (t, v) in &tensors {
            let shape = if t.cols == 1 && t.role.is_vector() {
                format!("[{}]", t.rows)
            } else {
                format!("[{}, {}]", t.rows, t.cols)
            };
            let mark = match v {
                Some(true) => "  ok",
                Some(false) => "  MISMATCH",
                None => "",
            };
            writeln!(
                text,
                "{:>4}  {:<22} {:>14} {:>5} {:>12} {:>12}  {:08x}{mark}",
                t.index,
                t.role.to_string(),
                shape,
                t.dtype.name(),
                t.data.len(),
                file.directory()[t.index as usize].offset,
                t.crc
            )?;
        }
        if args.verify {
            if failures.is_empty() {
                writeln!(text, "verify    all {} tensor checksums match", tensors.len())?;
            }
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("error: {f}");
        }
        eprintln!("error: {} of {} tensors failed verification", failures.len(), tensors.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
