//! `config.json` (transformers 4 and 5 layouts) and `generation_config.json`.

use std::path::Path;

use ferrite_format::{Arch, ModelConfig, RopeScaling, MAX_STOP_IDS};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

/// Supported architectures, as named in `config.json`.
pub const SUPPORTED_ARCHS: [&str; 3] = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

/// The dimensions of a model, as each reader (`config.json` here, GGUF
/// metadata in `gguf::model`) finds and checks them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) n_layers: u32,
    pub(crate) d_model: u32,
    pub(crate) n_heads: u32,
    pub(crate) n_kv_heads: u32,
    pub(crate) head_dim: u32,
    pub(crate) ffn_dim: u32,
    pub(crate) vocab_size: u32,
    pub(crate) trained_ctx: u32,
}

impl Shape {
    /// The record of an `arch` model of this shape with plain RoPE at
    /// `rope_theta` and nothing else set (no scaling, flags, special ids
    /// or window): what each reader starts from and completes from its
    /// source. Every field is spelled out, so that a new one is decided
    /// here.
    pub(crate) fn config(self, arch: Arch, rope_theta: f32, norm_eps: f32) -> ModelConfig {
        ModelConfig {
            arch: arch as u32,
            n_layers: self.n_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            ffn_dim: self.ffn_dim,
            vocab_size: self.vocab_size,
            trained_ctx: self.trained_ctx,
            rope_theta,
            rope_scaling: RopeScaling::None as u32,
            rope_factor: 1.0,
            rope_low_freq_factor: 0.0,
            rope_high_freq_factor: 0.0,
            rope_original_ctx: 0,
            norm_eps,
            activation: 0,
            flags: 0,
            bos_id: 0,
            sliding_window: 0,
            n_stop_ids: 0,
            stop_ids: [0; MAX_STOP_IDS],
            reserved: [0; 140],
        }
    }
}

/// What the converter takes from `config.json` and `generation_config.json`.
#[derive(Clone, Debug)]
pub struct HfConfig {
    /// The model record (stop ids and BOS flags are completed later, once
    /// the tokenizer is read).
    pub config: ModelConfig,
    /// EOS ids named by the configs.
    pub eos_ids: Vec<u32>,
    /// Source dtype named by the config (`torch_dtype` or `dtype`), for messages.
    pub source_dtype: Option<String>,
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::new(ErrorKind::Config, format!("{}: not valid UTF-8", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorKind::Config, format!("{}: invalid JSON: {e}", path.display())))
}

struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn err(&self, key: &str, why: &str) -> Error {
        Error::new(ErrorKind::Config, format!("{}: key `{key}` {why}", self.path.display()))
    }
    fn u32_opt(&self, key: &str) -> Result<Option<u32>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, &format!("must be a non-negative integer below 2^32, found {v}"))),
        }
    }
    fn u32(&self, key: &str) -> Result<u32> {
        self.u32_opt(key)?.ok_or_else(|| self.err(key, "is missing"))
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(key, &format!("must be a number, found {v}"))),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, &format!("must be true or false, found {v}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, &format!("must be a string, found {v}"))),
        }
    }
    /// An int or a list of ints (`eos_token_id`).
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| self.err(key, "must hold non-negative integers"))
                })
                .collect(),
            Some(v) => Ok(vec![v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| self.err(key, "must be an integer or a list of integers"))?]),
        }
    }
}

fn object<'a>(path: &Path, v: &'a Value) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::new(ErrorKind::Config, format!("{}: top level is not a JSON object", path.display())))
}

/// Reads `dir/config.json` and, if present, `dir/generation_config.json`.
pub fn read(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    let json = read_json(&path)?;
    let map = object(&path, &json)?;
    let k = Keys { path: &path, map };

    let arch_name = match map.get("architectures") {
        Some(Value::Array(a)) if !a.is_empty() => {
            a[0].as_str().ok_or_else(|| k.err("architectures", "must hold strings"))?.to_string()
        }
        Some(_) => return Err(k.err("architectures", "must be a non-empty list")),
        None => return Err(k.err("architectures", "is missing")),
    };
    let arch = match arch_name.as_str() {
        "LlamaForCausalLM" => Arch::Llama,
        "MistralForCausalLM" => Arch::Mistral,
        "Qwen2ForCausalLM" => Arch::Qwen2,
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: unsupported architecture {other} (supported: {})",
                    path.display(),
                    SUPPORTED_ARCHS.join(", ")
                ),
            ))
        }
    };
    let unsupported = |what: String| Error::new(ErrorKind::Unsupported, format!("{}: {what}", path.display()));

    let d_model = k.u32("hidden_size")?;
    let n_layers = k.u32("num_hidden_layers")?;
    let n_heads = k.u32("num_attention_heads")?;
    let n_kv_heads = k.u32_opt("num_key_value_heads")?.unwrap_or(n_heads);
    let ffn_dim = k.u32("intermediate_size")?;
    let vocab_size = k.u32("vocab_size")?;
    if n_heads == 0 {
        return Err(k.err("num_attention_heads", "must be positive"));
    }
    let head_dim = match k.u32_opt("head_dim")? {
        Some(h) => h,
        None => {
            if d_model % n_heads != 0 {
                return Err(k.err("hidden_size", "is not a multiple of num_attention_heads (and no head_dim is given)"));
            }
            d_model / n_heads
        }
    };
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(
            k.err("num_key_value_heads", &format!("({n_kv_heads}) must divide num_attention_heads ({n_heads})"))
        );
    }
    let trained_ctx = k.u32_opt("max_position_embeddings")?.unwrap_or(2048);
    let norm_eps = k.f64_opt("rms_norm_eps")?.unwrap_or(1e-6) as f32;
    match k.str_opt("hidden_act")?.unwrap_or("silu") {
        "silu" | "swish" => {}
        other => return Err(unsupported(format!("hidden_act `{other}` is not supported (only silu)"))),
    }
    if k.bool_opt("mlp_bias")?.unwrap_or(false) {
        return Err(unsupported("mlp_bias = true is not supported".into()));
    }
    let qkv_bias = match arch {
        Arch::Qwen2 => true,
        _ => {
            if k.bool_opt("attention_bias")?.unwrap_or(false) {
                return Err(unsupported(
                    "attention_bias = true (o_proj bias) is not supported for this architecture".into(),
                ));
            }
            false
        }
    };
    let tied = k.bool_opt("tie_word_embeddings")?.unwrap_or(false);

    // RoPE: transformers 5 nests it in `rope_parameters`; 4.x has top-level
    // `rope_theta` and `rope_scaling`.
    let (theta, scaling) = match map.get("rope_parameters") {
        Some(Value::Object(p)) => {
            let pk = Keys { path: &path, map: p };
            let theta = pk.f64_opt("rope_theta")?.ok_or_else(|| k.err("rope_parameters.rope_theta", "is missing"))?;
            (theta, Some(p))
        }
        Some(Value::Null) | None => {
            let theta = k.f64_opt("rope_theta")?.unwrap_or(10000.0);
            let scaling = match map.get("rope_scaling") {
                Some(Value::Object(s)) => Some(s),
                Some(Value::Null) | None => None,
                Some(_) => return Err(k.err("rope_scaling", "must be an object or null")),
            };
            (theta, scaling)
        }
        Some(_) => return Err(k.err("rope_parameters", "must be an object")),
    };
    let shape = Shape { n_layers, d_model, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size, trained_ctx };
    let mut config = shape.config(arch, theta as f32, norm_eps);
    if let Some(s) = scaling {
        let sk = Keys { path: &path, map: s };
        let kind = sk.str_opt("rope_type")?.or(sk.str_opt("type")?).unwrap_or("default");
        match kind {
            "default" => {}
            "linear" => {
                config.rope_scaling = RopeScaling::Linear as u32;
                config.rope_factor = sk.f64_opt("factor")?.ok_or_else(|| k.err("rope factor", "is missing"))? as f32;
            }
            "llama3" => {
                config.rope_scaling = RopeScaling::Llama3 as u32;
                let need = |key: &str| -> Result<f64> {
                    sk.f64_opt(key)?.ok_or_else(|| k.err(&format!("rope scaling {key}"), "is missing"))
                };
                config.rope_factor = need("factor")? as f32;
                config.rope_low_freq_factor = need("low_freq_factor")? as f32;
                config.rope_high_freq_factor = need("high_freq_factor")? as f32;
                config.rope_original_ctx = sk
                    .u32_opt("original_max_position_embeddings")?
                    .ok_or_else(|| k.err("rope scaling original_max_position_embeddings", "is missing"))?;
            }
            other => {
                return Err(unsupported(format!(
                    "rope scaling type `{other}` is not supported (supported: default, linear, llama3)"
                )))
            }
        }
    }
    if tied {
        config.flags |= ModelConfig::FLAG_TIED_EMBEDDINGS;
    }
    if qkv_bias {
        config.flags |= ModelConfig::FLAG_QKV_BIAS;
    }
    let window = match arch {
        Arch::Mistral => k.u32_opt("sliding_window")?,
        Arch::Qwen2 if k.bool_opt("use_sliding_window")?.unwrap_or(false) => k.u32_opt("sliding_window")?,
        _ => None,
    };
    if let Some(w) = window {
        // A window at least as long as the trained context never takes effect.
        if w < trained_ctx {
            config.flags |= ModelConfig::FLAG_SLIDING_WINDOW;
            config.sliding_window = w;
        }
    }
    if let Some(bos) = k.u32_opt("bos_token_id")? {
        if bos < vocab_size {
            config.flags |= ModelConfig::FLAG_HAS_BOS;
            config.bos_id = bos;
        }
    }
    let mut eos_ids = k.ids("eos_token_id")?;

    let gen_path = dir.join("generation_config.json");
    if gen_path.exists() {
        let gen = read_json(&gen_path)?;
        let gmap = object(&gen_path, &gen)?;
        let gk = Keys { path: &gen_path, map: gmap };
        for id in gk.ids("eos_token_id")? {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        if config.flags & ModelConfig::FLAG_HAS_BOS == 0 {
            if let Some(bos) = gk.u32_opt("bos_token_id")?.filter(|&b| b < vocab_size) {
                config.flags |= ModelConfig::FLAG_HAS_BOS;
                config.bos_id = bos;
            }
        }
    }
    if let Some(bad) = eos_ids.iter().find(|&&id| id >= vocab_size) {
        return Err(k.err("eos_token_id", &format!("({bad}) is not below vocab_size ({vocab_size})")));
    }
    let source_dtype = k.str_opt("torch_dtype")?.or(k.str_opt("dtype")?).map(str::to_string);

    let probe = HfConfig { config, eos_ids, source_dtype };
    probe.config.validate().map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", path.display())))?;
    Ok(probe)
}
