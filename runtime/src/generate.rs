//! The generation loop: prompt → prefill → sample → step → stop ids →
//! streamed text, over any [`Backend`], with every buffer supplied by the
//! caller (no allocation, `no_std`).
//!
//! The CLI (`run`, `chat`, `bench`), the C API (`ferrite_generate`), the
//! Cortex-M example and the CUDA session all drive this one loop; what they
//! differ in (printing, dumping logits, timing, callbacks) is an
//! [`Observer`].
//!
//! ```no_run
//! # fn demo(model: &ferrite_runtime::Model<'_>) -> Result<(), Box<dyn std::error::Error>> {
//! use ferrite_runtime::generate::{generate, GenBuffers, GenOptions, History, Observer};
//! use ferrite_runtime::sampler::{Sampler, SamplerConfig};
//! use ferrite_runtime::{Session, SessionConfig};
//!
//! let plan = model.plan(&SessionConfig::default())?;
//! let mut arena = vec![0u8; plan.arena_bytes()];
//! let mut session = Session::new(model, &plan, &mut arena)?;
//! let mut sampler = Sampler::new(SamplerConfig::greedy())?;
//! let vocab = model.config().vocab_size as usize;
//! let (mut logits, mut scratch, mut recent) = (vec![0f32; vocab], vec![0u32; vocab], vec![0u32; 256]);
//! let mut history = History::new(&mut recent);
//! struct Ids(Vec<u32>);
//! impl Observer for Ids {
//!     fn token(&mut self, id: u32) -> core::ops::ControlFlow<()> {
//!         self.0.push(id);
//!         core::ops::ControlFlow::Continue(())
//!     }
//! }
//! let mut ids = Ids(Vec::new());
//! let options = GenOptions { max_new: 32, ignore_eos: false };
//! let buffers = GenBuffers { logits: &mut logits, scratch: &mut scratch };
//! let done = generate(&mut session, model.config(), None, &mut sampler, &[1, 2, 3], &options, buffers, &mut history, &mut ids)?;
//! println!("{} tokens, ended by {:?}", done.generated, done.end);
//! # Ok(()) }
//! ```

use core::fmt;
use core::ops::ControlFlow;

use ferrite_format::ModelConfig;

use crate::backend::Backend;
use crate::sampler::{SampleError, Sampler};
use crate::tokenizer::{Tokenizer, TokenizerError, Utf8Stream};

/// How long to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenOptions {
    /// Most new tokens (the stop id, when generation ends on one, counts).
    pub max_new: usize,
    /// Keep going after a stop id.
    pub ignore_eos: bool,
}

/// Working memory of a generation.
#[derive(Debug)]
pub struct GenBuffers<'b> {
    /// The copy of the logits the sampler modifies: at least `vocab` floats.
    pub logits: &'b mut [f32],
    /// The sampler's scratch: at least `vocab` ids.
    pub scratch: &'b mut [u32],
}

/// The ids the repetition penalty looks back on, in a caller buffer. It
/// outlives one generation (a chat keeps it across turns); when the buffer
/// fills, the oldest ids beyond the sampler's window are dropped.
#[derive(Debug)]
pub struct History<'b> {
    buf: &'b mut [u32],
    len: usize,
}

impl<'b> History<'b> {
    /// An empty history over `buf`. It must hold more ids than the
    /// sampler's `repeat_last_n` window (twice as many moves memory half as
    /// often); a shorter one is [`GenError::HistoryTooSmall`] when used.
    pub fn new(buf: &'b mut [u32]) -> Self {
        History { buf, len: 0 }
    }

    /// Forgets every id.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The last `n` ids (fewer if fewer were pushed), oldest first.
    pub fn recent(&self, n: usize) -> &[u32] {
        &self.buf[self.len - n.min(self.len)..self.len]
    }

    /// Appends `id`, keeping at least the last `window` ids (`window` must
    /// be below the buffer's length).
    fn push(&mut self, id: u32, window: usize) {
        if self.len == self.buf.len() {
            let keep = window.min(self.len);
            self.buf.copy_within(self.len - keep..self.len, 0);
            self.len = keep;
        }
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }

    fn extend(&mut self, ids: &[u32], window: usize) {
        for &id in &ids[ids.len() - window.min(ids.len())..] {
            self.push(id, window);
        }
    }
}

/// What a caller sees of a generation. Every method has a default that
/// does nothing.
pub trait Observer {
    /// Whether to compute the logits of every prompt position (passed to
    /// [`Observer::prompt_logits`]); otherwise only the last one's are.
    fn wants_prompt_logits(&self) -> bool {
        false
    }
    /// The raw logits of prompt position `pos` (only when
    /// [`Observer::wants_prompt_logits`]).
    fn prompt_logits(&mut self, pos: usize, logits: &[f32]) {
        let _ = (pos, logits);
    }
    /// The prompt has been processed.
    fn prefilled(&mut self) {}
    /// The raw logits the `index`-th new token is sampled from (index 0:
    /// those after the prompt; then those after feeding back each new token).
    fn next_logits(&mut self, index: usize, logits: &[f32]) {
        let _ = (index, logits);
    }
    /// A new token (a stop id included). `Break` ends the generation.
    fn token(&mut self, id: u32) -> ControlFlow<()> {
        let _ = id;
        ControlFlow::Continue(())
    }
    /// Decoded text of the new tokens, in whole UTF-8 characters (a stop
    /// token that ends the generation is not decoded). Only with a
    /// tokenizer.
    fn text(&mut self, text: &str) {
        let _ = text;
    }
}

/// An observer that sees nothing.
impl Observer for () {}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End<E> {
    /// On a stop id (the file's stop set), which is the last new token.
    StopToken,
    /// After `max_new` tokens.
    MaxTokens,
    /// The observer's [`Observer::token`] said `Break`.
    Observer,
    /// Feeding a new token back failed (e.g. a full context with streaming
    /// off); the tokens before it stand.
    Backend(E),
}

/// What a generation produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generated<E> {
    /// New tokens (the stop id included when generation ended on one).
    pub generated: usize,
    /// Tokens fed back through single decode steps.
    pub decode_steps: usize,
    /// Why it ended.
    pub end: End<E>,
}

/// Why a generation could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenError<E> {
    /// The prompt's prefill failed.
    Backend(E),
    /// The sampler refused the logits or its config.
    Sample(SampleError),
    /// A new id has no bytes in the tokenizer.
    Tokenizer(TokenizerError),
    /// A [`GenBuffers`] buffer holds fewer than `vocab` elements.
    BufferTooSmall {
        /// Elements needed.
        needed: usize,
        /// Elements given.
        given: usize,
    },
    /// The [`History`] buffer is not longer than the sampler's window.
    HistoryTooSmall {
        /// The sampler's `repeat_last_n`.
        window: usize,
        /// The buffer's length.
        given: usize,
    },
}

impl<E: fmt::Display> fmt::Display for GenError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenError::Backend(e) => write!(f, "{e}"),
            GenError::Sample(e) => write!(f, "sampling: {e}"),
            GenError::Tokenizer(e) => write!(f, "decoding: {e}"),
            GenError::BufferTooSmall { needed, given } => {
                write!(f, "generation buffer too small: {needed} elements needed, {given} given")
            }
            GenError::HistoryTooSmall { window, given } => write!(
                f,
                "repetition history holds {given} ids but must hold more than the sampler's window of {window}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug + fmt::Display> std::error::Error for GenError<E> {}

/// Tokenizes `text` into `out` with the model's BOS rule (BOS first when the
/// file says prompts start with one); returns the number of ids.
pub fn encode_prompt(
    config: &ModelConfig,
    tokenizer: &Tokenizer<'_>,
    text: &str,
    out: &mut [u32],
) -> Result<usize, TokenizerError> {
    let bos = if config.add_bos() { config.bos() } else { None };
    let Some(bos) = bos else { return tokenizer.encode(text, out) };
    let Some((first, rest)) = out.split_first_mut() else {
        return Err(TokenizerError::BufferTooSmall { capacity: 0 });
    };
    *first = bos;
    Ok(1 + tokenizer.encode(text, rest)?)
}

/// Feeds `prompt`, then samples up to `options.max_new` tokens, feeding each
/// back, until a stop id of `config` (unless `ignore_eos`), the observer or
/// a failing step ends it. The prompt's ids and every new id go into
/// `history` (for the repetition penalty). With a tokenizer, the new
/// tokens' text streams to [`Observer::text`] in whole characters.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend + ?Sized>(
    backend: &mut B,
    config: &ModelConfig,
    tokenizer: Option<&Tokenizer<'_>>,
    sampler: &mut Sampler,
    prompt: &[u32],
    options: &GenOptions,
    buffers: GenBuffers<'_>,
    history: &mut History<'_>,
    observer: &mut dyn Observer,
) -> Result<Generated<B::Error>, GenError<B::Error>> {
    let vocab = config.vocab_size as usize;
    let window = sampler.config().repeat_last_n;
    let short = [buffers.logits.len(), buffers.scratch.len()].into_iter().find(|&n| n < vocab);
    if let Some(given) = short {
        return Err(GenError::BufferTooSmall { needed: vocab, given });
    }
    if history.buf.len() <= window {
        return Err(GenError::HistoryTooSmall { window, given: history.buf.len() });
    }
    let logits = &mut buffers.logits[..vocab];
    let scratch = &mut buffers.scratch[..vocab];
    if observer.wants_prompt_logits() {
        backend.prefill_all(prompt, &mut |pos, l| observer.prompt_logits(pos, l)).map_err(GenError::Backend)?;
    } else {
        backend.prefill(prompt).map_err(GenError::Backend)?;
    }
    observer.prefilled();
    logits.copy_from_slice(&backend.logits()[..vocab]);
    history.extend(prompt, window);

    let mut out = Generated { generated: 0, decode_steps: 0, end: End::MaxTokens };
    let mut utf8 = Utf8Stream::new();
    for i in 0..options.max_new {
        observer.next_logits(i, logits);
        let id = sampler.sample(logits, history.recent(window), scratch).map_err(GenError::Sample)?;
        out.generated += 1;
        history.push(id, window);
        let stop_here = config.is_stop(id) && !options.ignore_eos;
        if observer.token(id).is_break() {
            out.end = End::Observer;
            break;
        }
        if let (Some(tok), false) = (tokenizer, stop_here) {
            utf8.push(tok.token_bytes(id).map_err(GenError::Tokenizer)?, |s| observer.text(s));
        }
        if stop_here {
            out.end = End::StopToken;
            break;
        }
        if i + 1 == options.max_new {
            break;
        }
        match backend.step(id) {
            Ok(next) => logits.copy_from_slice(&next[..vocab]),
            Err(e) => {
                out.end = End::Backend(e);
                break;
            }
        }
        out.decode_steps += 1;
    }
    utf8.finish(|s| observer.text(s));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_window_when_it_fills() {
        let mut buf = [0u32; 5];
        let mut h = History::new(&mut buf);
        for id in 0..23 {
            h.push(id, 3);
            let n = (id as usize + 1).min(3);
            let want: Vec<u32> = (id + 1 - n as u32..=id).collect();
            assert_eq!(h.recent(3), &want[..], "after {id}");
        }
        h.extend(&[100, 101, 102, 103], 3);
        assert_eq!(h.recent(3), &[101, 102, 103]);
        h.clear();
        assert!(h.recent(3).is_empty());
    }
}
