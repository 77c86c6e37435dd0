//! Ferrite's numeric kernels.
//!
//! [`reference`] is the scalar definition of every operation: always
//! compiled, simple, and the yardstick every fast kernel is tested against.
//! Hand-tuned versions live under `kernels/avx2/`, `kernels/neon/` and
//! `kernels/cuda/` and are chosen once at run time.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod reference;
