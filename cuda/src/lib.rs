//! Ferrite's CUDA backend: the whole forward pass of a Ferrite model on an
//! NVIDIA GPU, with Ferrite's own kernels (`kernels/cuda/*.cu`).
//!
//! - [`launch`]: the kernel table, argument packing and launch geometry
//!   (host-side, tested without a GPU against the `.cu` sources).
//! - [`plan`]: the device buffers of a session, sized up front.
//! - [`tiles`]: the q4/q8 tile indexing of the kernels, mirrored on the host
//!   and tested against the reference kernels.
//! - With feature `device`: [`Gpu`] (driver API through `cudarc`, `libcuda`
//!   loaded at run time, PTX built by `build.rs`), [`CudaModel`] (weights
//!   uploaded once, in the file's own layout) and [`CudaSession`] (prefill
//!   and decode on the device, logits copied to the host).
//!
//! A build with `device` runs on a machine without a GPU: [`Gpu::new`]
//! returns [`CudaError::NoDriver`] or [`CudaError::NoDevice`].

pub mod launch;
pub mod plan;
pub mod tiles;

#[cfg(feature = "device")]
mod device;
#[cfg(feature = "device")]
mod session;
#[cfg(feature = "device")]
pub use device::{Buf, CudaModel, DevActs, DevMatrix, Gpu, PTX};
#[cfg(feature = "device")]
pub use session::CudaSession;

pub use plan::{CudaConfig, DevicePlan};

/// Why the CUDA backend cannot do something.
#[derive(Debug)]
pub enum CudaError {
    /// No CUDA driver library (`libcuda`) could be loaded.
    NoDriver,
    /// The driver is there but sees no GPU.
    NoDevice,
    /// The GPU is older than compute capability 8.0.
    TooOld {
        /// Its name.
        name: String,
        /// Compute capability.
        major: i32,
        /// Compute capability.
        minor: i32,
    },
    /// A driver call failed.
    Driver {
        /// What was being done.
        what: String,
        /// The driver's message.
        message: String,
    },
    /// The model or session settings are outside what the kernels handle.
    Unsupported(String),
    /// A runtime-level error (bad token, full context, bad file...).
    Runtime(ferrite_runtime::Error),
}

impl core::fmt::Display for CudaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CudaError::NoDriver => {
                write!(f, "no CUDA driver: libcuda could not be loaded (no NVIDIA driver installed?)")
            }
            CudaError::NoDevice => write!(f, "no CUDA device: the driver sees no GPU"),
            CudaError::TooOld { name, major, minor } => {
                write!(f, "{name} has compute capability {major}.{minor}; Ferrite's CUDA kernels need 8.0 or newer")
            }
            CudaError::Driver { what, message } => write!(f, "CUDA driver error while {what}: {message}"),
            CudaError::Unsupported(why) => write!(f, "not supported on the CUDA backend: {why}"),
            CudaError::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<ferrite_runtime::Error> for CudaError {
    fn from(e: ferrite_runtime::Error) -> Self {
        CudaError::Runtime(e)
    }
}

impl From<ferrite_format::Error> for CudaError {
    fn from(e: ferrite_format::Error) -> Self {
        CudaError::Runtime(ferrite_runtime::Error::Format(e))
    }
}
