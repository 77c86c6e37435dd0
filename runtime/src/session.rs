//! Sessions: the KV cache and activations carved out of one caller arena,
//! and the forward pass.

use ferrite_format::{LayerRole, ModelConfig, Role};
use ferrite_kernels::reference as k;
use ferrite_kernels::{ActsMut, Kernels, Tier};

use crate::kv::{KvShape, KvStore, KvType};
use crate::parallel::{self, Input};
use crate::{Error, Model};

/// What a session needs room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// KV cache capacity in tokens.
    pub max_ctx: usize,
    /// KV cache element type.
    pub kv: KvType,
    /// Most prompt tokens processed per batch in [`Session::prefill`]
    /// (longer prompts run in several batches).
    pub max_batch: usize,
    /// Threads the matrix products are split across (feature `std`; the
    /// work runs on the current rayon pool). Results do not depend on it.
    pub threads: usize,
    /// Reserve logits for a whole batch (`max_batch × vocab` floats), so
    /// [`Session::prefill_all`] runs the output head as one matrix product
    /// per batch (perplexity, logit dumps). Otherwise it runs it row by row.
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

/// Memory alignment of every arena part.
const ARENA_ALIGN: usize = 64;

/// Sizes of the arena parts, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanParts {
    /// KV cache: `n_layers * max_ctx` slots of keys and values.
    pub kv_cache: usize,
    /// Activations: residual stream, normed input, q/k/v, attention output,
    /// FFN gate/up, each `max_batch` rows.
    pub activations: usize,
    /// Scratch: attention scores, dequantized weight rows (one per thread),
    /// the logits, the RoPE frequencies and one query head.
    pub scratch: usize,
}

/// The exact memory a session needs, known before running.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    cfg: SessionConfig,
    model: ModelConfig,
    parts: PlanParts,
    layout: Layout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Layout {
    // Element counts.
    kv_per_layer: usize,
    x: usize,
    q: usize,
    kv: usize,
    ffn: usize,
    scores: usize,
    row: usize,
    rows: usize,
    logits: usize,
    inv_freq: usize,
    /// Groups of 32 in the widest matmul input, times `max_batch`.
    act_groups: usize,
    /// RoPE cosines and sines: one `head_dim` row per batch token, plus one
    /// for the sink shift.
    rope: usize,
}

/// Bytes of the KV cache part for `slots` (layers × max_ctx) slots: keys
/// and values, plus int8 scales, each array padded to the arena alignment
/// exactly as [`Session::new`] carves them.
fn kv_part_bytes(kv: KvType, slots: usize, kv_dim: usize, n_kv_heads: usize) -> Result<usize, Error> {
    let arr = |n: Option<usize>| n.and_then(padded).ok_or(Error::Overflow);
    let elems = slots.checked_mul(kv_dim);
    let one = match kv {
        KvType::F32 => arr(elems.and_then(|e| e.checked_mul(4)))?,
        KvType::F16 => arr(elems.and_then(|e| e.checked_mul(2)))?,
        KvType::Q8 => arr(elems)?
            .checked_add(arr(slots.checked_mul(n_kv_heads).and_then(|n| n.checked_mul(4)))?)
            .ok_or(Error::Overflow)?,
    };
    one.checked_mul(2).ok_or(Error::Overflow)
}

fn padded(bytes: usize) -> Option<usize> {
    bytes.checked_add(ARENA_ALIGN - 1).map(|b| b & !(ARENA_ALIGN - 1))
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
        let kv_per_layer = ov(cfg.max_ctx.checked_mul(kv_dim))?;
        let layout = Layout {
            kv_per_layer,
            x: ov(b.checked_mul(d))?,
            q: ov(b.checked_mul(q_dim))?,
            kv: ov(b.checked_mul(kv_dim))?,
            ffn: ov(b.checked_mul(ffn))?,
            // Per thread: scores, a rotated query head, a RoPE row.
            scores: ov(cfg.max_ctx.checked_add(2 * m.head_dim as usize).and_then(|v| v.checked_mul(cfg.threads)))?,
            row: d.max(q_dim).max(ffn),
            rows: ov(d.max(q_dim).max(ffn).checked_mul(cfg.threads))?,
            logits: ov((m.vocab_size as usize).checked_mul(if cfg.logits_all { b } else { 1 }))?,
            inv_freq: m.head_dim as usize / 2,
            act_groups: ov(d.max(q_dim).max(ffn).div_ceil(32).checked_mul(b))?,
            rope: ov(b.checked_mul(m.head_dim as usize))?,
        };
        let slots = ov(cfg.max_ctx.checked_mul(m.n_layers as usize))?;
        let kv_bytes = kv_part_bytes(cfg.kv, slots, kv_dim, m.n_kv_heads as usize)?;
        let f = |n: usize| ov(n.checked_mul(4).and_then(padded));
        // x, xn (both [b, d]), q and att ([b, q_dim]), k and v ([b, kv_dim]), gate and up ([b, ffn]),
        // the int8 activations of the widest input.
        let activations = [
            f(layout.x)?,
            f(layout.x)?,
            f(layout.q)?,
            f(layout.q)?,
            f(layout.kv)?,
            f(layout.kv)?,
            f(layout.ffn)?,
            f(layout.ffn)?,
            // Int8 activations: quants, scales, sums.
            ov(layout.act_groups.checked_mul(32).and_then(padded))?,
            f(layout.act_groups)?,
            f(layout.act_groups)?,
        ]
        .iter()
        .try_fold(0usize, |a, &v| a.checked_add(v))
        .ok_or(Error::Overflow)?;
        let scratch = [f(layout.scores)?, f(layout.rows)?, f(layout.logits)?, f(layout.inv_freq)?, f(layout.rope)?]
            .iter()
            .try_fold(0usize, |a, &v| a.checked_add(v))
            .ok_or(Error::Overflow)?;
        Ok(Plan { cfg: *cfg, model: *m, parts: PlanParts { kv_cache: kv_bytes, activations, scratch }, layout })
    }

    /// Bytes the arena must have (parts plus alignment slack for any start address).
    pub fn arena_bytes(&self) -> usize {
        self.parts.kv_cache + self.parts.activations + self.parts.scratch + ARENA_ALIGN
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
    fn sinks(&self) -> usize {
        if self.cfg.streaming {
            self.cfg.sinks
        } else {
            0
        }
    }

    /// The cache slot of the token at absolute position `abs`: sinks keep
    /// their slots; the others go round a ring of `max_ctx - sinks` slots.
    /// (Without streaming `abs < max_ctx`, so the slot is `abs`.)
    fn slot(&self, abs: usize) -> usize {
        let sinks = self.sinks();
        if abs < sinks {
            abs
        } else {
            sinks + (abs - sinks) % (self.cfg.max_ctx - sinks)
        }
    }

    /// Calls `f(first_slot, len)` for the runs of consecutive cache slots
    /// that the absolute positions `abs` occupy, in order.
    fn for_runs(&self, abs: core::ops::Range<usize>, mut f: impl FnMut(usize, usize)) {
        // Slots run on consecutively until the end of the cache (then the
        // ring wraps to the first slot after the sinks).
        let mut a = abs.start;
        while a < abs.end {
            let first = self.slot(a);
            let len = (abs.end - a).min(self.cfg.max_ctx - first);
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
    fn key_set(&self, abs: usize, window: Option<usize>) -> KeySet {
        let max_ctx = self.cfg.max_ctx;
        let sinks = self.sinks();
        let lowest = window.map_or(0, |w| (abs + 1).saturating_sub(w));
        if abs < max_ctx {
            return KeySet { sinks: 0..0, main: lowest..abs + 1, cache_pos: abs };
        }
        let ring = max_ctx - sinks;
        KeySet { sinks: lowest.min(sinks)..sinks, main: (abs + 1 - ring).max(lowest)..abs + 1, cache_pos: max_ctx - 1 }
    }
}

const STATE_MAGIC: [u8; 8] = *b"FRTSTATE";
const STATE_HEADER: usize = core::mem::size_of::<StateHeader>();
const STATE_CRC_AT: usize = 44;

/// Header of a saved session state (little-endian).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StateHeader {
    magic: [u8; 8],
    version: u32,
    kv: u32,
    max_ctx: u64,
    sinks: u64,
    pos: u64,
    model_crc: u32,
    /// CRC-32 of everything after the header.
    payload_crc: u32,
    reserved: [u8; 16],
}

const _: () = assert!(STATE_HEADER == 64);
const _: () = assert!(core::mem::offset_of!(StateHeader, payload_crc) == STATE_CRC_AT);

/// Receives `(index_in_prompt, logits)` for every prompt position.
type LogitsSink<'f> = &'f mut dyn FnMut(usize, &[f32]);

/// Keys attended by one query: sink slots, and a run of absolute positions.
struct KeySet {
    sinks: core::ops::Range<usize>,
    main: core::ops::Range<usize>,
    cache_pos: usize,
}

/// Splits aligned, typed slices off the front of a byte arena.
struct Carver<'a> {
    rest: &'a mut [u8],
}

impl<'a> Carver<'a> {
    fn take_bytes(&mut self, bytes: usize) -> Result<&'a mut [u8], Error> {
        let rest = core::mem::take(&mut self.rest);
        let skip = rest.as_ptr().align_offset(ARENA_ALIGN);
        let padded = padded(bytes).ok_or(Error::Overflow)?;
        if skip.checked_add(padded).is_none_or(|n| n > rest.len()) {
            return Err(Error::Overflow);
        }
        let (_, aligned) = rest.split_at_mut(skip);
        let (head, tail) = aligned.split_at_mut(padded);
        self.rest = tail;
        Ok(&mut head[..bytes])
    }
    fn slice<T: bytemuck::Pod>(&mut self, n: usize) -> Result<&'a mut [T], Error> {
        let bytes = self.take_bytes(n.checked_mul(core::mem::size_of::<T>()).ok_or(Error::Overflow)?)?;
        bytes.fill(0);
        // The slice starts 64-byte aligned and its length is a multiple of
        // the element size, so the cast cannot fail.
        bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Overflow)
    }
    fn f32s(&mut self, n: usize) -> Result<&'a mut [f32], Error> {
        self.slice(n)
    }
}

/// One generation context: a KV cache and working memory borrowed from the
/// caller's arena. Never allocates.
pub struct Session<'m, 'a> {
    model: &'m Model<'m>,
    plan: Plan,
    kern: &'static Kernels,
    acts: ActsMut<'a>,
    kv: KvStore<'a>,
    x: &'a mut [f32],
    xn: &'a mut [f32],
    q: &'a mut [f32],
    att: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a mut [f32],
    gate: &'a mut [f32],
    up: &'a mut [f32],
    scores: &'a mut [f32],
    row: &'a mut [f32],
    logits: &'a mut [f32],
    inv_freq: &'a mut [f32],
    rope: &'a mut [f32],
    /// Tokens processed since the last reset (their absolute positions are
    /// `0..pos`; with streaming, only the sinks and the last
    /// `max_ctx - sinks` of them are still in the cache).
    pos: usize,
}

impl<'m, 'a> Session<'m, 'a> {
    /// Carves a session out of `arena` (any alignment; at least
    /// [`Plan::arena_bytes`] bytes).
    pub fn new(model: &'m Model<'m>, plan: &Plan, arena: &'a mut [u8]) -> Result<Self, Error> {
        if plan.model != *model.config() {
            return Err(Error::PlanMismatch);
        }
        let needed = plan.arena_bytes();
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall { needed, given: arena.len() });
        }
        let l = plan.layout;
        let n_layers = model.config().n_layers as usize;
        let kv_elems = l.kv_per_layer.checked_mul(n_layers).ok_or(Error::Overflow)?;
        let kern = ferrite_kernels::select(plan.cfg.kernels).map_err(Error::Kernels)?;
        let mut c = Carver { rest: arena };
        let kv = match plan.cfg.kv {
            KvType::F32 => KvStore::F32 { k: c.slice(kv_elems)?, v: c.slice(kv_elems)? },
            KvType::F16 => KvStore::F16 { k: c.slice(kv_elems)?, v: c.slice(kv_elems)? },
            KvType::Q8 => {
                let heads = kv_elems / model.config().head_dim as usize;
                KvStore::Q8 { k: c.slice(kv_elems)?, v: c.slice(kv_elems)?, ks: c.slice(heads)?, vs: c.slice(heads)? }
            }
        };
        let s = Session {
            model,
            plan: *plan,
            kv,
            kern,
            acts: ActsMut { qs: c.slice(l.act_groups * 32)?, d: c.f32s(l.act_groups)?, sums: c.slice(l.act_groups)? },
            x: c.f32s(l.x)?,
            xn: c.f32s(l.x)?,
            q: c.f32s(l.q)?,
            att: c.f32s(l.q)?,
            k: c.f32s(l.kv)?,
            v: c.f32s(l.kv)?,
            gate: c.f32s(l.ffn)?,
            up: c.f32s(l.ffn)?,
            scores: c.f32s(l.scores)?,
            row: c.f32s(l.rows)?,
            logits: c.f32s(l.logits)?,
            inv_freq: c.f32s(l.inv_freq)?,
            rope: c.f32s(l.rope)?,
            pos: 0,
        };
        model.rope_inv_freq(s.inv_freq);
        Ok(s)
    }

    /// The kernel tier this session runs.
    pub fn kernels(&self) -> Tier {
        self.kern.tier
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The KV cache capacity.
    pub fn max_ctx(&self) -> usize {
        self.plan.cfg.max_ctx
    }

    /// Empties the KV cache (a new conversation).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Bytes [`Session::save_state`] needs for the current state.
    pub fn state_len(&self) -> usize {
        let (used, per_layer) = self.state_geometry();
        let c = self.model.config();
        STATE_HEADER + per_layer * used * c.n_layers as usize + c.vocab_size as usize * 4
    }

    fn state_geometry(&self) -> (usize, usize) {
        let c = self.model.config();
        let used = self.pos.min(self.plan.cfg.max_ctx);
        let per_slot = self.plan.cfg.kv.slot_bytes(c.n_kv_heads as usize, c.head_dim as usize).unwrap_or(0);
        (used, per_slot)
    }

    /// Saves the session's state (positions, the occupied KV cache slots and
    /// the last logits) into `out`; returns the bytes written. A device can
    /// process a system prompt once and resume from the saved bytes.
    pub fn save_state(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.state_len();
        if out.len() < len {
            return Err(Error::BufferTooSmall { needed: len, given: out.len() });
        }
        let c = *self.model.config();
        let (used, _) = self.state_geometry();
        let shape = KvShape { kv_dim: c.kv_dim() as usize, head_dim: c.head_dim as usize };
        let mut w = 0usize;
        let mut put = |bytes: &[u8]| {
            out[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
        };
        let header = StateHeader {
            magic: STATE_MAGIC,
            version: 1,
            kv: self.plan.cfg.kv.code(),
            max_ctx: self.plan.cfg.max_ctx as u64,
            sinks: self.plan.sinks() as u64,
            pos: self.pos as u64,
            model_crc: self.model.file().header().meta_crc,
            payload_crc: 0,
            reserved: [0; 16],
        };
        put(bytemuck::bytes_of(&header));
        for layer in 0..c.n_layers as usize {
            for part in self.kv.row_bytes(layer * self.plan.cfg.max_ctx, used, shape) {
                put(part);
            }
        }
        put(bytemuck::cast_slice(self.logits()));
        let crc = ferrite_format::checksum(&out[STATE_HEADER..len]);
        out[STATE_CRC_AT..STATE_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(len)
    }

    /// Restores a state saved by [`Session::save_state`] from a session with
    /// the same model and the same cache settings. Afterwards the session
    /// continues exactly as the saved one would have.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let bad = |why| Err(Error::BadState { why });
        if bytes.len() < STATE_HEADER {
            return bad("shorter than the state header");
        }
        let h: StateHeader = bytemuck::pod_read_unaligned(&bytes[..STATE_HEADER]);
        if h.magic != STATE_MAGIC || h.version != 1 {
            return bad("not a Ferrite session state (magic or version)");
        }
        if h.model_crc != self.model.file().header().meta_crc {
            return bad("saved from a different model file");
        }
        if h.kv != self.plan.cfg.kv.code()
            || h.max_ctx != self.plan.cfg.max_ctx as u64
            || h.sinks != self.plan.sinks() as u64
        {
            return bad("saved with different KV cache settings (type, max_ctx or sinks)");
        }
        let Ok(pos) = usize::try_from(h.pos) else { return bad("position out of range") };
        let c = *self.model.config();
        let used = pos.min(self.plan.cfg.max_ctx);
        let per_slot = self.plan.cfg.kv.slot_bytes(c.n_kv_heads as usize, c.head_dim as usize).unwrap_or(0);
        let vocab = c.vocab_size as usize;
        let len = used
            .checked_mul(per_slot)
            .and_then(|b| b.checked_mul(c.n_layers as usize))
            .and_then(|b| b.checked_add(STATE_HEADER + vocab * 4));
        if len != Some(bytes.len()) {
            return bad("length does not match its header");
        }
        if ferrite_format::checksum(&bytes[STATE_HEADER..]) != h.payload_crc {
            return bad("checksum mismatch (corrupted)");
        }
        let shape = KvShape { kv_dim: c.kv_dim() as usize, head_dim: c.head_dim as usize };
        let mut r = STATE_HEADER;
        for layer in 0..c.n_layers as usize {
            for part in self.kv.row_bytes_mut(layer * self.plan.cfg.max_ctx, used, shape) {
                part.copy_from_slice(&bytes[r..r + part.len()]);
                r += part.len();
            }
        }
        let logits: &mut [u8] = bytemuck::cast_slice_mut(&mut self.logits[..vocab]);
        logits.copy_from_slice(&bytes[r..r + vocab * 4]);
        self.pos = pos;
        Ok(())
    }

    /// Processes a prompt in batches (matrix-matrix products) and returns
    /// the logits after its last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.run(tokens, None)?;
        Ok(self.logits())
    }

    /// Like [`Session::prefill`], but computes the logits at every prompt
    /// position and passes each to `each(index_in_prompt, logits)`.
    pub fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> Result<(), Error> {
        self.run(tokens, Some(each))
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.run(core::slice::from_ref(&token), None)?;
        Ok(self.logits())
    }

    /// The logits of the last processed token.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.model.config().vocab_size as usize]
    }

    fn run(&mut self, tokens: &[u32], mut each: Option<LogitsSink<'_>>) -> Result<(), Error> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id >= vocab) {
            return Err(Error::BadToken { id, vocab });
        }
        let max_ctx = self.plan.cfg.max_ctx;
        let end = self.pos.checked_add(tokens.len());
        if end.is_none_or(|end| end > max_ctx) && !self.plan.cfg.streaming || end.is_none() {
            return Err(Error::ContextFull { used: self.pos, adding: tokens.len(), max_ctx });
        }
        let batch = self.plan.cfg.max_batch;
        let mut done = 0;
        for chunk in tokens.chunks(batch) {
            let last_chunk = done + chunk.len() == tokens.len();
            self.forward(chunk)?;
            // Logits: every position when asked, else only the very last.
            match each.as_mut() {
                Some(f) if self.plan.cfg.logits_all => {
                    self.head_rows(0, chunk.len())?;
                    let vocab = self.model.config().vocab_size as usize;
                    for t in 0..chunk.len() {
                        f(done + t, &self.logits[t * vocab..(t + 1) * vocab]);
                    }
                    // `logits()` is the first row: move the last one there.
                    self.logits.copy_within((chunk.len() - 1) * vocab..chunk.len() * vocab, 0);
                }
                Some(f) => {
                    for t in 0..chunk.len() {
                        self.head_rows(t, 1)?;
                        f(done + t, &self.logits[..self.model.config().vocab_size as usize]);
                    }
                }
                None if last_chunk => self.head_rows(chunk.len() - 1, 1)?,
                None => {}
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Final norm and output projection of batch rows `first..first + n`
    /// into `logits` (`n × vocab`), as one matrix product.
    fn head_rows(&mut self, first: usize, n: usize) -> Result<(), Error> {
        let m = self.model;
        let c = *m.config();
        let d = c.d_model as usize;
        let norm = m.vector(Role::OutputNorm)?;
        let out = m.matrix(Role::Output)?;
        let kern = self.kern;
        norm_rows(kern, &self.x[first * d..(first + n) * d], norm, c.norm_eps, &mut self.xn[..n * d]);
        let f32_acts = self.plan.cfg.f32_activations || !out.w.is_quantized();
        let input = prepare(kern, &self.xn[..n * d], d, n, &mut self.acts, f32_acts);
        parallel::matmul(
            self.plan.cfg.threads,
            kern,
            &out,
            input,
            n,
            self.logits,
            out.rows,
            self.row,
            self.plan.layout.row,
        );
        Ok(())
    }

    /// Runs the layers over `tokens` (at most `max_batch`), appending their
    /// keys and values to the cache. Leaves the final hidden states in `x`.
    fn forward(&mut self, tokens: &[u32]) -> Result<(), Error> {
        let m = self.model;
        let c = *m.config();
        let n = tokens.len();
        let d = c.d_model as usize;
        let q_dim = c.q_dim() as usize;
        let kv_dim = c.kv_dim() as usize;
        let ffn = c.ffn_dim as usize;
        let hd = c.head_dim as usize;
        let n_heads = c.n_heads as usize;
        let group = (c.n_heads / c.n_kv_heads) as usize;
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let max_ctx = self.plan.cfg.max_ctx;
        let window = c.sliding_window().map(|w| w as usize);

        let kern = self.kern;
        let threads = self.plan.cfg.threads;
        let row_len = self.plan.layout.row;
        let f32_acts = self.plan.cfg.f32_activations;
        let (batch_dot, batch_axpy) = self.kv.batch_ops(kern);
        for t in 0..n {
            k::rope_table((self.pos + t) as f32, self.inv_freq, &mut self.rope[t * hd..(t + 1) * hd]);
        }
        let embed = m.matrix(Role::Embedding)?;
        for (t, &id) in tokens.iter().enumerate() {
            embed.dequantize_row(id as usize, &mut self.x[t * d..(t + 1) * d]);
        }
        for layer in 0..c.n_layers {
            let role = |r| Role::Layer(layer, r);
            let attn_norm = m.vector(role(LayerRole::AttnNorm))?;
            norm_rows(kern, &self.x[..n * d], attn_norm, c.norm_eps, &mut self.xn[..n * d]);
            let wq = m.matrix(role(LayerRole::AttnQ))?;
            let wk = m.matrix(role(LayerRole::AttnK))?;
            let wv = m.matrix(role(LayerRole::AttnV))?;
            let float = f32_acts || ![&wq, &wk, &wv].iter().any(|m| m.w.is_quantized());
            let input = prepare(kern, &self.xn[..n * d], d, n, &mut self.acts, float);
            let jobs = [(&wq, &mut self.q[..], q_dim), (&wk, &mut self.k[..], kv_dim), (&wv, &mut self.v[..], kv_dim)];
            parallel::matmuls(threads, kern, jobs, input, n, self.row, row_len);
            if c.qkv_bias() {
                let bq = m.vector(role(LayerRole::AttnQBias))?;
                let bk = m.vector(role(LayerRole::AttnKBias))?;
                let bv = m.vector(role(LayerRole::AttnVBias))?;
                for t in 0..n {
                    add(&mut self.q[t * q_dim..(t + 1) * q_dim], bq);
                    add(&mut self.k[t * kv_dim..(t + 1) * kv_dim], bk);
                    add(&mut self.v[t * kv_dim..(t + 1) * kv_dim], bv);
                }
            }
            // RoPE at absolute positions (tables made once per batch); keys
            // are cached already rotated.
            for t in 0..n {
                let cs = &self.rope[t * hd..(t + 1) * hd];
                for h in self.q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
                    (kern.rope)(h, cs);
                }
                for h in self.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                    (kern.rope)(h, cs);
                }
            }
            // Attention. Keys and values of this batch come from `k`/`v`
            // (rounded to the cache's precision first, so batching never
            // changes results); earlier ones from the cache, in runs of
            // consecutive slots. The batch is written to the cache
            // afterwards, so a wrapping ring never overwrites a key a token
            // of the same batch still needs.
            let shape = KvShape { kv_dim, head_dim: hd };
            self.kv.round_trip(kern, &mut self.k[..n * kv_dim], shape);
            self.kv.round_trip(kern, &mut self.v[..n * kv_dim], shape);
            let layer_row = layer as usize * max_ctx;
            let n0 = self.pos;
            let attn = Attention {
                kern,
                kv: &self.kv,
                plan: &self.plan,
                q: &self.q[..n * q_dim],
                k: &self.k[..n * kv_dim],
                v: &self.v[..n * kv_dim],
                inv_freq: self.inv_freq,
                layer_row,
                n0,
                window,
                shape,
                n_heads,
                group,
                scale,
                batch_dot,
                batch_axpy,
            };
            let per_thread = max_ctx + 2 * hd;
            attn.run(0..n, &mut self.att[..n * q_dim], self.scores, per_thread, threads);
            for t in 0..n {
                let row = layer_row + self.plan.slot(n0 + t);
                let (keys, values) = (&self.k[t * kv_dim..(t + 1) * kv_dim], &self.v[t * kv_dim..(t + 1) * kv_dim]);
                self.kv.write(kern, row, keys, values, shape);
            }
            let wo = m.matrix(role(LayerRole::AttnO))?;
            let float = f32_acts || !wo.w.is_quantized();
            let input = prepare(kern, &self.att[..n * q_dim], q_dim, n, &mut self.acts, float);
            parallel::matmul(threads, kern, &wo, input, n, self.xn, d, self.row, row_len);
            add(&mut self.x[..n * d], &self.xn[..n * d]);

            let ffn_norm = m.vector(role(LayerRole::FfnNorm))?;
            norm_rows(kern, &self.x[..n * d], ffn_norm, c.norm_eps, &mut self.xn[..n * d]);
            let wg = m.matrix(role(LayerRole::FfnGate))?;
            let wu = m.matrix(role(LayerRole::FfnUp))?;
            let wd = m.matrix(role(LayerRole::FfnDown))?;
            let float = f32_acts || !(wg.w.is_quantized() || wu.w.is_quantized());
            let input = prepare(kern, &self.xn[..n * d], d, n, &mut self.acts, float);
            let jobs = [(&wg, &mut self.gate[..], ffn), (&wu, &mut self.up[..], ffn)];
            parallel::matmuls(threads, kern, jobs, input, n, self.row, row_len);
            (kern.swiglu)(&mut self.gate[..n * ffn], &self.up[..n * ffn]);
            let float = f32_acts || !wd.w.is_quantized();
            let input = prepare(kern, &self.gate[..n * ffn], ffn, n, &mut self.acts, float);
            parallel::matmul(threads, kern, &wd, input, n, self.xn, d, self.row, row_len);
            add(&mut self.x[..n * d], &self.xn[..n * d]);
        }
        self.pos += n;
        Ok(())
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x` into the same row of `out`.
fn norm_rows(kern: &Kernels, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        (kern.rmsnorm)(row, weight, eps, dst);
    }
}

/// The input of the matrix products over `x` (`n` rows of `cols`): `x`
/// itself, and its int8 quantization in `acts` unless `f32_acts` (asked
/// for, or no matrix reading this input is q8/q4).
fn prepare<'x>(
    kern: &Kernels,
    x: &'x [f32],
    cols: usize,
    n: usize,
    acts: &'x mut ActsMut<'_>,
    f32_acts: bool,
) -> Input<'x> {
    if f32_acts {
        return Input { x, stride: cols, acts: None };
    }
    (kern.quantize_acts)(x, cols, n, cols, acts);
    Input { x, stride: cols, acts: Some(acts.as_acts()) }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (o, &s) in dst.iter_mut().zip(src) {
        *o += s;
    }
}

/// One layer's attention over a batch, shared by the threads that split the
/// batch's tokens (each writes only its tokens' rows of the output).
struct Attention<'s, 'a> {
    kern: &'static Kernels,
    kv: &'s KvStore<'a>,
    plan: &'s Plan,
    q: &'s [f32],
    k: &'s [f32],
    v: &'s [f32],
    inv_freq: &'s [f32],
    layer_row: usize,
    n0: usize,
    window: Option<usize>,
    shape: KvShape,
    n_heads: usize,
    group: usize,
    scale: f32,
    batch_dot: fn(&[f32], &[f32], usize, f32, &mut [f32]),
    batch_axpy: fn(&[f32], &[f32], usize, &mut [f32]),
}

impl Attention<'_, '_> {
    /// Attention of the batch tokens `tokens` into `att` (their rows),
    /// split across up to `threads` threads; `scratch` holds `per_thread`
    /// floats per thread.
    fn run(
        &self,
        tokens: core::ops::Range<usize>,
        att: &mut [f32],
        scratch: &mut [f32],
        per_thread: usize,
        threads: usize,
    ) {
        #[cfg(feature = "std")]
        if threads > 1 && tokens.len() > 1 {
            let left = threads / 2;
            let mid = tokens.start + tokens.len() * left / threads;
            let q_dim = self.n_heads * self.shape.head_dim;
            let (a1, a2) = att.split_at_mut((mid - tokens.start) * q_dim);
            let (s1, s2) = scratch.split_at_mut(per_thread * left);
            rayon::join(
                || self.run(tokens.start..mid, a1, s1, per_thread, left),
                || self.run(mid..tokens.end, a2, s2, per_thread, threads - left),
            );
            return;
        }
        let q_dim = self.n_heads * self.shape.head_dim;
        for (i, t) in tokens.enumerate() {
            self.heads(t, 0..self.n_heads, &mut att[i * q_dim..(i + 1) * q_dim], scratch, per_thread, threads);
        }
    }

    /// Heads `heads` of batch token `t` into `att` (their outputs), split
    /// across up to `threads` threads (one token decoding).
    fn heads(
        &self,
        t: usize,
        heads: core::ops::Range<usize>,
        att: &mut [f32],
        scratch: &mut [f32],
        per_thread: usize,
        threads: usize,
    ) {
        #[cfg(feature = "std")]
        if threads > 1 && heads.len() > 1 {
            let left = threads / 2;
            let mid = heads.start + heads.len() * left / threads;
            let (a1, a2) = att.split_at_mut((mid - heads.start) * self.shape.head_dim);
            let (s1, s2) = scratch.split_at_mut(per_thread * left);
            rayon::join(
                || self.heads(t, heads.start..mid, a1, s1, per_thread, left),
                || self.heads(t, mid..heads.end, a2, s2, per_thread, threads - left),
            );
            return;
        }
        let _ = threads;
        self.token(t, heads, att, &mut scratch[..per_thread]);
    }

    /// Heads `heads` of batch token `t` (`att` holds their outputs).
    fn token(&self, t: usize, heads: core::ops::Range<usize>, att: &mut [f32], scratch: &mut [f32]) {
        let KvShape { kv_dim, head_dim: hd } = self.shape;
        let q_dim = self.n_heads * hd;
        let (kern, n0, shape, scale) = (self.kern, self.n0, self.shape, self.scale);
        let abs = n0 + t;
        let keys = self.plan.key_set(abs, self.window);
        let (scores, rest) = scratch.split_at_mut(scratch.len() - 2 * hd);
        let (q_head, sink_cs) = rest.split_at_mut(hd);
        // Sink keys sit at their own positions: the query meets them rotated
        // at its position within the cache, not in the text.
        if !keys.sinks.is_empty() {
            k::rope_table(keys.cache_pos as f32 - abs as f32, self.inv_freq, sink_cs);
        }
        let n_sinks = keys.sinks.len();
        let n_keys = n_sinks + keys.main.len();
        let cached = keys.main.start..keys.main.end.min(n0);
        let fresh = keys.main.start.max(n0)..keys.main.end;
        let first = heads.start;
        for h in heads {
            let kvh = h / self.group;
            let qh = &self.q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
            let scores = &mut scores[..n_keys];
            if n_sinks > 0 {
                q_head.copy_from_slice(qh);
                (kern.rope)(q_head, sink_cs);
                let row = self.layer_row + keys.sinks.start;
                self.kv.dot_keys(kern, row, kvh, q_head, scale, &mut scores[..n_sinks], shape);
            }
            let mut at = n_sinks;
            self.plan.for_runs(cached.clone(), |slot, len| {
                self.kv.dot_keys(kern, self.layer_row + slot, kvh, qh, scale, &mut scores[at..at + len], shape);
                at += len;
            });
            if !fresh.is_empty() {
                let r = (fresh.start - n0) * kv_dim + kvh * hd;
                let end = (fresh.end - 1 - n0) * kv_dim + kvh * hd + hd;
                (self.batch_dot)(qh, &self.k[r..end], kv_dim, scale, &mut scores[at..]);
            }
            (kern.softmax)(scores);
            let out = &mut att[(h - first) * hd..(h - first + 1) * hd];
            out.fill(0.0);
            let scores = &scores[..n_keys];
            self.kv.add_values(kern, self.layer_row + keys.sinks.start, kvh, &scores[..n_sinks], out, shape);
            let mut at = n_sinks;
            self.plan.for_runs(cached.clone(), |slot, len| {
                self.kv.add_values(kern, self.layer_row + slot, kvh, &scores[at..at + len], out, shape);
                at += len;
            });
            if !fresh.is_empty() {
                let r = (fresh.start - n0) * kv_dim + kvh * hd;
                let end = (fresh.end - 1 - n0) * kv_dim + kvh * hd + hd;
                (self.batch_axpy)(&scores[at..], &self.v[r..end], kv_dim, out);
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
        let m: ModelConfig = bytemuck::Zeroable::zeroed();
        for (max_ctx, streaming, sinks) in [(16, true, 4), (16, true, 0), (9, true, 8), (16, false, 4), (1, true, 0)] {
            let cfg = SessionConfig { max_ctx, streaming, sinks, ..Default::default() };
            let plan = Plan {
                cfg,
                model: m,
                parts: PlanParts { kv_cache: 0, activations: 0, scratch: 0 },
                layout: Layout::default(),
            };
            let limit = if streaming { 5 * max_ctx } else { max_ctx };
            for start in 0..limit {
                for end in start..=limit.min(start + max_ctx) {
                    let mut got = Vec::new();
                    plan.for_runs(start..end, |first, len| {
                        assert!(len > 0);
                        got.extend(first..first + len);
                    });
                    let want: Vec<usize> = (start..end).map(|a| plan.slot(a)).collect();
                    assert_eq!(got, want, "max_ctx {max_ctx} sinks {sinks} streaming {streaming}: {start}..{end}");
                }
            }
        }
    }
}
