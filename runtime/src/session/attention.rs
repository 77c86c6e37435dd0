//! Attention over the streaming KV cache: the ring's geometry (which slot a
//! position lands in, which keys a query sees) and one layer's attention
//! over a batch.

use core::ops::Range;

use ferrite_format::ModelConfig;
use ferrite_kernels::reference as k;
use ferrite_kernels::Kernels;

use super::Plan;
use crate::kv::{KvShape, KvStore};
#[cfg(feature = "std")]
use crate::parallel::bounds;
use crate::parallel::Par;
#[cfg(feature = "std")]
use crate::pool::Shards;

/// The cache as a ring of `max_ctx` slots with `sinks` pinned at the start.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ring {
    max_ctx: usize,
    /// Sinks in effect (0 without streaming).
    sinks: usize,
}

/// Keys attended by one query: sink slots, and a run of absolute positions.
pub(super) struct KeySet {
    pub sinks: Range<usize>,
    pub main: Range<usize>,
    /// The query's position within the cache.
    pub cache_pos: usize,
}

impl Ring {
    pub(super) fn of(plan: &Plan) -> Self {
        Ring { max_ctx: plan.cfg.max_ctx, sinks: plan.sinks() }
    }

    /// The cache slot of the token at absolute position `abs`: sinks keep
    /// their slots; the others go round a ring of `max_ctx - sinks` slots.
    /// (Without streaming `abs < max_ctx`, so the slot is `abs`.)
    pub(super) fn slot(&self, abs: usize) -> usize {
        if abs < self.sinks {
            abs
        } else {
            self.sinks + (abs - self.sinks) % (self.max_ctx - self.sinks)
        }
    }

    /// Calls `f(first_slot, len)` for the runs of consecutive cache slots
    /// that the absolute positions `abs` occupy, in order.
    pub(super) fn for_runs(&self, abs: Range<usize>, mut f: impl FnMut(usize, usize)) {
        // Slots run on consecutively until the end of the cache (then the
        // ring wraps to the first slot after the sinks).
        let mut a = abs.start;
        while a < abs.end {
            let first = self.slot(a);
            let len = (abs.end - a).min(self.max_ctx - first);
            f(first, len);
            a += len;
        }
    }

    /// The keys a query at absolute position `abs` attends to.
    ///
    /// Until the cache is full that is every earlier token. Once tokens have
    /// been evicted it is the `sinks` first tokens plus the most recent
    /// `max_ctx - sinks` (the query's own included), and the query's
    /// position within the cache is `max_ctx - 1`. A model's own sliding
    /// window (Mistral) narrows either set.
    pub(super) fn key_set(&self, abs: usize, window: Option<usize>) -> KeySet {
        let (max_ctx, sinks) = (self.max_ctx, self.sinks);
        let lowest = window.map_or(0, |w| (abs + 1).saturating_sub(w));
        if abs < max_ctx {
            return KeySet { sinks: 0..0, main: lowest..abs + 1, cache_pos: abs };
        }
        let ring = max_ctx - sinks;
        KeySet { sinks: lowest.min(sinks)..sinks, main: (abs + 1 - ring).max(lowest)..abs + 1, cache_pos: max_ctx - 1 }
    }
}

/// One layer's attention over a batch, shared by the threads that split the
/// batch's tokens (each writes only its tokens' rows of the output).
pub(super) struct Attention<'s, 'a> {
    kern: &'static Kernels,
    kv: &'s KvStore<'a>,
    pub ring: Ring,
    /// Queries `[n, q_dim]`, rotated.
    q: &'s [f32],
    /// Keys of the batch `[n, kv_dim]`, rotated and rounded to the cache's precision.
    k: &'s [f32],
    /// Values of the batch `[n, kv_dim]`, rounded likewise.
    v: &'s [f32],
    /// RoPE inverse frequencies `[head_dim / 2]`.
    inv_freq: &'s [f32],
    /// Cache row of this layer's slot 0.
    layer_row: usize,
    /// Absolute position of the batch's first token.
    n0: usize,
    window: Option<usize>,
    shape: KvShape,
    n_heads: usize,
    /// Query heads per KV head.
    group: usize,
    scale: f32,
    /// Floats of `scratch` per thread: scores, a query head, a RoPE row.
    per_thread: usize,
}

impl<'s, 'a> Attention<'s, 'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        c: &ModelConfig,
        kern: &'static Kernels,
        kv: &'s KvStore<'a>,
        plan: &Plan,
        [q, k, v]: [&'s [f32]; 3],
        inv_freq: &'s [f32],
        layer_row: usize,
        n0: usize,
    ) -> Self {
        let hd = c.head_dim as usize;
        Attention {
            kern,
            kv,
            ring: Ring::of(plan),
            q,
            k,
            v,
            inv_freq,
            layer_row,
            n0,
            window: c.sliding_window().map(|w| w as usize),
            shape: KvShape { kv_dim: c.kv_dim() as usize, head_dim: hd },
            n_heads: c.n_heads as usize,
            group: (c.n_heads / c.n_kv_heads) as usize,
            scale: 1.0 / libm::sqrtf(hd as f32),
            per_thread: plan.cfg.max_ctx + 2 * hd,
        }
    }

    /// Attention of the batch's `n` tokens into `att` (`[n, q_dim]`), on the
    /// threads of `par`: split by tokens (prefill) or, for one token, by
    /// heads (decode); `scratch` holds `per_thread` floats per thread.
    pub(super) fn run(&self, n: usize, att: &mut [f32], scratch: &mut [f32], par: Par<'_>) {
        let hd = self.shape.head_dim;
        let q_dim = self.n_heads * hd;
        let per_thread = self.per_thread;
        #[cfg(feature = "std")]
        {
            let (items, unit) = if n > 1 { (n, q_dim) } else { (self.n_heads, hd) };
            let parts = par.threads().min(items);
            if parts > 1 {
                let (att, scratch) = (Shards::new(att), Shards::new(scratch));
                par.run(parts, &|p| {
                    let range = bounds(items, parts, p, 1);
                    // SAFETY: part `p` alone writes the outputs of its
                    // tokens (or heads) and uses scratch block `p`.
                    let (out, scratch) = unsafe {
                        (
                            att.piece(range.start * unit..range.end * unit),
                            scratch.piece(p * per_thread..(p + 1) * per_thread),
                        )
                    };
                    if n > 1 {
                        for (i, t) in range.enumerate() {
                            self.token(t, 0..self.n_heads, &mut out[i * q_dim..(i + 1) * q_dim], scratch);
                        }
                    } else {
                        self.token(0, range, out, scratch);
                    }
                });
                return;
            }
        }
        let _ = par;
        for t in 0..n {
            self.token(t, 0..self.n_heads, &mut att[t * q_dim..(t + 1) * q_dim], &mut scratch[..per_thread]);
        }
    }

    /// Heads `heads` of batch token `t` (`att` holds their outputs).
    fn token(&self, t: usize, heads: Range<usize>, att: &mut [f32], scratch: &mut [f32]) {
        let KvShape { kv_dim, head_dim: hd } = self.shape;
        let q_dim = self.n_heads * hd;
        let (kern, n0, shape, scale) = (self.kern, self.n0, self.shape, self.scale);
        let abs = n0 + t;
        let keys = self.ring.key_set(abs, self.window);
        let (scores, rest) = scratch.split_at_mut(scratch.len() - 2 * hd);
        let (q_head, sink_cs) = rest.split_at_mut(hd);
        // Sink keys sit at their own positions: the query meets them rotated
        // at its position within the cache, not in the text.
        if !keys.sinks.is_empty() {
            k::rope_table(keys.cache_pos as i64 - abs as i64, self.inv_freq, sink_cs);
        }
        let n_sinks = keys.sinks.len();
        let n_keys = n_sinks + keys.main.len();
        // Sinks and other keys from before the batch are in the cache; those
        // of the batch itself (a first batch can hold the sinks and run past
        // the cache) only in its buffers, written to the cache afterwards.
        let cached_sinks = keys.sinks.start..keys.sinks.end.min(n0);
        let fresh_sinks = keys.sinks.start.max(n0)..keys.sinks.end;
        let cached = keys.main.start..keys.main.end.min(n0);
        let fresh = keys.main.start.max(n0)..keys.main.end;
        // The batch's own keys or values of KV head `kvh`, positions `abs`.
        let batch_rows = |abs: &Range<usize>, kvh: usize| {
            let r = (abs.start - n0) * kv_dim + kvh * hd;
            r..(abs.end - 1 - n0) * kv_dim + kvh * hd + hd
        };
        let first = heads.start;
        for h in heads {
            let kvh = h / self.group;
            let qh = &self.q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
            let scores = &mut scores[..n_keys];
            if n_sinks > 0 {
                q_head.copy_from_slice(qh);
                (kern.rope)(q_head, sink_cs);
                let n_cached = cached_sinks.len();
                let row = self.layer_row + cached_sinks.start;
                self.kv.dot_keys(kern, row, kvh, q_head, scale, &mut scores[..n_cached], shape);
                if !fresh_sinks.is_empty() {
                    let keys = &self.k[batch_rows(&fresh_sinks, kvh)];
                    (kern.dot_rows)(q_head, keys, kv_dim, scale, &mut scores[n_cached..n_sinks]);
                }
            }
            let mut at = n_sinks;
            self.ring.for_runs(cached.clone(), |slot, len| {
                self.kv.dot_keys(kern, self.layer_row + slot, kvh, qh, scale, &mut scores[at..at + len], shape);
                at += len;
            });
            if !fresh.is_empty() {
                (kern.dot_rows)(qh, &self.k[batch_rows(&fresh, kvh)], kv_dim, scale, &mut scores[at..]);
            }
            (kern.softmax)(scores);
            let out = &mut att[(h - first) * hd..(h - first + 1) * hd];
            out.fill(0.0);
            let scores = &scores[..n_keys];
            let n_cached = cached_sinks.len();
            let row = self.layer_row + cached_sinks.start;
            self.kv.add_values(kern, row, kvh, &scores[..n_cached], out, shape);
            if !fresh_sinks.is_empty() {
                (kern.axpy_rows)(&scores[n_cached..n_sinks], &self.v[batch_rows(&fresh_sinks, kvh)], kv_dim, out);
            }
            let mut at = n_sinks;
            self.ring.for_runs(cached.clone(), |slot, len| {
                self.kv.add_values(kern, self.layer_row + slot, kvh, &scores[at..at + len], out, shape);
                at += len;
            });
            if !fresh.is_empty() {
                (kern.axpy_rows)(&scores[at..], &self.v[batch_rows(&fresh, kvh)], kv_dim, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `for_runs` covers exactly the slots `slot` gives, in order, in runs of
    /// consecutive slots, for every kind of key range a query sees.
    #[test]
    fn runs_of_slots_match_slot_by_slot() {
        for (max_ctx, streaming, sinks) in [(16, true, 4), (16, true, 0), (9, true, 8), (16, false, 4), (1, true, 0)] {
            let ring = Ring { max_ctx, sinks: if streaming { sinks } else { 0 } };
            let limit = if streaming { 5 * max_ctx } else { max_ctx };
            for start in 0..limit {
                for end in start..=limit.min(start + max_ctx) {
                    let mut got = Vec::new();
                    ring.for_runs(start..end, |first, len| {
                        assert!(len > 0);
                        got.extend(first..first + len);
                    });
                    let want: Vec<usize> = (start..end).map(|a| ring.slot(a)).collect();
                    assert_eq!(got, want, "max_ctx {max_ctx} sinks {sinks} streaming {streaming}: {start}..{end}");
                }
            }
        }
    }
}
