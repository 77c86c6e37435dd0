//! Helpers shared by Ferrite's tests and benchmarks, and by nothing else:
//! every crate of the workspace lists it under `[dev-dependencies]` only.
//!
//! - [`rng`]: small seeded generators, so that a test draws the same cases
//!   on every run and every machine;
//! - [`alloc`]: a counting global allocator, for the tests that prove a
//!   session allocates nothing after `Session::new`;
//! - [`fixtures`]: where the fixtures and the fetched models are.
//!
//! It depends on no crate of the workspace, so that any of them may use it.
//! Test code: it panics (with a message) where a test should fail.

pub mod alloc;
pub mod fixtures;
pub mod rng;

/// Index of the largest value, the lowest index on ties (greedy decoding);
/// 0 for an empty slice.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
