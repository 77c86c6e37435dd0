//! Evaluation helpers: negative log-likelihood and perplexity windows.

use crate::{Error, Session};

/// `-log softmax(logits)[target]`, computed in f64.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| libm::exp(v as f64 - max)).sum();
    let target = logits.get(target as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64;
    max + libm::log(sum) - target
}

/// Runs `window` through a fresh context (the session is reset) and returns
/// the summed NLL of `window[1..]`, each token predicted from its prefix,
/// and the number of predicted tokens.
pub fn window_nll(session: &mut Session<'_, '_>, window: &[u32]) -> Result<(f64, usize), Error> {
    session.reset();
    let mut sum = 0.0f64;
    session.prefill_all(window, &mut |pos, logits| {
        if let Some(&next) = window.get(pos + 1) {
            sum += token_nll(logits, next);
        }
    })?;
    Ok((sum, window.len().saturating_sub(1)))
}

/// Perplexity totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Perplexity {
    /// Tokens in the text.
    pub tokens: usize,
    /// Tokens predicted (the first of each window is not).
    pub predicted: usize,
    /// Summed negative log-likelihood (nats).
    pub nll_sum: f64,
}

impl Perplexity {
    /// Mean NLL per predicted token.
    pub fn mean_nll(&self) -> f64 {
        if self.predicted == 0 {
            0.0
        } else {
            self.nll_sum / self.predicted as f64
        }
    }
    /// `exp(mean_nll)`.
    pub fn perplexity(&self) -> f64 {
        libm::exp(self.mean_nll())
    }
}

/// Perplexity over non-overlapping windows of `ctx` tokens, each from a
/// fresh context, the first token of each window not predicted, a final
/// partial window included. `on_window(index, nll_sum, predicted)` reports
/// progress.
pub fn perplexity(
    session: &mut Session<'_, '_>,
    tokens: &[u32],
    ctx: usize,
    on_window: &mut dyn FnMut(usize, f64, usize),
) -> Result<Perplexity, Error> {
    if ctx < 2 {
        return Err(Error::BadSessionConfig { what: "ctx", why: "perplexity windows need at least 2 tokens" });
    }
    let mut total = Perplexity { tokens: tokens.len(), ..Default::default() };
    for (i, window) in tokens.chunks(ctx).enumerate() {
        if window.len() < 2 {
            continue;
        }
        let (sum, n) = window_nll(session, window)?;
        total.nll_sum += sum;
        total.predicted += n;
        on_window(i, sum, n);
    }
    Ok(total)
}

/// Perplexity of the whole of `tokens` through one session (no window
/// resets): with a streaming cache smaller than the text, old tokens are
/// evicted as it goes. The first token is not predicted.
pub fn streaming_perplexity(
    session: &mut Session<'_, '_>,
    tokens: &[u32],
    on_chunk: &mut dyn FnMut(usize, f64, usize),
) -> Result<Perplexity, Error> {
    session.reset();
    let mut total = Perplexity { tokens: tokens.len(), ..Default::default() };
    let chunk = 256;
    for (i, part) in tokens.chunks(chunk).enumerate() {
        let base = i * chunk;
        let mut sum = 0.0f64;
        let mut n = 0usize;
        session.prefill_all(part, &mut |pos, logits| {
            if let Some(&next) = tokens.get(base + pos + 1) {
                sum += token_nll(logits, next);
                n += 1;
            }
        })?;
        total.nll_sum += sum;
        total.predicted += n;
        on_chunk(i, sum, n);
    }
    Ok(total)
}
