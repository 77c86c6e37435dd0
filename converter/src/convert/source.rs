//! Where the tensors come from: an HF safetensors checkpoint or a GGUF
//! file, behind one interface that gives HF names, row-major shapes and
//! f32 slabs.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_format::ModelConfig;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::gguf::{self, GgufFile};

/// Whether `input` is a GGUF file (a file, not a folder, starting with
/// `GGUF`); anything else is taken for an HF folder.
pub(super) fn is_gguf(input: &Path) -> bool {
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
pub(super) enum Source {
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
    /// The tensors of `input`: the GGUF file `gguf` when it is one (already
    /// opened; its names mapped for `config`), else the HF checkpoint in the
    /// folder. Tensors that are not read are reported in `warnings`.
    pub(super) fn open(
        input: &Path,
        gguf: Option<GgufFile>,
        config: &ModelConfig,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        match gguf {
            Some(g) => Source::open_gguf(g, config, warnings),
            None => {
                let c = Checkpoint::open(input)?;
                for (name, path, dtype) in c.skipped() {
                    warnings.push(format!("{}: ignoring unknown tensor {name} (dtype {dtype})", path.display()));
                }
                Ok(Source::Hf(c))
            }
        }
    }

    fn open_gguf(file: GgufFile, config: &ModelConfig, warnings: &mut Vec<String>) -> Result<Self> {
        let mut names = BTreeMap::new();
        for (name, t) in &file.tensors {
            match gguf::hf_tensor_name(name) {
                None => warnings.push(format!("{}: ignoring unknown tensor {name}", file.path().display())),
                Some(_) if t.ty.is_none() => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{}: tensor {name} has ggml type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, \
                             Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
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
    pub(super) fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Source::Hf(c) => c.tensors().iter().map(|(n, l)| (n.clone(), l.shape.clone())).collect(),
            Source::Gguf { file, names, .. } => {
                names.iter().map(|(hf, g)| (hf.clone(), file.tensors[g].shape())).collect()
            }
        }
    }

    /// How messages name tensor `name`: the GGUF name with the HF one.
    pub(super) fn display_name(&self, name: &str) -> String {
        match self {
            Source::Hf(_) => name.to_string(),
            Source::Gguf { names, .. } => match names.get(name) {
                Some(g) => format!("{g} ({name})"),
                None => name.to_string(),
            },
        }
    }

    pub(super) fn path_of(&self, name: &str) -> &Path {
        match self {
            Source::Hf(c) => c.tensors().get(name).map_or(Path::new(""), |l| c.path_of(l)),
            Source::Gguf { file, .. } => file.path(),
        }
    }

    /// Bytes the source stores for `elems` elements of tensor `name`.
    pub(super) fn source_bytes(&self, name: &str, elems: u64) -> u64 {
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

    /// The Ferrite type that holds tensor `name` exactly, for a GGUF
    /// source (`None` for HF folders).
    pub(super) fn lossless_dtype(&self, name: &str) -> Option<ferrite_format::DType> {
        match self {
            Source::Hf(_) => None,
            Source::Gguf { file, names, .. } => Some(file.tensors[names.get(name)?].ty?.lossless_dtype()),
        }
    }

    /// The GGUF type of tensor `name` (`None` for HF folders).
    pub(super) fn gguf_type(&self, name: &str) -> Option<gguf::GgmlType> {
        match self {
            Source::Hf(_) => None,
            Source::Gguf { file, names, .. } => file.tensors[names.get(name)?].ty,
        }
    }

    /// Rows `[first, first + n)` of GGUF tensor `name` in HF's row order
    /// (llama.cpp's Q/K permutation undone), as the file stores them.
    pub(super) fn read_raw_rows(&self, name: &str, first: usize, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let (file, g, permuted) = self.gguf_tensor(name)?;
        match permuted {
            None => file.read_raw_rows(g, first, n, out),
            Some(head_dim) => {
                out.clear();
                let mut row = Vec::new();
                for r in first..first + n {
                    file.read_raw_rows(g, gguf::permuted_row(r, head_dim), 1, &mut row)?;
                    out.extend_from_slice(&row);
                }
                Ok(())
            }
        }
    }

    /// GGUF tensor `name`: the file, its GGUF name and, when llama.cpp
    /// permuted its rows (Q and K of `llama`), the head dimension.
    fn gguf_tensor(&self, name: &str) -> Result<(&GgufFile, &str, Option<usize>)> {
        let Source::Gguf { file, names, permuted_head_dim } = self else {
            return Err(Error::new(ErrorKind::Tensor, format!("{name}: not a GGUF tensor")));
        };
        let g = names
            .get(name)
            .ok_or_else(|| Error::new(ErrorKind::Tensor, format!("the GGUF file has no tensor for {name}")))?;
        let permuted = name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.k_proj.weight");
        Ok((file, g, permuted_head_dim.filter(|_| permuted)))
    }

    /// Elements `[first, first + count)` (whole rows of `cols`) of tensor
    /// `name` in HF's layout, as f32.
    pub(super) fn read_f32(
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
            Source::Gguf { .. } => {
                let (file, g, permuted) = self.gguf_tensor(name)?;
                match permuted {
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
