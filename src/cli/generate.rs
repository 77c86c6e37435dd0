//! The CLI's view of a generation: the runtime's loop
//! ([`ferrite_runtime::generate`]) with an observer that streams text or
//! ids to stdout, dumps logits and times prefill and decode.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::Instant;

use ferrite_runtime::format::ModelConfig;
use ferrite_runtime::generate::{self, End, GenBuffers, GenOptions, History, Observer};
use ferrite_runtime::sampler::Sampler;
use ferrite_runtime::tokenizer::Tokenizer;
use ferrite_runtime::Backend;

use super::engine::{peak_rss_bytes, NpyWriter};
use super::CliResult;

/// What stdout carries while generating.
#[derive(Clone, Copy, Debug, Default)]
pub struct Output {
    /// Decoded text as it is generated.
    pub text: bool,
    /// The new ids as they are generated, comma-separated.
    pub ids: bool,
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
    /// Seconds spent in prefill.
    pub prefill_s: f64,
    /// Seconds spent in decode steps.
    pub decode_s: f64,
    /// Tokens fed in decode steps.
    pub decode_steps: usize,
    /// Why generation ended early (e.g. a full context), after `ids`.
    pub error: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// A repetition history buffer for `sampler`: room for twice its window
/// (plus a margin), so ids move once per window.
pub fn history_buffer(sampler: &Sampler) -> Vec<u32> {
    vec![0; 2 * sampler.config().repeat_last_n + 64]
}

struct Cli<'s> {
    output: Output,
    ids: Vec<u32>,
    count: usize,
    sink: Option<&'s mut NpyWriter>,
    sink_error: Option<Box<dyn std::error::Error + Send + Sync>>,
    started: Instant,
    prefill_s: f64,
    decode_start: Instant,
    stdout: std::io::Stdout,
}

impl Cli<'_> {
    fn dump(&mut self, logits: &[f32]) {
        if let (Some(sink), None) = (self.sink.as_deref_mut(), &self.sink_error) {
            self.sink_error = sink.push(logits).err();
        }
    }
}

impl Observer for Cli<'_> {
    fn wants_prompt_logits(&self) -> bool {
        self.sink.is_some()
    }
    fn prompt_logits(&mut self, _: usize, logits: &[f32]) {
        self.dump(logits);
    }
    fn prefilled(&mut self) {
        self.prefill_s = self.started.elapsed().as_secs_f64();
        self.decode_start = Instant::now();
    }
    fn next_logits(&mut self, index: usize, logits: &[f32]) {
        // The first ones are the last prompt position's, already dumped.
        if index > 0 {
            self.dump(logits);
        }
    }
    fn token(&mut self, id: u32) -> ControlFlow<()> {
        self.count += 1;
        if self.output.collect_ids {
            self.ids.push(id);
        }
        if self.output.ids {
            let sep = if self.count > 1 { "," } else { "" };
            let _ = write!(self.stdout.lock(), "{sep}{id}");
        }
        if self.sink_error.is_some() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
    fn text(&mut self, text: &str) {
        if self.output.text {
            let mut lock = self.stdout.lock();
            let _ = lock.write_all(text.as_bytes());
            let _ = lock.flush();
        }
    }
}

/// Feeds `prompt` to `backend`, then generates as `options` say, streaming
/// to stdout as `output` says; `sink` receives the raw logits of every
/// prompt position and of every generated token fed back.
#[allow(clippy::too_many_arguments)]
pub fn generate<B>(
    config: &ModelConfig,
    backend: &mut B,
    tok: Option<&Tokenizer<'_>>,
    sampler: &mut Sampler,
    prompt: &[u32],
    options: &GenOptions,
    output: Output,
    sink: Option<&mut NpyWriter>,
    history: &mut History<'_>,
) -> CliResult<Generation>
where
    B: Backend + ?Sized,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let vocab = config.vocab_size as usize;
    let (mut logits, mut scratch) = (vec![0f32; vocab], vec![0u32; vocab]);
    let now = Instant::now();
    let mut cli = Cli {
        output,
        ids: Vec::new(),
        count: 0,
        sink,
        sink_error: None,
        started: now,
        prefill_s: 0.0,
        decode_start: now,
        stdout: std::io::stdout(),
    };
    let buffers = GenBuffers { logits: &mut logits, scratch: &mut scratch };
    let tok = if output.text { tok } else { None };
    let done = generate::generate(backend, config, tok, sampler, prompt, options, buffers, history, &mut cli).map_err(
        |e| -> Box<dyn std::error::Error + Send + Sync> {
            match e {
                generate::GenError::Backend(e) => Box::new(e),
                e => e.to_string().into(),
            }
        },
    )?;
    let decode_s = cli.decode_start.elapsed().as_secs_f64();
    let _ = cli.stdout.lock().flush();
    if let Some(e) = cli.sink_error {
        return Err(e);
    }
    let error: Option<Box<dyn std::error::Error + Send + Sync>> = match done.end {
        End::Backend(e) => Some(Box::new(e)),
        _ => None,
    };
    Ok(Generation {
        ids: cli.ids,
        generated: done.generated,
        prefill_s: cli.prefill_s,
        decode_s,
        decode_steps: done.decode_steps,
        error,
    })
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
