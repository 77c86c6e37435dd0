use bytemuck::{Pod, Zeroable};

use crate::Error;

/// Most stop token ids a file can list.
pub const MAX_STOP_IDS: usize = 8;

stored_enum! {
    /// Model architecture (all Llama-family decoders).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Arch: u32 as "architecture" {
        /// `LlamaForCausalLM` (Llama 2/3, SmolLM/SmolLM2, TinyLlama).
        Llama = 1 => "LlamaForCausalLM",
        /// `MistralForCausalLM`.
        Mistral = 2 => "MistralForCausalLM",
        /// `Qwen2ForCausalLM` (q/k/v projection biases).
        Qwen2 = 3 => "Qwen2ForCausalLM",
    }
    /// The Hugging Face class name.
    fn hf_name;
}

stored_enum! {
    /// RoPE frequency scaling.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RopeScaling: u32 as "rope scaling" {
        /// Plain RoPE.
        None = 0,
        /// Llama 3.1 `rope_type: llama3` (factor, low/high frequency factors,
        /// original context).
        Llama3 = 1,
        /// `rope_type: linear`: positions divided by `factor`.
        Linear = 2,
    }
}

/// The fixed-layout model configuration record (256 bytes, after the header).
///
/// Every value inference needs lives here; nothing is encoded in sign bits
/// or magic values: optional values have an explicit flag.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct ModelConfig {
    /// [`Arch`] as `u32`.
    pub arch: u32,
    /// Number of decoder layers.
    pub n_layers: u32,
    /// Residual stream width (`hidden_size`).
    pub d_model: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads (divides `n_heads`; GQA/MQA when smaller).
    pub n_kv_heads: u32,
    /// Width of one head (even).
    pub head_dim: u32,
    /// FFN inner width (`intermediate_size`).
    pub ffn_dim: u32,
    /// Rows of the embedding/output table.
    pub vocab_size: u32,
    /// Context length the model was trained for (`max_position_embeddings`).
    pub trained_ctx: u32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// [`RopeScaling`] as `u32`.
    pub rope_scaling: u32,
    /// Scaling factor (llama3, linear); 1 otherwise.
    pub rope_factor: f32,
    /// llama3 `low_freq_factor`; 0 otherwise.
    pub rope_low_freq_factor: f32,
    /// llama3 `high_freq_factor`; 0 otherwise.
    pub rope_high_freq_factor: f32,
    /// llama3 `original_max_position_embeddings`; 0 otherwise.
    pub rope_original_ctx: u32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Activation of the gated FFN: 0 = SiLU (SwiGLU). No other value yet.
    pub activation: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Beginning-of-sequence token id (valid with [`ModelConfig::FLAG_HAS_BOS`]).
    pub bos_id: u32,
    /// Sliding attention window in tokens (valid with
    /// [`ModelConfig::FLAG_SLIDING_WINDOW`]).
    pub sliding_window: u32,
    /// Number of valid entries in `stop_ids`.
    pub n_stop_ids: u32,
    /// Token ids that end generation (EOS ids and the end-of-turn token).
    pub stop_ids: [u32; MAX_STOP_IDS],
    /// Reserved, zero.
    pub reserved: [u8; 140],
}

const _: () = assert!(core::mem::size_of::<ModelConfig>() == ModelConfig::SIZE);

impl ModelConfig {
    /// Size of the record in bytes.
    pub const SIZE: usize = 256;
    /// The output projection is the embedding table (no `Output` tensor).
    pub const FLAG_TIED_EMBEDDINGS: u32 = 1 << 0;
    /// q/k/v projections have biases (Qwen2).
    pub const FLAG_QKV_BIAS: u32 = 1 << 1;
    /// `bos_id` is valid.
    pub const FLAG_HAS_BOS: u32 = 1 << 2;
    /// Prompts start with `bos_id` when tokenized from text.
    pub const FLAG_ADD_BOS: u32 = 1 << 3;
    /// `sliding_window` is valid: attention looks back at most that many tokens.
    pub const FLAG_SLIDING_WINDOW: u32 = 1 << 4;
    const KNOWN_FLAGS: u32 = 0b1_1111;

    /// Largest accepted widths: far above any edge model, low enough that
    /// every derived product fits comfortably in `u64`.
    pub const MAX_DIM: u32 = 1 << 20;

    /// Decoded architecture.
    pub fn arch(&self) -> Result<Arch, Error> {
        Arch::from_u32(self.arch)
    }
    /// Decoded RoPE scaling.
    pub fn rope_scaling(&self) -> Result<RopeScaling, Error> {
        RopeScaling::from_u32(self.rope_scaling)
    }
    /// Whether the output head reuses the embedding table.
    pub fn tied_embeddings(&self) -> bool {
        self.flags & Self::FLAG_TIED_EMBEDDINGS != 0
    }
    /// Whether q/k/v have biases.
    pub fn qkv_bias(&self) -> bool {
        self.flags & Self::FLAG_QKV_BIAS != 0
    }
    /// The BOS id, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        (self.flags & Self::FLAG_HAS_BOS != 0).then_some(self.bos_id)
    }
    /// Whether text prompts start with BOS.
    pub fn add_bos(&self) -> bool {
        self.flags & Self::FLAG_ADD_BOS != 0
    }
    /// The sliding window, if any.
    pub fn sliding_window(&self) -> Option<u32> {
        (self.flags & Self::FLAG_SLIDING_WINDOW != 0).then_some(self.sliding_window)
    }
    /// The stop ids.
    pub fn stop_ids(&self) -> &[u32] {
        let n = (self.n_stop_ids as usize).min(MAX_STOP_IDS);
        &self.stop_ids[..n]
    }
    /// Whether `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids().contains(&id)
    }
    /// `n_heads * head_dim`: width of the attention output.
    pub fn q_dim(&self) -> u32 {
        self.n_heads * self.head_dim
    }
    /// `n_kv_heads * head_dim`: width of one key (or value) row.
    pub fn kv_dim(&self) -> u32 {
        self.n_kv_heads * self.head_dim
    }

    /// Checks every field. After this, products such as
    /// `n_heads * head_dim` cannot overflow `u32`.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what, why| Err(Error::BadConfig { what, why });
        self.arch()?;
        self.rope_scaling()?;
        let dims = [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("ffn_dim", self.ffn_dim),
            ("vocab_size", self.vocab_size),
        ];
        for (what, v) in dims {
            if v == 0 {
                return bad(what, "must be positive");
            }
            if v > Self::MAX_DIM {
                return bad(what, "exceeds 2^20");
            }
        }
        if self.n_layers > 4096 {
            return bad("n_layers", "exceeds 4096");
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("n_kv_heads", "must divide n_heads");
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", "must be even (RoPE rotates pairs)");
        }
        if (self.n_heads as u64) * (self.head_dim as u64) > Self::MAX_DIM as u64 {
            return bad("n_heads * head_dim", "exceeds 2^20");
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad("rope_theta", "must be finite and > 1");
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad("norm_eps", "must be finite and > 0");
        }
        match self.rope_scaling()? {
            crate::RopeScaling::None => {}
            crate::RopeScaling::Linear => {
                if !(self.rope_factor.is_finite() && self.rope_factor > 0.0) {
                    return bad("rope_factor", "must be finite and > 0");
                }
            }
            crate::RopeScaling::Llama3 => {
                if !(self.rope_factor.is_finite() && self.rope_factor > 0.0) {
                    return bad("rope_factor", "must be finite and > 0");
                }
                if !(self.rope_low_freq_factor.is_finite()
                    && self.rope_high_freq_factor.is_finite()
                    && self.rope_low_freq_factor > 0.0
                    && self.rope_high_freq_factor > self.rope_low_freq_factor)
                {
                    return bad("rope_low/high_freq_factor", "need 0 < low < high");
                }
                if self.rope_original_ctx == 0 {
                    return bad("rope_original_ctx", "must be positive");
                }
            }
        }
        if self.activation != 0 {
            return Err(Error::BadEnum { what: "activation", value: self.activation });
        }
        if self.flags & !Self::KNOWN_FLAGS != 0 {
            return Err(Error::BadEnum { what: "config flags", value: self.flags });
        }
        if self.flags & Self::FLAG_HAS_BOS != 0 && self.bos_id >= self.vocab_size {
            return bad("bos_id", "not below vocab_size");
        }
        if self.flags & Self::FLAG_ADD_BOS != 0 && self.flags & Self::FLAG_HAS_BOS == 0 {
            return bad("flags", "add_bos without a BOS id");
        }
        if self.flags & Self::FLAG_SLIDING_WINDOW != 0 && self.sliding_window == 0 {
            return bad("sliding_window", "must be positive when enabled");
        }
        if self.n_stop_ids as usize > MAX_STOP_IDS {
            return bad("n_stop_ids", "more than 8");
        }
        if self.stop_ids().iter().any(|&id| id >= self.vocab_size) {
            return bad("stop_ids", "not below vocab_size");
        }
        if self.trained_ctx == 0 {
            return bad("trained_ctx", "must be positive");
        }
        if self.flags & Self::FLAG_SLIDING_WINDOW == 0 && self.sliding_window != 0 {
            return bad("sliding_window", "must be 0 when the sliding-window flag is off");
        }
        if self.flags & Self::FLAG_HAS_BOS == 0 && self.bos_id != 0 {
            return bad("bos_id", "must be 0 when the BOS flag is off");
        }
        if self.stop_ids[self.n_stop_ids as usize..].iter().any(|&id| id != 0) {
            return bad("stop_ids", "unused entries must be 0");
        }
        if self.reserved.iter().any(|&b| b != 0) {
            return Err(Error::ReservedNotZero { what: "config" });
        }
        Ok(())
    }
}
