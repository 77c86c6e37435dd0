//! Sessions: the KV cache and activations carved out of one caller arena,
//! and the forward pass.

use ferrite_format::{LayerRole, ModelConfig, Role};
use ferrite_kernels::reference as k;
use half::f16;

use crate::{parallel, Error, Model};

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// f32 (exact comparisons).
    F32,
    /// f16 (half the memory).
    #[default]
    F16,
}

impl KvType {
    fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

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
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { max_ctx: 2048, kv: KvType::F16, max_batch: 32, threads: 1, logits_all: false }
    }
}

/// Memory alignment of every arena part.
const ARENA_ALIGN: usize = 64;

/// Sizes of the arena parts, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanParts {
    /// KV cache: `n_layers * 2 * max_ctx * kv_dim` elements.
    pub kv_cache: usize,
    /// Activations: residual stream, normed input, q/k/v, attention output,
    /// FFN gate/up, each `max_batch` rows.
    pub activations: usize,
    /// Scratch: attention scores, a dequantized weight row, the logits and
    /// the RoPE frequencies.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            scores: cfg.max_ctx,
            row: d.max(q_dim).max(ffn),
            rows: ov(d.max(q_dim).max(ffn).checked_mul(cfg.threads))?,
            logits: ov((m.vocab_size as usize).checked_mul(if cfg.logits_all { b } else { 1 }))?,
            inv_freq: m.head_dim as usize / 2,
        };
        let kv_bytes = ov(kv_per_layer
            .checked_mul(2 * m.n_layers as usize)
            .and_then(|n| n.checked_mul(cfg.kv.size()))
            .and_then(padded))?;
        let f = |n: usize| ov(n.checked_mul(4).and_then(padded));
        // x, xn (both [b, d]), q and att ([b, q_dim]), k and v ([b, kv_dim]), gate and up ([b, ffn]).
        let activations = [f(layout.x)?, f(layout.x)?, f(layout.q)?, f(layout.q)?, f(layout.kv)?, f(layout.kv)?, f(layout.ffn)?, f(layout.ffn)?]
            .iter()
            .try_fold(0usize, |a, &v| a.checked_add(v))
            .ok_or(Error::Overflow)?;
        let scratch = [f(layout.scores)?, f(layout.rows)?, f(layout.logits)?, f(layout.inv_freq)?]
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
    fn f32s(&mut self, n: usize) -> Result<&'a mut [f32], Error> {
        let bytes = self.take_bytes(n.checked_mul(4).ok_or(Error::Overflow)?)?;
        bytes.fill(0);
        // The slice starts 64-byte aligned and its length is a multiple of 4.
        bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Overflow)
    }
}

enum KvStore<'a> {
    F32 { k: &'a mut [f32], v: &'a mut [f32] },
    F16 { k: &'a mut [f16], v: &'a mut [f16] },
}

/// One generation context: a KV cache and working memory borrowed from the
/// caller's arena. Never allocates.
pub struct Session<'m, 'a> {
    model: &'m Model<'m>,
    plan: Plan,
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
        let mut c = Carver { rest: arena };
        let kv = match plan.cfg.kv {
            KvType::F32 => {
                let all = c.f32s(kv_elems.checked_mul(2).ok_or(Error::Overflow)?)?;
                let (k, v) = all.split_at_mut(kv_elems);
                KvStore::F32 { k, v }
            }
            KvType::F16 => {
                let bytes = c.take_bytes(kv_elems.checked_mul(4).ok_or(Error::Overflow)?)?;
                bytes.fill(0);
                let all: &mut [f16] = bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Overflow)?;
                let (k, v) = all.split_at_mut(kv_elems);
                KvStore::F16 { k, v }
            }
        };
        let s = Session {
            model,
            plan: *plan,
            kv,
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
            pos: 0,
        };
        model.rope_inv_freq(s.inv_freq);
        Ok(s)
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

    fn run(&mut self, tokens: &[u32], mut each: Option<&mut dyn FnMut(usize, &[f32])>) -> Result<(), Error> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id >= vocab) {
            return Err(Error::BadToken { id, vocab });
        }
        let max_ctx = self.plan.cfg.max_ctx;
        if self.pos.checked_add(tokens.len()).is_none_or(|end| end > max_ctx) {
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
                    self.head_batch(chunk.len())?;
                    let vocab = self.model.config().vocab_size as usize;
                    for t in 0..chunk.len() {
                        f(done + t, &self.logits[t * vocab..(t + 1) * vocab]);
                    }
                    // `logits()` is the first row: move the last one there.
                    self.logits.copy_within((chunk.len() - 1) * vocab..chunk.len() * vocab, 0);
                }
                Some(f) => {
                    for t in 0..chunk.len() {
                        self.head(t)?;
                        f(done + t, &self.logits[..self.model.config().vocab_size as usize]);
                    }
                }
                None if last_chunk => self.head(chunk.len() - 1)?,
                None => {}
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Final norm and output projection of the first `n` batch rows into
    /// `logits` (`n × vocab`), as one matrix product.
    fn head_batch(&mut self, n: usize) -> Result<(), Error> {
        let m = self.model;
        let c = *m.config();
        let d = c.d_model as usize;
        let norm = m.vector(Role::OutputNorm)?;
        let out = m.matrix(Role::Output)?;
        for t in 0..n {
            k::rmsnorm(&self.x[t * d..(t + 1) * d], norm, c.norm_eps, &mut self.xn[t * d..(t + 1) * d]);
        }
        parallel::matmul(self.plan.cfg.threads, &out, self.xn, d, n, self.logits, out.rows, self.row, self.plan.layout.row);
        Ok(())
    }

    /// Final norm and output projection of batch row `t` into `logits`.
    fn head(&mut self, t: usize) -> Result<(), Error> {
        let m = self.model;
        let c = *m.config();
        let d = c.d_model as usize;
        let norm = m.vector(Role::OutputNorm)?;
        let out = m.matrix(Role::Output)?;
        k::rmsnorm(&self.x[t * d..(t + 1) * d], norm, c.norm_eps, &mut self.xn[..d]);
        parallel::matmul(self.plan.cfg.threads, &out, &self.xn[..d], d, 1, self.logits, out.rows, self.row, self.plan.layout.row);
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

        let embed = m.matrix(Role::Embedding)?;
        for (t, &id) in tokens.iter().enumerate() {
            embed.dequantize_row(id as usize, &mut self.x[t * d..(t + 1) * d]);
        }
        for layer in 0..c.n_layers {
            let role = |r| Role::Layer(layer, r);
            let attn_norm = m.vector(role(LayerRole::AttnNorm))?;
            for t in 0..n {
                k::rmsnorm(&self.x[t * d..(t + 1) * d], attn_norm, c.norm_eps, &mut self.xn[t * d..(t + 1) * d]);
            }
            let wq = m.matrix(role(LayerRole::AttnQ))?;
            let wk = m.matrix(role(LayerRole::AttnK))?;
            let wv = m.matrix(role(LayerRole::AttnV))?;
            parallel::matmul(self.plan.cfg.threads, &wq, self.xn, d, n, self.q, q_dim, self.row, self.plan.layout.row);
            parallel::matmul(self.plan.cfg.threads, &wk, self.xn, d, n, self.k, kv_dim, self.row, self.plan.layout.row);
            parallel::matmul(self.plan.cfg.threads, &wv, self.xn, d, n, self.v, kv_dim, self.row, self.plan.layout.row);
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
            // RoPE at absolute positions; keys are cached already rotated.
            for t in 0..n {
                let pos = (self.pos + t) as f32;
                for h in self.q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
                    k::rope(h, pos, self.inv_freq);
                }
                for h in self.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                    k::rope(h, pos, self.inv_freq);
                }
            }
            let base = layer as usize * max_ctx * kv_dim;
            for t in 0..n {
                let slot = base + (self.pos + t) * kv_dim;
                let (ks, vs) = (&self.k[t * kv_dim..(t + 1) * kv_dim], &self.v[t * kv_dim..(t + 1) * kv_dim]);
                match &mut self.kv {
                    KvStore::F32 { k, v } => {
                        k[slot..slot + kv_dim].copy_from_slice(ks);
                        v[slot..slot + kv_dim].copy_from_slice(vs);
                    }
                    KvStore::F16 { k, v } => {
                        for (o, &x) in k[slot..slot + kv_dim].iter_mut().zip(ks) {
                            *o = f16::from_f32(x);
                        }
                        for (o, &x) in v[slot..slot + kv_dim].iter_mut().zip(vs) {
                            *o = f16::from_f32(x);
                        }
                    }
                }
            }
            // Causal attention over the cache.
            for t in 0..n {
                let pos = self.pos + t;
                let start = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let len = pos + 1 - start;
                for h in 0..n_heads {
                    let kvh = h / group;
                    let qh = &self.q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                    let scores = &mut self.scores[..len];
                    for (j, s) in scores.iter_mut().enumerate() {
                        let at = base + (start + j) * kv_dim + kvh * hd;
                        *s = scale
                            * match &self.kv {
                                KvStore::F32 { k, .. } => k::dot_f32(qh, &k[at..at + hd]),
                                KvStore::F16 { k, .. } => dot_f16(qh, &k[at..at + hd]),
                            };
                    }
                    k::softmax(scores);
                    let out = &mut self.att[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                    out.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let at = base + (start + j) * kv_dim + kvh * hd;
                        match &self.kv {
                            KvStore::F32 { v, .. } => axpy(out, p, &v[at..at + hd]),
                            KvStore::F16 { v, .. } => {
                                for (o, &x) in out.iter_mut().zip(&v[at..at + hd]) {
                                    *o += p * x.to_f32();
                                }
                            }
                        }
                    }
                }
            }
            let wo = m.matrix(role(LayerRole::AttnO))?;
            parallel::matmul(self.plan.cfg.threads, &wo, self.att, q_dim, n, self.xn, d, self.row, self.plan.layout.row);
            add(&mut self.x[..n * d], &self.xn[..n * d]);

            let ffn_norm = m.vector(role(LayerRole::FfnNorm))?;
            for t in 0..n {
                k::rmsnorm(&self.x[t * d..(t + 1) * d], ffn_norm, c.norm_eps, &mut self.xn[t * d..(t + 1) * d]);
            }
            let wg = m.matrix(role(LayerRole::FfnGate))?;
            let wu = m.matrix(role(LayerRole::FfnUp))?;
            let wd = m.matrix(role(LayerRole::FfnDown))?;
            parallel::matmul(self.plan.cfg.threads, &wg, self.xn, d, n, self.gate, ffn, self.row, self.plan.layout.row);
            parallel::matmul(self.plan.cfg.threads, &wu, self.xn, d, n, self.up, ffn, self.row, self.plan.layout.row);
            k::swiglu(&mut self.gate[..n * ffn], &self.up[..n * ffn]);
            parallel::matmul(self.plan.cfg.threads, &wd, self.gate, ffn, n, self.xn, d, self.row, self.plan.layout.row);
            add(&mut self.x[..n * d], &self.xn[..n * d]);
        }
        self.pos += n;
        Ok(())
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (o, &s) in dst.iter_mut().zip(src) {
        *o += s;
    }
}

fn axpy(dst: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in dst.iter_mut().zip(x) {
        *o += a * v;
    }
}

fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = a.len().min(b.len());
    for i in 0..n {
        acc[i % 8] += a[i] * b[i].to_f32();
    }
    acc.iter().sum()
}
