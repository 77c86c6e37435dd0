//! The sampler handle, and greedy decoding ([`ferrite_argmax`]).

use ferrite_runtime::sampler::{self, Sampler, SamplerConfig};

use super::boundary::{
    check_ptr, free_handle, guard, handle, handle_mut, invalid, new_handle, put, slice_in, FerriteStatus,
};

/// How to choose the next token (`ferrite_sampler_config` in C); see
/// `ferrite_runtime::sampler::SamplerConfig`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FerriteSamplerConfig {
    /// Softmax temperature; `<= 0` is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: u32,
    /// Nucleus: keep the smallest set reaching this probability, in [0, 1];
    /// 1 disables.
    pub top_p: f32,
    /// Drop tokens below `min_p` times the best one's probability; 0 disables.
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 disables.
    pub repeat_penalty: f32,
    /// How many of the most recent ids the penalty looks at.
    pub repeat_last_n: u32,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl FerriteSamplerConfig {
    fn from_rust(c: SamplerConfig) -> Self {
        FerriteSamplerConfig {
            temperature: c.temperature,
            top_k: u32::try_from(c.top_k).unwrap_or(u32::MAX),
            top_p: c.top_p,
            min_p: c.min_p,
            repeat_penalty: c.repeat_penalty,
            repeat_last_n: u32::try_from(c.repeat_last_n).unwrap_or(u32::MAX),
            seed: c.seed,
        }
    }

    fn to_rust(self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n as usize,
            seed: self.seed,
        }
    }
}

/// A sampler (`ferrite_sampler` in C): the runtime's sampler and the
/// buffers it works in, allocated once for a vocabulary size.
pub struct FerriteSampler {
    pub(super) sampler: Sampler,
    /// The copy of a logits row the sampler modifies `[vocab_size]`.
    pub(super) logits: Vec<f32>,
    /// The sampler's scratch `[vocab_size]`.
    pub(super) scratch: Vec<u32>,
    /// Room for `ferrite_generate`'s repetition history: twice the
    /// sampler's window, plus a margin.
    pub(super) recent: Vec<u32>,
}

/// Fills `*out` with the default sampling settings (temperature 0.8,
/// top-k 40, top-p 0.95, min-p 0.05, no repetition penalty, seed 0).
///
/// # Safety
///
/// `out` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_config_default(out: *mut FerriteSamplerConfig) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, FerriteSamplerConfig::from_rust(SamplerConfig::default())) };
        Ok(())
    })
}

/// Creates a sampler for rows of up to `vocab_size` logits (it allocates
/// its buffers here, `ferrite_generate`'s included, never while sampling).
/// On failure `*out` is NULL.
///
/// # Safety
///
/// `cfg` must be NULL or valid for a read; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_new(
    cfg: *const FerriteSamplerConfig,
    vocab_size: usize,
    out: *mut *mut FerriteSampler,
) -> FerriteStatus {
    let make = || {
        // SAFETY: readable (the caller's contract).
        let cfg = unsafe { handle(cfg, "cfg") }?;
        if vocab_size == 0 || u32::try_from(vocab_size).is_err() {
            return Err(invalid(format!("vocab_size {vocab_size} (must be 1..=2^32-1)")));
        }
        let sampler = Sampler::new(cfg.to_rust())?;
        let recent = vec![0; sampler.config().repeat_last_n.saturating_mul(2).saturating_add(64)];
        Ok(Box::new(FerriteSampler { sampler, logits: vec![0.0; vocab_size], scratch: vec![0; vocab_size], recent }))
    };
    // SAFETY: `out` is NULL or valid for a write (the caller's contract).
    unsafe { new_handle(out, make) }
}

/// Frees a sampler. NULL is a no-op.
///
/// # Safety
///
/// `sampler` must be NULL or a live sampler, not used after this returns.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_free(sampler: *mut FerriteSampler) -> FerriteStatus {
    // SAFETY: NULL or a live sampler, not used afterwards (the caller's
    // contract).
    unsafe { free_handle(sampler, "sampler", |_| Ok(()), drop) }
}

/// Restarts the sampler's random stream from `seed`.
///
/// # Safety
///
/// `sampler` must be NULL or a live sampler, used by no other thread now.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_reseed(sampler: *mut FerriteSampler, seed: u64) -> FerriteStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { handle_mut(sampler, "sampler") }?;
        s.sampler.reseed(seed);
        Ok(())
    })
}

/// Chooses the next token from `logits[0..n]` (`n` at most the sampler's
/// `vocab_size`; the caller's array is not modified), with the repetition
/// penalty looking at the end of `recent[0..n_recent]` (oldest first), and
/// writes it to `*out`.
///
/// # Safety
///
/// `sampler` must be NULL or a live sampler, used by no other thread now;
/// `logits` NULL or `n` readable floats; `recent` NULL or `n_recent`
/// readable ids; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_sample(
    sampler: *mut FerriteSampler,
    logits: *const f32,
    n: usize,
    recent: *const u32,
    n_recent: usize,
    out: *mut u32,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: the caller's contract, for each pointer.
        let (s, logits, recent) = unsafe {
            (handle_mut(sampler, "sampler")?, slice_in(logits, n, "logits")?, slice_in(recent, n_recent, "recent")?)
        };
        check_ptr(out, "out")?;
        if n > s.logits.len() {
            return Err(invalid(format!("{n} logits but the sampler was made for {}", s.logits.len())));
        }
        let row = &mut s.logits[..n];
        row.copy_from_slice(logits);
        let id = s.sampler.sample(row, recent, &mut s.scratch[..n])?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, id) };
        Ok(())
    })
}

/// Sets `*out` to the index of the largest of `logits[0..n]`, the lowest on
/// ties: greedy decoding, `ferrite_runtime::sampler::argmax` (the sampler
/// at temperature 0 chooses the same).
/// NaN or `+inf` entries, `n == 0`, or all entries `-inf` are
/// `INVALID_ARGUMENT`.
///
/// # Safety
///
/// `logits` must be NULL or `n` readable floats; `out` NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_argmax(logits: *const f32, n: usize, out: *mut u32) -> FerriteStatus {
    guard(|| {
        // SAFETY: `n` readable floats (the caller's contract).
        let logits = unsafe { slice_in(logits, n, "logits") }?;
        check_ptr(out, "out")?;
        let best = sampler::argmax(logits)?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, best) };
        Ok(())
    })
}
