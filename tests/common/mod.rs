//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use std::path::Path;

use ferrite_converter::{convert, Options};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::DType;
use safetensors::SafeTensors;

pub use ferrite_test_support::argmax;
pub use ferrite_test_support::fixtures::{root, smollm2_dir, tiny, TINY};

/// The kernel tiers a test runs at: the one `FERRITE_KERNELS` forces, else
/// every tier this CPU has (the reference first), so that one run of the
/// tests checks them all in-process.
pub fn tiers() -> Vec<ferrite_kernels::Tier> {
    match ferrite_kernels::env_tier().expect("FERRITE_KERNELS names a tier") {
        Some(tier) => vec![tier],
        None => ferrite_kernels::Tier::ALL.into_iter().filter(|t| t.supported()).collect(),
    }
}

/// Converts `dir` at `weights` into memory (via a temp file).
pub fn convert_to_bytes(dir: &Path, weights: DType) -> AlignedBytes {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m.frt");
    convert(dir, &out, &Options { weights, ..Default::default() }, &mut |_| {}).expect("convert");
    AlignedBytes::read(&out).expect("read")
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

/// Entries of a folder (names), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
