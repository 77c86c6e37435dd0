//! Where the test fixtures and the fetched models are.

use std::path::{Path, PathBuf};

/// The repository root (the folder above this crate's).
pub fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The tiny random-weight fixture folder `name` (`tests/fixtures/tiny/`).
pub fn tiny(name: &str) -> PathBuf {
    root().join("tests/fixtures/tiny").join(name)
}

/// Every tiny fixture.
pub const TINY: [&str; 6] =
    ["llama-gqa", "llama-tied-bf16", "qwen2-bias-f16", "llama3-ropescaled", "mistral-sharded", "llama-odd"];

/// SmolLM2's tokenizer and golden files (`tests/fixtures/smollm2-135m/`).
pub fn smollm2_fixture() -> PathBuf {
    root().join("tests/fixtures/smollm2-135m")
}

/// The SmolLM2 f32 HF folder made by `scripts/fetch-models.sh`:
/// `$FERRITE_SMOLLM2_DIR`, else `smollm2-135m-f32` in the cache
/// (`$FERRITE_CACHE`, else `~/.cache/ferrite`). Panics with what to run
/// when it is missing.
pub fn smollm2_dir() -> PathBuf {
    let dir =
        std::env::var_os("FERRITE_SMOLLM2_DIR").map(PathBuf::from).unwrap_or_else(|| cache().join("smollm2-135m-f32"));
    assert!(
        dir.join("model.safetensors").exists(),
        "SmolLM2 HF folder not found at {}: run `bash scripts/fetch-models.sh` first (the README's test command does)",
        dir.display()
    );
    dir
}

/// The Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF that
/// `bash scripts/fetch-models.sh qwen2.5-coder-1.5b` assembles
/// (`FERRITE_QWEN_GGUF`, else under the cache); panics with how to fetch it.
pub fn qwen_gguf() -> PathBuf {
    let path = std::env::var_os("FERRITE_QWEN_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));
    assert!(
        path.is_file(),
        "Qwen GGUF not found at {}: run `bash scripts/fetch-models.sh qwen2.5-coder-1.5b` first (the README's test \
         command does)",
        path.display()
    );
    path
}

/// Where `scripts/fetch-models.sh` caches models: `FERRITE_CACHE`, else
/// `~/.cache/ferrite`.
fn cache() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    std::env::var_os("FERRITE_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/ferrite"))
}
