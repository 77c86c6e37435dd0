//! `ferrite convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use ferrite_converter::{convert, KeepTypes, Mix, Options, Progress, TensorType};
use ferrite_format::DType;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::CliResult;

/// Storage types selectable on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightType {
    /// 4-bit symmetric, groups of 32 with an f16 scale (4.5 bits/weight).
    Q4,
    /// 4-bit asymmetric, groups of 32 with an f16 scale and an f16 minimum
    /// (5.0 bits/weight).
    Q4a,
    /// 8-bit, groups of 32 with an f16 scale (8.5 bits/weight).
    Q8,
    /// llama.cpp's Q4_K: 4-bit levels, super-blocks of 256 with 6-bit
    /// scales and minimums per group of 32 (4.625 bits/weight).
    Q4k,
    /// llama.cpp's Q5_K: as q4k with 5-bit levels (5.625 bits/weight).
    Q5k,
    /// llama.cpp's Q6_K: 6-bit symmetric levels, an i8 scale per 16
    /// (6.5625 bits/weight).
    Q6k,
    /// IEEE half precision.
    F16,
    /// IEEE single precision (exact).
    F32,
}

impl From<WeightType> for DType {
    fn from(w: WeightType) -> DType {
        match w {
            WeightType::Q4 => DType::Q4,
            WeightType::Q4a => DType::Q4A,
            WeightType::Q8 => DType::Q8,
            WeightType::Q4k => DType::Q4K,
            WeightType::Q5k => DType::Q5K,
            WeightType::Q6k => DType::Q6K,
            WeightType::F16 => DType::F16,
            WeightType::F32 => DType::F32,
        }
    }
}

/// What --weights accepts: a storage type, or a preset mix of them.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WeightsArg {
    /// 4-bit symmetric, groups of 32 with an f16 scale (4.5 bits/weight).
    Q4,
    /// 4-bit asymmetric, groups of 32 with an f16 scale and an f16 minimum
    /// (5.0 bits/weight).
    Q4a,
    /// q4, with attn_v and ffn_down at q8 (the tensors whose errors cost
    /// most).
    #[value(name = "q4-mix")]
    Q4Mix,
    /// 8-bit, groups of 32 with an f16 scale (8.5 bits/weight).
    Q8,
    /// llama.cpp's Q4_K: 4-bit levels, super-blocks of 256 with 6-bit
    /// scales and minimums per group of 32 (4.625 bits/weight).
    Q4k,
    /// llama.cpp's Q5_K: as q4k with 5-bit levels (5.625 bits/weight).
    Q5k,
    /// llama.cpp's Q6_K: 6-bit symmetric levels, an i8 scale per 16
    /// (6.5625 bits/weight).
    Q6k,
    /// llama.cpp's Q4_K_M recipe: q4k, with attn_v and ffn_down at q6k in
    /// the first and last eighth of the layers and every third one
    /// between, the output table at q6k (a separate embedding table q4k).
    #[value(name = "q4k-m")]
    Q4kM,
    /// IEEE half precision.
    F16,
    /// IEEE single precision (exact).
    F32,
}

/// The per-tensor rules of the `q4-mix` preset.
pub const Q4_MIX: [&str; 2] = ["attn_v=q8", "ffn_down=q8"];

impl WeightsArg {
    /// The base type, the preset's rules and its model-dependent mix.
    fn resolve(self) -> CliResult<(DType, Vec<TensorType>, Option<Mix>)> {
        let base = match self {
            WeightsArg::Q4 | WeightsArg::Q4Mix => DType::Q4,
            WeightsArg::Q4a => DType::Q4A,
            WeightsArg::Q8 => DType::Q8,
            WeightsArg::Q4k | WeightsArg::Q4kM => DType::Q4K,
            WeightsArg::Q5k => DType::Q5K,
            WeightsArg::Q6k => DType::Q6K,
            WeightsArg::F16 => DType::F16,
            WeightsArg::F32 => DType::F32,
        };
        let rules = match self {
            WeightsArg::Q4Mix => Q4_MIX.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok((base, rules, matches!(self, WeightsArg::Q4kM).then_some(Mix::Q4KM)))
    }
}

/// Convert a Hugging Face checkpoint folder or a GGUF file into a Ferrite file.
///
/// INPUT is either an HF folder holding config.json, model.safetensors (or
/// shards with model.safetensors.index.json), and optionally
/// generation_config.json, tokenizer.json and tokenizer_config.json
/// (LlamaForCausalLM incl. llama3 RoPE scaling, MistralForCausalLM,
/// Qwen2ForCausalLM; f32/f16/bf16 tensors), or a llama.cpp GGUF file (v3;
/// architectures llama and qwen2; tokenizer and chat template from its
/// metadata). A GGUF's tensors keep their types, transcoded without
/// dequantizing: Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 become q4k, q5k, q6k, q5_0,
/// q5_1; Q8_0, Q4_0, Q4_1 become q8, q4, q4a (a Q8_0 block holding -128 is
/// requantized, with a warning); F16 stays f16, F32 and BF16 become f32.
/// --weights (all matrices), --embed (the embedding/output table) and
/// --tensor-type (the tensors it names) dequantize those tensors instead and
/// store them as they say. Other ggml types (Q2_K, Q3_K, IQ*, TQ*, MXFP4)
/// are refused, naming the type and the tensor. Tokenizers: byte-level BPE (GPT-2, SmolLM,
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
    /// Type of the linear layers' weights (q4-mix: q4 with attn_v and
    /// ffn_down at q8; q4k-m: llama.cpp's Q4_K_M recipe). K types fall
    /// back on rows that are not a multiple of 256 as llama.cpp's do (q4k
    /// to q5_0, q5k to q5_1, q6k to q8; a warning lists the tensors)
    /// [default: q4; for a GGUF, each tensor's own type]
    #[arg(long, value_enum)]
    weights: Option<WeightsArg>,
    /// Type of the embedding/output table [default: q8 with --weights q4,
    /// q4a or q4-mix, else the weights' type; for a GGUF without --weights,
    /// the table's own type].
    #[arg(long, value_enum)]
    embed: Option<WeightType>,
    /// Store some tensors as another type, ROLE=TYPE or blk.N.ROLE=TYPE
    /// (repeatable, or comma-separated; later rules win): ROLE is embedding,
    /// output, attn_q, attn_k, attn_v, attn_o, ffn_gate, ffn_up or
    /// ffn_down; TYPE is f32, f16, q8, q4, q4a, q4k, q5k, q6k, q5_0 or
    /// q5_1. Example:
    /// --tensor-type attn_v=q8,ffn_down=q8 --tensor-type blk.0.ffn_down=f16
    #[arg(long, value_name = "ROLE=TYPE", value_delimiter = ',')]
    tensor_type: Vec<TensorType>,
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
    let (weights, mut tensor_types, mix) = args.weights.unwrap_or(WeightsArg::Q4).resolve()?;
    tensor_types.extend(args.tensor_type);
    // A GGUF's tensors keep their types unless an option names them.
    let keep = KeepTypes { weights: args.weights.is_none(), embed: args.weights.is_none() && args.embed.is_none() };
    let opts = Options {
        weights,
        embed: args.embed.map(Into::into),
        allow_nonfinite: args.allow_nonfinite,
        tensor_types,
        mix,
        keep,
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
