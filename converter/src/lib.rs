//! Converts Hugging Face safetensors checkpoints (Llama, Mistral, Qwen2;
//! f32/f16/bf16; single-file or sharded) into Ferrite files, quantizing
//! tensor by tensor with bounded memory.
//!
//! ```no_run
//! use ferrite_converter::{convert, Options};
//! use ferrite_format::DType;
//! let opts = Options { weights: DType::Q4, embed: None };
//! let summary = convert(
//!     "SmolLM2-135M".as_ref(),
//!     "smollm2.frt".as_ref(),
//!     &opts,
//!     &mut |_progress| {},
//! )?;
//! println!("{} bytes", summary.file_bytes);
//! # Ok::<(), ferrite_converter::Error>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod checkpoint;
mod convert;
mod error;
pub mod hf_config;
pub mod hf_tokenizer;

pub use convert::{convert, hf_name, role_of, temp_prefix, Options, Progress, Summary, TypeStats, TEMP_SUFFIX};
pub use error::{Error, ErrorKind, Result};
