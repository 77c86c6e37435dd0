//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

pub use ferrite_test_support::convert::convert_to_bytes;
pub use ferrite_test_support::fixtures::{root, smollm2_dir, tiny, TINY};
pub use ferrite_test_support::{argmax, decode_greedy};

/// The kernel tiers a test runs at: the one `FERRITE_KERNELS` forces, else
/// every tier this CPU has (the reference first), so that one run of the
/// tests checks them all in-process.
pub fn tiers() -> Vec<ferrite_kernels::Tier> {
    match ferrite_kernels::env_tier().expect("FERRITE_KERNELS names a tier") {
        Some(tier) => vec![tier],
        None => ferrite_kernels::Tier::ALL.into_iter().filter(|t| t.supported()).collect(),
    }
}

/// The `ferrite` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_ferrite");

/// Runs `ferrite ARGS` to its end, its output collected.
pub fn ferrite<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(BIN).args(args).output().expect("run ferrite")
}

/// Runs `ferrite ARGS`, which must succeed, and returns its stdout.
pub fn ferrite_ok(args: &[&str]) -> Vec<u8> {
    let out = ferrite(args);
    assert!(out.status.success(), "ferrite {args:?}:\n{}", show(&out));
    out.stdout
}

/// A finished run's status and both streams, for a failure message.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ferrite convert INPUT -o OUTPUT --weights WEIGHTS --quiet`.
pub fn cli_convert(input: &Path, output: &Path, weights: &str) -> Output {
    ferrite([
        "convert".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        output.as_os_str(),
        "--weights".as_ref(),
        weights.as_ref(),
        "--quiet".as_ref(),
    ])
}

/// [`cli_convert`], which must succeed; returns `output` as a string.
pub fn cli_convert_ok(input: &Path, output: &Path, weights: &str) -> String {
    let out = cli_convert(input, output, weights);
    assert!(out.status.success(), "ferrite convert {} --weights {weights}:\n{}", input.display(), show(&out));
    output.to_str().expect("UTF-8 path").to_owned()
}

/// The tiny fixture `name` converted by `ferrite convert` at `weights`:
/// the temp folder that holds it (dropping it deletes the file) and the
/// file's path.
pub fn tiny_by_cli(name: &str, weights: &str) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = cli_convert_ok(&tiny(name), &tmp.path().join("m.frt"), weights);
    (tmp, path)
}

/// A folder `parent/name` holding SmolLM2 ([`smollm2_dir`]) with its
/// `tokenizer_config.json` changed by `edit`: the JSON files copied, the
/// weights linked.
pub fn smollm2_variant(
    parent: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let src = smollm2_dir();
    let dir = parent.join(name);
    std::fs::create_dir(&dir).expect("mkdir");
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    std::os::unix::fs::symlink(src.join("model.safetensors"), dir.join("model.safetensors")).expect("symlink");
    edit_json(&dir.join("tokenizer_config.json"), edit);
    dir
}

/// The first `chars` characters of the perplexity text
/// (`tests/fixtures/smollm2-135m/apache-2.0.txt`).
pub fn apache_text(chars: usize) -> String {
    std::fs::read_to_string(root().join("tests/fixtures/smollm2-135m/apache-2.0.txt"))
        .expect("text")
        .chars()
        .take(chars)
        .collect()
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
    t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32).collect()
}

/// A copy of a tiny fixture folder (without its golden file) to break.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(tiny(name)).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let file_name = entry.file_name();
        if file_name == "golden.safetensors" {
            continue;
        }
        std::fs::copy(entry.path(), tmp.path().join(&file_name)).expect("copy fixture file");
    }
    tmp
}

/// A safetensors tensor as `(name, dtype, shape, little-endian bytes)`.
pub type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Rewrites a safetensors file after `edit` changes its tensor list
/// (`__metadata__` is kept).
pub fn rewrite_safetensors(path: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let bytes = std::fs::read(path).expect("read");
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("metadata");
    let info = meta.metadata().clone();
    let st = SafeTensors::deserialize(&bytes).expect("deserialize");
    let mut tensors: Vec<RawTensor> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("tensor view")))
        .collect();
    std::fs::write(path, safetensors::serialize(views, info).expect("serialize")).expect("write");
}

/// Edits the top-level object of a JSON file.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("parse json");
    edit(json.as_object_mut().expect("a JSON object"));
    std::fs::write(path, serde_json::to_vec_pretty(&json).expect("to json")).expect("write json");
}

/// Edits the top-level object of `dir/config.json`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    edit_json(&dir.join("config.json"), edit)
}

/// Entries of a folder (names), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
