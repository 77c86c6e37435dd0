//! What GGUF metadata says about the model: its record (`llama` and
//! `qwen2`), the HF names of its tensors, and llama.cpp's Q/K row order.

use ferrite_format::{Arch, ModelConfig, RopeScaling};

use super::{GgufFile, Value};
use crate::error::{Error, ErrorKind, Result};
use crate::hf_config::{HfConfig, Shape};

/// The HF name of a GGUF tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`); `None` for names Ferrite does
/// not use.
pub fn hf_tensor_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The model record from GGUF metadata (`llama` and `qwen2`), with the EOS
/// ids. Stop ids and BOS flags are completed from the tokenizer later, as
/// for an HF folder.
pub fn read_config(g: &GgufFile) -> Result<HfConfig> {
    let arch_name = g.architecture()?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: GGUF architecture `{other}` is not supported (supported: llama, qwen2)", g.path.display()),
            ))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let need = |k: &str| -> Result<u32> {
        g.u32_key(&key(k))?.ok_or_else(|| g.err(format!("metadata {} is missing", key(k))))
    };
    let unsupported = |what: String| Error::new(ErrorKind::Unsupported, format!("{}: {what}", g.path.display()));
    let d_model = need("embedding_length")?;
    let n_layers = need("block_count")?;
    let n_heads = need("attention.head_count")?;
    let n_kv_heads = match g.get(&key("attention.head_count_kv")) {
        Some(Value::Array(_)) => return Err(unsupported("per-layer head_count_kv is not supported".into())),
        _ => g.u32_key(&key("attention.head_count_kv"))?.unwrap_or(n_heads),
    };
    let ffn_dim = need("feed_forward_length")?;
    if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(g.err(format!("head counts {n_heads} and {n_kv_heads} (kv) are invalid")));
    }
    let head_dim = match g.u32_key(&key("attention.key_length"))? {
        Some(h) => h,
        None if d_model % n_heads == 0 => d_model / n_heads,
        None => return Err(g.err("embedding_length is not a multiple of head_count (and no key_length)")),
    };
    if let Some(rot) = g.u32_key(&key("rope.dimension_count"))? {
        if rot != head_dim {
            return Err(unsupported(format!("partial RoPE ({rot} of {head_dim} dimensions) is not supported")));
        }
    }
    let vocab_size = match g.tensors.get("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => {
            u32::try_from(t.dims[1]).map_err(|_| g.err("token_embd.weight is too large"))?
        }
        Some(t) => return Err(g.err(format!("token_embd.weight has dimensions {:?}", t.dims))),
        None => match g.u32_key(&key("vocab_size"))? {
            Some(v) => v,
            None => return Err(g.err("no token_embd.weight tensor and no vocab_size")),
        },
    };
    let trained_ctx = g.u32_key(&key("context_length"))?.unwrap_or(2048);
    let norm_eps = g
        .get(&key("attention.layer_norm_rms_epsilon"))
        .and_then(Value::as_f64)
        .ok_or_else(|| g.err(format!("metadata {} is missing", key("attention.layer_norm_rms_epsilon"))))?;
    let rope_theta = g.get(&key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0);
    let shape = Shape { n_layers, d_model, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size, trained_ctx };
    let mut config = shape.config(arch, rope_theta as f32, norm_eps as f32);
    match g.str_key(&key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            config.rope_scaling = RopeScaling::Linear as u32;
            config.rope_factor = g
                .get(&key("rope.scaling.factor"))
                .and_then(Value::as_f64)
                .ok_or_else(|| g.err(format!("metadata {} is missing", key("rope.scaling.factor"))))?
                as f32;
        }
        Some(other) => return Err(unsupported(format!("rope scaling type `{other}` is not supported"))),
    }
    if g.tensors.contains_key("rope_freqs.weight") {
        return Err(unsupported(
            "rope_freqs.weight (Llama 3.1 RoPE scaling stored as a tensor) is not supported; convert the HF folder instead"
                .into(),
        ));
    }
    if !g.tensors.contains_key("output.weight") {
        config.flags |= ModelConfig::FLAG_TIED_EMBEDDINGS;
    }
    if arch == Arch::Qwen2 {
        config.flags |= ModelConfig::FLAG_QKV_BIAS;
    }
    if let Some(bos) = g.u32_key("tokenizer.ggml.bos_token_id")?.filter(|&b| b < vocab_size) {
        config.flags |= ModelConfig::FLAG_HAS_BOS;
        config.bos_id = bos;
    }
    let mut eos_ids = Vec::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = g.u32_key(k)? {
            if id >= vocab_size {
                return Err(g.err(format!("metadata {k} ({id}) is not below the vocabulary size ({vocab_size})")));
            }
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
    }
    config.validate().map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", g.path.display())))?;
    Ok(HfConfig { config, eos_ids, source_dtype: None })
}

/// Undoes llama.cpp's Q/K row permutation for RoPE (`LlamaModel.permute` in
/// `convert_hf_to_gguf.py`), which stores each head's rows as `[head_dim/2,
/// 2]` where HF has `[2, head_dim/2]`: the GGUF row holding HF row `row` of
/// a projection with heads of `head_dim` rows.
pub fn permuted_row(row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (head, within) = (row / head_dim, row % head_dim);
    let (pair, i) = (within / half, within % half);
    head * head_dim + 2 * i + pair
}
