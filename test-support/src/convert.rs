//! Checkpoints converted to `.frt` in memory (feature `convert`).

use std::path::Path;

use ferrite_converter::{convert, Options};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::DType;

/// The HF folder `dir` converted at `weights` (through a temp file), in
/// aligned memory.
pub fn convert_to_bytes(dir: &Path, weights: DType) -> AlignedBytes {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m.frt");
    convert(dir, &out, &Options { weights, ..Default::default() }, &mut |_| {}).expect("convert");
    AlignedBytes::read(&out).expect("read")
}

/// The tiny fixture `name` ([`crate::fixtures::tiny`]) converted at `weights`.
pub fn tiny_frt(name: &str, weights: DType) -> AlignedBytes {
    convert_to_bytes(&crate::fixtures::tiny(name), weights)
}
