//! Tensor planning: which source tensor becomes which role, with what
//! shape and storage type, and the HF names of the roles.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_format::writer::TensorSpec;
use ferrite_format::{DType, LayerRole, ModelConfig, Role};

use super::source::Source;
use super::Options;
use crate::error::{Error, ErrorKind, Result};

/// What the file will hold and where each tensor comes from.
pub(super) struct TensorPlan {
    /// The source tensor (its HF name) of each role the file stores.
    pub(super) names: BTreeMap<Role, String>,
    /// Every tensor the file stores, with its shape and storage type, in
    /// role order (embedding, output norm, output, then layer by layer).
    pub(super) specs: Vec<TensorSpec>,
    /// The roles whose GGUF blocks are transcoded (kept, not dequantized).
    pub(super) transcoded: std::collections::BTreeSet<Role>,
}

impl TensorPlan {
    /// Matches the tensors of `source` to roles and checks their shapes
    /// against `config`: every required role has a tensor; tensors with no
    /// role, and a stored output table when embeddings are tied, are
    /// reported in `warnings`. Storage types follow `opts`, and every
    /// `--tensor-type` rule must match some tensor.
    pub(super) fn new(
        input: &Path,
        source: &Source,
        config: &ModelConfig,
        opts: &Options,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        // Match tensors to roles and check shapes.
        let mut names: BTreeMap<Role, String> = BTreeMap::new();
        for (name, shape) in source.tensors() {
            let name = &name;
            let Some(role) = role_of(name) else {
                warnings.push(format!("{}: ignoring unknown tensor {name}", source.path_of(name).display()));
                continue;
            };
            if let Role::Layer(l, _) = role {
                if l >= config.n_layers {
                    return Err(Error::new(
                        ErrorKind::Tensor,
                        format!(
                            "{}: tensor {name} is for layer {l} but the config has {} layers",
                            source.path_of(name).display(),
                            config.n_layers
                        ),
                    ));
                }
            }
            if !role.required(config) {
                if role == Role::Output {
                    warnings.push(format!("{name} is stored but embeddings are tied: using the embedding table"));
                    continue;
                }
                return Err(Error::new(
                    ErrorKind::Tensor,
                    format!("{}: unexpected tensor {name} for this architecture", source.path_of(name).display()),
                ));
            }
            let [rows, cols] = role.expected_shape(config);
            let want: Vec<usize> =
                if role.is_vector() { vec![rows as usize] } else { vec![rows as usize, cols as usize] };
            if shape != want {
                return Err(Error::new(
                    ErrorKind::Tensor,
                    format!(
                        "{}: tensor {} has shape {:?}, the config implies {:?}",
                        source.path_of(name).display(),
                        source.display_name(name),
                        shape,
                        want
                    ),
                ));
            }
            names.insert(role, name.clone());
        }
        let mixed = opts.with_mix(config.n_layers, config.tied_embeddings());
        let mut specs = Vec::new();
        let mut transcoded = std::collections::BTreeSet::new();
        // (from, to, row length) -> the tensors that fell back.
        let mut fallbacks: BTreeMap<(DType, DType, u32), Vec<String>> = BTreeMap::new();
        let mut roles = vec![Role::Embedding, Role::OutputNorm, Role::Output];
        for l in 0..config.n_layers {
            roles.extend(LayerRole::ALL.iter().map(|&r| Role::Layer(l, r)));
        }
        for role in roles {
            if !role.required(config) {
                continue;
            }
            if !names.contains_key(&role) {
                return Err(Error::new(
                    ErrorKind::Tensor,
                    format!(
                        "{}: the checkpoint has no tensor {} (required by the config)",
                        input.display(),
                        hf_name(role)
                    ),
                ));
            }
            let lossless = source.lossless_dtype(&names[&role]);
            let (mut dtype, kept) =
                if role.is_vector() { (DType::F32, false) } else { mixed.dtype_of_source(role, lossless) };
            if kept && dtype.is_quantized() {
                transcoded.insert(role);
            }
            let shape = role.expected_shape(config);
            if let Some(to) = k_fallback(dtype, shape[1]) {
                fallbacks.entry((dtype, to, shape[1])).or_default().push(role.to_string());
                dtype = to;
            }
            specs.push(TensorSpec { role, dtype, shape });
        }
        for ((from, to, cols), names) in fallbacks {
            warnings.push(format!(
                "{} tensor(s) stored as {} instead of {}: rows of {cols} elements are not a multiple of 256 (as \
                 llama.cpp falls back): {}",
                names.len(),
                to.name(),
                from.name(),
                names.join(", ")
            ));
        }
        for rule in &opts.tensor_types {
            if !specs.iter().any(|s| rule.matches(s.role)) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("--tensor-type {rule}: {} has no such tensor", input.join("config.json").display()),
                ));
            }
        }
        Ok(TensorPlan { names, specs, transcoded })
    }

    /// Source bytes the conversion reads, for progress.
    pub(super) fn source_bytes(&self, source: &Source) -> u64 {
        self.specs
            .iter()
            .map(|s| source.source_bytes(&self.names[&s.role], s.shape[0] as u64 * s.shape[1] as u64))
            .sum()
    }
}

/// The type a K type falls back to when rows of `cols` elements are not
/// whole super-blocks, as llama.cpp's quantizer does: q4k to q5_0, q5k to
/// q5_1, q6k to q8. `None`: `dtype` stays.
pub(super) fn k_fallback(dtype: DType, cols: u32) -> Option<DType> {
    if !dtype.is_k_quant() || (cols as usize).is_multiple_of(ferrite_format::quant::SUPER) {
        return None;
    }
    Some(match dtype {
        DType::Q4K => DType::Q5_0,
        DType::Q5K => DType::Q5_1,
        _ => DType::Q8,
    })
}

/// Maps an HF Llama-family tensor name to its role; `None` for names
/// Ferrite does not use.
pub fn role_of(name: &str) -> Option<Role> {
    match name {
        "model.embed_tokens.weight" => return Some(Role::Embedding),
        "model.norm.weight" => return Some(Role::OutputNorm),
        "lm_head.weight" => return Some(Role::Output),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let r = match suffix {
        "input_layernorm.weight" => LayerRole::AttnNorm,
        "self_attn.q_proj.weight" => LayerRole::AttnQ,
        "self_attn.k_proj.weight" => LayerRole::AttnK,
        "self_attn.v_proj.weight" => LayerRole::AttnV,
        "self_attn.o_proj.weight" => LayerRole::AttnO,
        "self_attn.q_proj.bias" => LayerRole::AttnQBias,
        "self_attn.k_proj.bias" => LayerRole::AttnKBias,
        "self_attn.v_proj.bias" => LayerRole::AttnVBias,
        "post_attention_layernorm.weight" => LayerRole::FfnNorm,
        "mlp.gate_proj.weight" => LayerRole::FfnGate,
        "mlp.up_proj.weight" => LayerRole::FfnUp,
        "mlp.down_proj.weight" => LayerRole::FfnDown,
        _ => return None,
    };
    Some(Role::Layer(layer, r))
}

/// The HF name of a role (for messages).
pub fn hf_name(role: Role) -> String {
    match role {
        Role::Embedding => "model.embed_tokens.weight".into(),
        Role::OutputNorm => "model.norm.weight".into(),
        Role::Output => "lm_head.weight".into(),
        Role::Layer(l, r) => {
            let s = match r {
                LayerRole::AttnNorm => "input_layernorm.weight",
                LayerRole::AttnQ => "self_attn.q_proj.weight",
                LayerRole::AttnK => "self_attn.k_proj.weight",
                LayerRole::AttnV => "self_attn.v_proj.weight",
                LayerRole::AttnO => "self_attn.o_proj.weight",
                LayerRole::AttnQBias => "self_attn.q_proj.bias",
                LayerRole::AttnKBias => "self_attn.k_proj.bias",
                LayerRole::AttnVBias => "self_attn.v_proj.bias",
                LayerRole::FfnNorm => "post_attention_layernorm.weight",
                LayerRole::FfnGate => "mlp.gate_proj.weight",
                LayerRole::FfnUp => "mlp.up_proj.weight",
                LayerRole::FfnDown => "mlp.down_proj.weight",
            };
            format!("model.layers.{l}.{s}")
        }
    }
}
