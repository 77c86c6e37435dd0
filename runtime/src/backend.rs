//! What every forward-pass backend shares: the checks of a forward call,
//! its split into batches and the logits it reports.
//!
//! A backend (the CPU [`crate::Session`], the CUDA session of
//! `ferrite-cuda`) implements the three primitives — run the layers over one
//! batch, run the output head over some of the batch's rows, hand out the
//! last logits — and gets [`Backend::prefill`], [`Backend::prefill_all`] and
//! [`Backend::step`], with one set of checks, from this trait.

use core::ops::Range;

use crate::Error;

/// Receives `(row, logits)` for rows of a batch (see [`Backend::head`]).
pub type RowSink<'f> = &'f mut dyn FnMut(usize, &[f32]);

/// The fixed limits of a backend's cache and batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Vocabulary size: token ids must be below it.
    pub vocab: u32,
    /// KV cache capacity in tokens.
    pub max_ctx: usize,
    /// Most tokens per [`Backend::forward_batch`].
    pub max_batch: usize,
    /// Whether a full cache evicts (streaming) instead of refusing.
    pub streaming: bool,
}

/// A forward pass over a KV cache.
pub trait Backend {
    /// The backend's error (runtime errors convert into it).
    type Error: From<Error>;

    /// The cache and batch limits.
    fn limits(&self) -> Limits;

    /// Tokens processed since the last reset.
    fn position(&self) -> usize;

    /// Empties the cache.
    fn reset(&mut self);

    /// Runs the layers over `batch` (`1..=max_batch` valid ids; checked by
    /// the caller), appending its keys and values to the cache.
    fn forward_batch(&mut self, batch: &[u32]) -> Result<(), Self::Error>;

    /// Output head over rows `rows` of the batch just run. With a sink, the
    /// logits of every row are passed to it in order; either way
    /// [`Backend::logits`] is afterwards the last row's.
    fn head(&mut self, rows: Range<usize>, sink: Option<RowSink<'_>>) -> Result<(), Self::Error>;

    /// The logits of the last token whose head ran.
    fn logits(&self) -> &[f32];

    /// Processes a prompt in batches and returns the logits after its last
    /// token.
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Self::Error> {
        self.run(tokens, None)?;
        Ok(self.logits())
    }

    /// Like [`Backend::prefill`], but passes the logits of every prompt
    /// position to `each(index_in_prompt, logits)`.
    fn prefill_all(&mut self, tokens: &[u32], each: RowSink<'_>) -> Result<(), Self::Error> {
        self.run(tokens, Some(each))
    }

    /// Feeds one token and returns the logits for the next.
    fn step(&mut self, token: u32) -> Result<&[f32], Self::Error> {
        self.run(core::slice::from_ref(&token), None)?;
        Ok(self.logits())
    }

    /// Checks `tokens` against the limits ([`check`]) and runs them batch by
    /// batch, the head over every position (with `each`) or the last only.
    fn run(&mut self, tokens: &[u32], mut each: Option<RowSink<'_>>) -> Result<(), Self::Error> {
        let limits = self.limits();
        check(&limits, self.position(), tokens)?;
        let mut done = 0;
        for chunk in tokens.chunks(limits.max_batch.max(1)) {
            self.forward_batch(chunk)?;
            let n = chunk.len();
            match each.as_mut() {
                Some(f) => self.head(0..n, Some(&mut |t, l| f(done + t, l)))?,
                None if done + n == tokens.len() => self.head(n - 1..n, None)?,
                None => {}
            }
            done += n;
        }
        Ok(())
    }
}

/// The checks of a forward call of `tokens` at position `pos`: not empty,
/// every id in the vocabulary, and room in the cache unless it streams.
pub fn check(limits: &Limits, pos: usize, tokens: &[u32]) -> Result<(), Error> {
    if tokens.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let vocab = limits.vocab;
    if let Some(&id) = tokens.iter().find(|&&id| id >= vocab) {
        return Err(Error::BadToken { id, vocab });
    }
    let end = pos.checked_add(tokens.len());
    if end.is_none() || (!limits.streaming && end.is_some_and(|end| end > limits.max_ctx)) {
        return Err(Error::ContextFull { used: pos, adding: tokens.len(), max_ctx: limits.max_ctx });
    }
    Ok(())
}
