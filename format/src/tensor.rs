use bytemuck::{Pod, Zeroable};

use crate::{quant, Error, ModelConfig};

/// Size of one [`DirEntry`] in bytes.
pub const DIR_ENTRY_SIZE: usize = 64;

stored_enum! {
    /// Storage type of a tensor. Layouts in `SPEC.md` § Weight types and [`crate::quant`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum DType: u32 as "tensor dtype" {
        /// IEEE binary32.
        F32 = 0 => "f32",
        /// IEEE binary16.
        F16 = 1 => "f16",
        /// 8-bit symmetric, groups of 32 with an f16 scale.
        Q8 = 2 => "q8",
        /// 4-bit symmetric, groups of 32 with an f16 scale.
        Q4 = 3 => "q4",
        /// 4-bit asymmetric, groups of 32 with an f16 scale and an f16 minimum.
        Q4A = 4 => "q4a",
        /// 5-bit symmetric (llama.cpp's Q5_0): groups of 32, levels 0..=31
        /// minus 16, an f16 scale.
        Q5_0 = 5 => "q5_0",
        /// 5-bit asymmetric (llama.cpp's Q5_1): groups of 32, levels 0..=31,
        /// an f16 scale and an f16 minimum.
        Q5_1 = 6 => "q5_1",
        /// llama.cpp's Q4_K: super-blocks of 256 (8 groups of 32), 4-bit
        /// levels, 6-bit group scales and minimums, f16 `d` and `dmin`.
        Q4K = 7 => "q4k",
        /// llama.cpp's Q5_K: as q4k with 5-bit levels.
        Q5K = 8 => "q5k",
        /// llama.cpp's Q6_K: super-blocks of 256 (16 sub-blocks of 16),
        /// 6-bit levels minus 32, int8 sub-block scales, one f16 `d`.
        Q6K = 9 => "q6k",
    }
    /// Lower-case name as used on the command line.
    fn name;
}

impl DType {
    /// Whether the type is grouped-quantized (stored in 8-row tiles, see
    /// [`crate::quant`]).
    pub fn is_quantized(self) -> bool {
        !matches!(self, DType::F32 | DType::F16)
    }
    /// Whether the type is one of llama.cpp's K types (super-blocks of 256
    /// elements: a row's length must be a multiple of 256).
    pub fn is_k_quant(self) -> bool {
        matches!(self, DType::Q4K | DType::Q5K | DType::Q6K)
    }
    /// Bytes one row of `cols` elements occupies, or `None` on overflow.
    /// Quantized rows are padded to whole groups (see [`crate::quant`]).
    pub fn row_bytes(self, cols: u64) -> Option<u64> {
        match self {
            DType::F32 => cols.checked_mul(4),
            DType::F16 => cols.checked_mul(2),
            _ => quant::planes(self).iter().try_fold(0u64, |sum, p| sum.checked_add(p.row_bytes(cols)?)),
        }
    }
    /// Bytes a `[rows, cols]` tensor occupies, or `None` on overflow.
    /// Quantized tensors hold whole row blocks (see [`crate::quant`]).
    pub fn tensor_bytes(self, rows: u64, cols: u64) -> Option<u64> {
        let rows = if self.is_quantized() {
            rows.checked_add(quant::ROW_BLOCK as u64 - 1)? / quant::ROW_BLOCK as u64 * quant::ROW_BLOCK as u64
        } else {
            rows
        };
        rows.checked_mul(self.row_bytes(cols)?)
    }
}

stored_enum! {
    /// A per-layer tensor role.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum LayerRole: u32 {
        /// `input_layernorm`: `[d_model]`.
        AttnNorm = 16 => "attn_norm",
        /// `q_proj`: `[n_heads * head_dim, d_model]`.
        AttnQ = 17 => "attn_q",
        /// `k_proj`: `[n_kv_heads * head_dim, d_model]`.
        AttnK = 18 => "attn_k",
        /// `v_proj`: `[n_kv_heads * head_dim, d_model]`.
        AttnV = 19 => "attn_v",
        /// `o_proj`: `[d_model, n_heads * head_dim]`.
        AttnO = 20 => "attn_o",
        /// `q_proj.bias`: `[n_heads * head_dim]`.
        AttnQBias = 21 => "attn_q_bias",
        /// `k_proj.bias`: `[n_kv_heads * head_dim]`.
        AttnKBias = 22 => "attn_k_bias",
        /// `v_proj.bias`: `[n_kv_heads * head_dim]`.
        AttnVBias = 23 => "attn_v_bias",
        /// `post_attention_layernorm`: `[d_model]`.
        FfnNorm = 24 => "ffn_norm",
        /// `gate_proj`: `[ffn_dim, d_model]`.
        FfnGate = 25 => "ffn_gate",
        /// `up_proj`: `[ffn_dim, d_model]`.
        FfnUp = 26 => "ffn_up",
        /// `down_proj`: `[d_model, ffn_dim]`.
        FfnDown = 27 => "ffn_down",
    }
    /// Short name, e.g. `attn_q`.
    fn name;
}

impl LayerRole {
    /// Every per-layer role, in directory order.
    pub const ALL: [LayerRole; 12] = [
        LayerRole::AttnNorm,
        LayerRole::AttnQ,
        LayerRole::AttnK,
        LayerRole::AttnV,
        LayerRole::AttnO,
        LayerRole::AttnQBias,
        LayerRole::AttnKBias,
        LayerRole::AttnVBias,
        LayerRole::FfnNorm,
        LayerRole::FfnGate,
        LayerRole::FfnUp,
        LayerRole::FfnDown,
    ];
    /// Whether this role is a 1-D vector (norm or bias).
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            LayerRole::AttnNorm
                | LayerRole::FfnNorm
                | LayerRole::AttnQBias
                | LayerRole::AttnKBias
                | LayerRole::AttnVBias
        )
    }
    /// Whether this role is a bias.
    pub fn is_bias(self) -> bool {
        matches!(self, LayerRole::AttnQBias | LayerRole::AttnKBias | LayerRole::AttnVBias)
    }
}

/// What a tensor is for. The directory is addressed by role, not by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `embed_tokens`: `[vocab_size, d_model]`.
    Embedding,
    /// Final `norm`: `[d_model]`.
    OutputNorm,
    /// `lm_head`: `[vocab_size, d_model]`; absent (resolved to
    /// [`Role::Embedding`]) when embeddings are tied.
    Output,
    /// A tensor of layer `.0`.
    Layer(u32, LayerRole),
}

impl Role {
    /// Stored `(kind, layer)`.
    pub fn to_raw(self) -> (u32, u32) {
        match self {
            Role::Embedding => (0, 0),
            Role::OutputNorm => (1, 0),
            Role::Output => (2, 0),
            Role::Layer(layer, r) => (r as u32, layer),
        }
    }
    /// Decodes a stored `(kind, layer)`.
    pub fn from_raw(kind: u32, layer: u32) -> Result<Self, Error> {
        let global =
            |r| if layer == 0 { Ok(r) } else { Err(Error::BadEnum { what: "global role layer", value: layer }) };
        match kind {
            0 => global(Role::Embedding),
            1 => global(Role::OutputNorm),
            2 => global(Role::Output),
            _ => LayerRole::decode(kind)
                .map(|r| Role::Layer(layer, r))
                .ok_or(Error::BadEnum { what: "tensor role", value: kind }),
        }
    }
    /// The directory sort key: global roles first, then layer by layer.
    pub fn sort_key(self) -> (u64, u32) {
        match self {
            Role::Layer(layer, r) => (layer as u64 + 1, r as u32),
            other => (0, other.to_raw().0),
        }
    }
    /// Whether the role is a 1-D vector.
    pub fn is_vector(self) -> bool {
        match self {
            Role::OutputNorm => true,
            Role::Layer(_, r) => r.is_vector(),
            _ => false,
        }
    }
    /// `[rows, cols]` the config implies (vectors are `[len, 1]`).
    pub fn expected_shape(self, c: &ModelConfig) -> [u32; 2] {
        match self {
            Role::Embedding | Role::Output => [c.vocab_size, c.d_model],
            Role::OutputNorm => [c.d_model, 1],
            Role::Layer(_, r) => match r {
                LayerRole::AttnNorm | LayerRole::FfnNorm => [c.d_model, 1],
                LayerRole::AttnQ => [c.q_dim(), c.d_model],
                LayerRole::AttnK | LayerRole::AttnV => [c.kv_dim(), c.d_model],
                LayerRole::AttnO => [c.d_model, c.q_dim()],
                LayerRole::AttnQBias => [c.q_dim(), 1],
                LayerRole::AttnKBias | LayerRole::AttnVBias => [c.kv_dim(), 1],
                LayerRole::FfnGate | LayerRole::FfnUp => [c.ffn_dim, c.d_model],
                LayerRole::FfnDown => [c.d_model, c.ffn_dim],
            },
        }
    }
    /// Whether a model with config `c` must (true) or must not (false)
    /// store this role.
    pub fn required(self, c: &ModelConfig) -> bool {
        match self {
            Role::Output => !c.tied_embeddings(),
            Role::Layer(_, r) if r.is_bias() => c.qkv_bias(),
            _ => true,
        }
    }
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Role::Embedding => f.write_str("embedding"),
            Role::OutputNorm => f.write_str("output_norm"),
            Role::Output => f.write_str("output"),
            Role::Layer(l, r) => write!(f, "blk.{l}.{}", r.name()),
        }
    }
}

/// One fixed-size tensor directory entry (64 bytes). See `SPEC.md` § Directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DirEntry {
    /// Role kind ([`Role::to_raw`]).
    pub kind: u32,
    /// Layer index for per-layer roles, 0 for global ones.
    pub layer: u32,
    /// [`DType`] as `u32`.
    pub dtype: u32,
    /// 1 for vectors, 2 for matrices.
    pub n_dims: u32,
    /// Rows (output features), or the length of a vector.
    pub rows: u32,
    /// Columns (input features); 1 for vectors.
    pub cols: u32,
    /// Absolute file offset of the data (multiple of [`crate::ALIGN`]).
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
    /// CRC-32 of the data.
    pub crc: u32,
    /// Reserved, zero.
    pub reserved: [u8; 20],
}

const _: () = assert!(core::mem::size_of::<DirEntry>() == DIR_ENTRY_SIZE);

impl DirEntry {
    /// Decoded role.
    pub fn role(&self) -> Result<Role, Error> {
        Role::from_raw(self.kind, self.layer)
    }
    /// Decoded type.
    pub fn dtype(&self) -> Result<DType, Error> {
        DType::from_u32(self.dtype)
    }
}
