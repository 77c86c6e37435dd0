//! `ferrite run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use ferrite_runtime::generate::{GenOptions, History};
use ferrite_runtime::Session;

use super::engine::{self, KvArg, Message, NpyWriter};
use super::generate::{self, Generation, Output};
use super::CliResult;

/// What stdout carries.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputKind {
    /// The generated text, streamed token by token (stop tokens not printed).
    Text,
    /// The generated ids, comma-separated on one line (the stop id included).
    Ids,
}

/// Where the forward pass runs.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Device {
    /// The CPU (threads: -t).
    Cpu,
    /// The first NVIDIA GPU (a build with `--features cuda`; f16 or f32 KV
    /// cache, no streaming: a full context ends generation, so --sinks and
    /// -t are refused).
    Cuda,
}

/// Generate text from a prompt.
///
/// stdout carries only the generation; timing and memory figures go to
/// stderr. Generation stops after a stop token (unless --ignore-eos) or
/// after -n tokens. --temp 0 is greedy.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .frt model file.
    #[arg(short, long, value_name = "FILE")]
    pub model: PathBuf,
    /// Prompt text (tokenized with the model's tokenizer and BOS rule).
    #[arg(short, long, conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
    pub prompt: Option<String>,
    /// Prompt token ids, used exactly as given: 1,2,3.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: engine::SamplingArgs,
    /// Wrap the prompt (text, not --prompt-ids) as one user turn with the
    /// model's chat template; the rendered text is tokenized as is (no BOS
    /// added: a template that wants one writes it).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub chat: bool,
    /// Do not stop at stop tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print the prompt's token ids to stderr before generating.
    #[arg(long)]
    pub verbose_prompt: bool,
    /// Context size in tokens (capped at the model's trained context).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Threads for the matrix products [default: all available CPUs].
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Most prompt tokens per prefill batch [default: the runtime's, 32].
    #[arg(short = 'b', long, value_name = "TOKENS")]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub stream: engine::StreamArgs,
    /// KV cache element type.
    #[arg(long, value_enum, default_value = "f16")]
    pub kv: KvArg,
    /// Where the forward pass runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// What stdout carries.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputKind,
    /// Write the raw logits of every prompt position and every generated
    /// token fed back to a float32 .npy file of shape [P + n - 1, vocab].
    #[arg(long, value_name = "FILE.npy")]
    pub dump_logits: Option<PathBuf>,
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    let threads = engine::threads(args.threads);
    if args.device == Device::Cuda {
        // The CUDA session runs on the GPU with a cache that does not stream.
        if args.threads.is_some() {
            return Err("-t/--threads sets CPU threads: it has no effect with --device cuda".into());
        }
        if args.stream.sinks.is_some() {
            return Err("--sinks: the CUDA cache does not stream (a full context ends generation)".into());
        }
    }
    let model = engine::open_model(&args.model)?;
    let tok = model.file().tokenizer().is_some().then(|| engine::tokenizer(&model, &args.model)).transpose()?;
    let prompt: Vec<u32> = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => {
            let tok = tok.as_ref().ok_or_else(|| {
                format!("{}: this file has no tokenizer: give the prompt as --prompt-ids", args.model.display())
            })?;
            if args.chat {
                let user = Message { role: "user".into(), content: text.clone() };
                engine::encode_chat(tok, &engine::render_chat(&model, tok, &[user], true)?)?
            } else {
                engine::encode_prompt(&model, tok, text)?
            }
        }
        (None, None) => return Err("give a prompt with -p or --prompt-ids".into()),
    };
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if args.verbose_prompt {
        let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
        eprintln!("[ferrite] prompt ids ({}): {}", prompt.len(), ids.join(","));
    }
    let mut sampler = args.sampling.sampler()?;
    let mut cfg = engine::session_config(&model, args.ctx, args.kv, threads);
    cfg.logits_all = args.dump_logits.is_some();
    if let Some(b) = args.batch {
        cfg.max_batch = b;
    }
    args.stream.apply(&mut cfg);
    let mut sink = match &args.dump_logits {
        Some(p) => Some(NpyWriter::create(p, model.config().vocab_size as usize)?),
        None => None,
    };
    let opts = GenOptions { max_new: args.n_predict, ignore_eos: args.ignore_eos };
    let output =
        Output { text: args.output == OutputKind::Text, ids: args.output == OutputKind::Ids, collect_ids: false };
    if output.text && tok.is_none() {
        return Err(format!("{}: this file has no tokenizer: use --output ids", args.model.display()).into());
    }
    let mut history_buf = generate::history_buffer(&sampler);
    let mut history = History::new(&mut history_buf);
    let job = Job { tok: tok.as_ref(), prompt: &prompt, opts: &opts, output };
    let (g, memory, memory_bytes) = match args.device {
        Device::Cpu => {
            let plan = model.plan(&cfg)?;
            let mut arena = vec![0u8; plan.arena_bytes()];
            let mut session = Session::new(&model, &plan, &mut arena)?;
            eprintln!(
                "[ferrite] kernels {}, {} thread(s), ctx {}, batch {}, arena {} bytes",
                session.kernels(),
                cfg.threads,
                cfg.max_ctx,
                cfg.max_batch,
                plan.arena_bytes()
            );
            let g = job.run(model.config(), &mut session, &mut sampler, sink.as_mut(), &mut history)?;
            (g, "arena", plan.arena_bytes())
        }
        Device::Cuda => cuda_generate(&model, &cfg, &job, &mut sampler, sink.as_mut(), &mut history)?,
    };
    super::print_stdout("\n")?;
    if let Some(sink) = sink {
        let rows = sink.finish()?;
        eprintln!(
            "[ferrite] wrote {rows} rows of logits to {}",
            args.dump_logits.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    generate::report(prompt.len(), &g, memory, memory_bytes);
    if let Some(e) = g.error {
        return Err(format!("generation stopped after {} tokens: {e}", g.generated).into());
    }
    Ok(ExitCode::SUCCESS)
}

/// What to generate, whatever runs the forward pass.
struct Job<'j> {
    tok: Option<&'j ferrite_runtime::tokenizer::Tokenizer<'j>>,
    prompt: &'j [u32],
    opts: &'j GenOptions,
    output: Output,
}

impl Job<'_> {
    fn run<B>(
        &self,
        config: &ferrite_runtime::format::ModelConfig,
        backend: &mut B,
        sampler: &mut ferrite_runtime::sampler::Sampler,
        sink: Option<&mut NpyWriter>,
        history: &mut History<'_>,
    ) -> CliResult<Generation>
    where
        B: ferrite_runtime::Backend,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        generate::generate(config, backend, self.tok, sampler, self.prompt, self.opts, self.output, sink, history)
    }
}

/// Generation on the GPU: the weights are uploaded, then the same loop as
/// on the CPU runs over a CUDA session.
fn cuda_generate(
    model: &ferrite_runtime::Model<'_>,
    cfg: &ferrite_runtime::SessionConfig,
    job: &Job<'_>,
    sampler: &mut ferrite_runtime::sampler::Sampler,
    sink: Option<&mut NpyWriter>,
    history: &mut History<'_>,
) -> CliResult<(Generation, &'static str, usize)> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (model, cfg, job, sampler, sink, history);
        Err("this ferrite was built without CUDA: rebuild with `cargo build --release --features cuda` \
             (nvcc 13.0 needed at build time: bash scripts/cuda-toolchain.sh)"
            .into())
    }
    #[cfg(feature = "cuda")]
    {
        use ferrite_cuda::{CudaConfig, CudaModel, CudaSession, Gpu};
        let gpu = Gpu::new(0)?;
        let started = std::time::Instant::now();
        let cuda_model = CudaModel::new(gpu.clone(), model)?;
        let cuda_cfg = CudaConfig { max_ctx: cfg.max_ctx, max_batch: cfg.max_batch, kv: cfg.kv };
        let mut session = CudaSession::new(&cuda_model, &cuda_cfg)?;
        eprintln!(
            "[ferrite] CUDA: {} (PTX sm_{}); {:.1} MiB of weights uploaded in {:.2} s",
            gpu.name(),
            gpu.arch(),
            cuda_model.weight_bytes() as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        let g = job.run(model.config(), &mut session, sampler, sink, history)?;
        let bytes = cuda_model.weight_bytes() + session.plan().total_bytes();
        Ok((g, "GPU memory", bytes))
    }
}
