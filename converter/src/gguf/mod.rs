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
//!
//! The module's files: this one holds the file's types and metadata
//! look-ups; `reader.rs` parses and validates the header and reads tensor
//! data; `model.rs` turns the metadata into a model record and GGUF
//! tensor names into HF ones; `tokenizer.rs` builds the tokenizer.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

mod model;
mod reader;
mod tokenizer;

pub use model::{hf_tensor_name, permuted_row, read_config};
pub(crate) use reader::{dequantize, k_levels, k_scale_min};
pub use tokenizer::read_tokenizer;

/// The file's first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";

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

/// The ggml tensor types the converter reads (named as llama.cpp names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
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
    /// Blocks of 32: f16 scale, 32 high bits, 16 bytes of low 4 bits;
    /// levels 0..=31, offset −16.
    Q5_0,
    /// Blocks of 32: f16 scale, f16 minimum, 32 high bits, 16 bytes of low
    /// 4 bits.
    Q5_1,
    /// Super-blocks of 256: f16 d and dmin, 12 bytes of 6-bit scales and
    /// minimums of 8 sub-blocks of 32, 128 bytes of 4-bit levels.
    Q4_K,
    /// As Q4_K, with 32 bytes of high bits before the low 4 bits.
    Q5_K,
    /// Super-blocks of 256: 128 bytes of low 4 bits, 64 of high 2 bits, 16
    /// int8 scales of sub-blocks of 16, f16 d; levels offset −32.
    Q6_K,
}

impl GgmlType {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
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
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
        }
    }
    /// The Ferrite type that stores this type's values exactly (a Q8_0
    /// block holding −128 is the one exception: it is requantized).
    pub fn lossless_dtype(self) -> ferrite_format::DType {
        use ferrite_format::DType;
        match self {
            Self::F32 | Self::BF16 => DType::F32,
            Self::F16 => DType::F16,
            Self::Q8_0 => DType::Q8,
            Self::Q4_0 => DType::Q4,
            Self::Q4_1 => DType::Q4A,
            Self::Q5_0 => DType::Q5_0,
            Self::Q5_1 => DType::Q5_1,
            Self::Q4_K => DType::Q4K,
            Self::Q5_K => DType::Q5K,
            Self::Q6_K => DType::Q6K,
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
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }
}

/// Name of a ggml type number, for messages (`"Q4_K (type 12)"`).
pub fn ggml_type_name(v: u32) -> String {
    let known = [
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
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
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
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

impl GgufFile {
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
}
