//! The conversion driver.

use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use ferrite_format::writer::{FileWriter, TensorSpec};
use ferrite_format::{quant, DType, LayerRole, ModelConfig, Role, MAX_STOP_IDS};
use ferrite_kernels::reference;
use half::f16;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::{hf_config, hf_tokenizer};

/// What to convert and how.
///
/// Construct it with [`Default`] and change what differs, so that new
/// options do not break callers:
/// `Options { weights: DType::Q8, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Type of the linear layers' weights.
    pub weights: DType,
    /// Type of the embedding/output table; `None` picks q8 for q4 weights
    /// and the weights' type otherwise.
    pub embed: Option<DType>,
    /// Accept NaN and ±infinity in the source weights (default: refuse them,
    /// [`ErrorKind::NonFinite`], naming the file, tensor and element). When
    /// set, f32 and f16 tensors store them as they are, and q8/q4 tensors
    /// quantize them as 0 (a group's scale comes from its finite elements);
    /// each affected tensor is reported in [`Summary::warnings`]. Finite
    /// values that would *become* non-finite (beyond f16's range, or a q8/q4
    /// scale beyond it) are refused either way.
    pub allow_nonfinite: bool,
    /// Per-tensor types that override `weights` and `embed`, applied in
    /// order (a later rule wins). Every rule must match some tensor.
    pub tensor_types: Vec<TensorType>,
}

impl Default for Options {
    /// q4 weights, the default embedding type, non-finite weights refused.
    fn default() -> Self {
        Options { weights: DType::Q4, embed: None, allow_nonfinite: false, tensor_types: Vec::new() }
    }
}

impl Options {
    /// The embedding table's type.
    pub fn embed_dtype(&self) -> DType {
        self.embed.unwrap_or(match self.weights {
            DType::Q4 | DType::Q4A => DType::Q8,
            other => other,
        })
    }

    /// The type of matrix `role`: the last matching [`TensorType`] rule,
    /// else `embed_dtype()` for the embedding/output table, else `weights`.
    pub fn dtype_of(&self, role: Role) -> DType {
        let default = if matches!(role, Role::Embedding | Role::Output) { self.embed_dtype() } else { self.weights };
        self.tensor_types.iter().rev().find(|t| t.matches(role)).map_or(default, |t| t.dtype)
    }
}

/// A per-tensor type rule, `ROLE=TYPE` or `blk.N.ROLE=TYPE`: `ROLE` is
/// `embedding`, `output` or a layer matrix (`attn_q`, `attn_k`, `attn_v`,
/// `attn_o`, `ffn_gate`, `ffn_up`, `ffn_down`), for every layer or layer `N`
/// only; `TYPE` is `f32`, `f16`, `q8`, `q4` or `q4a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorType {
    /// `None`: a global role, or every layer.
    pub layer: Option<u32>,
    target: RuleTarget,
    /// The type to store it as.
    pub dtype: DType,
}

/// The tensors a [`TensorType`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleTarget {
    Embedding,
    Output,
    Layer(LayerRole),
}

impl TensorType {
    /// Whether the rule applies to `role`.
    pub fn matches(&self, role: Role) -> bool {
        match (role, self.target) {
            (Role::Embedding, RuleTarget::Embedding) | (Role::Output, RuleTarget::Output) => true,
            (Role::Layer(l, r), RuleTarget::Layer(want)) => r == want && self.layer.is_none_or(|n| n == l),
            _ => false,
        }
    }
}

impl std::str::FromStr for TensorType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (key, ty) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected ROLE=TYPE, e.g. attn_v=q8"))?;
        let dtype = [DType::F32, DType::F16, DType::Q8, DType::Q4, DType::Q4A]
            .into_iter()
            .find(|d| d.name() == ty.trim())
            .ok_or_else(|| format!("{s:?}: unknown type {ty:?} (f32, f16, q8, q4, q4a)"))?;
        let key = key.trim();
        let (layer, name) = match key.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((n, name)) => (Some(n.parse::<u32>().map_err(|_| format!("{s:?}: bad layer number {n:?}"))?), name),
            None => (None, key),
        };
        let target = match name {
            "embedding" | "output" if layer.is_some() => {
                return Err(format!("{s:?}: {name} is not a per-layer tensor"));
            }
            "embedding" => RuleTarget::Embedding,
            "output" => RuleTarget::Output,
            _ => RuleTarget::Layer(
                LayerRole::ALL.into_iter().find(|r| !r.is_vector() && r.name() == name).ok_or_else(|| {
                    format!(
                        "{s:?}: unknown tensor {name:?} (embedding, output, attn_q, attn_k, attn_v, attn_o, \
                     ffn_gate, ffn_up, ffn_down, optionally as blk.N.NAME)"
                    )
                })?,
            ),
        };
        Ok(TensorType { layer, target, dtype })
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(l) = self.layer {
            write!(f, "blk.{l}.")?;
        }
        let name = match self.target {
            RuleTarget::Embedding => "embedding",
            RuleTarget::Output => "output",
            RuleTarget::Layer(r) => r.name(),
        };
        write!(f, "{name}={}", self.dtype.name())
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
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.params as f64
        }
    }
    /// Root-mean-square error relative to the root-mean-square value.
    pub fn relative_rmse(&self) -> f64 {
        if self.sum_sq == 0.0 {
            0.0
        } else {
            (self.sum_sq_err / self.sum_sq).sqrt()
        }
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

/// Start of the names of the temporary files written beside `output`.
///
/// A conversion writes `.{name}.{pid}.{random}.ferrite-tmp` beside
/// `output` (`name` its file name, `pid` the converting process's id,
/// `random` six alphanumeric characters) and renames it to `output` once it
/// is complete. A process killed meanwhile leaves that file behind: its
/// name says which output and which process it belongs to, and the next
/// conversion to the same output removes it once that process is gone (see
/// [`convert`]).
pub fn temp_prefix(output: &Path) -> String {
    let name = output.file_name().and_then(|n| n.to_str()).unwrap_or("model.frt");
    format!(".{name}.")
}

/// Suffix of temporary files.
pub const TEMP_SUFFIX: &str = ".ferrite-tmp";

/// Who wrote a temporary file of some output, as its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TempOwner {
    /// The process with this id (`.{name}.{pid}.{random}.ferrite-tmp`).
    Pid(u32),
    /// Unknown: a name without a process id (`.{name}.{random}.ferrite-tmp`,
    /// written by converters before the id was added).
    Unknown,
}

/// If `file_name` is the name of a temporary file of `output`, who wrote it.
///
/// Only names this converter makes match: the output's
/// [`temp_prefix`], then `{pid}.{random}` or `{random}` (`random`
/// alphanumeric), then [`TEMP_SUFFIX`]. So the temp files of an output named
/// `m.frt` are never mistaken for those of `m.frt.1.frt`, and no other file
/// matches.
pub fn temp_owner(output: &Path, file_name: &str) -> Option<TempOwner> {
    let middle = file_name.strip_prefix(temp_prefix(output).as_str())?.strip_suffix(TEMP_SUFFIX)?;
    let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    match middle.split_once('.') {
        Some((pid, random)) if alnum(random) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            pid.parse().ok().map(TempOwner::Pid)
        }
        Some(_) => None,
        None if alnum(middle) => Some(TempOwner::Unknown),
        None => None,
    }
}

/// Whether the process `pid` is running, where that can be known: `/proc`
/// on Linux; `None` elsewhere. A zombie counts as running.
fn process_alive(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Some(Path::new("/proc").join(pid.to_string()).exists())
    } else {
        None
    }
}

/// Removes the temporary files of `output` in `dir` left by conversions
/// whose process is gone (killed, or the machine lost power); reports each
/// removal, and each leftover it cannot judge, in `warnings`.
///
/// The files of running processes, this one included, are left alone: two
/// conversions to the same output may run at once, and the second to finish
/// wins. A process id is only meaningful on this machine and in this PID
/// namespace: a conversion writing into the same folder from another
/// machine or container may see its temp file removed, and then fails
/// cleanly when it renames it (it never produces a damaged output).
fn remove_stale_temps(dir: &Path, output: &Path, warnings: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Creating the temp file in `dir` reports the problem.
        return;
    };
    let mut found: Vec<(PathBuf, TempOwner)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let owner = temp_owner(output, name.to_str()?)?;
            Some((e.path(), owner))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, owner) in found {
        match owner {
            TempOwner::Pid(pid) => match process_alive(pid) {
                Some(true) => {}
                Some(false) => match std::fs::remove_file(&path) {
                    Ok(()) => warnings.push(format!(
                        "{}: removed the temporary file of an interrupted conversion (process {pid} is gone)",
                        path.display()
                    )),
                    // Another conversion removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warnings.push(format!(
                        "{}: could not remove the temporary file of an interrupted conversion: {e}",
                        path.display()
                    )),
                },
                None => warnings.push(format!(
                    "{}: temporary file of an earlier conversion (process {pid}); \
                     remove it if that conversion is no longer running",
                    path.display()
                )),
            },
            TempOwner::Unknown => warnings.push(format!(
                "{}: temporary file of an earlier conversion (no process id in its name); \
                 remove it if no conversion is running",
                path.display()
            )),
        }
    }
}

/// Source elements converted per slab (bounds memory for large tensors).
const SLAB_ELEMS: usize = 1 << 18;

/// Converts the HF folder `input` into the Ferrite file `output`.
///
/// The file is written to a temporary name beside `output` (see
/// [`temp_prefix`]) and renamed into place only after it is complete and
/// synced; on any error nothing is left behind and an existing `output` is
/// untouched. A process killed meanwhile leaves only its temporary file,
/// never a partial `output`; once the inputs are validated, a conversion
/// removes such leftovers of `output` whose process is gone and reports
/// each in [`Summary::warnings`].
pub fn convert(input: &Path, output: &Path, opts: &Options, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Summary> {
    convert_with_sink(input, output, opts, progress, |file| file)
}

/// [`convert`], with the temporary file wrapped by `sink` before anything
/// is written to it (tests inject write failures this way).
pub(crate) fn convert_with_sink<W: Write + Seek>(
    input: &Path,
    output: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress<'_>),
    sink: impl FnOnce(std::fs::File) -> W,
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
            let bytes = t.builder.to_bytes().map_err(|e| {
                Error::new(ErrorKind::Tokenizer, format!("{}: {e}", input.join("tokenizer.json").display()))
            })?;
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
                    format!(
                        "{}: tensor {name} is for layer {l} but the config has {} layers",
                        ckpt.path_of(loc).display(),
                        config.n_layers
                    ),
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
                format!(
                    "{}: the checkpoint has no tensor {} (required by config.json)",
                    input.display(),
                    hf_name(role)
                ),
            ));
        }
        let dtype = if role.is_vector() { DType::F32 } else { opts.dtype_of(role) };
        specs.push(TensorSpec { role, dtype, shape: role.expected_shape(&config) });
    }
    for rule in &opts.tensor_types {
        if !specs.iter().any(|s| rule.matches(s.role)) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("--tensor-type {rule}: {} has no such tensor", input.join("config.json").display()),
            ));
        }
    }

    // Write to a temp file beside the target, rename on success.
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale_temps(&dir, output, &mut summary.warnings);
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}{}.", temp_prefix(output), std::process::id()))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let out_err = |e: std::io::Error| Error::io(output, e);
    let sink = BufWriter::with_capacity(1 << 20, sink(tmp.as_file().try_clone().map_err(out_err)?));
    let mut writer = FileWriter::new(sink, &config, section.as_deref(), &specs).map_err(out_err)?;

    let total_bytes: u64 = plan
        .values()
        .map(|n| ckpt.tensors()[n].shape.iter().product::<usize>() as u64 * ckpt.tensors()[n].dtype.size() as u64)
        .sum();
    progress(Progress::Start { tensors: specs.len(), bytes: total_bytes });

    let mut scratch = Vec::new();
    let mut values = Vec::new();
    let mut back = Vec::new();
    let mut qbuf = Vec::new();
    let mut scales: Vec<f16> = Vec::new();
    let mut mins: Vec<f16> = Vec::new();
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
        mins.clear();
        // Non-finite source values let through (`allow_nonfinite`): how
        // many, and the first one's element index and value.
        let mut nonfinite: Option<(u64, usize, f32)> = None;
        let mut row = 0;
        while row < rows {
            let n_rows = rows_per_slab.min(rows - row);
            ckpt.read_f32(name, loc, row * cols, n_rows * cols, &mut scratch, &mut values)?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                let at = row * cols + i;
                if !opts.allow_nonfinite {
                    return Err(Error::new(
                        ErrorKind::NonFinite,
                        format!(
                            "{}: tensor {name} holds {} at element {at} (row {}, column {}); \
                             --allow-nonfinite converts it anyway",
                            ckpt.path_of(loc).display(),
                            values[i],
                            at / cols,
                            at % cols
                        ),
                    ));
                }
                let count = values[i..].iter().filter(|v| !v.is_finite()).count() as u64;
                let seen = nonfinite.get_or_insert((0, at, values[i]));
                seen.0 += count;
                if spec.dtype.is_quantized() {
                    // A quantized group cannot hold them: 0, and the group's
                    // scale comes from its finite elements.
                    for v in values[i..].iter_mut().filter(|v| !v.is_finite()) {
                        *v = 0.0;
                    }
                }
            }
            back.clear();
            match spec.dtype {
                DType::F32 => {
                    writer.write_chunk(bytemuck::cast_slice(&values)).map_err(out_err)?;
                    back.extend_from_slice(&values);
                }
                DType::F16 => {
                    let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                    // Source NaN/inf were refused above unless allowed; a
                    // finite value that overflows f16 is refused either way.
                    if let Some(i) = h.iter().zip(&values).position(|(h, v)| !h.is_finite() && v.is_finite()) {
                        return Err(Error::new(
                            ErrorKind::NonFinite,
                            format!(
                                "{}: tensor {name} element {} ({}) overflows f16",
                                ckpt.path_of(loc).display(),
                                row * cols + i,
                                values[i]
                            ),
                        ));
                    }
                    writer.write_chunk(bytemuck::cast_slice(&h)).map_err(out_err)?;
                    back.extend(h.iter().map(|v| v.to_f32()));
                }
                DType::Q8 | DType::Q4 | DType::Q4A => {
                    let row_q = quant::row_quant_bytes(spec.dtype, cols);
                    let groups = cols.div_ceil(quant::GROUP);
                    qbuf.clear();
                    qbuf.resize(n_rows * row_q, 0);
                    back.resize(n_rows * cols, 0.0);
                    let first_scale = scales.len();
                    scales.resize(first_scale + n_rows * groups, f16::ZERO);
                    if spec.dtype == DType::Q4A {
                        mins.resize(first_scale + n_rows * groups, f16::ZERO);
                    }
                    for r in 0..n_rows {
                        let src = &values[r * cols..(r + 1) * cols];
                        let qs = &mut qbuf[r * row_q..(r + 1) * row_q];
                        let groups_of_row = first_scale + r * groups..first_scale + (r + 1) * groups;
                        let sc = &mut scales[groups_of_row.clone()];
                        let dst = &mut back[r * cols..(r + 1) * cols];
                        match spec.dtype {
                            DType::Q8 => {
                                reference::quantize_row_q8(src, qs, sc);
                                reference::dequantize_row_q8(qs, sc, dst);
                            }
                            DType::Q4 => {
                                reference::quantize_row_q4(src, qs, sc);
                                reference::dequantize_row_q4(qs, sc, dst);
                            }
                            _ => {
                                let mn = &mut mins[groups_of_row];
                                reference::quantize_row_q4a(src, qs, sc, mn);
                                reference::dequantize_row_q4a(qs, sc, mn, dst);
                            }
                        }
                    }
                    let bad_min = mins[first_scale.min(mins.len())..].iter().position(|s| !s.is_finite());
                    if let Some(i) = scales[first_scale..].iter().position(|s| !s.is_finite()).or(bad_min) {
                        return Err(Error::new(
                            ErrorKind::NonFinite,
                            format!(
                                "{}: tensor {name}: group {} scale or minimum overflows f16",
                                ckpt.path_of(loc).display(),
                                first_scale + i
                            ),
                        ));
                    }
                    writer.write_chunk(&qbuf).map_err(out_err)?;
                }
            }
            for (x, y) in values.iter().zip(&back).filter(|(x, _)| x.is_finite()) {
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
        if spec.dtype == DType::Q4A {
            writer.write_chunk(bytemuck::cast_slice(&mins)).map_err(out_err)?;
        }
        writer.end_tensor().map_err(out_err)?;
        if let Some((count, at, value)) = nonfinite {
            summary.warnings.push(format!(
                "{}: tensor {name} holds {count} non-finite value(s), the first {value} at element {at} (row {}, column {}): {}",
                ckpt.path_of(loc).display(),
                at / cols,
                at % cols,
                if spec.dtype.is_quantized() { "quantized as 0" } else { "stored as they are" }
            ));
        }
    }
    let mut sink = writer.finish().map_err(out_err)?;
    sink.flush().map_err(out_err)?;
    drop(sink);
    let file = tmp.as_file();
    file.sync_all().map_err(out_err)?;
    summary.file_bytes = file.metadata().map_err(out_err)?.len();
    {
        use std::os::unix::fs::PermissionsExt;
        // Temp files are created 0600; a model file is ordinary data.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(out_err)?;
    }
    tmp.persist(output).map_err(|e| out_err(e.error))?;
    summary.config = Some(config);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::io::{self, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    use ferrite_format::DType;

    use super::{convert, convert_with_sink, temp_owner, Options, TempOwner, TEMP_SUFFIX};
    use crate::ErrorKind;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(name)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// A sink that fails like a full disk: with ENOSPC once `limit` bytes
    /// are reached. `Extent`: the file may not grow past `limit` bytes (a
    /// disk that is full; rewriting bytes already written still works).
    /// `Total`: `limit` bytes of writes in all, wherever they go (a device
    /// that fails mid-way, also during the final header rewrite). The write
    /// that reaches the limit is partial, as `write(2)` on a full disk.
    struct FullDisk {
        inner: std::fs::File,
        mode: Mode,
        limit: u64,
        pos: u64,
        written: u64,
    }

    #[derive(Clone, Copy, Debug)]
    enum Mode {
        Extent,
        Total,
    }

    impl FullDisk {
        fn new(inner: std::fs::File, mode: Mode, limit: u64) -> Self {
            FullDisk { inner, mode, limit, pos: 0, written: 0 }
        }
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let used = match self.mode {
                Mode::Extent => self.pos,
                Mode::Total => self.written,
            };
            let room = self.limit.saturating_sub(used);
            if room == 0 && !buf.is_empty() {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = (buf.len() as u64).min(room) as usize;
            let n = self.inner.write(&buf[..n])?;
            self.pos += n as u64;
            self.written += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.pos = self.inner.seek(pos)?;
            Ok(self.pos)
        }
    }

    /// A disk that fills after N bytes, for N from 0 to one byte short of
    /// the whole file (in the header, the directory, at and around the 1 MiB
    /// buffer's flushes, in the last tensor; and, counting every byte
    /// written, in the final header and directory rewrite): an I/O error
    /// naming the output, and neither the output nor a temp file left
    /// behind; an existing output stays as it was.
    #[test]
    fn a_disk_that_fills_up_leaves_no_output_and_no_temp_file() {
        let input = fixture("llama-tied-bf16");
        let opts = Options { weights: DType::F32, ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("reference.frt");
        let summary = convert(&input, &reference, &opts, &mut |_| {}).unwrap();
        let size = summary.file_bytes;
        assert!(size > 2 << 20, "the file ({size} bytes) should span several 1 MiB buffer flushes");
        let expected = std::fs::read(&reference).unwrap();
        // What `finish` rewrites at the end: the header and the directory.
        let n_tensors = summary.by_type.values().map(|s| s.tensors as u64).sum::<u64>();
        let rewrite = 128 + 64 * n_tensors;

        let out_dir = tempfile::tempdir().unwrap();
        let output = out_dir.path().join("model.frt");
        let mib = 1u64 << 20;
        let mut cases: Vec<(Mode, u64)> =
            [0, 1, 127, 128, 384, 4096, mib - 1, mib, mib + 1, 2 * mib + 7, size / 2, size - 64, size - 1]
                .into_iter()
                .map(|n| (Mode::Extent, n))
                .collect();
        cases.extend([size, size + 1, size + 127, size + rewrite - 1].map(|n| (Mode::Total, n)));
        for (mode, limit) in cases {
            let err = convert_with_sink(&input, &output, &opts, &mut |_| {}, |f| FullDisk::new(f, mode, limit))
                .err()
                .unwrap_or_else(|| panic!("{mode:?} {limit} of {size} bytes: the conversion succeeded"));
            let msg = err.to_string();
            assert_eq!(err.kind(), ErrorKind::Io, "{mode:?} {limit}: {msg}");
            assert!(
                msg.contains(&output.display().to_string()),
                "{mode:?} {limit}: the message names no output: {msg}"
            );
            assert!(msg.contains("os error 28"), "{mode:?} {limit}: not the ENOSPC error: {msg}");
            assert!(names(out_dir.path()).is_empty(), "{mode:?} {limit}: left {:?}", names(out_dir.path()));
        }

        // Replacing an existing file: it stays intact.
        std::fs::write(&output, b"the previous model").unwrap();
        for (mode, limit) in [(Mode::Extent, 0), (Mode::Extent, mib), (Mode::Extent, size - 1), (Mode::Total, size)] {
            let r = convert_with_sink(&input, &output, &opts, &mut |_| {}, |f| FullDisk::new(f, mode, limit));
            assert!(r.is_err(), "{mode:?} {limit}: succeeded");
            assert_eq!(std::fs::read(&output).unwrap(), b"the previous model", "{mode:?} {limit}: the output changed");
            assert_eq!(names(out_dir.path()), ["model.frt"], "{mode:?} {limit}: leftovers");
        }

        // Room for exactly the file: it succeeds, byte-identical (the hook
        // itself changes nothing).
        for (mode, limit) in [(Mode::Extent, size), (Mode::Total, size + rewrite)] {
            convert_with_sink(&input, &output, &opts, &mut |_| {}, |f| FullDisk::new(f, mode, limit))
                .unwrap_or_else(|e| panic!("{mode:?} {limit}: {e}"));
            assert!(std::fs::read(&output).unwrap() == expected, "{mode:?}: the file written through the hook differs");
            assert_eq!(names(out_dir.path()), ["model.frt"]);
        }
    }

    #[test]
    fn temp_names_say_which_output_and_process_they_belong_to() {
        let out = Path::new("/models/m.frt");
        let t = |s: &str| temp_owner(out, s);
        assert_eq!(t(".m.frt.1234.aB3xYz.ferrite-tmp"), Some(TempOwner::Pid(1234)));
        assert_eq!(t(".m.frt.aB3xYz.ferrite-tmp"), Some(TempOwner::Unknown));
        // Not temp files of m.frt.
        for other in [
            "m.frt",
            ".m.frt.1234.aB3xYz.ferrite-tmp.bak",
            ".m.frt.ferrite-tmp",
            ".m.frt..ferrite-tmp",
            ".m.frt.1234..ferrite-tmp",
            ".m.frt.12a4.aB3xYz.ferrite-tmp",
            ".m.frt.99999999999.aB3xYz.ferrite-tmp",
            ".m.frt.x.1234.aB3xYz.ferrite-tmp",     // a temp of `m.frt.x`
            ".m.frt.1.frt.1234.aB3xYz.ferrite-tmp", // a temp of `m.frt.1.frt`
            ".n.frt.1234.aB3xYz.ferrite-tmp",
        ] {
            assert_eq!(t(other), None, "{other}");
        }
        assert!(TEMP_SUFFIX.starts_with('.'));
    }
}
