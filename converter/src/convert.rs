//! The conversion driver.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ferrite_format::writer::{FileWriter, TensorSpec};
use ferrite_format::{quant, DType, LayerRole, ModelConfig, Role, MAX_STOP_IDS};
use ferrite_kernels::reference;
use half::f16;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::{hf_config, hf_tokenizer};

/// What to convert and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Type of the linear layers' weights.
    pub weights: DType,
    /// Type of the embedding/output table; `None` picks q8 for q4 weights
    /// and the weights' type otherwise.
    pub embed: Option<DType>,
}

impl Options {
    /// The embedding table's type.
    pub fn embed_dtype(&self) -> DType {
        self.embed.unwrap_or(match self.weights {
            DType::Q4 => DType::Q8,
            other => other,
        })
    }
}

/// Progress events, for a progress bar.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// Conversion is starting: this many source bytes will be read.
    Start {
        /// Number of tensors.
        tensors: usize,
        /// Source bytes to read.
        bytes: u64,
    },
    /// A tensor is being converted.
    Tensor {
        /// Its HF name.
        name: &'a str,
        /// Its role.
        role: Role,
    },
    /// This many more source bytes were processed.
    Advance(u64),
}

/// Totals for one storage type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeStats {
    /// Tensors of this type.
    pub tensors: usize,
    /// Elements (weights).
    pub params: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Sum of squared (source - stored) errors.
    pub sum_sq_err: f64,
    /// Sum of squared source values.
    pub sum_sq: f64,
}

impl TypeStats {
    /// Bits per weight, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 { 0.0 } else { self.bytes as f64 * 8.0 / self.params as f64 }
    }
    /// Root-mean-square error relative to the root-mean-square value.
    pub fn relative_rmse(&self) -> f64 {
        if self.sum_sq == 0.0 { 0.0 } else { (self.sum_sq_err / self.sum_sq).sqrt() }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The output file.
    pub output: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Per storage type.
    pub by_type: BTreeMap<DType, TypeStats>,
    /// Non-fatal findings (no tokenizer, ignored tensors, ...).
    pub warnings: Vec<String>,
    /// The config written.
    pub config: Option<ModelConfig>,
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

/// Name of the temporary file written beside `output` (recognisable, so a
/// leftover from a killed run can be identified).
pub fn temp_prefix(output: &Path) -> String {
    let name = output.file_name().and_then(|n| n.to_str()).unwrap_or("model.frt");
    format!(".{name}.")
}

/// Suffix of temporary files.
pub const TEMP_SUFFIX: &str = ".ferrite-tmp";

/// Source elements converted per slab (bounds memory for large tensors).
const SLAB_ELEMS: usize = 1 << 18;

/// Converts the HF folder `input` into the Ferrite file `output`.
///
/// The file is written to a temporary name beside `output` and renamed into
/// place only after it is complete and synced; on any error nothing is left
/// behind.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Summary> {
    let mut summary = Summary { output: output.to_path_buf(), ..Default::default() };
    let hf = hf_config::read(input)?;
    let mut config = hf.config;
    let tokenizer = hf_tokenizer::read(input)?;

    // Stop ids: the configs' EOS ids, then the tokenizer's end-of-turn token.
    let mut stops = hf.eos_ids.clone();
    let mut section = None;
    match &tokenizer {
        None => summary.warnings.push(format!(
            "{}: no tokenizer.json: the file will have no tokenizer (prompts must be given as token ids)",
            input.display()
        )),
        Some(t) => {
            if let Some(eot) = t.eos {
                if !stops.contains(&eot) {
                    stops.push(eot);
                }
            }
            if config.bos().is_none() {
                if let Some(bos) = t.bos.filter(|&b| b < config.vocab_size) {
                    config.flags |= ModelConfig::FLAG_HAS_BOS;
                    config.bos_id = bos;
                }
            }
            if t.add_bos == Some(true) && config.bos().is_some() {
                config.flags |= ModelConfig::FLAG_ADD_BOS;
            }
            let bytes = t
                .builder
                .to_bytes()
                .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("{}: {e}", input.join("tokenizer.json").display())))?;
            if t.builder.tokens.len() as u64 > config.vocab_size as u64 {
                return Err(Error::new(
                    ErrorKind::Tokenizer,
                    format!(
                        "{}: {} tokens but the model's vocab_size is {}",
                        input.join("tokenizer.json").display(),
                        t.builder.tokens.len(),
                        config.vocab_size
                    ),
                ));
            }
            section = Some(bytes);
        }
    }
    if stops.len() > MAX_STOP_IDS {
        summary.warnings.push(format!("{} stop ids; keeping the first {MAX_STOP_IDS}", stops.len()));
        stops.truncate(MAX_STOP_IDS);
    }
    config.n_stop_ids = stops.len() as u32;
    config.stop_ids[..stops.len()].copy_from_slice(&stops);
    config
        .validate()
        .map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", input.join("config.json").display())))?;

    let ckpt = Checkpoint::open(input)?;

    // Match tensors to roles and check shapes.
    let mut plan: BTreeMap<Role, String> = BTreeMap::new();
    for (name, path, dtype) in ckpt.skipped() {
        summary.warnings.push(format!("{}: ignoring unknown tensor {name} (dtype {dtype})", path.display()));
    }
    for (name, loc) in ckpt.tensors() {
        let Some(role) = role_of(name) else {
            summary.warnings.push(format!("{}: ignoring unknown tensor {name}", ckpt.path_of(loc).display()));
            continue;
        };
        if let Role::Layer(l, _) = role {
            if l >= config.n_layers {
                return Err(Error::new(
                    ErrorKind::Tensor,
                    format!("{}: tensor {name} is for layer {l} but the config has {} layers", ckpt.path_of(loc).display(), config.n_layers),
                ));
            }
        }
        if !role.required(&config) {
            if role == Role::Output {
                summary.warnings.push(format!("{name} is stored but embeddings are tied: using the embedding table"));
                continue;
            }
            return Err(Error::new(
                ErrorKind::Tensor,
                format!("{}: unexpected tensor {name} for this architecture", ckpt.path_of(loc).display()),
            ));
        }
        let [rows, cols] = role.expected_shape(&config);
        let want: Vec<usize> = if role.is_vector() { vec![rows as usize] } else { vec![rows as usize, cols as usize] };
        if loc.shape != want {
            return Err(Error::new(
                ErrorKind::Tensor,
                format!(
                    "{}: tensor {name} has shape {:?}, config.json implies {:?}",
                    ckpt.path_of(loc).display(),
                    loc.shape,
                    want
                ),
            ));
        }
        plan.insert(role, name.clone());
    }
    let mut specs = Vec::new();
    let mut roles = vec![Role::Embedding, Role::OutputNorm, Role::Output];
    for l in 0..config.n_layers {
        roles.extend(LayerRole::ALL.iter().map(|&r| Role::Layer(l, r)));
    }
    for role in roles {
        if !role.required(&config) {
            continue;
        }
        if !plan.contains_key(&role) {
            return Err(Error::new(
                ErrorKind::Tensor,
                format!("{}: the checkpoint has no tensor {} (required by config.json)", input.display(), hf_name(role)),
            ));
        }
        let dtype = if role.is_vector() {
            DType::F32
        } else if matches!(role, Role::Embedding | Role::Output) {
            opts.embed_dtype()
        } else {
            opts.weights
        };
        specs.push(TensorSpec { role, dtype, shape: role.expected_shape(&config) });
    }

    // Write to a temp file beside the target, rename on success.
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(output))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let out_err = |e: std::io::Error| Error::io(output, e);
    let sink = BufWriter::with_capacity(1 << 20, tmp.as_file().try_clone().map_err(out_err)?);
    let mut writer = FileWriter::new(sink, &config, section.as_deref(), &specs).map_err(out_err)?;

    let total_bytes: u64 = plan.values().map(|n| ckpt.tensors()[n].shape.iter().product::<usize>() as u64 * ckpt.tensors()[n].dtype.size() as u64).sum();
    progress(Progress::Start { tensors: specs.len(), bytes: total_bytes });

    let mut scratch = Vec::new();
    let mut values = Vec::new();
    let mut back = Vec::new();
    let mut qbuf = Vec::new();
    let mut scales: Vec<f16> = Vec::new();
    while let Some(spec) = writer.next_spec() {
        let name = &plan[&spec.role];
        let loc = &ckpt.tensors()[name];
        progress(Progress::Tensor { name, role: spec.role });
        let [rows, cols] = [spec.shape[0] as usize, spec.shape[1] as usize];
        let rows_per_slab = (SLAB_ELEMS / cols).max(1);
        let stats = summary.by_type.entry(spec.dtype).or_default();
        stats.tensors += 1;
        stats.params += (rows * cols) as u64;
        stats.bytes += spec.bytes();
        scales.clear();
        let mut row = 0;
        while row < rows {
            let n_rows = rows_per_slab.min(rows - row);
            ckpt.read_f32(name, loc, row * cols, n_rows * cols, &mut scratch, &mut values)?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                let at = row * cols + i;
                return Err(Error::new(
                    ErrorKind::NonFinite,
                    format!(
                        "{}: tensor {name} holds {} at element {at} (row {}, column {})",
                        ckpt.path_of(loc).display(),
                        values[i],
                        at / cols,
                        at % cols
                    ),
                ));
            }
            back.clear();
            match spec.dtype {
                DType::F32 => {
                    writer.write_chunk(bytemuck::cast_slice(&values)).map_err(out_err)?;
                    back.extend_from_slice(&values);
                }
                DType::F16 => {
                    let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
                        return Err(Error::new(
                            ErrorKind::NonFinite,
                            format!("{}: tensor {name} element {} ({}) overflows f16", ckpt.path_of(loc).display(), row * cols + i, values[i]),
                        ));
                    }
                    writer.write_chunk(bytemuck::cast_slice(&h)).map_err(out_err)?;
                    back.extend(h.iter().map(|v| v.to_f32()));
                }
                DType::Q8 | DType::Q4 => {
                    let row_q = quant::row_quant_bytes(spec.dtype, cols);
                    let groups = cols.div_ceil(quant::GROUP);
                    qbuf.clear();
                    qbuf.resize(n_rows * row_q, 0);
                    back.resize(n_rows * cols, 0.0);
                    let first_scale = scales.len();
                    scales.resize(first_scale + n_rows * groups, f16::ZERO);
                    for r in 0..n_rows {
                        let src = &values[r * cols..(r + 1) * cols];
                        let qs = &mut qbuf[r * row_q..(r + 1) * row_q];
                        let sc = &mut scales[first_scale + r * groups..first_scale + (r + 1) * groups];
                        let dst = &mut back[r * cols..(r + 1) * cols];
                        if spec.dtype == DType::Q8 {
                            reference::quantize_row_q8(src, qs, sc);
                            reference::dequantize_row_q8(qs, sc, dst);
                        } else {
                            reference::quantize_row_q4(src, qs, sc);
                            reference::dequantize_row_q4(qs, sc, dst);
                        }
                    }
                    if let Some(i) = scales[first_scale..].iter().position(|s| !s.is_finite()) {
                        return Err(Error::new(
                            ErrorKind::NonFinite,
                            format!("{}: tensor {name}: group {} scale overflows f16", ckpt.path_of(loc).display(), first_scale + i),
                        ));
                    }
                    writer.write_chunk(&qbuf).map_err(out_err)?;
                }
            }
            for (x, y) in values.iter().zip(&back) {
                let (x, y) = (*x as f64, *y as f64);
                stats.sum_sq_err += (x - y) * (x - y);
                stats.sum_sq += x * x;
            }
            progress(Progress::Advance((n_rows * cols * loc.dtype.size()) as u64));
            row += n_rows;
        }
        if spec.dtype.is_quantized() {
            writer.write_chunk(bytemuck::cast_slice(&scales)).map_err(out_err)?;
        }
        writer.end_tensor().map_err(out_err)?;
    }
    let mut sink = writer.finish().map_err(out_err)?;
    sink.flush().map_err(out_err)?;
    let file = sink.into_inner().map_err(|e| out_err(e.into_error()))?;
    file.sync_all().map_err(out_err)?;
    summary.file_bytes = file.metadata().map_err(out_err)?.len();
    drop(file);
    {
        use std::os::unix::fs::PermissionsExt;
        // Temp files are created 0600; a model file is ordinary data.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(out_err)?;
    }
    tmp.persist(output).map_err(|e| out_err(e.error))?;
    summary.config = Some(config);
    Ok(summary)
}
