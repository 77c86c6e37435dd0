//! Converts Hugging Face safetensors checkpoints (Llama, Mistral, Qwen2;
//! f32/f16/bf16; single-file or sharded) into Ferrite files, quantizing
//! tensor by tensor with bounded memory.
//!
//! ```no_run
//! use ferrite_converter::{convert, Options};
//! use ferrite_format::DType;
//! let opts = Options { weights: DType::Q4, ..Default::default() };
//! let summary = convert(
//!     "SmolLM2-135M".as_ref(),
//!     "smollm2.frt".as_ref(),
//!     &opts,
//!     &mut |_progress| {},
//! )?;
//! println!("{} bytes", summary.file_bytes);
//! # Ok::<(), ferrite_converter::Error>(())
//! ```

pub mod checkpoint;
mod convert;
mod error;
pub mod gguf;
pub mod hf_config;
pub mod hf_tokenizer;

pub use convert::{
    convert, hf_name, role_of, temp_owner, temp_prefix, KeepTypes, Mix, Options, Progress, Summary, TempOwner,
    TensorType, TypeStats, TEMP_SUFFIX,
};
pub use error::{Error, ErrorKind, Result};
