//! Safetensors checkpoints, single-file or sharded with an index.
//!
//! Headers are parsed with the `safetensors` crate over a memory map (only
//! the header pages are touched); tensor data is read with positioned reads
//! into a caller's reusable buffer, so converting never holds more than one
//! slab of one tensor in memory and mapped pages never pile up in RSS.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::hf_config::read_json;

/// Element types the converter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDType {
    /// float32
    F32,
    /// float16
    F16,
    /// bfloat16
    BF16,
}

impl SourceDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDType::F32 => 4,
            _ => 2,
        }
    }
}

struct Shard {
    path: PathBuf,
    file: File,
    data_start: u64,
    metadata: Metadata,
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorLoc {
    shard: usize,
    /// Element type.
    pub dtype: SourceDType,
    /// Shape as stored.
    pub shape: Vec<usize>,
    start: u64,
    len: u64,
}

/// An opened checkpoint.
pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorLoc>,
    /// Unused tensors of a type the converter does not read: (name, shard, dtype).
    skipped: Vec<(String, usize, String)>,
}

fn ckpt_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Checkpoint, format!("{}: {what}", path.display()))
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and only used for the duration of header
    // parsing below; if another process truncates the file meanwhile, reads
    // could fault, which is the documented hazard of mapping files we accept
    // for checkpoint inputs (the same as every mmap-based loader).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
        let why = match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                format!(
                    "truncated (or has trailing bytes): its header's tensors do not end at the file's end ({} bytes)",
                    map.len()
                )
            }
            other => format!("invalid safetensors file: {other}"),
        };
        ckpt_err(path, why)
    })?;
    Ok(Shard { path: path.to_path_buf(), file, data_start: 8 + header_len as u64, metadata })
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut shards = Vec::new();
        let mut expected: Option<HashMap<String, String>> = None;
        if index_path.exists() {
            let index =
                read_json(&index_path).map_err(|e| Error::new(ErrorKind::Checkpoint, e.message().to_string()))?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ckpt_err(&index_path, "key `weight_map` is missing or not an object"))?;
            let mut files: Vec<String> = Vec::new();
            let mut names = HashMap::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| ckpt_err(&index_path, format!("weight_map entry {name:?} is not a file name")))?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(ckpt_err(&index_path, format!("shard name {file:?} must be a plain file name")));
                }
                if !files.iter().any(|f| f == file) {
                    files.push(file.to_string());
                }
                names.insert(name.clone(), file.to_string());
            }
            files.sort();
            for f in &files {
                let p = dir.join(f);
                if !p.exists() {
                    // Name a tensor placed there too (the first by name).
                    let mut placed: Vec<&String> =
                        names.iter().filter(|(_, file)| *file == f).map(|(n, _)| n).collect();
                    placed.sort();
                    let tensor = placed.first().map(|n| format!(" (for tensor {n})")).unwrap_or_default();
                    return Err(ckpt_err(
                        &index_path,
                        format!("names shard {f}{tensor}, which does not exist ({})", p.display()),
                    ));
                }
                shards.push(open_shard(&p)?);
            }
            expected = Some(names);
        } else if single.exists() {
            shards.push(open_shard(&single)?);
        } else {
            return Err(Error::new(
                ErrorKind::Checkpoint,
                format!("{}: no model.safetensors or model.safetensors.index.json in this folder", dir.display()),
            ));
        }

        let mut tensors = BTreeMap::new();
        let mut skipped = Vec::new();
        for (si, shard) in shards.iter().enumerate() {
            let file_len = shard.file.metadata().map_err(|e| Error::io(&shard.path, e))?.len();
            for (name, info) in shard.metadata.tensors() {
                let TensorInfo { dtype, shape, data_offsets } = info;
                let dtype = match dtype {
                    Dtype::F32 => Some(SourceDType::F32),
                    Dtype::F16 => Some(SourceDType::F16),
                    Dtype::BF16 => Some(SourceDType::BF16),
                    // A tensor Ferrite does not use may have any type: it is skipped.
                    other if crate::role_of(&name).is_none() => {
                        skipped.push((name.clone(), si, format!("{other:?}")));
                        None
                    }
                    other => {
                        return Err(Error::new(
                            ErrorKind::Tensor,
                            format!(
                                "{}: tensor {name} has dtype {other:?} (supported: F32, F16, BF16)",
                                shard.path.display()
                            ),
                        ))
                    }
                };
                let start = shard.data_start + data_offsets.0 as u64;
                let len = (data_offsets.1 - data_offsets.0) as u64;
                if start + len > file_len {
                    return Err(ckpt_err(
                        &shard.path,
                        format!("tensor {name} runs past the end of the file (truncated?)"),
                    ));
                }
                if let Some(map) = &expected {
                    let want = map.get(&name).map(String::as_str);
                    let have = shard.path.file_name().and_then(|f| f.to_str());
                    if want != have {
                        return Err(ckpt_err(
                            &shard.path,
                            format!("holds tensor {name}, which the index places in {}", want.unwrap_or("no shard")),
                        ));
                    }
                }
                let Some(dtype) = dtype else { continue };
                let loc = TensorLoc { shard: si, dtype, shape: shape.clone(), start, len };
                if tensors.insert(name.clone(), loc).is_some() {
                    return Err(ckpt_err(&shard.path, format!("tensor {name} appears in two shards")));
                }
            }
        }
        if let Some(map) = &expected {
            let in_a_shard = |n: &String| tensors.contains_key(n) || skipped.iter().any(|(s, ..)| s == n);
            if let Some(missing) = map.keys().find(|n| !in_a_shard(n)) {
                return Err(ckpt_err(&index_path, format!("lists tensor {missing}, which is in no shard")));
            }
        }
        Ok(Checkpoint { shards, tensors, skipped })
    }

    /// Tensors whose names Ferrite does not use and whose type the converter
    /// does not read (e.g. an I64 buffer), skipped: `(name, file, dtype)`.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &Path, &str)> + '_ {
        self.skipped.iter().map(|(n, s, d)| (n.as_str(), self.shards[*s].path.as_path(), d.as_str()))
    }

    /// Tensor names and locations, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorLoc> {
        &self.tensors
    }

    /// The file holding a tensor.
    pub fn path_of(&self, loc: &TensorLoc) -> &Path {
        &self.shards[loc.shard].path
    }

    /// Reads elements `[first, first + count)` of a tensor (row-major) as
    /// f32 into `out` (cleared first), using `scratch` for the raw bytes.
    pub fn read_f32(
        &self,
        name: &str,
        loc: &TensorLoc,
        first: usize,
        count: usize,
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let size = loc.dtype.size();
        let shard = &self.shards[loc.shard];
        let offset = (first * size) as u64;
        let bytes = (count * size) as u64;
        if offset + bytes > loc.len {
            return Err(ckpt_err(&shard.path, format!("tensor {name}: read past its data")));
        }
        scratch.clear();
        scratch.resize(bytes as usize, 0);
        shard
            .file
            .read_exact_at(scratch, loc.start + offset)
            .map_err(|e| ckpt_err(&shard.path, format!("reading tensor {name}: {e}")))?;
        out.clear();
        out.reserve(count);
        match loc.dtype {
            SourceDType::F32 => {
                out.extend(scratch.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            }
            SourceDType::F16 => {
                out.extend(scratch.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            }
            SourceDType::BF16 => {
                out.extend(scratch.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            }
        }
        Ok(())
    }
}
