//! A session on the GPU: the KV cache and activations in device memory,
//! the layers and the head as kernel launches; the checks and batching of a
//! forward call are the runtime's ([`Backend`]).

use ferrite_runtime::backend::{Backend, Limits, RowSink};
use ferrite_runtime::KvType;

use crate::device::{suffix, Buf, CudaModel, DevActs, DevMatrix};
use crate::launch::{self, Arg};
use crate::plan::{CudaConfig, DevicePlan};
use crate::CudaError;

/// A session on the GPU: KV cache and activations in device memory; only
/// token ids go up and the logits of one position come back. Products with
/// q4/q8 weights read int8 activations (one `quantize_acts` per product
/// input), as the CPU session's default (`f32_activations: false`).
pub struct CudaSession<'m> {
    model: &'m CudaModel,
    cfg: CudaConfig,
    plan: DevicePlan,
    x: Buf,
    xn: Buf,
    q: Buf,
    att: Buf,
    k: Buf,
    v: Buf,
    gate: Buf,
    up: Buf,
    logits_dev: Buf,
    acts_q: Buf,
    acts_d: Buf,
    acts_sums: Buf,
    ids: Buf,
    inv_freq: Buf,
    part_o: Buf,
    part_ml: Buf,
    kc: Vec<Buf>,
    vc: Vec<Buf>,
    pos: usize,
    logits: Vec<f32>,
}

impl<'m> CudaSession<'m> {
    /// Allocates a session's device memory (see [`DevicePlan`]).
    pub fn new(model: &'m CudaModel, cfg: &CudaConfig) -> Result<Self, CudaError> {
        let plan = DevicePlan::new(&model.config, cfg)?;
        let gpu = &model.gpu;
        let mut inv_freq = gpu.alloc(plan.inv_freq)?;
        let bytes: Vec<u8> = model.inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
        gpu.write(&mut inv_freq, 0, &bytes)?;
        let mut kc = Vec::with_capacity(plan.n_layers);
        let mut vc = Vec::with_capacity(plan.n_layers);
        for _ in 0..plan.n_layers {
            kc.push(gpu.alloc(plan.kv_layer)?);
            vc.push(gpu.alloc(plan.kv_layer)?);
        }
        Ok(CudaSession {
            model,
            cfg: *cfg,
            x: gpu.alloc(plan.x)?,
            xn: gpu.alloc(plan.x)?,
            q: gpu.alloc(plan.q)?,
            att: gpu.alloc(plan.q)?,
            k: gpu.alloc(plan.kv_rows)?,
            v: gpu.alloc(plan.kv_rows)?,
            gate: gpu.alloc(plan.ffn)?,
            up: gpu.alloc(plan.ffn)?,
            logits_dev: gpu.alloc(plan.logits)?,
            acts_q: gpu.alloc(plan.acts_q)?,
            acts_d: gpu.alloc(plan.acts_d)?,
            acts_sums: gpu.alloc(plan.acts_d)?,
            ids: gpu.alloc(plan.ids)?,
            inv_freq,
            part_o: gpu.alloc(plan.part_o)?,
            part_ml: gpu.alloc(plan.part_ml)?,
            kc,
            vc,
            plan,
            pos: 0,
            logits: vec![0f32; model.config.vocab_size as usize],
        })
    }

    /// The device memory plan.
    pub fn plan(&self) -> &DevicePlan {
        &self.plan
    }

    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets every token (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Processes a prompt in batches and returns the logits after its last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], CudaError> {
        Backend::prefill(self, tokens)
    }

    /// Like [`CudaSession::prefill`], passing the logits of every prompt
    /// position to `each(index_in_prompt, logits)`.
    pub fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> Result<(), CudaError> {
        Backend::prefill_all(self, tokens, each)
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32], CudaError> {
        Backend::step(self, token)
    }

    /// The logits of the last processed token.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The int8 activation buffers.
    fn acts(&self) -> DevActs {
        DevActs { q: self.acts_q.ptr(), d: self.acts_d.ptr(), sums: self.acts_sums.ptr() }
    }

    /// Final norm and output projection of batch row `t` into the host logits.
    fn head_row(&mut self, t: usize) -> Result<(), CudaError> {
        let m = self.model;
        let gpu = &*m.gpu;
        let d = m.config.d_model;
        let row = self.x.at(t * d as usize * 4);
        let norm = [Arg::Ptr(row), Arg::Ptr(m.output_norm.ptr), Arg::Ptr(self.xn.ptr()), Arg::U32(d)];
        gpu.launch(
            "rmsnorm_rows",
            launch::rows(1),
            &[norm[0], norm[1], norm[2], norm[3], Arg::F32(m.config.norm_eps)],
        )?;
        let acts = self.acts();
        if m.output.is_quantized() {
            acts.quantize(gpu, self.xn.ptr(), d, 1)?;
        }
        m.output.matmul(gpu, self.xn.ptr(), &acts, self.logits_dev.ptr(), 1)?;
        gpu.read_f32(&self.logits_dev, 0, &mut self.logits)?;
        Ok(())
    }

    /// Runs the layers over `tokens` (at most `max_batch`), appending their
    /// keys and values to the cache; leaves the hidden states in `x`.
    fn forward(&mut self, tokens: &[u32]) -> Result<(), CudaError> {
        let m = self.model;
        let gpu = &*m.gpu;
        let c = m.config;
        let n = tokens.len() as u32;
        let (d, q_dim, kv_dim, ffn, hd) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let window = c.sliding_window().unwrap_or(0);
        let pos0 = self.pos as u32;
        let ids: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        gpu.write(&mut self.ids, 0, &ids)?;
        let e = m.embedding;
        gpu.launch(
            &format!("embed_{}", suffix(e.dtype)),
            launch::rows(n),
            &[Arg::Ptr(self.ids.ptr()), Arg::Ptr(e.ptr), Arg::Ptr(e.scales), Arg::Ptr(self.x.ptr()), Arg::U32(d)],
        )?;
        let (x, xn, q, att, k, v) =
            (self.x.ptr(), self.xn.ptr(), self.q.ptr(), self.att.ptr(), self.k.ptr(), self.v.ptr());
        let (gate, up) = (self.gate.ptr(), self.up.ptr());
        let acts = self.acts();
        // The int8 activations of `src` ([n, cols]) when one of `ws` reads them.
        let quantize = |src: u64, cols: u32, ws: &[&DevMatrix]| -> Result<(), CudaError> {
            if ws.iter().any(|w| w.is_quantized()) {
                acts.quantize(gpu, src, cols, n)?;
            }
            Ok(())
        };
        let kv_suffix = if self.cfg.kv == KvType::F32 { "f32" } else { "f16" };
        let norm = |src: u64, w: &DevMatrix, dst: u64| {
            gpu.launch(
                "rmsnorm_rows",
                launch::rows(n),
                &[Arg::Ptr(src), Arg::Ptr(w.ptr), Arg::Ptr(dst), Arg::U32(d), Arg::F32(c.norm_eps)],
            )
        };
        let add = |dst: u64, src: u64, len: u32| {
            gpu.launch("add", launch::elementwise(len), &[Arg::Ptr(dst), Arg::Ptr(src), Arg::U32(len)])
        };
        for (li, layer) in m.layers.iter().enumerate() {
            norm(x, &layer.attn_norm, xn)?;
            quantize(xn, d, &[&layer.wq, &layer.wk, &layer.wv])?;
            layer.wq.matmul(gpu, xn, &acts, q, n)?;
            layer.wk.matmul(gpu, xn, &acts, k, n)?;
            layer.wv.matmul(gpu, xn, &acts, v, n)?;
            if let Some([bq, bk, bv]) = &layer.bias {
                for (buf, b, w) in [(q, bq, q_dim), (k, bk, kv_dim), (v, bv, kv_dim)] {
                    gpu.launch(
                        "add_bias",
                        launch::elementwise(n * w),
                        &[Arg::Ptr(buf), Arg::Ptr(b.ptr), Arg::U32(w), Arg::U32(n * w)],
                    )?;
                }
            }
            for (buf, w) in [(q, q_dim), (k, kv_dim)] {
                gpu.launch(
                    "rope_rows",
                    launch::rope(n, w / hd, hd),
                    &[Arg::Ptr(buf), Arg::Ptr(self.inv_freq.ptr()), Arg::U32(w), Arg::U32(hd), Arg::U32(pos0)],
                )?;
            }
            // Keys and values go to the cache first (rounded to its type);
            // attention then reads every key, this batch's included, from it.
            let (kc, vc) = (self.kc[li].ptr(), self.vc[li].ptr());
            gpu.launch(
                &format!("kv_store_{kv_suffix}"),
                launch::elementwise(n * kv_dim),
                &[Arg::Ptr(k), Arg::Ptr(v), Arg::Ptr(kc), Arg::Ptr(vc), Arg::U32(kv_dim), Arg::U32(pos0), Arg::U32(n)],
            )?;
            if n == 1 {
                let key_hi = pos0 + 1;
                let key_lo = if window > 0 { key_hi.saturating_sub(window) } else { 0 };
                let (splits, chunk) = launch::decode_splits(key_hi - key_lo);
                gpu.launch(
                    &format!("attn_decode_{kv_suffix}"),
                    launch::attn_decode(c.n_heads, splits),
                    &[
                        Arg::Ptr(q),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        Arg::Ptr(self.part_o.ptr()),
                        Arg::Ptr(self.part_ml.ptr()),
                        Arg::U32(group),
                        Arg::U32(hd),
                        Arg::U32(kv_dim),
                        Arg::U32(key_lo),
                        Arg::U32(key_hi),
                        Arg::U32(chunk),
                        Arg::F32(scale),
                    ],
                )?;
                gpu.launch(
                    "attn_combine",
                    launch::attn_combine(c.n_heads),
                    &[
                        Arg::Ptr(self.part_o.ptr()),
                        Arg::Ptr(self.part_ml.ptr()),
                        Arg::Ptr(att),
                        Arg::U32(hd),
                        Arg::U32(splits),
                    ],
                )?;
            } else {
                gpu.launch(
                    &format!("attn_prefill_{kv_suffix}"),
                    launch::attn_prefill(c.n_heads, n),
                    &[
                        Arg::Ptr(q),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        Arg::Ptr(att),
                        Arg::U32(n),
                        Arg::U32(pos0),
                        Arg::U32(group),
                        Arg::U32(hd),
                        Arg::U32(kv_dim),
                        Arg::U32(window),
                        Arg::F32(scale),
                    ],
                )?;
            }
            quantize(att, q_dim, &[&layer.wo])?;
            layer.wo.matmul(gpu, att, &acts, xn, n)?;
            add(x, xn, n * d)?;
            norm(x, &layer.ffn_norm, xn)?;
            quantize(xn, d, &[&layer.gate, &layer.up])?;
            layer.gate.matmul(gpu, xn, &acts, gate, n)?;
            layer.up.matmul(gpu, xn, &acts, up, n)?;
            gpu.launch("swiglu", launch::elementwise(n * ffn), &[Arg::Ptr(gate), Arg::Ptr(up), Arg::U32(n * ffn)])?;
            quantize(gate, ffn, &[&layer.down])?;
            layer.down.matmul(gpu, gate, &acts, xn, n)?;
            add(x, xn, n * d)?;
        }
        self.pos += tokens.len();
        Ok(())
    }
}

/// The checks and batching of a forward call are the runtime's
/// ([`Backend::run`]); the session provides the layers and the head. The
/// device cache does not stream: a full context is an error.
impl Backend for CudaSession<'_> {
    type Error = CudaError;

    fn limits(&self) -> Limits {
        Limits {
            vocab: self.model.config.vocab_size,
            max_ctx: self.cfg.max_ctx,
            max_batch: self.cfg.max_batch,
            streaming: false,
        }
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn reset(&mut self) {
        self.pos = 0;
    }

    fn forward_batch(&mut self, batch: &[u32]) -> Result<(), CudaError> {
        self.forward(batch)
    }

    fn head(&mut self, rows: core::ops::Range<usize>, mut sink: Option<RowSink<'_>>) -> Result<(), CudaError> {
        for t in rows {
            self.head_row(t)?;
            if let Some(f) = sink.as_mut() {
                f(t, &self.logits);
            }
        }
        Ok(())
    }

    fn logits(&self) -> &[f32] {
        &self.logits
    }
}
