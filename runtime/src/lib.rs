//! Ferrite's inference runtime: runs a Ferrite file from a caller-provided
//! arena without allocating.
#![cfg_attr(not(feature = "std"), no_std)]

pub use ferrite_format as format;
pub use ferrite_kernels as kernels;

pub mod backend;
mod error;
pub mod eval;
pub mod generate;
mod kv;
mod model;
mod parallel;
#[cfg(feature = "std")]
mod pool;
pub mod sampler;
mod session;
pub mod tokenizer;

pub use backend::Backend;
pub use error::Error;
pub use kv::KvType;
pub use model::Model;
pub use session::{Plan, PlanParts, Session, SessionConfig};
