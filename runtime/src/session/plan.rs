//! What a session needs room for ([`SessionConfig`]) and how much that is
//! ([`Plan`]), computed by the same carving code [`super::Session::new`]
//! runs (see [`super::arena`]), so the two can never disagree.

use ferrite_format::ModelConfig;
use ferrite_kernels::Tier;

use super::arena::{self, Measure};
use crate::kv::KvType;
use crate::Error;

/// What a session needs room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// KV cache capacity in tokens.
    pub max_ctx: usize,
    /// KV cache element type.
    pub kv: KvType,
    /// Most prompt tokens processed per batch in [`super::Session::prefill`]
    /// (longer prompts run in several batches).
    pub max_batch: usize,
    /// Threads the matrix products and attention are split across (feature
    /// `std`): the session starts `threads - 1` worker threads of its own
    /// in `Session::new` and hands them work without allocating. Results do
    /// not depend on it. Without `std` the work runs on the caller's thread.
    pub threads: usize,
    /// Reserve logits for a whole batch (`max_batch × vocab` floats), so
    /// [`super::Session::prefill_all`] runs the output head as one matrix
    /// product per batch (perplexity, logit dumps). Otherwise it runs it row
    /// by row.
    pub logits_all: bool,
    /// Streaming KV cache (StreamingLLM): when the cache is full, the oldest
    /// tokens after the `sinks` pinned ones are evicted, so generation runs
    /// forever in bounded memory. Off: a full cache is [`Error::ContextFull`].
    pub streaming: bool,
    /// Attention-sink slots pinned at the start of the cache (streaming only).
    pub sinks: usize,
    /// Kernel tier; `None` picks the one `FERRITE_KERNELS` names (with
    /// `std`), else the best this CPU has. A tier the CPU lacks is an error.
    pub kernels: Option<Tier>,
    /// Multiply q8/q4 weights with f32 activations (each weight row
    /// dequantized) instead of int8 activations quantized per group of 32:
    /// slower, and the most faithful to the weights.
    pub f32_activations: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_ctx: 2048,
            kv: KvType::F16,
            max_batch: 32,
            threads: 1,
            logits_all: false,
            streaming: true,
            sinks: 4,
            kernels: None,
            f32_activations: false,
        }
    }
}

/// Sizes of the arena parts, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PlanParts {
    /// KV cache: `n_layers * max_ctx` slots of keys and values.
    pub kv_cache: usize,
    /// Activations: residual stream, normed input, q/k/v, attention output,
    /// FFN gate/up, each `max_batch` rows, and their int8 quantization.
    pub activations: usize,
    /// Scratch: attention scores, dequantized weight rows (one per thread),
    /// the logits, the RoPE frequencies and tables.
    pub scratch: usize,
    /// The tensor views of every layer, resolved once when the session is
    /// created (the forward pass never looks a tensor up in the file).
    pub views: usize,
}

impl PlanParts {
    /// The sum of the parts.
    pub fn total(&self) -> Option<usize> {
        self.kv_cache.checked_add(self.activations)?.checked_add(self.scratch)?.checked_add(self.views)
    }
}

/// The exact memory a session needs, known before running.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub(super) cfg: SessionConfig,
    pub(super) model: ModelConfig,
    pub(super) parts: PlanParts,
    pub(super) layout: Layout,
}

/// Element counts of the arena buffers (see [`super::arena::Buffers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct Layout {
    /// Keys (or values) of one layer: `max_ctx * kv_dim`.
    pub kv_per_layer: usize,
    /// `max_batch * d_model`.
    pub x: usize,
    /// `max_batch * q_dim`.
    pub q: usize,
    /// `max_batch * kv_dim`.
    pub kv: usize,
    /// `max_batch * ffn_dim`.
    pub ffn: usize,
    /// Per thread: `max_ctx` scores, a rotated query head and a RoPE row
    /// (`2 * head_dim`); times `threads`.
    pub scores: usize,
    /// One dequantized weight row: the widest matrix input.
    pub row: usize,
    /// `threads * row`.
    pub rows: usize,
    /// `vocab` (or `max_batch * vocab` with `logits_all`).
    pub logits: usize,
    /// `head_dim / 2` RoPE inverse frequencies.
    pub inv_freq: usize,
    /// Groups of 32 in the widest matmul input, times `max_batch`.
    pub act_groups: usize,
    /// RoPE cosines and sines: one `head_dim` row per batch token.
    pub rope: usize,
}

impl Plan {
    pub(crate) fn new(m: &ModelConfig, cfg: &SessionConfig) -> Result<Self, Error> {
        if cfg.max_ctx == 0 {
            return Err(Error::BadSessionConfig { what: "max_ctx", why: "must be positive" });
        }
        if cfg.threads == 0 || cfg.threads > 1024 {
            return Err(Error::BadSessionConfig { what: "threads", why: "must be 1..=1024" });
        }
        if cfg.streaming && cfg.sinks >= cfg.max_ctx {
            return Err(Error::BadSessionConfig { what: "sinks", why: "must be smaller than max_ctx" });
        }
        if cfg.max_batch == 0 {
            return Err(Error::BadSessionConfig { what: "max_batch", why: "must be positive" });
        }
        let ov = |v: Option<usize>| v.ok_or(Error::Overflow);
        let d = m.d_model as usize;
        let q_dim = m.q_dim() as usize;
        let kv_dim = m.kv_dim() as usize;
        let ffn = m.ffn_dim as usize;
        let b = cfg.max_batch;
        let widest = d.max(q_dim).max(ffn);
        let layout = Layout {
            kv_per_layer: ov(cfg.max_ctx.checked_mul(kv_dim))?,
            x: ov(b.checked_mul(d))?,
            q: ov(b.checked_mul(q_dim))?,
            kv: ov(b.checked_mul(kv_dim))?,
            ffn: ov(b.checked_mul(ffn))?,
            scores: ov(cfg.max_ctx.checked_add(2 * m.head_dim as usize).and_then(|v| v.checked_mul(cfg.threads)))?,
            row: widest,
            rows: ov(widest.checked_mul(cfg.threads))?,
            logits: ov((m.vocab_size as usize).checked_mul(if cfg.logits_all { b } else { 1 }))?,
            inv_freq: m.head_dim as usize / 2,
            act_groups: ov(widest.div_ceil(32).checked_mul(b))?,
            rope: ov(b.checked_mul(m.head_dim as usize))?,
        };
        let mut measure = Measure::default();
        arena::carve(&mut measure, &layout, cfg.kv, m)?;
        let parts = measure.parts();
        parts.total().and_then(|t| t.checked_add(arena::ALIGN)).ok_or(Error::Overflow)?;
        Ok(Plan { cfg: *cfg, model: *m, parts, layout })
    }

    /// Bytes the arena must have (parts plus alignment slack for any start
    /// address).
    pub fn arena_bytes(&self) -> usize {
        // `new` checked that the sum and the slack do not overflow.
        self.parts.total().and_then(|t| t.checked_add(arena::ALIGN)).unwrap_or(usize::MAX)
    }

    /// The size of each part.
    pub fn parts(&self) -> PlanParts {
        self.parts
    }

    /// The session config planned for.
    pub fn session_config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Sinks in effect (0 without streaming).
    pub(super) fn sinks(&self) -> usize {
        if self.cfg.streaming {
            self.cfg.sinks
        } else {
            0
        }
    }
}
