//! Qwen2.5-Coder-1.5B-Instruct's Q4_K_M GGUF (Q4_K, Q6_K and F32 tensors)
//! converted without `--weights`: every tensor is transcoded, not
//! dequantized, and the file's values are bit for bit those the `gguf`
//! package's `gguf.quants.dequantize` gives for the GGUF (per-tensor
//! SHA-256 of the little-endian f32 values, computed offline by
//! `scripts/qwen_dequant_hashes.py` with gguf 0.19.0 and committed in
//! `tests/fixtures/qwen2.5-coder-1.5b/dequant-sha256.json`).

use std::collections::BTreeMap;

use ferrite_converter::{convert, gguf::hf_tensor_name, role_of, KeepTypes, Options};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::{DType, File};
use ferrite_kernels::{Matrix, Tier, Weights};
use ferrite_runtime::{Model, Session, SessionConfig};
use ferrite_test_support::fixtures;
use sha2::{Digest, Sha256};

fn hashes() -> serde_json::Value {
    let path = fixtures::root().join("tests/fixtures/qwen2.5-coder-1.5b/dequant-sha256.json");
    serde_json::from_slice(&std::fs::read(&path).expect("hash fixture")).expect("hash fixture json")
}

#[test]
fn qwen_q4_k_m_transcodes_bit_exactly() {
    let gguf = fixtures::qwen_gguf();
    let doc = hashes();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qwen.frt");
    let opts = Options { keep: KeepTypes { weights: true, embed: true }, ..Default::default() };
    let summary = convert(&gguf, &out, &opts, &mut |_| {}).expect("convert");
    // Transcoded: no error at all, in every type.
    for (dtype, st) in &summary.by_type {
        assert_eq!(st.sum_sq_err, 0.0, "{}: conversion error", dtype.name());
    }
    let counts: BTreeMap<&str, usize> = summary.by_type.iter().map(|(d, s)| (d.name(), s.tensors)).collect();
    // The GGUF's 169 Q4_K, 29 Q6_K and 141 F32 tensors, all stored.
    assert_eq!(counts, BTreeMap::from([("f32", 141), ("q4k", 169), ("q6k", 29)]), "types stored");

    let bytes = AlignedBytes::read(&out).expect("read the file");
    let file = File::parse(bytes.as_slice()).expect("parse");
    let tensors = doc["tensors"].as_array().expect("tensors");
    assert_eq!(tensors.len(), 339);
    let mut row = Vec::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let role = role_of(&hf_tensor_name(name).expect("known tensor")).expect("role");
        let view = file.tensor(role).expect("tensor in the file");
        let want_type = match t["type"].as_str().unwrap() {
            "Q4_K" => DType::Q4K,
            "Q6_K" => DType::Q6K,
            "F32" => DType::F32,
            other => panic!("{name}: type {other} not in this model"),
        };
        assert_eq!(view.dtype, want_type, "{name}: stored type");
        let (rows, cols) = (view.rows as usize, view.cols as usize);
        let mut h = Sha256::new();
        match view.dtype {
            DType::F32 => h.update(bytemuck::cast_slice::<f32, u8>(view.as_f32().unwrap())),
            dtype => {
                let w = Weights::from_planes(dtype, view.planes().expect("planes")).expect("weights");
                let m = Matrix::new(w, rows, cols).expect("shape");
                row.resize(cols, 0f32);
                for r in 0..rows {
                    m.dequantize_row(r, &mut row);
                    h.update(bytemuck::cast_slice::<f32, u8>(&row));
                }
            }
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, t["sha256"].as_str().unwrap(), "{name} ({}): dequantized values differ", view.dtype.name());
    }

    // The file runs: a few tokens through the best tier and the reference
    // give finite logits that agree. With f32 activations, so that only the
    // float summation order differs (the integer products are bit-identical
    // across tiers, `kernels/tests/tiers.rs`; with int8 activations a value
    // rounding to another quant in one tier moves the logits by up to 0.3
    // here, as for every quantized model).
    let model = Model::from_bytes(&bytes).expect("model");
    let ids = [750u32, 9931, 3904, 1140]; // four ids of Qwen's vocabulary
    let run = |tier: Option<Tier>| {
        let cfg =
            SessionConfig { max_ctx: 16, max_batch: 4, kernels: tier, f32_activations: true, ..Default::default() };
        let plan = model.plan(&cfg).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut all = Vec::new();
        session.prefill_all(&ids, &mut |_, l| all.extend_from_slice(l)).expect("prefill");
        all
    };
    let (best, reference) = (run(None), run(Some(Tier::Reference)));
    assert_eq!(best.len(), ids.len() * 151_936);
    assert!(best.iter().all(|v| v.is_finite()), "non-finite logits");
    let diff = best.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("best tier vs reference: max |diff| {diff}");
    // Measured 2.3e-3 (AVX-512 tier; the dot products sum in another order).
    assert!(diff < 5e-3, "best tier and reference differ by {diff}");
}
