//! Token sampling: greedy, temperature, top-k, top-p, min-p and a repetition
//! penalty; seeded, deterministic, and without allocation.
//!
//! [`Sampler::sample`] turns one row of logits into one token id. The caller
//! lends it a scratch buffer of at least `logits.len()` `u32`s for candidate
//! ids, so nothing is allocated. The steps run in this order:
//!
//! 1. **Repetition penalty** (CTRL, Keskar et al. 2019, as in llama.cpp): each
//!    *distinct* id among the last [`SamplerConfig::repeat_last_n`] ids of
//!    `recent` has its logit divided by [`SamplerConfig::repeat_penalty`] if
//!    positive, multiplied by it otherwise.
//! 2. **Greedy** if [`SamplerConfig::temperature`] `<= 0`: the argmax, the
//!    lowest id on ties. No random number is drawn.
//! 3. **Top-k**: the `k` best candidates by partial selection (O(n) on
//!    average), then sorted best first. With top-k disabled every token is a
//!    candidate and all are sorted.
//! 4. **Softmax** over the candidates, at the temperature, max-subtracted.
//! 5. **Top-p**: the smallest best-first prefix whose probability reaches
//!    `top_p` (at least one token).
//! 6. **Min-p**: drop tokens whose probability is below `min_p` times the
//!    best token's.
//! 7. **Draw** one token from what is left, renormalised, with one number
//!    from the sampler's [`Rng`].
//!
//! Temperature is applied before top-p and min-p (as in Hugging Face
//! transformers), so those two cut the *tempered* distribution. llama.cpp's
//! current default chain applies temperature after them; for temperature 1
//! the two agree.
//!
//! # Determinism
//!
//! The same configuration, seed and inputs give the same ids on every
//! platform: candidates are ordered by a total order (logit, then id), sums
//! run in a fixed order in `f64`, `exp` is `libm`'s software `expf`, and the
//! RNG is integer arithmetic.

use core::cmp::Ordering;
use core::fmt;

/// Every way [`Sampler::new`] or [`Sampler::sample`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleError {
    /// `logits` is empty.
    EmptyLogits,
    /// `logits` has more entries than `u32` token ids can name.
    VocabTooLarge {
        /// `logits.len()`.
        n_vocab: usize,
    },
    /// The scratch buffer is shorter than `logits`.
    ScratchTooSmall {
        /// `logits.len()`, the number of `u32`s needed.
        needed: usize,
        /// The scratch buffer's length.
        available: usize,
    },
    /// A logit is NaN or `+inf` (`-inf` is allowed: it masks a token).
    InvalidLogit {
        /// Index of the first such logit.
        index: usize,
    },
    /// Every logit is `-inf`: no token can be chosen.
    AllMasked,
    /// An id in the repetition window of `recent` is not a token of this vocabulary.
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// `logits.len()`.
        n_vocab: usize,
    },
    /// A [`SamplerConfig`] field is out of range.
    InvalidConfig {
        /// The field, and the range it must be in.
        what: &'static str,
    },
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SampleError::EmptyLogits => write!(f, "cannot sample from empty logits"),
            SampleError::VocabTooLarge { n_vocab } => {
                write!(f, "{n_vocab} logits: more tokens than u32 ids can name")
            }
            SampleError::ScratchTooSmall { needed, available } => {
                write!(f, "sampler scratch holds {available} u32s but the vocabulary needs {needed}")
            }
            SampleError::InvalidLogit { index } => {
                write!(f, "logit #{index} is NaN or +infinity")
            }
            SampleError::AllMasked => {
                write!(f, "every logit is -infinity; no token can be sampled")
            }
            SampleError::TokenOutOfRange { id, n_vocab } => {
                write!(f, "recent token id {id} is out of range for a vocabulary of {n_vocab}")
            }
            SampleError::InvalidConfig { what } => write!(f, "invalid sampler config: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SampleError {}

/// How to choose the next token. Checked by [`SamplerConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` means greedy. Must be finite.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches
    /// `top_p`, in `[0, 1]`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one, in
    /// `[0, 1]`; 0 disables.
    pub min_p: f32,
    /// Repetition penalty, finite and `> 0`; 1 disables, `> 1` discourages repeats.
    pub repeat_penalty: f32,
    /// How many of the most recent ids the penalty looks at; 0 disables.
    pub repeat_last_n: usize,
    /// Seed of the sampler's [`Rng`].
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults, with the penalty off and seed 0.
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Pure greedy decoding: temperature 0, every filter and the penalty off.
    pub const fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }

    /// Whether this configuration decodes greedily (`temperature <= 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Checks every field's range; [`SampleError::InvalidConfig`] names the
    /// first one out of range.
    pub fn validate(&self) -> Result<(), SampleError> {
        let invalid = |what| Err(SampleError::InvalidConfig { what });
        if !self.temperature.is_finite() {
            return invalid("temperature must be finite");
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return invalid("top_p must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid("min_p must be in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return invalid("repeat_penalty must be finite and > 0");
        }
        Ok(())
    }
}

/// A small seeded pseudo-random generator: xoshiro256** (Blackman & Vigna),
/// its state filled by splitmix64 from a 64-bit seed. Not cryptographic.
///
/// The stream depends only on the seed, on every platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

/// One splitmix64 step: the next state and its output.
const fn splitmix64(state: u64) -> (u64, u64) {
    let state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (state, z ^ (z >> 31))
}

impl Rng {
    /// A generator seeded with `seed` (any value, 0 included).
    pub const fn new(seed: u64) -> Self {
        let (s, a) = splitmix64(seed);
        let (s, b) = splitmix64(s);
        let (s, c) = splitmix64(s);
        let (_, d) = splitmix64(s);
        // splitmix64 is a bijection of a counter, so four consecutive outputs
        // are never all zero: xoshiro's forbidden state cannot occur.
        Rng { state: [a, b, c, d] }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s1 << 17;
        let s2 = s2 ^ s0;
        let s3 = s3 ^ s1;
        let s1 = s1 ^ s2;
        let s0 = s0 ^ s3;
        let s2 = s2 ^ t;
        let s3 = s3.rotate_left(45);
        self.state = [s0, s1, s2, s3];
        result
    }

    /// A uniform `f32` in `[0, 1)`, a multiple of 2^-24.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform `f64` in `[0, 1)`, a multiple of 2^-53.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A configured sampler and its random stream. See the [module docs](self)
/// for the pipeline.
///
/// # Examples
///
/// ```
/// use ferrite_runtime::sampler::{Sampler, SamplerConfig};
///
/// let mut sampler = Sampler::new(SamplerConfig { seed: 42, ..Default::default() })?;
/// let mut logits = [0.5f32, 2.0, -1.0, 1.5];
/// let recent = [3u32];
/// let mut scratch = [0u32; 4]; // at least logits.len()
/// let id = sampler.sample(&mut logits, &recent, &mut scratch)?;
/// assert!(id < 4);
/// # Ok::<(), ferrite_runtime::sampler::SampleError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
}

impl Sampler {
    /// A sampler for `config`, its [`Rng`] seeded with `config.seed`.
    ///
    /// Returns [`SampleError::InvalidConfig`] if `config` fails
    /// [`SamplerConfig::validate`].
    pub fn new(config: SamplerConfig) -> Result<Self, SampleError> {
        config.validate()?;
        Ok(Sampler { config, rng: Rng::new(config.seed) })
    }

    /// The configuration this sampler runs.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Restarts the random stream from `seed` (and records it in the config).
    pub fn reseed(&mut self, seed: u64) {
        self.config.seed = seed;
        self.rng = Rng::new(seed);
    }

    /// Chooses the next token id from one row of `logits` (`[n_vocab]`).
    ///
    /// - `logits` is **modified in place**: penalised, then overwritten with
    ///   unnormalised probabilities. Its contents afterwards are unspecified;
    ///   pass a copy if you need the row again. `-inf` entries are allowed
    ///   (masked tokens are never chosen); NaN and `+inf` are not.
    /// - `recent` is the history of ids, oldest first; the last
    ///   `repeat_last_n` of them (the repetition window) must be `< n_vocab`,
    ///   whether or not the penalty is on.
    /// - `scratch` must hold at least `logits.len()` `u32`s; it is used for
    ///   candidate ids and left with unspecified contents.
    ///
    /// Greedy decoding draws no random number; any other configuration draws
    /// exactly one per call.
    ///
    /// # Errors
    ///
    /// [`SampleError::EmptyLogits`], [`SampleError::VocabTooLarge`],
    /// [`SampleError::ScratchTooSmall`], [`SampleError::InvalidLogit`] and
    /// [`SampleError::TokenOutOfRange`] are reported before anything is
    /// modified; [`SampleError::AllMasked`] when no logit is above `-inf`.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32], scratch: &mut [u32]) -> Result<u32, SampleError> {
        let n_vocab = logits.len();
        check_lengths(n_vocab, scratch.len())?;
        if let Some(index) = logits.iter().position(|l| l.is_nan() || *l == f32::INFINITY) {
            return Err(SampleError::InvalidLogit { index });
        }
        let window = &recent[recent.len() - self.config.repeat_last_n.min(recent.len())..];
        if let Some(&id) = window.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(SampleError::TokenOutOfRange { id, n_vocab });
        }
        let scratch = &mut scratch[..n_vocab];

        if self.config.repeat_penalty != 1.0 && !window.is_empty() {
            apply_repeat_penalty(logits, window, self.config.repeat_penalty, scratch);
        }

        if self.config.is_greedy() {
            return greedy(logits);
        }
        self.sample_tempered(logits, scratch)
    }

    /// Steps 3 to 7 of the pipeline; `scratch.len() == logits.len()`.
    fn sample_tempered(&mut self, logits: &mut [f32], scratch: &mut [u32]) -> Result<u32, SampleError> {
        let config = self.config;
        for (slot, id) in scratch.iter_mut().zip(0..=u32::MAX) {
            *slot = id;
        }

        // Top-k: partial selection puts the k best (under a total order) in
        // front, in some order; the sort below orders them.
        let candidates = if config.top_k > 0 && config.top_k < scratch.len() {
            scratch.select_nth_unstable_by(config.top_k - 1, |&a, &b| best_first(logits, a, b));
            &mut scratch[..config.top_k]
        } else {
            scratch
        };
        candidates.sort_unstable_by(|&a, &b| best_first(logits, a, b));

        let max_logit = logits[candidates[0] as usize];
        if max_logit == f32::NEG_INFINITY {
            return Err(SampleError::AllMasked);
        }

        // Softmax weights, stored over the logits. The best weight is exactly
        // exp(0) = 1; masked tokens weigh exactly 0.
        let mut total = 0.0f64;
        for &id in candidates.iter() {
            let logit = &mut logits[id as usize];
            let weight = libm::expf((*logit - max_logit) / config.temperature);
            *logit = weight;
            total += f64::from(weight);
        }
        let weight = |id: u32| f64::from(logits[id as usize]);

        let mut keep = candidates.len();
        if config.top_p < 1.0 {
            // The running sum repeats `total`'s additions in the same order,
            // so with top_p <= 1 the target is always reached.
            let target = f64::from(config.top_p) * total;
            let mut cumulative = 0.0f64;
            for (i, &id) in candidates.iter().enumerate() {
                cumulative += weight(id);
                if cumulative >= target {
                    keep = i + 1;
                    break;
                }
            }
        }
        if config.min_p > 0.0 {
            // Probabilities relative to the best are weights relative to 1.
            let threshold = f64::from(config.min_p) * weight(candidates[0]);
            keep = candidates[..keep].iter().take_while(|&&id| weight(id) >= threshold).count();
        }
        Ok(draw(&candidates[..keep.max(1)], logits, self.rng.next_f64()))
    }
}

/// The id in `kept` (best first, non-empty) whose share of the total weight
/// (`weights[id]`) covers `u` in `[0, 1)`.
fn draw(kept: &[u32], weights: &[f32], u: f64) -> u32 {
    let weight = |id: u32| f64::from(weights[id as usize]);
    // Weights fall best first and the first is positive, so the tokens that
    // can be drawn are a prefix; never return one of weight 0 (masked, or
    // underflowed), even from the fallback below.
    let drawable = kept.iter().take_while(|&&id| weight(id) > 0.0).count().max(1);
    let kept = &kept[..drawable];
    let total: f64 = kept.iter().map(|&id| weight(id)).sum();
    let target = u * total;
    let mut cumulative = 0.0f64;
    for &id in kept {
        cumulative += weight(id);
        if target < cumulative {
            return id;
        }
    }
    // Only reachable if `target` rounded up to `total`.
    kept[drawable - 1]
}

/// Checks that `n_vocab` ids exist, fit in `u32`, and fit in the scratch buffer.
fn check_lengths(n_vocab: usize, scratch_len: usize) -> Result<(), SampleError> {
    if n_vocab == 0 {
        return Err(SampleError::EmptyLogits);
    }
    if u32::try_from(n_vocab - 1).is_err() {
        return Err(SampleError::VocabTooLarge { n_vocab });
    }
    if scratch_len < n_vocab {
        return Err(SampleError::ScratchTooSmall { needed: n_vocab, available: scratch_len });
    }
    Ok(())
}

/// Candidate order: higher logit first, lower id on ties. A total order,
/// since NaN was rejected; `-0.0` and `+0.0` tie, as in [`greedy`].
fn best_first(logits: &[f32], a: u32, b: u32) -> Ordering {
    let (logit_a, logit_b) = (logits[a as usize], logits[b as usize]);
    logit_b.partial_cmp(&logit_a).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// Greedy decoding without a [`Sampler`]: the argmax of `logits`, lowest id
/// on ties. Needs no scratch and leaves `logits` untouched (a device can
/// call it on the session's logits directly). Same errors as
/// [`Sampler::sample`] for empty, NaN or fully masked logits.
pub fn argmax(logits: &[f32]) -> Result<u32, SampleError> {
    if logits.is_empty() {
        return Err(SampleError::EmptyLogits);
    }
    if u32::try_from(logits.len()).is_err() {
        return Err(SampleError::VocabTooLarge { n_vocab: logits.len() });
    }
    if let Some(index) = logits.iter().position(|v| v.is_nan() || *v == f32::INFINITY) {
        return Err(SampleError::InvalidLogit { index });
    }
    greedy(logits)
}

/// The argmax, lowest id on ties; `logits` is non-empty and NaN-free.
fn greedy(logits: &[f32]) -> Result<u32, SampleError> {
    let mut best = 0usize;
    for (i, &logit) in logits.iter().enumerate().skip(1) {
        if logit > logits[best] {
            best = i;
        }
    }
    if logits[best] == f32::NEG_INFINITY {
        return Err(SampleError::AllMasked);
    }
    // `sample` checked that every index fits in a u32.
    Ok(best as u32)
}

/// Penalises each distinct id of `window` once; `scratch` (`[n_vocab]`)
/// marks the ids already seen. Ids are `< logits.len()`.
fn apply_repeat_penalty(logits: &mut [f32], window: &[u32], penalty: f32, scratch: &mut [u32]) {
    scratch.fill(0);
    for &id in window {
        let seen = &mut scratch[id as usize];
        if *seen != 0 {
            continue;
        }
        *seen = 1;
        let logit = &mut logits[id as usize];
        *logit = if *logit > 0.0 {
            // A penalty below 1 could overflow a huge logit to +inf.
            (*logit / penalty).min(f32::MAX)
        } else {
            *logit * penalty
        };
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn sampler(config: SamplerConfig) -> Sampler {
        Sampler::new(config).unwrap()
    }

    /// Only temperature: every filter and the penalty off.
    fn plain(temperature: f32, seed: u64) -> SamplerConfig {
        SamplerConfig { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 0, seed }
    }

    fn sample_once(s: &mut Sampler, logits: &[f32], recent: &[u32]) -> Result<u32, SampleError> {
        let mut row = logits.to_vec();
        let mut scratch = vec![0u32; logits.len()];
        s.sample(&mut row, recent, &mut scratch)
    }

    /// How often each id is drawn in `draws` calls (on fresh copies of `logits`).
    fn counts(s: &mut Sampler, logits: &[f32], recent: &[u32], draws: usize) -> Vec<usize> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sample_once(s, logits, recent).unwrap() as usize] += 1;
        }
        counts
    }

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
        let w: Vec<f64> = logits.iter().map(|&l| ((f64::from(l) - max) / temperature).exp()).collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let expected = p * n as f64;
                (c as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    fn support(counts: &[usize]) -> Vec<usize> {
        counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, _)| i).collect()
    }

    /// Logits whose softmax at temperature 1 is `probs`.
    fn logits_for(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|&p| libm::logf(p)).collect()
    }

    #[test]
    fn rng_matches_reference_stream() {
        // Reference values from an independent implementation of splitmix64
        // seeding + xoshiro256**; splitmix64(0)'s first output is the
        // published 0xE220A8397B1DCDAF.
        let rng = Rng::new(0);
        assert_eq!(rng.state[0], 0xE220_A839_7B1D_CDAF);
        let mut rng = Rng::new(0);
        let got: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(got, [0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0, 0x6AA5_94F1_262D_2D2C]);
        let mut rng = Rng::new(0x5EED);
        assert_eq!(rng.next_u64(), 0xEF33_F170_5524_4B74);
    }

    #[test]
    fn rng_floats_are_in_unit_interval_and_spread() {
        let mut rng = Rng::new(7);
        let (mut low, mut high) = (0, 0);
        for _ in 0..10_000 {
            let x = rng.next_f32();
            let y = rng.next_f64();
            assert!((0.0..1.0).contains(&x), "{x}");
            assert!((0.0..1.0).contains(&y), "{y}");
            low += usize::from(x < 0.5);
            high += usize::from(y >= 0.5);
        }
        assert!((4_700..5_300).contains(&low), "{low}");
        assert!((4_700..5_300).contains(&high), "{high}");
    }

    #[test]
    fn default_and_greedy_configs() {
        let d = SamplerConfig::default();
        assert_eq!((d.temperature, d.top_k, d.top_p, d.min_p), (0.8, 40, 0.95, 0.05));
        assert_eq!((d.repeat_penalty, d.repeat_last_n), (1.0, 64));
        assert!(!d.is_greedy());
        assert!(SamplerConfig::greedy().is_greedy());
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(SamplerConfig::greedy().validate(), Ok(()));
    }

    #[test]
    fn argmax_matches_greedy_sampler() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.5];
        assert_eq!(argmax(&logits), Ok(1));
        let mut copy = logits;
        let mut scratch = [0u32; 5];
        let mut s = Sampler::new(SamplerConfig::greedy()).expect("config");
        assert_eq!(s.sample(&mut copy, &[], &mut scratch), Ok(1));
        assert_eq!(argmax(&[]), Err(SampleError::EmptyLogits));
        assert_eq!(argmax(&[1.0, f32::NAN]), Err(SampleError::InvalidLogit { index: 1 }));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), Err(SampleError::AllMasked));
    }

    #[test]
    fn greedy_picks_argmax_and_lowest_id_on_ties() {
        let mut s = sampler(SamplerConfig::greedy());
        assert_eq!(sample_once(&mut s, &[0.1, 3.0, -2.0, 2.9], &[]), Ok(1));
        assert_eq!(sample_once(&mut s, &[-5.0, -1.0, -1.0, -3.0], &[]), Ok(1));
        assert_eq!(sample_once(&mut s, &[1.0, 4.0, 2.0, 4.0, 4.0], &[]), Ok(1));
        assert_eq!(sample_once(&mut s, &[7.0, 7.0], &[]), Ok(0));
        assert_eq!(sample_once(&mut s, &[f32::NEG_INFINITY, -1e30, 0.5], &[]), Ok(2));
        // -0.0 and +0.0 tie.
        assert_eq!(sample_once(&mut s, &[-1.0, -0.0, 0.0], &[]), Ok(1));
        // Negative temperature is greedy too; greedy draws no random numbers.
        let mut neg = sampler(plain(-1.0, 3));
        assert_eq!(sample_once(&mut neg, &[0.0, 1.0, 0.5], &[]), Ok(1));
        assert_eq!(neg.rng, Rng::new(3));
    }

    #[test]
    fn temperature_sampling_matches_softmax() {
        let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0];
        let temperature = 0.7;
        let mut s = sampler(plain(temperature, 12345));
        let counts = counts(&mut s, &logits, &[], 20_000);
        let chi2 = chi_square(&counts, &softmax(&logits, f64::from(temperature)));
        // 4 degrees of freedom: P(chi2 > 35) < 1e-6 for a correct sampler.
        assert!(chi2 < 35.0, "chi2 {chi2} counts {counts:?}");
        // The test can tell temperatures apart: the untempered softmax is far off.
        let chi2_t1 = chi_square(&counts, &softmax(&logits, 1.0));
        assert!(chi2_t1 > 200.0, "chi2 vs T=1 only {chi2_t1}");
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut rng = Rng::new(99);
        let mut greedy = sampler(SamplerConfig::greedy());
        let mut top1 = sampler(SamplerConfig { temperature: 1.5, top_k: 1, seed: 5, ..Default::default() });
        for _ in 0..300 {
            // Small integer logits: ties are common, so tie-breaking is exercised.
            let logits: Vec<f32> = (0..37).map(|_| (rng.next_u64() % 6) as f32 - 3.0).collect();
            assert_eq!(sample_once(&mut top1, &logits, &[]), sample_once(&mut greedy, &logits, &[]), "{logits:?}");
        }
    }

    #[test]
    fn top_k_restricts_support_to_k_best() {
        // Nearly flat logits, best three at ids 7, 2, 4.
        let logits = [0.0f32, 0.1, 0.8, 0.2, 0.7, 0.3, 0.4, 0.9, 0.5, 0.6];
        let mut s = sampler(SamplerConfig { top_k: 3, ..plain(2.0, 1) });
        let counts = counts(&mut s, &logits, &[], 3_000);
        assert_eq!(support(&counts), [2, 4, 7], "{counts:?}");
        // Within the three, frequencies follow their softmax.
        let three = [logits[2], logits[4], logits[7]];
        let chi2 = chi_square(&[counts[2], counts[4], counts[7]], &softmax(&three, 2.0));
        assert!(chi2 < 30.0, "chi2 {chi2} counts {counts:?}");
    }

    #[test]
    fn top_k_larger_than_vocab_keeps_everything() {
        let logits = [0.0f32, 0.0, 0.0];
        let mut s = sampler(SamplerConfig { top_k: 10, ..plain(1.0, 2) });
        assert_eq!(support(&counts(&mut s, &logits, &[], 300)), [0, 1, 2]);
    }

    #[test]
    fn top_p_restricts_support_to_nucleus() {
        // Probabilities 0.3, 0.05, 0.5, 0.15 at ids 0..4: best first 2, 0, 3, 1.
        let logits = logits_for(&[0.3, 0.05, 0.5, 0.15]);
        // 0.5 < 0.75 <= 0.5 + 0.3: the nucleus is {2, 0}.
        let mut s = sampler(SamplerConfig { top_p: 0.75, ..plain(1.0, 8) });
        let c = counts(&mut s, &logits, &[], 10_000);
        assert_eq!(support(&c), [0, 2], "{c:?}");
        // Renormalised: 0.5 / 0.8 = 0.625.
        let share = c[2] as f64 / 10_000.0;
        assert!((share - 0.625).abs() < 0.02, "{share}");
        // 0.8 < 0.9 <= 0.95: {2, 0, 3}.
        let mut s = sampler(SamplerConfig { top_p: 0.9, ..plain(1.0, 8) });
        assert_eq!(support(&counts(&mut s, &logits, &[], 5_000)), [0, 2, 3]);
        // Below the best token's probability, exactly one survives.
        let mut s = sampler(SamplerConfig { top_p: 0.1, ..plain(1.0, 8) });
        assert_eq!(support(&counts(&mut s, &logits, &[], 500)), [2]);
        let mut s = sampler(SamplerConfig { top_p: 0.0, ..plain(1.0, 8) });
        assert_eq!(support(&counts(&mut s, &logits, &[], 500)), [2]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = logits_for(&[0.3, 0.05, 0.5, 0.15]);
        // Threshold 0.2 * 0.5 = 0.1 drops id 1 (0.05) only.
        let mut s = sampler(SamplerConfig { min_p: 0.2, ..plain(1.0, 4) });
        let c = counts(&mut s, &logits, &[], 10_000);
        assert_eq!(support(&c), [0, 2, 3], "{c:?}");
        let share = c[2] as f64 / 10_000.0;
        assert!((share - 0.5 / 0.95).abs() < 0.02, "{share}");
        // Threshold 0.5 * 0.5 = 0.25 keeps ids 2 and 0.
        let mut s = sampler(SamplerConfig { min_p: 0.5, ..plain(1.0, 4) });
        assert_eq!(support(&counts(&mut s, &logits, &[], 5_000)), [0, 2]);
        // Without min-p every token appears.
        let mut s = sampler(plain(1.0, 4));
        assert_eq!(support(&counts(&mut s, &logits, &[], 5_000)), [0, 1, 2, 3]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let greedy_with = |penalty: f32, last_n: usize| {
            sampler(SamplerConfig { repeat_penalty: penalty, repeat_last_n: last_n, ..SamplerConfig::greedy() })
        };
        // Positive: 2.0 / 2 = 1.0 < 1.5.
        assert_eq!(sample_once(&mut greedy_with(1.0, 64), &[2.0, 1.5], &[0]), Ok(0));
        assert_eq!(sample_once(&mut greedy_with(2.0, 64), &[2.0, 1.5], &[0]), Ok(1));
        // Negative: -1.0 * 2 = -2.0 < -1.5.
        assert_eq!(sample_once(&mut greedy_with(1.0, 64), &[-1.0, -1.5], &[0]), Ok(0));
        assert_eq!(sample_once(&mut greedy_with(2.0, 64), &[-1.0, -1.5], &[0]), Ok(1));
        // Each distinct id once: 2.0 / 2 = 1.0 > 0.9 (three times would be 0.25).
        assert_eq!(sample_once(&mut greedy_with(2.0, 64), &[2.0, 0.9], &[0, 0, 0]), Ok(0));
        // Only the last repeat_last_n ids count: id 0 is outside the window.
        assert_eq!(sample_once(&mut greedy_with(2.0, 2), &[2.0, 1.5, 0.0], &[0, 2, 2]), Ok(0));
        assert_eq!(sample_once(&mut greedy_with(2.0, 3), &[2.0, 1.5, 0.0], &[0, 2, 2]), Ok(1));
        // repeat_last_n 0 disables the penalty.
        assert_eq!(sample_once(&mut greedy_with(2.0, 0), &[2.0, 1.5], &[0]), Ok(0));
    }

    #[test]
    fn repetition_penalty_lowers_sampled_frequency() {
        let config = SamplerConfig { repeat_penalty: 1.5, repeat_last_n: 8, ..plain(1.0, 21) };
        // Positive logits: token 0 drops from 1/2 to 1 / (1 + e^(1/3)) ~ 0.417.
        let mut s = sampler(config);
        let c = counts(&mut s, &[1.0, 1.0], &[0], 10_000);
        let share = c[0] as f64 / 10_000.0;
        assert!((share - 1.0 / (1.0 + (1.0f64 / 3.0).exp())).abs() < 0.02, "{share}");
        // Negative logits: token 0 drops from 1/2 to 1 / (1 + e^0.5) ~ 0.378.
        let mut s = sampler(config);
        let c = counts(&mut s, &[-1.0, -1.0], &[0], 10_000);
        let share = c[0] as f64 / 10_000.0;
        assert!((share - 1.0 / (1.0 + 0.5f64.exp())).abs() < 0.02, "{share}");
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let ninf = f32::NEG_INFINITY;
        let logits = [ninf, 0.0, ninf, 0.0, ninf];
        let mut s = sampler(plain(5.0, 11));
        assert_eq!(support(&counts(&mut s, &logits, &[], 2_000)), [1, 3]);
        // Underflowing weights are not drawn either.
        let mut s = sampler(plain(0.01, 11));
        assert_eq!(support(&counts(&mut s, &[0.0, -10.0, 0.0], &[], 2_000)), [0, 2]);
    }

    #[test]
    fn draw_covers_the_unit_interval_and_skips_zero_weights() {
        let weights = [0.0f32, 1.0, 0.5, 0.0, 0.5];
        let kept = [1u32, 2, 4, 3, 0];
        assert_eq!(draw(&kept, &weights, 0.0), 1);
        assert_eq!(draw(&kept, &weights, 0.49), 1);
        assert_eq!(draw(&kept, &weights, 0.5), 2);
        assert_eq!(draw(&kept, &weights, 0.76), 4);
        // The fallback (u rounded up to 1) never lands on a zero weight.
        assert_eq!(draw(&kept, &weights, 1.0), 4);
        assert_eq!(draw(&[7], &[0.0; 8], 0.3), 7);
    }

    #[test]
    fn same_seed_same_sequence_different_seed_different_sequence() {
        let mut rng = Rng::new(1);
        let rows: Vec<Vec<f32>> = (0..200).map(|_| (0..64).map(|_| rng.next_f32() * 8.0 - 4.0).collect()).collect();
        let run = |seed: u64| -> Vec<u32> {
            let mut s = sampler(SamplerConfig { seed, top_k: 20, top_p: 0.9, ..Default::default() });
            let mut history = Vec::new();
            for row in &rows {
                let id = sample_once(&mut s, row, &history).unwrap();
                history.push(id);
            }
            history
        };
        let a = run(42);
        assert_eq!(a, run(42));
        let b = run(43);
        assert_ne!(a, b);
        // Not a constant stream: many distinct ids.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 20, "{}", distinct.len());

        // Reseeding restarts the stream.
        let mut s = sampler(SamplerConfig { seed: 42, ..Default::default() });
        let first: Vec<u32> = rows.iter().take(10).map(|r| sample_once(&mut s, r, &[]).unwrap()).collect();
        s.reseed(42);
        let again: Vec<u32> = rows.iter().take(10).map(|r| sample_once(&mut s, r, &[]).unwrap()).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn errors_are_values() {
        let mut s = sampler(SamplerConfig::default());
        let mut scratch = [0u32; 4];
        assert_eq!(s.sample(&mut [], &[], &mut scratch), Err(SampleError::EmptyLogits));
        assert_eq!(
            s.sample(&mut [0.0; 5], &[], &mut scratch),
            Err(SampleError::ScratchTooSmall { needed: 5, available: 4 })
        );
        assert_eq!(s.sample(&mut [0.0, 1.0, f32::NAN], &[], &mut scratch), Err(SampleError::InvalidLogit { index: 2 }));
        assert_eq!(s.sample(&mut [f32::INFINITY, 1.0], &[], &mut scratch), Err(SampleError::InvalidLogit { index: 0 }));
        let masked = [f32::NEG_INFINITY; 3];
        assert_eq!(s.sample(&mut masked.clone(), &[], &mut scratch), Err(SampleError::AllMasked));
        let mut g = sampler(SamplerConfig::greedy());
        assert_eq!(g.sample(&mut masked.clone(), &[], &mut scratch), Err(SampleError::AllMasked));
        assert_eq!(
            s.sample(&mut [0.0, 1.0], &[1, 2], &mut scratch),
            Err(SampleError::TokenOutOfRange { id: 2, n_vocab: 2 })
        );
        // Errors leave the logits untouched.
        let penalised = sampler(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::default() });
        let mut row = [4.0f32, 1.0, f32::NAN];
        assert!(penalised.clone().sample(&mut row, &[0], &mut scratch).is_err());
        assert_eq!(row[..2], [4.0, 1.0]);
        // Out-of-range ids outside the window are not looked at.
        assert!(sampler(SamplerConfig { repeat_last_n: 1, ..SamplerConfig::default() })
            .sample(&mut [0.0, 1.0], &[9, 1], &mut scratch)
            .is_ok());
        for e in [SampleError::EmptyLogits, SampleError::AllMasked, SampleError::InvalidLogit { index: 3 }] {
            assert!(!std::format!("{e}").is_empty());
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn vocab_beyond_u32_ids_is_rejected() {
        // Checked on the lengths alone: 2^32 + 1 logits cannot be allocated here.
        let n_vocab = (1usize << 32) + 1;
        assert_eq!(check_lengths(n_vocab, n_vocab), Err(SampleError::VocabTooLarge { n_vocab }));
        assert_eq!(check_lengths(1 << 32, 1 << 32), Ok(()));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            SamplerConfig { temperature: f32::NAN, ..Default::default() },
            SamplerConfig { temperature: f32::INFINITY, ..Default::default() },
            SamplerConfig { top_p: 1.5, ..Default::default() },
            SamplerConfig { top_p: -0.1, ..Default::default() },
            SamplerConfig { top_p: f32::NAN, ..Default::default() },
            SamplerConfig { min_p: 2.0, ..Default::default() },
            SamplerConfig { min_p: f32::NAN, ..Default::default() },
            SamplerConfig { repeat_penalty: 0.0, ..Default::default() },
            SamplerConfig { repeat_penalty: -1.0, ..Default::default() },
            SamplerConfig { repeat_penalty: f32::INFINITY, ..Default::default() },
        ];
        for config in bad {
            assert!(matches!(Sampler::new(config), Err(SampleError::InvalidConfig { .. })), "{config:?} accepted");
        }
    }

    #[test]
    fn penalty_below_one_cannot_overflow_to_infinity() {
        let mut s = sampler(SamplerConfig { repeat_penalty: 0.5, ..plain(1.0, 0) });
        let mut row = [f32::MAX, 0.0];
        let mut scratch = [0u32; 2];
        assert_eq!(s.sample(&mut row, &[0], &mut scratch), Ok(0));
    }
}
