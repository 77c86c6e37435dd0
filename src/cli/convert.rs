//! `ferrite convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use ferrite_converter::{convert, Options, Progress};
use ferrite_format::DType;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::CliResult;

/// Storage types selectable on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightType {
    /// 4-bit, groups of 32 with an f16 scale (4.5 bits/weight).
    Q4,
    /// 8-bit, groups of 32 with an f16 scale (8.5 bits/weight).
    Q8,
    /// IEEE half precision.
    F16,
    /// IEEE single precision (exact).
    F32,
}

impl From<WeightType> for DType {
    fn from(w: WeightType) -> DType {
        match w {
            WeightType::Q4 => DType::Q4,
            WeightType::Q8 => DType::Q8,
            WeightType::F16 => DType::F16,
            WeightType::F32 => DType::F32,
        }
    }
}

/// Convert a Hugging Face checkpoint folder or a GGUF file into a Ferrite file.
///
/// INPUT is either an HF folder holding config.json, model.safetensors (or
/// shards with model.safetensors.index.json), and optionally
/// generation_config.json, tokenizer.json and tokenizer_config.json
/// (LlamaForCausalLM incl. llama3 RoPE scaling, MistralForCausalLM,
/// Qwen2ForCausalLM; f32/f16/bf16 tensors), or a llama.cpp GGUF file (v3;
/// architectures llama and qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors,
/// dequantized and stored as --weights/--embed say; tokenizer and chat
/// template from its metadata). Tokenizers: byte-level BPE (GPT-2, SmolLM,
/// Llama 3, Qwen2 pre-tokenizers) and SentencePiece-style BPE (Llama 2,
/// TinyLlama, Mistral v0.1: byte fallback, scores). Norms and biases stay f32. The output is written to
/// a temporary file beside OUT (.OUT.PID.XXXXXX.ferrite-tmp) and renamed into
/// place when complete; the temporary file of a conversion that was killed
/// is removed by the next conversion to OUT. Weights holding NaN or infinity
/// are refused unless --allow-nonfinite.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Hugging Face model folder, or a .gguf file.
    #[arg(value_name = "INPUT")]
    input: PathBuf,
    /// Output file (.frt).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Type of the linear layers' weights.
    #[arg(long, value_enum, default_value = "q4")]
    weights: WeightType,
    /// Type of the embedding/output table [default: q8 with --weights q4,
    /// else the weights' type].
    #[arg(long, value_enum)]
    embed: Option<WeightType>,
    /// Convert weights holding NaN or infinity instead of refusing them:
    /// f32/f16 store them as they are, q8/q4 quantize them as 0; each such
    /// tensor is reported as a warning.
    #[arg(long)]
    allow_nonfinite: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    let opts = Options {
        weights: args.weights.into(),
        embed: args.embed.map(Into::into),
        allow_nonfinite: args.allow_nonfinite,
    };
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = convert(&args.input, &args.output, &opts, &mut |p| match p {
        Progress::Start { bytes, .. } => bar.set_length(bytes),
        Progress::Tensor { name, .. } => bar.set_message(name.to_string()),
        Progress::Advance(n) => bar.inc(n),
    });
    bar.finish_and_clear();
    let summary = summary?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    if !args.quiet {
        let params: u64 = summary.by_type.values().map(|s| s.params).sum();
        eprintln!(
            "wrote {} ({:.1} MB, {} tensors, {:.2} M parameters, {:.2} bits/weight overall)",
            summary.output.display(),
            summary.file_bytes as f64 / 1e6,
            summary.by_type.values().map(|s| s.tensors).sum::<usize>(),
            params as f64 / 1e6,
            summary.file_bytes as f64 * 8.0 / params.max(1) as f64
        );
        eprintln!(
            "{:<6} {:>8} {:>14} {:>12} {:>10} {:>12}",
            "type", "tensors", "params", "bytes", "bits/w", "rel. RMSE"
        );
        for (dtype, s) in &summary.by_type {
            eprintln!(
                "{:<6} {:>8} {:>14} {:>12} {:>10.3} {:>12.3e}",
                dtype.name(),
                s.tensors,
                s.params,
                s.bytes,
                s.bits_per_weight(),
                s.relative_rmse()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
