//! What `run`, `chat`, `bench` and `perplexity` share: loading a model, its
//! tokenizer, the chat template, options, and the logits dump.

use std::io::Write;
use std::path::Path;

use clap::ValueEnum;
use ferrite_runtime::sampler::{Sampler, SamplerConfig};
use ferrite_runtime::tokenizer::Tokenizer;
use ferrite_runtime::{KvType, Model, SessionConfig};

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
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len()) + 1];
    let n = ferrite_runtime::generate::encode_prompt(model.config(), tok, text, &mut ids)?;
    ids.truncate(n);
    Ok(ids)
}

/// Encodes rendered chat text as transformers'
/// `apply_chat_template(tokenize=True)` does: special tokens parsed, no BOS
/// added (a template that wants BOS writes `{{ bos_token }}` itself).
pub fn encode_chat(tok: &Tokenizer<'_>, rendered: &str) -> CliResult<Vec<u32>> {
    encode(tok, rendered)
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
    /// Attention-sink tokens kept at the start of a streaming cache [default: 4].
    #[arg(long)]
    pub sinks: Option<usize>,
}

impl StreamArgs {
    /// Applies these options to a session config.
    pub fn apply(self, cfg: &mut SessionConfig) {
        cfg.streaming = !self.no_streaming;
        cfg.sinks = self.sinks.unwrap_or(SessionConfig::default().sinks);
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

/// The thread count given, or all available CPUs (the session starts its
/// own worker threads).
pub fn threads(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(default_threads)
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
