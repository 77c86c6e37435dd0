//! Device memory planning: every buffer of a CUDA session, sized before
//! anything is allocated, with the model shapes the kernels can run checked.

use ferrite_format::{quant, ModelConfig};
use ferrite_runtime::KvType;

use crate::launch;
use crate::CudaError;

/// What a CUDA session needs room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaConfig {
    /// KV cache capacity in tokens (no streaming on the GPU: a full cache
    /// is an error).
    pub max_ctx: usize,
    /// Most prompt tokens per prefill batch.
    pub max_batch: usize,
    /// KV cache element type: f16 or f32 (int8 is CPU-only for now).
    pub kv: KvType,
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig { max_ctx: 2048, max_batch: 32, kv: KvType::F16 }
    }
}

/// Bytes of each device buffer of a session (weights excluded: they are
/// uploaded once per model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePlan {
    /// `[max_batch, d_model]` f32: residual stream `x`, normed `xn`.
    pub x: usize,
    /// `[max_batch, q_dim]` f32: queries, attention output.
    pub q: usize,
    /// `[max_batch, kv_dim]` f32: new keys, new values.
    pub kv_rows: usize,
    /// `[max_batch, ffn_dim]` f32: gate, up.
    pub ffn: usize,
    /// `[vocab]` f32: logits of one position.
    pub logits: usize,
    /// `[max_batch, groups(max_k) * 32]` i8: int8 activations of a product's
    /// input (`max_k` the widest input: d_model, q_dim or ffn_dim).
    pub acts_q: usize,
    /// `[max_batch, groups(max_k)]` f32 scales (and as many i32 sums) of
    /// those activations.
    pub acts_d: usize,
    /// `[max_batch]` u32: token ids.
    pub ids: usize,
    /// `[head_dim / 2]` f32: RoPE inverse frequencies.
    pub inv_freq: usize,
    /// `[n_heads, max_splits, head_dim]` f32: decode partial outputs.
    pub part_o: usize,
    /// `[n_heads, max_splits, 2]` f32: decode partial max and sum.
    pub part_ml: usize,
    /// Keys of one layer, `[max_ctx, kv_dim]` (values the same).
    pub kv_layer: usize,
    /// Layers.
    pub n_layers: usize,
}

impl DevicePlan {
    /// Plans a session of `cfg` for a model of `m`, or says why the GPU
    /// kernels cannot run it.
    pub fn new(m: &ModelConfig, cfg: &CudaConfig) -> Result<Self, CudaError> {
        let bad = |why: String| Err(CudaError::Unsupported(why));
        if cfg.max_ctx == 0 || cfg.max_batch == 0 {
            return bad("max_ctx and max_batch must be positive".into());
        }
        // Tokens of a batch run along grid.y in quantize_acts (at most 65 535).
        if cfg.max_ctx > u32::MAX as usize / 2 || cfg.max_batch > launch::MAX_GRID_Y as usize {
            return bad(format!("max_ctx {} or max_batch {} too large", cfg.max_ctx, cfg.max_batch));
        }
        let elem = match cfg.kv {
            KvType::F32 => 4,
            KvType::F16 => 2,
            KvType::Q8 => return bad("the CUDA backend keeps the KV cache in f16 or f32, not int8".into()),
        };
        let hd = m.head_dim as usize;
        if hd == 0 || !hd.is_multiple_of(2) || hd > launch::PF_MAX_HD as usize {
            return bad(format!("head_dim {hd}: the CUDA attention kernels take even head_dim up to 128"));
        }
        if m.n_kv_heads == 0 || !m.n_heads.is_multiple_of(m.n_kv_heads) {
            return bad(format!("{} heads over {} KV heads", m.n_heads, m.n_kv_heads));
        }
        let ov = |v: Option<usize>| v.ok_or(CudaError::Unsupported("buffer sizes overflow".into()));
        let b = cfg.max_batch;
        let f32s = |n: usize, w: u32| ov(n.checked_mul(w as usize).and_then(|v| v.checked_mul(4)));
        let max_k = m.d_model.max(m.q_dim()).max(m.ffn_dim) as usize;
        let max_groups = max_k.div_ceil(quant::GROUP);
        let splits = launch::max_decode_splits(cfg.max_ctx as u32) as usize;
        Ok(DevicePlan {
            x: f32s(b, m.d_model)?,
            q: f32s(b, m.q_dim())?,
            kv_rows: f32s(b, m.kv_dim())?,
            ffn: f32s(b, m.ffn_dim)?,
            logits: f32s(1, m.vocab_size)?,
            acts_q: ov(b.checked_mul(max_groups).and_then(|v| v.checked_mul(quant::GROUP)))?,
            acts_d: ov(b.checked_mul(max_groups).and_then(|v| v.checked_mul(4)))?,
            ids: ov(b.checked_mul(4))?,
            inv_freq: ov((hd / 2).checked_mul(4))?,
            part_o: f32s(splits, m.n_heads * m.head_dim)?,
            part_ml: f32s(splits, m.n_heads * 2)?,
            kv_layer: ov(cfg.max_ctx.checked_mul(m.kv_dim() as usize).and_then(|v| v.checked_mul(elem)))?,
            n_layers: m.n_layers as usize,
        })
    }

    /// Bytes of the KV cache (keys and values of every layer).
    pub fn kv_bytes(&self) -> usize {
        self.kv_layer.saturating_mul(2).saturating_mul(self.n_layers)
    }

    /// Bytes of activations and scratch.
    pub fn activation_bytes(&self) -> usize {
        [
            self.x * 2,
            self.q * 2,
            self.kv_rows * 2,
            self.ffn * 2,
            self.logits,
            self.acts_q,
            self.acts_d * 2,
            self.ids,
            self.inv_freq,
            self.part_o,
            self.part_ml,
        ]
        .iter()
        .fold(0usize, |a, &v| a.saturating_add(v))
    }

    /// Bytes of device memory a session allocates.
    pub fn total_bytes(&self) -> usize {
        self.kv_bytes().saturating_add(self.activation_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape.
    fn smollm2() -> ModelConfig {
        let mut c: ModelConfig = bytemuck::Zeroable::zeroed();
        c.n_layers = 30;
        c.d_model = 576;
        c.n_heads = 9;
        c.n_kv_heads = 3;
        c.head_dim = 64;
        c.ffn_dim = 1536;
        c.vocab_size = 49152;
        c
    }

    #[test]
    fn smollm2_plan_has_the_expected_sizes() {
        let m = smollm2();
        let p = DevicePlan::new(&m, &CudaConfig { max_ctx: 4096, max_batch: 32, kv: KvType::F16 }).expect("plan");
        assert_eq!(p.x, 32 * 576 * 4);
        assert_eq!(p.q, 32 * 576 * 4);
        assert_eq!(p.kv_rows, 32 * 192 * 4);
        assert_eq!(p.ffn, 32 * 1536 * 4);
        assert_eq!(p.logits, 49152 * 4);
        // int8 activations of the widest product input (ffn 1536: 48 groups).
        assert_eq!(p.acts_q, 32 * 48 * 32);
        assert_eq!(p.acts_d, 32 * 48 * 4);
        assert_eq!(p.kv_layer, 4096 * 192 * 2);
        assert_eq!(p.kv_bytes(), 30 * 2 * 4096 * 192 * 2);
        // 4096 keys: 16 splits of 256.
        assert_eq!(p.part_o, 16 * 9 * 64 * 4);
        assert_eq!(p.part_ml, 16 * 9 * 2 * 4);
        let f32_kv = DevicePlan::new(&m, &CudaConfig { max_ctx: 4096, max_batch: 32, kv: KvType::F32 }).expect("plan");
        assert_eq!(f32_kv.kv_bytes(), 2 * p.kv_bytes());
        assert_eq!(p.total_bytes(), p.kv_bytes() + p.activation_bytes());
    }

    #[test]
    fn activation_buffers_round_up_to_whole_groups() {
        let mut m = smollm2();
        m.ffn_dim = 1000; // 31.25 groups
        m.d_model = 1100; // the widest: 34.4 groups -> 35
        let p = DevicePlan::new(&m, &CudaConfig { max_ctx: 64, max_batch: 3, kv: KvType::F32 }).expect("plan");
        assert_eq!(p.acts_q, 3 * 35 * 32);
        assert_eq!(p.acts_d, 3 * 35 * 4);
        assert_eq!(p.activation_bytes() - (p.acts_q + 2 * p.acts_d), {
            let mut q = p;
            q.acts_q = 0;
            q.acts_d = 0;
            q.activation_bytes()
        });
    }

    #[test]
    fn unsupported_shapes_are_errors() {
        let m = smollm2();
        let q8 = DevicePlan::new(&m, &CudaConfig { kv: KvType::Q8, ..Default::default() });
        assert!(matches!(q8, Err(CudaError::Unsupported(ref w)) if w.contains("int8")), "{q8:?}");
        let mut wide = m;
        wide.head_dim = 256;
        assert!(DevicePlan::new(&wide, &CudaConfig::default()).is_err());
        let mut odd = m;
        odd.n_kv_heads = 2;
        assert!(DevicePlan::new(&odd, &CudaConfig::default()).is_err());
        assert!(DevicePlan::new(&m, &CudaConfig { max_ctx: 0, ..Default::default() }).is_err());
        assert!(DevicePlan::new(&m, &CudaConfig { max_batch: 0, ..Default::default() }).is_err());
        assert!(DevicePlan::new(&m, &CudaConfig { max_batch: 65_535, ..Default::default() }).is_ok());
        assert!(DevicePlan::new(&m, &CudaConfig { max_batch: 65_536, ..Default::default() }).is_err());
    }
}
