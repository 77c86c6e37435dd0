//! Ferrite: an edge LLM inference runtime.
//!
//! This facade re-exports the workspace crates; the `ferrite` binary
//! (feature `cli`) is the command-line tool.
#![deny(missing_docs)]

pub use ferrite_format as format;
pub use ferrite_kernels as kernels;
pub use ferrite_runtime as runtime;
#[cfg(feature = "cli")]
pub use ferrite_converter as converter;
