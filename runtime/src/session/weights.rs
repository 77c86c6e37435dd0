//! The tensors of each layer, resolved once when a session is created.
//!
//! `Session::new` looks every tensor up in the file's directory, checks its
//! type and shape, and keeps the views here (in the arena, counted by the
//! plan as `views`); the forward pass then indexes `layers[l]` and never
//! goes back to the directory.

use ferrite_format::{LayerRole, ModelConfig, Role};
use ferrite_kernels::Matrix;

use crate::{Error, Model};

/// One layer's tensors (`d` = `d_model`, `q` = `n_heads * head_dim`,
/// `kv` = `n_kv_heads * head_dim`, `f` = `ffn_dim`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerWeights<'m> {
    /// RMSNorm weight before attention `[d]`.
    pub attn_norm: &'m [f32],
    /// Query projection `[q, d]`.
    pub wq: Matrix<'m>,
    /// Key projection `[kv, d]`.
    pub wk: Matrix<'m>,
    /// Value projection `[kv, d]`.
    pub wv: Matrix<'m>,
    /// q/k/v biases `[q]`, `[kv]`, `[kv]` (Qwen2), when the model has them.
    pub qkv_bias: Option<[&'m [f32]; 3]>,
    /// Attention output projection `[d, q]`.
    pub wo: Matrix<'m>,
    /// RMSNorm weight before the FFN `[d]`.
    pub ffn_norm: &'m [f32],
    /// FFN gate `[f, d]`.
    pub wg: Matrix<'m>,
    /// FFN up `[f, d]`.
    pub wu: Matrix<'m>,
    /// FFN down `[d, f]`.
    pub wd: Matrix<'m>,
}

/// The tensors outside the layers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ModelWeights<'m> {
    /// Token embeddings `[vocab, d]`.
    pub embed: Matrix<'m>,
    /// Final RMSNorm weight `[d]`.
    pub out_norm: &'m [f32],
    /// Output projection `[vocab, d]` (the embedding table when tied).
    pub output: Matrix<'m>,
}

impl<'m> LayerWeights<'m> {
    /// Resolves layer `layer` of `model`.
    pub(crate) fn resolve(model: &'m Model<'m>, layer: u32) -> Result<Self, Error> {
        let c = model.config();
        let role = |r| Role::Layer(layer, r);
        let (d, q, kv, f) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let matrix = |r, rows, cols| shaped(model, role(r), rows, cols);
        let vector = |r, len| vector(model, role(r), len);
        let qkv_bias = if c.qkv_bias() {
            Some([
                vector(LayerRole::AttnQBias, q)?,
                vector(LayerRole::AttnKBias, kv)?,
                vector(LayerRole::AttnVBias, kv)?,
            ])
        } else {
            None
        };
        Ok(LayerWeights {
            attn_norm: vector(LayerRole::AttnNorm, d)?,
            wq: matrix(LayerRole::AttnQ, q, d)?,
            wk: matrix(LayerRole::AttnK, kv, d)?,
            wv: matrix(LayerRole::AttnV, kv, d)?,
            qkv_bias,
            wo: matrix(LayerRole::AttnO, d, q)?,
            ffn_norm: vector(LayerRole::FfnNorm, d)?,
            wg: matrix(LayerRole::FfnGate, f, d)?,
            wu: matrix(LayerRole::FfnUp, f, d)?,
            wd: matrix(LayerRole::FfnDown, d, f)?,
        })
    }
}

impl<'m> ModelWeights<'m> {
    /// Resolves the embedding table, final norm and output projection.
    pub(crate) fn resolve(model: &'m Model<'m>) -> Result<Self, Error> {
        let c: &ModelConfig = model.config();
        Ok(ModelWeights {
            embed: shaped(model, Role::Embedding, c.vocab_size, c.d_model)?,
            out_norm: vector(model, Role::OutputNorm, c.d_model)?,
            output: shaped(model, Role::Output, c.vocab_size, c.d_model)?,
        })
    }
}

/// A matrix of `role` that must be `[rows, cols]`.
fn shaped<'m>(model: &'m Model<'m>, role: Role, rows: u32, cols: u32) -> Result<Matrix<'m>, Error> {
    let m = model.matrix(role)?;
    if m.rows() != rows as usize || m.cols() != cols as usize {
        return Err(shape_error(model, role, [rows, cols], [m.rows(), m.cols()]));
    }
    Ok(m)
}

/// An f32 vector of `role` that must have `len` elements.
fn vector<'m>(model: &'m Model<'m>, role: Role, len: u32) -> Result<&'m [f32], Error> {
    let v = model.vector(role)?;
    if v.len() != len as usize {
        return Err(shape_error(model, role, [len, 1], [v.len(), 1]));
    }
    Ok(v)
}

/// The reader already checked every shape against the config; this guards
/// the views the kernels index without further checks.
fn shape_error(model: &Model<'_>, role: Role, expected: [u32; 2], found: [usize; 2]) -> Error {
    let index = model.file().tensor(role).map(|t| t.index).unwrap_or(0);
    let found = found.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Error::Format(ferrite_format::Error::BadShape { index, expected, found })
}
