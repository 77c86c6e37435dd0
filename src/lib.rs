//! Ferrite: an edge LLM inference runtime.
//!
//! This facade re-exports the workspace crates; the `ferrite` binary
//! (feature `cli`) is the command-line tool, and the `ffi` module (feature `ffi`) is
//! the C API of `libferrite.a` and `include/ferrite.h`.

#[cfg(feature = "cli")]
pub use ferrite_converter as converter;
pub use ferrite_format as format;
pub use ferrite_kernels as kernels;
pub use ferrite_runtime as runtime;
#[cfg(feature = "ffi")]
pub mod ffi;
