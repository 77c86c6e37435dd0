//! Ferrite's inference runtime: runs a Ferrite file from a caller-provided
//! arena without allocating. (The forward pass lands with issue #3.)
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

pub use ferrite_format as format;
pub use ferrite_kernels as kernels;
