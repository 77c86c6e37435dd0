//! Sessions: the KV cache and working memory carved out of one caller
//! arena, and the forward pass over them.
//!
//! - [`plan`]: what a session needs room for, and how much that is;
//! - [`arena`]: the one carving code both the plan and [`Session::new`] run;
//! - [`weights`]: each layer's tensors, resolved once at [`Session::new`];
//! - [`forward`]: the layers and the output head over a batch;
//! - [`attention`]: the streaming ring's geometry and attention over it;
//! - [`state`]: saving and restoring a session.

use core::ops::Range;

use ferrite_kernels::{ActsMut, Kernels, Tier};

use crate::backend::{Backend, Limits, RowSink};
use crate::kv::KvStore;
use crate::{Error, Model};

mod arena;
mod attention;
mod forward;
pub(crate) mod plan;
mod state;
pub(crate) mod weights;

pub use plan::{Plan, PlanParts, SessionConfig};

use crate::parallel::Par;
use arena::{Buffers, Carver, KvBufs};

/// The session's threads: a pool with `std`, nothing without.
#[cfg(feature = "std")]
type PoolSlot = Option<crate::pool::Pool>;
#[cfg(not(feature = "std"))]
type PoolSlot = ();

/// Where the session's parallel regions run.
#[cfg(feature = "std")]
fn par(pool: &PoolSlot) -> Par<'_> {
    Par::on(pool.as_ref())
}
#[cfg(not(feature = "std"))]
fn par(_: &PoolSlot) -> Par<'_> {
    Par::serial()
}

#[cfg(feature = "std")]
fn pool_for(threads: usize) -> Result<PoolSlot, Error> {
    if threads <= 1 {
        return Ok(None);
    }
    crate::pool::Pool::new(threads).map(Some).map_err(|_| Error::Threads { threads })
}
#[cfg(not(feature = "std"))]
fn pool_for(_: usize) -> Result<PoolSlot, Error> {
    Ok(())
}
use weights::{LayerWeights, ModelWeights};

/// One generation context: a KV cache and working memory borrowed from the
/// caller's arena. Never allocates.
pub struct Session<'m, 'a> {
    model: &'m Model<'m>,
    plan: Plan,
    kern: &'static Kernels,
    /// Embedding table, final norm, output projection.
    weights: ModelWeights<'m>,
    /// Each layer's tensors `[n_layers]`.
    layers: &'a [LayerWeights<'m>],
    /// Int8 activations of a matmul input: quants `[b, groups * 32]`,
    /// scales and sums `[b, groups]`.
    acts: ActsMut<'a>,
    /// Keys and values `[n_layers * max_ctx, kv_dim]` each.
    kv: KvStore<'a>,
    /// Residual stream `[max_batch, d_model]`.
    x: &'a mut [f32],
    /// Normed block input; outputs of width `d_model` `[max_batch, d_model]`.
    xn: &'a mut [f32],
    /// Queries `[max_batch, q_dim]`.
    q: &'a mut [f32],
    /// Attention output `[max_batch, q_dim]`.
    att: &'a mut [f32],
    /// Keys of the batch `[max_batch, kv_dim]`.
    k: &'a mut [f32],
    /// Values of the batch `[max_batch, kv_dim]`.
    v: &'a mut [f32],
    /// FFN gate `[max_batch, ffn_dim]`.
    gate: &'a mut [f32],
    /// FFN up `[max_batch, ffn_dim]`.
    up: &'a mut [f32],
    /// Per thread `[threads, max_ctx + 2 * head_dim]`: scores, a rotated
    /// query head, a sink RoPE row.
    scores: &'a mut [f32],
    /// Per thread `[threads, widest input]`: a dequantized weight row.
    row: &'a mut [f32],
    /// `[vocab]`, or `[max_batch, vocab]` with `logits_all`.
    logits: &'a mut [f32],
    /// RoPE inverse frequencies `[head_dim / 2]`.
    inv_freq: &'a mut [f32],
    /// RoPE cosines and sines `[max_batch, head_dim]`.
    rope: &'a mut [f32],
    /// The worker threads (`threads - 1` of them; none with one thread).
    pool: PoolSlot,
    /// Tokens processed since the last reset (their absolute positions are
    /// `0..pos`; with streaming, only the sinks and the last
    /// `max_ctx - sinks` of them are still in the cache).
    pos: usize,
}

impl<'m, 'a> Session<'m, 'a> {
    /// Carves a session out of `arena` (any alignment; at least
    /// [`Plan::arena_bytes`] bytes) and resolves the model's tensors.
    pub fn new(model: &'m Model<'m>, plan: &Plan, arena: &'a mut [u8]) -> Result<Self, Error> {
        if plan.model != *model.config() {
            return Err(Error::PlanMismatch);
        }
        let needed = plan.arena_bytes();
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall { needed, given: arena.len() });
        }
        let kern = ferrite_kernels::select(plan.cfg.kernels).map_err(Error::Kernels)?;
        let b: Buffers<'a, 'm, Carver<'a>> =
            arena::carve(&mut Carver::new(arena), &plan.layout, plan.cfg.kv, model.config())?;
        let kv = match b.kv {
            KvBufs::F32 { k, v } => KvStore::F32 { k, v },
            KvBufs::F16 { k, v } => KvStore::F16 { k, v },
            KvBufs::Q8 { k, v, ks, vs } => KvStore::Q8 { k, v, ks, vs },
        };
        let mut filled = 0;
        for (layer, slot) in b.layers.iter_mut().enumerate() {
            slot.write(LayerWeights::resolve(model, layer as u32)?);
            filled += 1;
        }
        debug_assert_eq!(filled, b.layers.len());
        // SAFETY: every element of `b.layers` was written just above (the
        // loop runs over all of them and returns early only by `?`, which
        // drops the slice unread); `LayerWeights` has no drop glue, so
        // reinterpreting the initialized `[MaybeUninit<T>]` as `[T]` for the
        // same borrow is sound.
        let layers: &'a [LayerWeights<'m>] =
            unsafe { core::slice::from_raw_parts(b.layers.as_ptr().cast::<LayerWeights<'m>>(), b.layers.len()) };
        let s = Session {
            model,
            plan: *plan,
            kern,
            weights: ModelWeights::resolve(model)?,
            layers,
            acts: ActsMut { qs: b.act_qs, d: b.act_d, sums: b.act_sums },
            kv,
            x: b.x,
            xn: b.xn,
            q: b.q,
            att: b.att,
            k: b.k,
            v: b.v,
            gate: b.gate,
            up: b.up,
            scores: b.scores,
            row: b.rows,
            logits: b.logits,
            inv_freq: b.inv_freq,
            rope: b.rope,
            pool: pool_for(plan.cfg.threads)?,
            pos: 0,
        };
        model.rope_inv_freq(s.inv_freq);
        Ok(s)
    }

    /// The kernel tier this session runs.
    pub fn kernels(&self) -> Tier {
        self.kern.tier
    }

    /// Tokens processed since the last reset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The KV cache capacity.
    pub fn max_ctx(&self) -> usize {
        self.plan.cfg.max_ctx
    }

    /// The plan this session was carved by.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    /// Empties the KV cache (a new conversation).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Processes a prompt in batches (matrix-matrix products) and returns
    /// the logits after its last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        Backend::prefill(self, tokens)
    }

    /// Like [`Session::prefill`], but computes the logits at every prompt
    /// position and passes each to `each(index_in_prompt, logits)`.
    pub fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> Result<(), Error> {
        Backend::prefill_all(self, tokens, each)
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        Backend::step(self, token)
    }

    /// The logits of the last processed token.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.model.config().vocab_size as usize]
    }
}

impl Backend for Session<'_, '_> {
    type Error = Error;

    fn limits(&self) -> Limits {
        let cfg = &self.plan.cfg;
        Limits {
            vocab: self.model.config().vocab_size,
            max_ctx: cfg.max_ctx,
            max_batch: cfg.max_batch,
            streaming: cfg.streaming,
        }
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn reset(&mut self) {
        self.pos = 0;
    }

    fn forward_batch(&mut self, batch: &[u32]) -> Result<(), Error> {
        self.forward(batch);
        Ok(())
    }

    fn head(&mut self, rows: Range<usize>, sink: Option<RowSink<'_>>) -> Result<(), Error> {
        let vocab = self.model.config().vocab_size as usize;
        let n = rows.len();
        match sink {
            // One matrix product for the rows, when the logits have room.
            Some(f) if self.plan.cfg.logits_all && n > 1 => {
                self.head_rows(rows.start, n);
                for t in 0..n {
                    f(rows.start + t, &self.logits[t * vocab..(t + 1) * vocab]);
                }
                // `logits()` is the first row: move the last one there.
                self.logits.copy_within((n - 1) * vocab..n * vocab, 0);
            }
            Some(f) => {
                for t in rows {
                    self.head_rows(t, 1);
                    f(t, &self.logits[..vocab]);
                }
            }
            None => {
                if let Some(last) = rows.last() {
                    self.head_rows(last, 1);
                }
            }
        }
        Ok(())
    }

    fn logits(&self) -> &[f32] {
        Session::logits(self)
    }
}
