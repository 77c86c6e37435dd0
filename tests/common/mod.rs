//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferrite_converter::{convert, Options};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::DType;
use safetensors::SafeTensors;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny fixture folder.
pub fn tiny(name: &str) -> PathBuf {
    root().join("tests/fixtures/tiny").join(name)
}

/// All tiny fixture names.
pub const TINY: [&str; 6] =
    ["llama-gqa", "llama-tied-bf16", "qwen2-bias-f16", "llama3-ropescaled", "mistral-sharded", "llama-odd"];

/// Converts `dir` at `weights` into memory (via a temp file).
pub fn convert_to_bytes(dir: &Path, weights: DType) -> AlignedBytes {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m.frt");
    convert(dir, &out, &Options { weights, embed: None }, &mut |_| {}).expect("convert");
    AlignedBytes::read(&out).expect("read")
}

/// The SmolLM2 f32 HF folder made by `scripts/fetch-models.sh`.
pub fn smollm2_dir() -> PathBuf {
    let dir = std::env::var_os("FERRITE_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            let cache = std::env::var_os("FERRITE_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/ferrite"));
            cache.join("smollm2-135m-f32")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "SmolLM2 HF folder not found at {}: run `bash scripts/fetch-models.sh` first (the README's test command does)",
        dir.display()
    );
    dir
}

/// A golden tensor as f32 values and shape.
pub fn golden_f32(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (v, t.shape().to_vec())
}

/// A golden int64 tensor as u32 ids.
pub fn golden_ids(st: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32)
        .collect()
}

/// Index of the largest value (lowest index on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
