//! A validated model: the parsed file plus what the forward pass derives from it.

use ferrite_format::{DType, File, ModelConfig, Role, RopeScaling, TensorView};
use ferrite_kernels::reference::{Matrix, Weights};

use crate::{Error, Plan, SessionConfig};

/// A model borrowing the bytes of a Ferrite file. `Sync`: any number of
/// sessions may share one model.
pub struct Model<'a> {
    file: File<'a>,
    #[cfg(feature = "std")]
    _map: Option<memmap2::Mmap>,
}

impl<'a> Model<'a> {
    /// Parses and validates `bytes` (zero-copy). The buffer must start on a
    /// 64-byte boundary ([`ferrite_format::ALIGN`]).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        Ok(Model {
            file: File::parse(bytes)?,
            #[cfg(feature = "std")]
            _map: None,
        })
    }

    /// The parsed file.
    pub fn file(&self) -> File<'_> {
        self.file
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        self.file.config()
    }

    /// Plans a session: the exact arena size, known before running.
    pub fn plan(&self, cfg: &SessionConfig) -> Result<Plan, Error> {
        Plan::new(self.config(), cfg)
    }

    /// A weight matrix by role.
    pub(crate) fn matrix(&self, role: Role) -> Result<Matrix<'_>, Error> {
        let t = self.file().tensor(role)?;
        matrix_of(&t)
    }

    /// A 1-D f32 tensor (norm or bias) by role.
    pub(crate) fn vector(&self, role: Role) -> Result<&[f32], Error> {
        let t = self.file().tensor(role)?;
        t.as_f32().ok_or(Error::Format(ferrite_format::Error::BadDType { index: t.index, dtype: t.dtype as u32 }))
    }

    /// Fills `inv_freq` (`head_dim / 2` values) with the RoPE inverse
    /// frequencies, scaling applied, computed in f32 as transformers does.
    pub fn rope_inv_freq(&self, inv_freq: &mut [f32]) {
        let c = self.config();
        let dim = c.head_dim as f32;
        for (i, f) in inv_freq.iter_mut().enumerate() {
            let exponent = (2 * i) as f32 / dim;
            *f = 1.0 / libm::powf(c.rope_theta, exponent);
        }
        match c.rope_scaling() {
            Ok(RopeScaling::Linear) => {
                for f in inv_freq.iter_mut() {
                    *f /= c.rope_factor;
                }
            }
            Ok(RopeScaling::Llama3) => {
                let old_ctx = c.rope_original_ctx as f32;
                let low_wavelen = old_ctx / c.rope_low_freq_factor;
                let high_wavelen = old_ctx / c.rope_high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * core::f32::consts::PI / *f;
                    if wavelen < high_wavelen {
                        // High frequencies: unchanged.
                    } else if wavelen > low_wavelen {
                        *f /= c.rope_factor;
                    } else {
                        let smooth = (old_ctx / wavelen - c.rope_low_freq_factor)
                            / (c.rope_high_freq_factor - c.rope_low_freq_factor);
                        *f = (1.0 - smooth) * *f / c.rope_factor + smooth * *f;
                    }
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn matrix_of<'t>(t: &TensorView<'t>) -> Result<Matrix<'t>, Error> {
    let bad = || Error::Format(ferrite_format::Error::BadDType { index: t.index, dtype: t.dtype as u32 });
    let w = match t.dtype {
        DType::F32 => Weights::F32(t.as_f32().ok_or_else(bad)?),
        DType::F16 => Weights::F16(t.as_f16().ok_or_else(bad)?),
        DType::Q8 => {
            let (qs, scales) = t.quant_planes().ok_or_else(bad)?;
            Weights::Q8 { qs, scales }
        }
        DType::Q4 => {
            let (qs, scales) = t.quant_planes().ok_or_else(bad)?;
            Weights::Q4 { qs, scales }
        }
        DType::Q4A => {
            let (qs, scales) = t.quant_planes().ok_or_else(bad)?;
            Weights::Q4A { qs, scales, mins: t.mins().ok_or_else(bad)? }
        }
        DType::Q5_0 | DType::Q5_1 | DType::Q4K | DType::Q5K | DType::Q6K => {
            Weights::from_planes(t.dtype, t.planes().ok_or_else(bad)?).ok_or_else(bad)?
        }
    };
    // The reader checked every plane's size against the shape already.
    Matrix::new(w, t.rows as usize, t.cols as usize).map_err(|_| {
        Error::Format(ferrite_format::Error::BadShape {
            index: t.index,
            expected: [t.rows, t.cols],
            found: [t.rows, t.cols],
        })
    })
}

#[cfg(feature = "std")]
impl Model<'static> {
    /// Maps the file at `path` (read-only, zero-copy) and validates it.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only. Ferrite never modifies model files in
        // place (the converter writes a new file and renames it); another
        // process truncating the file while it is mapped is the inherent
        // hazard of every mmap-based loader, which we accept.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        // SAFETY: the slice points into the mapping, whose address stays
        // fixed while `map` lives; `map` is stored in the returned model and
        // dropped after `file` (field order), and the 'static lifetime never
        // escapes: `Model::file` hands out `File<'_>` bound to `&self`.
        let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let parsed =
            File::parse(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, Error::Format(e)))?;
        Ok(Model { file: parsed, _map: Some(map) })
    }
}

// Sessions on several threads share one model.
const _: () = {
    const fn assert_sync<T: Sync + Send>() {}
    assert_sync::<Model<'static>>();
};
