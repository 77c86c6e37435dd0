//! Ferrite's numeric kernels.
//!
//! [`reference`] is the scalar definition of every operation: always
//! compiled, simple, and the yardstick every fast kernel is tested against.
//! Hand-tuned versions live under `kernels/avx2/`, `kernels/neon/` and
//! `kernels/cuda/` and are chosen once at run time.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// Errors are values: no unwrap/expect/panic!/todo!/unimplemented!/unreachable!
// outside tests (checked by `scripts/lint.sh`). Indexing is allowed where
// sizes were validated.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::unreachable
    )
)]

pub mod reference;
