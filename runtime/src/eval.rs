//! Evaluation helpers: negative log-likelihood and perplexity windows.

use crate::{Backend, Error};

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
pub fn window_nll<B: Backend + ?Sized>(session: &mut B, window: &[u32]) -> Result<(f64, usize), B::Error> {
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

/// Which positions of each window are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Score {
    /// Every token but the first of each window; a final partial window
    /// (of at least 2 tokens) included.
    #[default]
    All,
    /// llama.cpp's rule (`llama-perplexity`): only whole windows, and in
    /// each only the tokens after its first half: the logits at positions
    /// `ctx/2 .. ctx-1` predict tokens `ctx/2 + 1 .. ctx`, so every scored
    /// token has at least `ctx/2` tokens of context. A partial last window
    /// is dropped.
    SecondHalf,
}

impl Score {
    /// The windows of `n_tokens` tokens cut into `ctx`-token pieces that
    /// are evaluated, and in each, the first position whose logits are
    /// scored (they predict the token after them): `(start, len, first)`.
    pub fn windows(self, n_tokens: usize, ctx: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let n_windows = match self {
            Score::All => n_tokens.div_ceil(ctx.max(1)),
            Score::SecondHalf => n_tokens / ctx.max(1),
        };
        (0..n_windows).filter_map(move |i| {
            let start = i * ctx;
            let len = ctx.min(n_tokens - start);
            let first = match self {
                Score::All => 0,
                Score::SecondHalf => ctx / 2,
            };
            (len >= 2 && first + 1 < len).then_some((start, len, first))
        })
    }

    /// How many tokens are scored in a text of `n_tokens` tokens.
    pub fn scored(self, n_tokens: usize, ctx: usize) -> usize {
        self.windows(n_tokens, ctx).map(|(_, len, first)| len - 1 - first).sum()
    }
}

/// Perplexity over non-overlapping windows of `ctx` tokens, each from a
/// fresh context, the first token of each window not predicted, a final
/// partial window included. `on_window(index, nll_sum, predicted)` reports
/// progress.
pub fn perplexity<B: Backend + ?Sized>(
    session: &mut B,
    tokens: &[u32],
    ctx: usize,
    on_window: &mut dyn FnMut(usize, f64, usize),
) -> Result<Perplexity, B::Error> {
    scored_perplexity(session, tokens, ctx, Score::All, None, on_window, &mut |_, _| {})
}

/// Perplexity over the windows and positions `score` selects (see
/// [`Score`]), each window from a fresh context. With `bos`, each window's
/// first token is fed as BOS instead (llama-perplexity's rule for models
/// that add BOS: the text is tokenized once, BOS first, and every chunk
/// starts with BOS; that token is never a target). `on_window(index,
/// nll_sum, predicted)` reports progress; `on_position(logits, target)` is
/// called for every scored position in order, with the logits that predict
/// `target` (for KL divergence against a reference model).
pub fn scored_perplexity<B: Backend + ?Sized>(
    session: &mut B,
    tokens: &[u32],
    ctx: usize,
    score: Score,
    bos: Option<u32>,
    on_window: &mut dyn FnMut(usize, f64, usize),
    on_position: &mut dyn FnMut(&[f32], u32),
) -> Result<Perplexity, B::Error> {
    if ctx < 2 {
        return Err(Error::BadSessionConfig { what: "ctx", why: "perplexity windows need at least 2 tokens" }.into());
    }
    let mut total = Perplexity { tokens: tokens.len(), ..Default::default() };
    for (i, (start, len, first)) in score.windows(tokens.len(), ctx).enumerate() {
        let window = &tokens[start..start + len];
        session.reset();
        let mut sum = 0.0f64;
        let mut each = |pos: usize, logits: &[f32]| {
            if pos >= first {
                if let Some(&next) = window.get(pos + 1) {
                    sum += token_nll(logits, next);
                    on_position(logits, next);
                }
            }
        };
        match bos {
            // BOS in place of the window's first token (the logits are
            // those of the whole window: batching never changes them).
            Some(bos) => {
                session.prefill_all(&[bos], &mut each)?;
                if window.len() > 1 {
                    session.prefill_all(&window[1..], &mut |pos, l| each(pos + 1, l))?;
                }
            }
            None => session.prefill_all(window, &mut each)?,
        }
        let n = len - 1 - first;
        total.nll_sum += sum;
        total.predicted += n;
        on_window(i, sum, n);
    }
    Ok(total)
}

/// Writes `log softmax(logits)` into `out` (natural log; computed in f64,
/// stored as f32).
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| libm::exp(v as f64 - max)).sum();
    let log_z = max + libm::log(sum);
    for (o, &v) in out.iter_mut().zip(logits) {
        *o = (v as f64 - log_z) as f32;
    }
}

/// How one position of a model compares with a reference model's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Divergence {
    /// `KL(base || this) = Σ p_base · (log p_base − log p_this)` (nats).
    pub kld: f64,
    /// Whether both put their largest probability on the same token (the
    /// first such token on ties).
    pub same_top: bool,
}

/// Compares this model's `logits` with the reference's log-probabilities
/// `base_log_probs` (from [`log_softmax`]) at one position, in f64.
pub fn divergence(base_log_probs: &[f32], logits: &[f32]) -> Divergence {
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
            .0
    };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| libm::exp(v as f64 - max)).sum();
    let log_z = max + libm::log(sum);
    let mut kld = 0.0f64;
    for (&lb, &v) in base_log_probs.iter().zip(logits) {
        let lb = lb as f64;
        kld += libm::exp(lb) * (lb - (v as f64 - log_z));
    }
    Divergence { kld, same_top: argmax(base_log_probs) == argmax(logits) }
}

/// Perplexity of the whole of `tokens` through one session (no window
/// resets): with a streaming cache smaller than the text, old tokens are
/// evicted as it goes. The first token is not predicted.
pub fn streaming_perplexity<B: Backend + ?Sized>(
    session: &mut B,
    tokens: &[u32],
    on_chunk: &mut dyn FnMut(usize, f64, usize),
) -> Result<Perplexity, B::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `perplexity()`: `n_chunk = n_tokens / n_ctx` whole
    /// chunks, each scoring `n_ctx - 1 - n_ctx/2` tokens.
    #[test]
    fn second_half_counts_follow_llama_cpp() {
        for (n, ctx) in [(2000usize, 512usize), (1024, 512), (1023, 512), (511, 512), (10, 4), (11, 3)] {
            let chunks = n / ctx;
            assert_eq!(Score::SecondHalf.scored(n, ctx), chunks * (ctx - 1 - ctx / 2), "n {n} ctx {ctx}");
            let w: Vec<_> = Score::SecondHalf.windows(n, ctx).collect();
            assert_eq!(w.len(), chunks);
            for (i, &(start, len, first)) in w.iter().enumerate() {
                assert_eq!((start, len, first), (i * ctx, ctx, ctx / 2));
            }
        }
        assert_eq!(Score::SecondHalf.scored(2000, 512), 3 * 255);
    }

    /// `all`: every token but each window's first, partial window included
    /// when it has 2 tokens or more.
    #[test]
    fn all_counts() {
        assert_eq!(Score::All.scored(2000, 512), 3 * 511 + (2000 - 1536 - 1));
        assert_eq!(Score::All.scored(1025, 512), 2 * 511);
        assert_eq!(Score::All.scored(1026, 512), 2 * 511 + 1);
        assert_eq!(Score::All.scored(1, 512), 0);
        assert_eq!(Score::All.windows(1026, 512).last(), Some((1024, 2, 0)));
    }

    #[test]
    fn divergence_of_a_distribution_with_itself_is_zero() {
        let logits = [1.0f32, -2.0, 0.5, 3.0, 3.0, -7.0];
        let mut lp = [0f32; 6];
        log_softmax(&logits, &mut lp);
        let p_sum: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((p_sum - 1.0).abs() < 1e-6);
        let d = divergence(&lp, &logits);
        assert!(d.kld.abs() < 1e-7, "{}", d.kld);
        assert!(d.same_top);
        // Shifted logits are the same distribution.
        let shifted: Vec<f32> = logits.iter().map(|v| v + 10.0).collect();
        assert!(divergence(&lp, &shifted).kld.abs() < 1e-6);
        // A different one: KL > 0, the top token moves.
        let other = [1.0f32, -2.0, 4.0, 3.0, 3.0, -7.0];
        let d = divergence(&lp, &other);
        let q: Vec<f64> = {
            let z: f64 = other.iter().map(|&v| (v as f64).exp()).sum();
            other.iter().map(|&v| (v as f64).exp() / z).collect()
        };
        let exact: f64 = lp.iter().zip(&q).map(|(&l, &q)| (l as f64).exp() * (l as f64 - q.ln())).sum();
        assert!(d.kld > 0.1 && (d.kld - exact).abs() < 1e-6, "{} vs {exact}", d.kld);
        assert!(!d.same_top);
    }
}
