//! A validated reader of llama.cpp's GGUF files (version 3, and 2 for the
//! metadata, which has the same layout), and what the converter takes from
//! them: the model record, the tokenizer and the tensors, dequantized to f32.
//!
//! Every count, length and offset in the file is checked before it is used
//! (against what is left of the file, with checked arithmetic), so a
//! truncated or corrupt file ends in an [`ErrorKind::Checkpoint`] error
//! naming the file and what was being read, never in a panic or a huge
//! allocation. Tensor data is read with positioned reads, one slab at a time.
//!
//! Layout (little-endian): `"GGUF"`, `u32` version, `u64` tensor count,
//! `u64` metadata count; the metadata as `(string key, u32 type, value)`;
//! the tensor infos as `(string name, u32 n_dims, u64 dims[n_dims] innermost
//! first, u32 ggml type, u64 offset)`; then, at the next multiple of
//! `general.alignment` (default 32), the data, each tensor at its offset.
//! A string is a `u64` length and that many bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferrite_format::tokenizer::{PreTokenizer, TokenType, TokenizerKind, NO_TOKEN};
use ferrite_format::writer::{TokenEntry, TokenizerBuilder};
use ferrite_format::{Arch, ModelConfig, RopeScaling, MAX_STOP_IDS};
use half::f16;

use crate::error::{Error, ErrorKind, Result};
use crate::hf_config::HfConfig;
use crate::hf_tokenizer::{byte_to_char_table, spm_merges_by_score, HfTokenizer};

/// The file's first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// Most bytes of metadata and tensor infos read (the tokenizer of a 256k
/// vocabulary with its merges takes about 10 MiB).
const MAX_HEADER_BYTES: u64 = 1 << 30;

/// Deepest nesting of arrays accepted in metadata.
const MAX_ARRAY_DEPTH: u32 = 3;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any of the integer types (u8 … i64), widened.
    Int(i128),
    /// f32 or f64, widened.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string's bytes (UTF-8 in well-formed files; not checked here).
    Str(Vec<u8>),
    /// An array (all elements of one type).
    Array(Vec<Value>),
}

impl Value {
    fn as_u32(&self) -> Option<u32> {
        match self {
            Value::Int(v) => u32::try_from(*v).ok(),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }
}

/// The ggml tensor types the converter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: f16 scale, 32 × i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 16 bytes of 4-bit values, offset −8.
    Q4_0,
    /// Blocks of 32: f16 scale, f16 minimum, 16 bytes of 4-bit values.
    Q4_1,
}

impl GgmlType {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }
    /// Elements per block and bytes per block.
    pub(crate) fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
        }
    }
    /// Its name in llama.cpp.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
        }
    }
}

/// Name of a ggml type number, for messages (`"Q4_K (type 12)"`).
pub fn ggml_type_name(v: u32) -> String {
    let known = [
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
    ];
    match GgmlType::from_u32(v) {
        Some(t) => t.name().to_string(),
        None => known.iter().find(|(n, _)| *n == v).map_or(format!("type {v}"), |(_, s)| format!("{s} (type {v})")),
    }
}

/// One tensor as the file describes it.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    /// Dimensions, innermost (the row length) first, as in the file.
    pub dims: Vec<u64>,
    /// The ggml type number.
    pub type_id: u32,
    /// The type, if the converter reads it.
    pub ty: Option<GgmlType>,
    /// Absolute file offset of its data (known types only: validated in bounds).
    pub start: u64,
}

impl GgufTensor {
    /// Shape in row-major order (outermost first), as HF writes it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    fn elems(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An opened GGUF file: its metadata and tensor infos (data stays on disk).
pub struct GgufFile {
    path: PathBuf,
    file: File,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, by name.
    pub tensors: BTreeMap<String, GgufTensor>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Checkpoint, format!("{}: {what}", path.display()))
}

/// A bounds-checked little-endian cursor over the header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// The file's full length (the header buffer may be shorter).
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.bytes.len() as u64).ok_or_else(|| {
            bad(
                self.path,
                format!(
                    "truncated GGUF: {what} at byte {} needs {n} bytes, the file has {} (or the header exceeds {} MiB)",
                    self.pos,
                    self.file_len,
                    MAX_HEADER_BYTES >> 20
                ),
            )
        })?;
        let s = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.u64(what)?;
        self.take(len, what)
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        let int = |b: &[u8], signed: bool| -> i128 {
            let mut a = [0u8; 16];
            a[..b.len()].copy_from_slice(b);
            if signed && b.last().is_some_and(|&x| x & 0x80 != 0) {
                for x in &mut a[b.len()..] {
                    *x = 0xff;
                }
            }
            i128::from_le_bytes(a)
        };
        Ok(match ty {
            0 | 1 => Value::Int(int(self.take(1, key)?, ty == 1)),
            2 | 3 => Value::Int(int(self.take(2, key)?, ty == 3)),
            4 | 5 => Value::Int(int(self.take(4, key)?, ty == 5)),
            10 | 11 => Value::Int(int(self.take(8, key)?, ty == 11)),
            6 => Value::Float(f32::from_bits(self.u32(key)?) as f64),
            12 => Value::Float(f64::from_bits(self.u64(key)?)),
            7 => match self.take(1, key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(bad(self.path, format!("metadata {key}: bool value {other} is not 0 or 1"))),
            },
            8 => Value::Str(self.string(key)?.to_vec()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad(self.path, format!("metadata {key}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(key)?;
                let len = self.u64(key)?;
                // Every element takes at least one byte: a count beyond what
                // is left is corrupt (and must not size an allocation).
                if len > self.remaining() {
                    return Err(bad(
                        self.path,
                        format!("truncated or corrupt GGUF: metadata {key} claims {len} array elements"),
                    ));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            other => return Err(bad(self.path, format!("metadata {key}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and validates `path`: magic, version, metadata, tensor infos,
    /// and that every tensor of a known type lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let head_len = file_len.min(MAX_HEADER_BYTES);
        let mut head = vec![0u8; head_len as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| Error::io(path, e))?;
        let mut c = Cursor { bytes: &head, pos: 0, path, file_len };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(bad(path, format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")));
        }
        let version = c.u32("version")?;
        if version != 3 && version != 2 {
            let hint = if version.swap_bytes() == 3 { " (a big-endian GGUF? only little-endian is read)" } else { "" };
            return Err(bad(path, format!("GGUF version {version} is not supported (only 2 and 3){hint}")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_kv > c.remaining() / 13 || n_tensors > c.remaining() / 24 {
            return Err(bad(
                path,
                format!("truncated or corrupt GGUF: {n_kv} metadata entries and {n_tensors} tensors cannot fit"),
            ));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string("metadata key")?;
            let key =
                String::from_utf8(key.to_vec()).map_err(|_| bad(path, format!("metadata key #{i} is not UTF-8")))?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(path, format!("metadata key {key} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u32() {
                Some(a) if a.is_power_of_two() => a as u64,
                _ => return Err(bad(path, format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = c.string("tensor name")?;
            let name =
                String::from_utf8(name.to_vec()).map_err(|_| bad(path, format!("tensor name #{i} is not UTF-8")))?;
            let n_dims = c.u32(&name)?;
            if !(1..=4).contains(&n_dims) {
                return Err(bad(path, format!("tensor {name}: {n_dims} dimensions (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            infos.push((name, dims, type_id, offset));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, type_id, offset) in infos {
            let elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let elems = elems
                .filter(|&e| e > 0)
                .ok_or_else(|| bad(path, format!("tensor {name}: dimensions {dims:?} are zero or overflow")))?;
            if offset % alignment != 0 {
                return Err(bad(path, format!("tensor {name}: offset {offset} is not a multiple of {alignment}")));
            }
            let ty = GgmlType::from_u32(type_id);
            let start =
                data_start.checked_add(offset).ok_or_else(|| bad(path, format!("tensor {name}: offset overflows")))?;
            if let Some(t) = ty {
                let (block, block_bytes) = t.block();
                if dims[0] % block != 0 {
                    return Err(bad(
                        path,
                        format!(
                            "tensor {name}: row length {} is not a multiple of {}'s block of {block}",
                            dims[0],
                            t.name()
                        ),
                    ));
                }
                let size = (elems / block).checked_mul(block_bytes);
                let end = size.and_then(|s| start.checked_add(s));
                match end {
                    Some(end) if end <= file_len => {}
                    _ => {
                        return Err(bad(
                            path,
                            format!(
                                "truncated GGUF: tensor {name} ({} {dims:?}) runs past the end of the file ({file_len} bytes)",
                                t.name()
                            ),
                        ))
                    }
                }
            }
            let tensor = GgufTensor { dims, type_id, ty, start };
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(bad(path, format!("tensor {name} appears twice")));
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), file, version, metadata, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn err(&self, what: impl std::fmt::Display) -> Error {
        bad(&self.path, what)
    }

    fn u32_key(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u32().map(Some).ok_or_else(|| {
                self.err(format!("metadata {key} must be a non-negative integer below 2^32, found {v:?}"))
            }),
        }
    }

    fn str_key(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(format!("metadata {key} must be a UTF-8 string"))),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.str_key("general.architecture")?.ok_or_else(|| self.err("metadata general.architecture is missing"))
    }

    /// Reads elements `[first, first + count)` of tensor `name` (row-major,
    /// rows of `dims[0]` elements; `first` and `count` whole rows) as f32
    /// into `out` (cleared first), dequantizing; `scratch` holds the raw
    /// bytes.
    pub fn read_f32(
        &self,
        name: &str,
        first: usize,
        count: usize,
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let t = self.tensors.get(name).ok_or_else(|| self.err(format!("no tensor {name}")))?;
        let ty =
            t.ty.ok_or_else(|| self.err(format!("tensor {name} has unsupported type {}", ggml_type_name(t.type_id))))?;
        let (block, block_bytes) = ty.block();
        let (first, count) = (first as u64, count as u64);
        if first % block != 0 || count % block != 0 || first + count > t.elems() {
            return Err(self.err(format!("tensor {name}: read of {count} elements at {first} is out of its bounds")));
        }
        let offset = first / block * block_bytes;
        let bytes = count / block * block_bytes;
        scratch.clear();
        scratch.resize(bytes as usize, 0);
        self.file
            .read_exact_at(scratch, t.start + offset)
            .map_err(|e| self.err(format!("reading tensor {name}: {e}")))?;
        out.clear();
        out.reserve(count as usize);
        dequantize(ty, scratch, out);
        Ok(())
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Appends the values of `raw` (whole blocks of `ty`) to `out`, as
/// llama.cpp's reference dequantization computes them in f32.
fn dequantize(ty: GgmlType, raw: &[u8], out: &mut Vec<f32>) {
    match ty {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = half_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = half_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
    }
}

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
    let mut config = ModelConfig {
        arch: arch as u32,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim,
        vocab_size,
        trained_ctx,
        rope_theta: rope_theta as f32,
        rope_scaling: RopeScaling::None as u32,
        rope_factor: 1.0,
        rope_low_freq_factor: 0.0,
        rope_high_freq_factor: 0.0,
        rope_original_ctx: 0,
        norm_eps: norm_eps as f32,
        activation: 0,
        flags: 0,
        bos_id: 0,
        sliding_window: 0,
        n_stop_ids: 0,
        stop_ids: [0; MAX_STOP_IDS],
        reserved: [0; 140],
    };
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

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
fn token_type(path: &Path, id: usize, v: &Value) -> Result<TokenType> {
    Ok(match v {
        Value::Int(1) | Value::Int(5) => TokenType::Normal, // normal, unused
        Value::Int(2) => TokenType::Unknown,
        Value::Int(3) => TokenType::Special, // control
        Value::Int(4) => TokenType::Added,   // user-defined
        Value::Int(6) => TokenType::Byte,
        other => return Err(bad(path, format!("tokenizer.ggml.token_type[{id}] = {other:?} is not a token type"))),
    })
}

/// The byte-level pre-tokenizer of a `tokenizer.ggml.pre` name.
fn pretokenizer_of(pre: &str) -> Option<PreTokenizer> {
    Some(match pre {
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => PreTokenizer::Gpt2,
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            PreTokenizer::Gpt2Digits
        }
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => PreTokenizer::Llama3,
        "qwen2" | "stablelm2" => PreTokenizer::Qwen2,
        _ => return None,
    })
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a [u8]>>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.as_slice()),
                _ => Err(g.err(format!("metadata {key} must be an array of strings"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(g.err(format!("metadata {key} must be an array"))),
    }
}

/// The tokenizer from `tokenizer.ggml.*` metadata and `tokenizer.chat_template`;
/// `Ok(None)` when the file has none.
pub fn read_tokenizer(g: &GgufFile) -> Result<Option<HfTokenizer>> {
    let tok_err = |what: String| Error::new(ErrorKind::Tokenizer, format!("{}: {what}", g.path.display()));
    let Some(model) = g.str_key("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    let strings =
        string_array(g, "tokenizer.ggml.tokens")?.ok_or_else(|| tok_err("tokenizer.ggml.tokens is missing".into()))?;
    let types: Vec<TokenType> = match g.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) if items.len() == strings.len() => {
            items.iter().enumerate().map(|(i, v)| token_type(&g.path, i, v)).collect::<Result<_>>()?
        }
        Some(_) => return Err(tok_err("tokenizer.ggml.token_type is not an array as long as the tokens".into())),
        None => vec![TokenType::Normal; strings.len()],
    };
    let scores: Option<Vec<f32>> = match g.get("tokenizer.ggml.scores") {
        Some(Value::Array(items)) if items.len() == strings.len() => Some(
            items
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| tok_err("tokenizer.ggml.scores holds a non-number or a non-finite value".into()))?,
        ),
        Some(_) => return Err(tok_err("tokenizer.ggml.scores is not an array as long as the tokens".into())),
        None => None,
    };
    let n = strings.len();
    let utf8 = |id: usize| std::str::from_utf8(strings[id]).map_err(|_| tok_err(format!("token {id} is not UTF-8")));
    let specials: Vec<u32> = (0..n)
        .filter(|&i| matches!(types[i], TokenType::Special | TokenType::Added | TokenType::Unknown))
        .filter(|&i| !strings[i].is_empty())
        .map(|i| i as u32)
        .collect();
    let mut tokens = Vec::with_capacity(n);
    let mut byte_tokens = [NO_TOKEN; 256];
    // llama.cpp skips merging a chunk that is a token for Llama 3's vocabulary.
    let mut ignore_merges = false;
    let (kind, pretokenizer, merges, ranks, byte_fallback, add_prefix_space) = match model {
        "gpt2" => {
            let pre = g.str_key("tokenizer.ggml.pre")?.unwrap_or("default");
            ignore_merges = matches!(pre, "llama-bpe" | "llama3");
            let pretokenizer = pretokenizer_of(pre).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: byte-level BPE pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not supported \
                         (supported: gpt-2, smollm, starcoder, refact, command-r, llama-bpe, dbrx, smaug-bpe, qwen2, stablelm2)",
                        g.path.display()
                    ),
                )
            })?;
            let char_to_byte: HashMap<char, u8> =
                byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
            let mut str_to_id: HashMap<&[u8], u32> = HashMap::with_capacity(n);
            for id in 0..n {
                let bytes = match types[id] {
                    // Added tokens are stored as their literal text.
                    TokenType::Special | TokenType::Added => strings[id].to_vec(),
                    _ => utf8(id)?
                        .chars()
                        .map(|c| char_to_byte.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| {
                            tok_err(format!(
                                "token {id} {:?} is not in the byte-level alphabet",
                                utf8(id).unwrap_or("")
                            ))
                        })?,
                };
                str_to_id.entry(strings[id]).or_insert(id as u32);
                tokens.push(TokenEntry { bytes, ty: types[id], score: scores.as_ref().map_or(0.0, |s| s[id]) });
            }
            let table = byte_to_char_table();
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let s = table[b].to_string();
                *slot = str_to_id.get(s.as_bytes()).copied().unwrap_or(NO_TOKEN);
            }
            let merge_strings = string_array(g, "tokenizer.ggml.merges")?
                .ok_or_else(|| tok_err("tokenizer.ggml.merges is missing".into()))?;
            let mut merges = Vec::with_capacity(merge_strings.len());
            for (i, m) in merge_strings.iter().enumerate() {
                let text = std::str::from_utf8(m).map_err(|_| tok_err(format!("merge #{i} is not UTF-8")))?;
                let (a, b) =
                    text.split_once(' ').ok_or_else(|| tok_err(format!("merge #{i} {text:?} has no space")))?;
                let id = |s: &str| {
                    str_to_id
                        .get(s.as_bytes())
                        .copied()
                        .ok_or_else(|| tok_err(format!("merge #{i} names unknown token {s:?}")))
                };
                merges.push((id(a)?, id(b)?));
            }
            (TokenizerKind::ByteLevelBpe, pretokenizer, merges, None, false, false)
        }
        "llama" => {
            for id in 0..n {
                let text = utf8(id)?;
                let bytes = match types[id] {
                    TokenType::Normal => text.replace('\u{2581}', " ").into_bytes(),
                    // llama.cpp writes user-defined tokens with spaces already.
                    _ => text.as_bytes().to_vec(),
                };
                if types[id] == TokenType::Byte {
                    let b = ferrite_format::tokenizer::parse_byte_token(text.as_bytes())
                        .ok_or_else(|| tok_err(format!("byte token {id} {text:?} is not <0xHH>")))?;
                    byte_tokens[b as usize] = id as u32;
                }
                tokens.push(TokenEntry { bytes, ty: types[id], score: scores.as_ref().map_or(0.0, |s| s[id]) });
            }
            if scores.is_none() {
                return Err(tok_err("a SentencePiece vocabulary (tokenizer.ggml.model = llama) without scores".into()));
            }
            let (merges, ranks) = spm_merges_by_score(&tokens);
            let add_prefix_space = match g.get("tokenizer.ggml.add_space_prefix") {
                None => true,
                Some(v) => {
                    v.as_bool().ok_or_else(|| tok_err("tokenizer.ggml.add_space_prefix is not a bool".into()))?
                }
            };
            let byte_fallback = byte_tokens.iter().any(|&t| t != NO_TOKEN);
            (TokenizerKind::SentencePiece, PreTokenizer::None, merges, Some(ranks), byte_fallback, add_prefix_space)
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: tokenizer model `{other}` (tokenizer.ggml.model) is not supported (supported: gpt2, llama)",
                    g.path.display()
                ),
            ))
        }
    };
    let id_key = |k: &str| -> Result<Option<u32>> { Ok(g.u32_key(k)?.filter(|&id| (id as usize) < n)) };
    let eos = id_key("tokenizer.ggml.eot_token_id")?.or(id_key("tokenizer.ggml.eos_token_id")?);
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    // Byte-level BPE: llama.cpp's converter writes `unknown_token_id` from
    // the special-tokens map even when the BPE model has no `unk_token`
    // (SmolLM2); HF then drops a byte the vocabulary lacks, which is what no
    // unknown token means here. SentencePiece keeps it.
    let unk = match kind {
        TokenizerKind::SentencePiece => id_key("tokenizer.ggml.unknown_token_id")?,
        TokenizerKind::ByteLevelBpe => None,
    };
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        Some(v) => Some(v.as_bool().ok_or_else(|| tok_err("tokenizer.ggml.add_bos_token is not a bool".into()))?),
        // llama.cpp's defaults: SentencePiece adds BOS, byte-level BPE does not.
        None => Some(kind == TokenizerKind::SentencePiece),
    };
    let chat_template = g.str_key("tokenizer.chat_template")?.map(str::to_string);
    Ok(Some(HfTokenizer {
        builder: TokenizerBuilder {
            kind,
            pretokenizer,
            tokens,
            merges,
            byte_tokens,
            specials,
            chat_template,
            eot: eos,
            unk,
            has_scores: scores.is_some(),
            byte_fallback,
            add_prefix_space,
            ignore_merges,
        },
        merge_ranks: ranks,
        add_bos,
        eos,
        bos,
    }))
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
