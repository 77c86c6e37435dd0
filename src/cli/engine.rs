//! What `run`, `chat` and `perplexity` share: loading a model, its
//! tokenizer, the chat template, and a generation loop.

use std::io::Write;
use std::path::Path;

use clap::ValueEnum;
use ferrite_runtime::sampler::{Sampler, SamplerConfig};
use ferrite_runtime::tokenizer::{Tokenizer, Utf8Stream};
use ferrite_runtime::{KvType, Model, Session, SessionConfig};

use super::CliResult;

/// KV cache element type on the command line.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum KvArg {
    /// Half precision (default; half the memory).
    F16,
    /// Single precision (exact comparisons).
    F32,
    /// int8 with one scale per head row (about a quarter of f32).
    Q8,
}

impl From<KvArg> for KvType {
    fn from(k: KvArg) -> KvType {
        match k {
            KvArg::F16 => KvType::F16,
            KvArg::F32 => KvType::F32,
            KvArg::Q8 => KvType::Q8,
        }
    }
}

/// Opens a model file (memory-mapped).
pub fn open_model(path: &Path) -> CliResult<Model<'static>> {
    Model::open(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// The model's tokenizer, or an error saying the file has none.
pub fn tokenizer<'m>(model: &'m Model<'_>, path: &Path) -> CliResult<Tokenizer<'m>> {
    let file = model.file();
    let view = file
        .tokenizer()
        .copied()
        .ok_or_else(|| format!("{}: this file has no tokenizer: give the prompt as --prompt-ids", path.display()))?;
    Ok(Tokenizer::new(view).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// Encodes text (no BOS handling).
pub fn encode(tok: &Tokenizer<'_>, text: &str) -> CliResult<Vec<u32>> {
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(text, &mut ids)?;
    ids.truncate(n);
    Ok(ids)
}

/// Encodes a prompt with the model's BOS rule.
pub fn encode_prompt(model: &Model<'_>, tok: &Tokenizer<'_>, text: &str) -> CliResult<Vec<u32>> {
    let mut ids = Vec::new();
    if model.config().add_bos() {
        if let Some(bos) = model.config().bos() {
            ids.push(bos);
        }
    }
    ids.extend(encode(tok, text)?);
    Ok(ids)
}

/// One chat message.
#[derive(Clone, Debug)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Renders the file's chat template over `messages`.
pub fn render_chat(
    model: &Model<'_>,
    tok: &Tokenizer<'_>,
    messages: &[Message],
    add_generation_prompt: bool,
) -> CliResult<String> {
    let template = std::str::from_utf8(tok.view().chat_template()).map_err(|_| "chat template is not UTF-8")?;
    if template.is_empty() {
        return Err("this model file has no chat template".into());
    }
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| format!("chat template: {e}"))?;
    let token_text = |id: Option<u32>| {
        id.and_then(|id| tok.token_bytes(id).ok()).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
    };
    let msgs: Vec<_> =
        messages.iter().map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() }).collect();
    let out = env
        .get_template("chat")
        .and_then(|t| {
            t.render(minijinja::context! {
                messages => msgs,
                add_generation_prompt => add_generation_prompt,
                bos_token => token_text(model.config().bos()),
                eos_token => token_text(tok.eot()),
            })
        })
        .map_err(|e| format!("chat template: {e}"))?;
    Ok(out)
}

/// Sampling options shared by `run` and `chat`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set with this cumulative probability (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the best one's probability (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens among the last 64 (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed [default: from the clock; printed to stderr].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// A sampler for these options (seeded from the clock when no seed is
    /// given; the seed is then printed to stderr so a run can be repeated).
    pub fn sampler(&self) -> CliResult<Sampler> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        if self.seed.is_none() && self.temp > 0.0 {
            eprintln!("[ferrite] seed {seed}");
        }
        Ok(Sampler::new(SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed,
            ..SamplerConfig::default()
        })?)
    }
}

/// Streaming KV cache options shared by `run` and `chat`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct StreamArgs {
    /// Make a full context an error instead of evicting old tokens (by
    /// default the cache streams: the first --sinks tokens stay, the oldest
    /// others are evicted, and generation can go on forever).
    #[arg(long)]
    pub no_streaming: bool,
    /// Attention-sink tokens kept at the start of a streaming cache.
    #[arg(long, default_value_t = 4)]
    pub sinks: usize,
}

impl StreamArgs {
    /// Applies these options to a session config.
    pub fn apply(self, cfg: &mut SessionConfig) {
        cfg.streaming = !self.no_streaming;
        cfg.sinks = self.sinks;
    }
}

/// Builds a session config: `ctx` capped at the model's trained context.
pub fn session_config(model: &Model<'_>, ctx: usize, kv: KvArg, threads: usize) -> SessionConfig {
    let trained = model.config().trained_ctx as usize;
    SessionConfig {
        max_ctx: ctx.min(trained.max(1)).max(1),
        kv: kv.into(),
        threads: threads.max(1),
        ..Default::default()
    }
}

/// Default thread count: the CPUs this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs `f` on a rayon pool of `threads` threads (the runtime splits its
/// matrix products on the current pool).
pub fn with_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> CliResult<T> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build()?;
    Ok(pool.install(f))
}

/// Peak resident set size of this process, in bytes (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A float32 `.npy` file written row by row; the header is rewritten with
/// the final row count when finished.
pub struct NpyWriter {
    file: std::io::BufWriter<std::fs::File>,
    cols: usize,
    rows: usize,
    path: std::path::PathBuf,
}

const NPY_HEADER: usize = 128;

impl NpyWriter {
    /// Creates the file.
    pub fn create(path: &Path, cols: usize) -> CliResult<Self> {
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = NpyWriter { file: std::io::BufWriter::new(file), cols, rows: 0, path: path.to_path_buf() };
        w.file.write_all(&Self::header(0, cols))?;
        Ok(w)
    }
    fn header(rows: usize, cols: usize) -> Vec<u8> {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
        let mut h = Vec::with_capacity(NPY_HEADER);
        h.extend_from_slice(b"\x93NUMPY\x01\x00");
        let len = (NPY_HEADER - 10) as u16;
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(dict.as_bytes());
        while h.len() < NPY_HEADER - 1 {
            h.push(b' ');
        }
        h.push(b'\n');
        h
    }
    /// Appends one row.
    pub fn push(&mut self, row: &[f32]) -> CliResult<()> {
        debug_assert_eq!(row.len(), self.cols);
        for v in row {
            self.file.write_all(&v.to_le_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }
    /// Rewrites the header with the row count and closes the file.
    pub fn finish(mut self) -> CliResult<usize> {
        use std::io::{Seek, SeekFrom};
        self.file.flush()?;
        let mut f = self.file.into_inner().map_err(|e| format!("{}: {}", self.path.display(), e.error()))?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&Self::header(self.rows, self.cols))?;
        Ok(self.rows)
    }
}

/// A forward pass that `generate` drives: the CPU [`Session`] or, with
/// feature `cuda`, a `ferrite_cuda::CudaSession`.
pub trait Forward {
    /// Feeds the prompt; the logits of its last token are then in `logits()`.
    fn prefill(&mut self, tokens: &[u32]) -> CliResult<()>;
    /// Feeds the prompt, passing the logits of every position to `each`.
    fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> CliResult<()>;
    /// Feeds one token.
    fn step(&mut self, token: u32) -> CliResult<()>;
    /// The logits of the last token fed.
    fn logits(&self) -> &[f32];
}

impl Forward for Session<'_, '_> {
    fn prefill(&mut self, tokens: &[u32]) -> CliResult<()> {
        Session::prefill(self, tokens)?;
        Ok(())
    }
    fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> CliResult<()> {
        Ok(Session::prefill_all(self, tokens, each)?)
    }
    fn step(&mut self, token: u32) -> CliResult<()> {
        Session::step(self, token)?;
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        Session::logits(self)
    }
}

#[cfg(feature = "cuda")]
impl Forward for ferrite_cuda::CudaSession<'_> {
    fn prefill(&mut self, tokens: &[u32]) -> CliResult<()> {
        ferrite_cuda::CudaSession::prefill(self, tokens)?;
        Ok(())
    }
    fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> CliResult<()> {
        Ok(ferrite_cuda::CudaSession::prefill_all(self, tokens, each)?)
    }
    fn step(&mut self, token: u32) -> CliResult<()> {
        ferrite_cuda::CudaSession::step(self, token)?;
        Ok(())
    }
    fn logits(&self) -> &[f32] {
        ferrite_cuda::CudaSession::logits(self)
    }
}

/// Options of the generation loop.
pub struct GenOptions {
    /// Most new tokens.
    pub max_new: usize,
    /// Keep going after a stop id.
    pub ignore_eos: bool,
    /// Print decoded text as it is generated (else nothing is printed).
    pub stream_text: bool,
    /// Print the new ids to stdout as they are generated, comma-separated.
    pub stream_ids: bool,
    /// Keep every new id in [`Generation::ids`] (else only the count grows:
    /// memory stays flat however long generation runs).
    pub collect_ids: bool,
}

/// What a generation produced.
pub struct Generation {
    /// New ids (including the stop id if generation ended on one), when
    /// collected.
    pub ids: Vec<u32>,
    /// Number of new ids.
    pub generated: usize,
    /// Whether generation ended on a stop id.
    pub stopped: bool,
    /// Seconds spent in prefill.
    pub prefill_s: f64,
    /// Seconds spent in decode steps.
    pub decode_s: f64,
    /// Tokens fed in decode steps.
    pub decode_steps: usize,
    /// Why generation ended early (e.g. a full context), after `ids`.
    pub error: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Feeds `prompt`, then samples up to `max_new` tokens. `logits_sink`
/// receives the raw logits of every prompt position (when given) and of
/// every generated token fed back.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Model<'_>,
    session: &mut dyn Forward,
    tok: Option<&Tokenizer<'_>>,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenOptions,
    mut logits_sink: Option<&mut NpyWriter>,
    history: &mut Vec<u32>,
) -> CliResult<Generation> {
    let vocab = model.config().vocab_size as usize;
    let mut logits = vec![0f32; vocab];
    let mut scratch = vec![0u32; vocab];
    let started = std::time::Instant::now();
    match logits_sink.as_deref_mut() {
        Some(sink) => {
            let mut err = None;
            session.prefill_all(prompt, &mut |_, l| {
                if err.is_none() {
                    err = sink.push(l).err();
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        None => {
            session.prefill(prompt)?;
        }
    }
    logits.copy_from_slice(session.logits());
    let prefill_s = started.elapsed().as_secs_f64();
    history.extend_from_slice(prompt);

    let mut out = Generation {
        ids: vec![],
        stopped: false,
        prefill_s,
        decode_s: 0.0,
        decode_steps: 0,
        error: None,
        generated: 0,
    };
    let mut utf8 = Utf8Stream::new();
    let stdout = std::io::stdout();
    let decode_start = std::time::Instant::now();
    for i in 0..opts.max_new {
        let recent_from = history.len().saturating_sub(sampler.config().repeat_last_n);
        let id = sampler.sample(&mut logits, &history[recent_from..], &mut scratch)?;
        out.generated += 1;
        if opts.collect_ids {
            out.ids.push(id);
        }
        history.push(id);
        // Only the last `repeat_last_n` ids matter: keep the history bounded.
        let keep = sampler.config().repeat_last_n.max(1);
        if history.len() >= 2 * keep + 64 {
            history.drain(..history.len() - keep);
        }
        if opts.stream_ids {
            let mut lock = stdout.lock();
            let sep = if out.generated > 1 { "," } else { "" };
            let _ = write!(lock, "{sep}{id}");
        }
        let is_stop = model.config().is_stop(id);
        if opts.stream_text && !(is_stop && !opts.ignore_eos) {
            if let Some(t) = tok {
                let bytes = t.token_bytes(id)?;
                let mut lock = stdout.lock();
                utf8.push(bytes, |s| {
                    let _ = lock.write_all(s.as_bytes());
                });
                let _ = lock.flush();
            }
        }
        if is_stop && !opts.ignore_eos {
            out.stopped = true;
            break;
        }
        if i + 1 == opts.max_new {
            break;
        }
        if let Err(e) = session.step(id) {
            // Keep what was generated; the caller reports the error after it.
            out.error = Some(e);
            break;
        }
        out.decode_steps += 1;
        logits.copy_from_slice(session.logits());
        if let Some(sink) = logits_sink.as_deref_mut() {
            sink.push(&logits)?;
        }
    }
    if opts.stream_ids {
        let mut lock = stdout.lock();
        let _ = lock.flush();
    }
    if opts.stream_text {
        let mut lock = stdout.lock();
        utf8.finish(|s| {
            let _ = lock.write_all(s.as_bytes());
        });
        let _ = lock.flush();
    }
    out.decode_s = decode_start.elapsed().as_secs_f64();
    Ok(out)
}

/// Prints timing and memory figures to stderr.
pub fn report(prompt_len: usize, g: &Generation, memory: &str, memory_bytes: usize) {
    let pp = prompt_len as f64 / g.prefill_s.max(1e-9);
    let tg = if g.decode_steps > 0 { g.decode_steps as f64 / g.decode_s.max(1e-9) } else { 0.0 };
    eprintln!(
        "\n[ferrite] prompt {prompt_len} tokens in {:.3} s ({pp:.1} tok/s); generated {} tokens, {} decode steps in {:.3} s ({tg:.1} tok/s); {memory} {:.1} MiB; peak RSS {:.1} MiB",
        g.prefill_s,
        g.generated,
        g.decode_steps,
        g.decode_s,
        memory_bytes as f64 / (1 << 20) as f64,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
}
