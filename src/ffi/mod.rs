//! The C API (feature `ffi`): the functions and types `include/ferrite.h`
//! declares, built into `libferrite.a` by
//! `cargo build --release --no-default-features --features ffi`.
//!
//! The header is written by hand and is the documentation C users read;
//! `tests/ffi.rs` checks it against this module (every function's prototype,
//! every constant, every struct's size and field offsets) by compiling a C
//! program.
//!
//! One file per handle — [`model`](FerriteModel), [`session`](FerriteSession),
//! [`sampler`](FerriteSampler) and the tokenizer functions — one for the
//! generation loop ([`ferrite_generate`]), and `boundary.rs`
//! for what they all share: the status codes and the last error message,
//! [`std::panic::catch_unwind`] around every body, the NULL, alignment and
//! length checks, and the conversion of the caller's pointers into
//! references, slices, output buffers and paths. Everything public is
//! re-exported here, so the C API is `ferrite::ffi::*`.
//!
//! # Rules at the boundary
//!
//! - Every function that can fail returns a [`FerriteStatus`] and writes
//!   its results through pointers. Only [`ferrite_version`],
//!   [`ferrite_status_string`] and [`ferrite_last_error_message`] return
//!   something else (a static or thread-local C string); none of them fails.
//! - No panic crosses the boundary: every body runs under
//!   [`std::panic::catch_unwind`], and a panic becomes
//!   [`FerriteStatus::PANIC`]. A session that panicked is poisoned: every
//!   later call on it but [`ferrite_session_free`] returns `PANIC` again.
//!   (The library must be built with `panic = "unwind"`, Rust's default.)
//! - NULL where a pointer is required, a misaligned pointer, an array longer
//!   than `isize::MAX` bytes, text that is not UTF-8, or an unknown enum
//!   value give [`FerriteStatus::INVALID_ARGUMENT`] (or `BAD_CONFIG` for a
//!   config field) before anything is done. The `*_free` functions accept
//!   NULL.
//! - Handles are `Box`es handed out as raw pointers. A model counts the
//!   sessions opened on it, and [`ferrite_model_free`] refuses
//!   ([`FerriteStatus::MODEL_IN_USE`]) while any is alive, so that mistake
//!   is an error instead of a use after free. Everything the type system
//!   cannot see (a caller buffer outliving the model or session that
//!   borrows it, no use after free, one thread per session at a time) is
//!   the caller's contract, written in the header and in each function's
//!   `# Safety` section.

mod boundary;
mod generate;
mod model;
mod sampler;
mod session;
mod tokenizer;

pub use boundary::{ferrite_last_error_message, ferrite_status_string, ferrite_version, FerriteStatus, STATUSES};
pub use generate::*;
pub use model::*;
pub use sampler::*;
pub use session::*;
pub use tokenizer::*;
