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
use crate::gguf::{self, GgufFile};
use crate::{hf_config, hf_tokenizer};

/// Whether `input` is a GGUF file (a file, not a folder, starting with
/// `GGUF`); anything else is taken for an HF folder.
pub fn is_gguf(input: &Path) -> bool {
    use std::io::Read;
    if !input.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(input).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == gguf::MAGIC
}

/// Where the tensors come from: an HF safetensors checkpoint, or a GGUF
/// file (dequantized to f32, llama.cpp's Q/K row permutation undone, names
/// mapped to HF's). Either way the pipeline sees HF names, row-major shapes
/// and f32 slabs.
enum Source {
    Hf(Checkpoint),
    Gguf {
        file: GgufFile,
        /// HF name → GGUF name.
        names: BTreeMap<String, String>,
        /// Rows per head, when llama.cpp permuted Q and K (`llama`).
        permuted_head_dim: Option<usize>,
    },
}

impl Source {
    fn open_gguf(file: GgufFile, config: &ModelConfig, warnings: &mut Vec<String>) -> Result<Self> {
        let mut names = BTreeMap::new();
        for (name, t) in &file.tensors {
            match gguf::hf_tensor_name(name) {
                None => warnings.push(format!("{}: ignoring unknown tensor {name}", file.path().display())),
                Some(_) if t.ty.is_none() => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{}: tensor {name} has ggml type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                            file.path().display(),
                            gguf::ggml_type_name(t.type_id)
                        ),
                    ))
                }
                Some(hf) => {
                    names.insert(hf, name.clone());
                }
            }
        }
        let permuted_head_dim = (config.arch == ferrite_format::Arch::Llama as u32).then_some(config.head_dim as usize);
        Ok(Source::Gguf { file, names, permuted_head_dim })
    }

    /// `(HF name, row-major shape)` of every tensor the source offers.
    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Source::Hf(c) => c.tensors().iter().map(|(n, l)| (n.clone(), l.shape.clone())).collect(),
            Source::Gguf { file, names, .. } => {
                names.iter().map(|(hf, g)| (hf.clone(), file.tensors[g].shape())).collect()
            }
        }
    }

    /// How messages name tensor `name`: the GGUF name with the HF one.
    fn display_name(&self, name: &str) -> String {
        match self {
            Source::Hf(_) => name.to_string(),
            Source::Gguf { names, .. } => match names.get(name) {
                Some(g) => format!("{g} ({name})"),
                None => name.to_string(),
            },
        }
    }

    fn path_of(&self, name: &str) -> &Path {
        match self {
            Source::Hf(c) => c.tensors().get(name).map_or(Path::new(""), |l| c.path_of(l)),
            Source::Gguf { file, .. } => file.path(),
        }
    }

    /// Bytes the source stores for `elems` elements of tensor `name`.
    fn source_bytes(&self, name: &str, elems: u64) -> u64 {
        match self {
            Source::Hf(c) => c.tensors().get(name).map_or(0, |l| elems * l.dtype.size() as u64),
            Source::Gguf { file, names, .. } => {
                let ty = names.get(name).and_then(|g| file.tensors[g].ty);
                ty.map_or(0, |t| {
                    let (block, bytes) = t.block();
                    elems / block * bytes
                })
            }
        }
    }

    /// Elements `[first, first + count)` (whole rows of `cols`) of tensor
    /// `name` in HF's layout, as f32.
    fn read_f32(
        &self,
        name: &str,
        cols: usize,
        first: usize,
        count: usize,
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        match self {
            Source::Hf(c) => {
                let loc = c
                    .tensors()
                    .get(name)
                    .ok_or_else(|| Error::new(ErrorKind::Tensor, format!("the checkpoint has no tensor {name}")))?;
                c.read_f32(name, loc, first, count, scratch, out)
            }
            Source::Gguf { file, names, permuted_head_dim } => {
                let g = names
                    .get(name)
                    .ok_or_else(|| Error::new(ErrorKind::Tensor, format!("the GGUF file has no tensor for {name}")))?;
                let permuted = name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.k_proj.weight");
                match permuted_head_dim.filter(|_| permuted) {
                    None => file.read_f32(g, first, count, scratch, out),
                    Some(head_dim) => {
                        out.clear();
                        let mut row = Vec::with_capacity(cols);
                        for r in first / cols..(first + count) / cols {
                            let src = gguf::permuted_row(r, head_dim);
                            file.read_f32(g, src * cols, cols, scratch, &mut row)?;
                            out.extend_from_slice(&row);
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

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

/// Converts the HF folder or GGUF file `input` into the Ferrite file
/// `output`. A GGUF file (`llama` or `qwen2`; F32, F16, BF16, Q8_0, Q4_0,
/// Q4_1 tensors) goes through the same pipeline as an HF folder: its
/// metadata gives the config and tokenizer, its tensors are dequantized to
/// f32 and stored as `opts` asks.
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
    let gguf_file = if is_gguf(input) { Some(GgufFile::open(input)?) } else { None };
    let (hf, tokenizer) = match &gguf_file {
        Some(g) => (gguf::read_config(g)?, gguf::read_tokenizer(g)?),
        None => (hf_config::read(input)?, hf_tokenizer::read(input)?),
    };
    let mut config = hf.config;
    // Files named in messages about the config and the tokenizer.
    let (config_path, tokenizer_path) = match &gguf_file {
        Some(_) => (input.to_path_buf(), input.to_path_buf()),
        None => (input.join("config.json"), input.join("tokenizer.json")),
    };

    // Stop ids: the configs' EOS ids, then the tokenizer's end-of-turn token.
    let mut stops = hf.eos_ids.clone();
    let mut section = None;
    match &tokenizer {
        None => summary.warnings.push(format!(
            "{}: no tokenizer{}: the file will have no tokenizer (prompts must be given as token ids)",
            input.display(),
            if gguf_file.is_some() { " metadata" } else { ".json" }
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
                .section_bytes()
                .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("{}: {e}", tokenizer_path.display())))?;
            if t.builder.tokens.len() as u64 > config.vocab_size as u64 {
                return Err(Error::new(
                    ErrorKind::Tokenizer,
                    format!(
                        "{}: {} tokens but the model's vocab_size is {}",
                        tokenizer_path.display(),
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
    config.validate().map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", config_path.display())))?;

    let ckpt = match gguf_file {
        Some(g) => Source::open_gguf(g, &config, &mut summary.warnings)?,
        None => {
            let c = Checkpoint::open(input)?;
            for (name, path, dtype) in c.skipped() {
                summary.warnings.push(format!("{}: ignoring unknown tensor {name} (dtype {dtype})", path.display()));
            }
            Source::Hf(c)
        }
    };

    // Match tensors to roles and check shapes.
    let mut plan: BTreeMap<Role, String> = BTreeMap::new();
    for (name, shape) in ckpt.tensors() {
        let name = &name;
        let Some(role) = role_of(name) else {
            summary.warnings.push(format!("{}: ignoring unknown tensor {name}", ckpt.path_of(name).display()));
            continue;
        };
        if let Role::Layer(l, _) = role {
            if l >= config.n_layers {
                return Err(Error::new(
                    ErrorKind::Tensor,
                    format!(
                        "{}: tensor {name} is for layer {l} but the config has {} layers",
                        ckpt.path_of(name).display(),
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
                format!("{}: unexpected tensor {name} for this architecture", ckpt.path_of(name).display()),
            ));
        }
        let [rows, cols] = role.expected_shape(&config);
        let want: Vec<usize> = if role.is_vector() { vec![rows as usize] } else { vec![rows as usize, cols as usize] };
        if shape != want {
            return Err(Error::new(
                ErrorKind::Tensor,
                format!(
                    "{}: tensor {} has shape {:?}, the config implies {:?}",
                    ckpt.path_of(name).display(),
                    ckpt.display_name(name),
                    shape,
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
                format!("{}: the checkpoint has no tensor {} (required by the config)", input.display(), hf_name(role)),
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

    let total_bytes: u64 =
        specs.iter().map(|s| ckpt.source_bytes(&plan[&s.role], s.shape[0] as u64 * s.shape[1] as u64)).sum();
    progress(Progress::Start { tensors: specs.len(), bytes: total_bytes });

    let mut scratch = Vec::new();
    let mut values = Vec::new();
    let mut back = Vec::new();
    let mut qbuf = Vec::new();
    let mut scales: Vec<f16> = Vec::new();
    let mut slab_scales: Vec<f16> = Vec::new();
    let mut tbuf = Vec::new();
    let mut mins: Vec<f16> = Vec::new();
    let mut slab_mins: Vec<f16> = Vec::new();
    while let Some(spec) = writer.next_spec() {
        let name = &plan[&spec.role];
        progress(Progress::Tensor { name, role: spec.role });
        let [rows, cols] = [spec.shape[0] as usize, spec.shape[1] as usize];
        // Whole row blocks per slab, so quantized slabs tile independently.
        let rows_per_slab = (SLAB_ELEMS / cols / quant::ROW_BLOCK).max(1) * quant::ROW_BLOCK;
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
            ckpt.read_f32(name, cols, row * cols, n_rows * cols, &mut scratch, &mut values)?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                let at = row * cols + i;
                if !opts.allow_nonfinite {
                    return Err(Error::new(
                        ErrorKind::NonFinite,
                        format!(
                            "{}: tensor {name} holds {} at element {at} (row {}, column {}); \
                             --allow-nonfinite converts it anyway",
                            ckpt.path_of(name).display(),
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
                                ckpt.path_of(name).display(),
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
                    slab_scales.clear();
                    slab_scales.resize(n_rows * groups, f16::ZERO);
                    slab_mins.clear();
                    slab_mins.resize(n_rows * groups, f16::ZERO);
                    for r in 0..n_rows {
                        let src = &values[r * cols..(r + 1) * cols];
                        let qs = &mut qbuf[r * row_q..(r + 1) * row_q];
                        let sc = &mut slab_scales[r * groups..(r + 1) * groups];
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
                                let mn = &mut slab_mins[r * groups..(r + 1) * groups];
                                reference::quantize_row_q4a(src, qs, sc, mn);
                                reference::dequantize_row_q4a(qs, sc, mn, dst);
                            }
                        }
                    }
                    let bad = |v: &[f16]| v.iter().position(|s| !s.is_finite());
                    if let Some(i) = bad(&slab_scales).or(bad(&slab_mins)) {
                        return Err(Error::new(
                            ErrorKind::NonFinite,
                            format!(
                                "{}: tensor {name}: row {} group {} scale or minimum overflows f16",
                                ckpt.path_of(name).display(),
                                row + i / groups,
                                i % groups
                            ),
                        ));
                    }
                    // On disk: tiles of 8 rows (format/src/quant.rs).
                    let padded = quant::padded_rows(n_rows);
                    tbuf.clear();
                    tbuf.resize(padded * row_q, 0);
                    let first_scale = scales.len();
                    scales.resize(first_scale + padded * groups, f16::ZERO);
                    quant::tile_rows(
                        spec.dtype,
                        &qbuf,
                        &slab_scales,
                        n_rows,
                        groups,
                        &mut tbuf,
                        &mut scales[first_scale..],
                    );
                    if spec.dtype == DType::Q4A {
                        // The minimums tile like the scales (the quants
                        // written by this call are the same again).
                        mins.resize(first_scale + padded * groups, f16::ZERO);
                        quant::tile_rows(
                            spec.dtype,
                            &qbuf,
                            &slab_mins,
                            n_rows,
                            groups,
                            &mut tbuf,
                            &mut mins[first_scale..],
                        );
                    }
                    writer.write_chunk(&tbuf).map_err(out_err)?;
                }
            }
            for (x, y) in values.iter().zip(&back).filter(|(x, _)| x.is_finite()) {
                let (x, y) = (*x as f64, *y as f64);
                stats.sum_sq_err += (x - y) * (x - y);
                stats.sum_sq += x * x;
            }
            progress(Progress::Advance(ckpt.source_bytes(name, (n_rows * cols) as u64)));
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
                ckpt.path_of(name).display(),
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
