//! Helpers shared by Ferrite's tests and benchmarks, and by nothing else:
//! every crate of the workspace lists it under `[dev-dependencies]` only.
//!
//! - [`rng`]: small seeded generators, so that a test draws the same cases
//!   on every run and every machine;
//! - [`alloc`]: a counting global allocator, for the tests that prove a
//!   session allocates nothing after `Session::new`;
//! - [`fixtures`]: where the fixtures and the fetched models are;
//! - [`convert`] (feature `convert`): a fixture converted to `.frt` in memory;
//! - [`quant`] (feature `quant`): q4/q8 matrices in the file's tiled layout.
//!
//! Without its `convert` and `quant` features it depends on no crate of the
//! workspace, so that any of them may use it.
//! Test code: it panics (with a message) where a test should fail.

pub mod alloc;
#[cfg(feature = "convert")]
pub mod convert;
pub mod fixtures;
#[cfg(feature = "quant")]
pub mod quant;
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

/// Greedy decoding: `n` ids, the first `first` (the argmax of the prompt's
/// logits), each later one `next(previous)` (a step's argmax). `next` runs
/// `n` times, the last result unused, as a session's loop steps after each id.
pub fn decode_greedy(first: u32, n: usize, mut next: impl FnMut(u32) -> u32) -> Vec<u32> {
    let mut ids = Vec::with_capacity(n);
    let mut id = first;
    for _ in 0..n {
        ids.push(id);
        id = next(id);
    }
    ids
}
