//! Tiny random-weight models: Ferrite's f32 forward pass (f32 weights, f32
//! KV cache) against transformers' logits and greedy tokens.

mod common;

use common::*;
use ferrite_format::DType;
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use safetensors::SafeTensors;

const TOL: f32 = 5e-4;

fn check_fixture(name: &str, max_batch: usize) {
    check_fixture_with(name, max_batch, false);
    check_fixture_with(name, max_batch, true);
}

fn check_fixture_with(name: &str, max_batch: usize, logits_all: bool) {
    let dir = tiny(name);
    let bytes = convert_to_bytes(&dir, DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let vocab = model.config().vocab_size as usize;
    let cfg = SessionConfig { max_ctx: 256, kv: KvType::F32, max_batch, logits_all, ..Default::default() };
    let plan = model.plan(&cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let golden_bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden");
    let golden = SafeTensors::deserialize(&golden_bytes).expect("golden parse");

    let ids = golden_ids(&golden, "input_ids");
    let (logits, shape) = golden_f32(&golden, "logits");
    assert_eq!(shape[2], vocab);
    let seq = shape[1];
    let mut cases = vec![];
    for row in 0..shape[0] {
        cases.push((
            format!("input_ids[{row}]"),
            ids[row * seq..(row + 1) * seq].to_vec(),
            logits[row * seq * vocab..(row + 1) * seq * vocab].to_vec(),
        ));
    }
    if golden.names().contains(&"long_ids") {
        let long = golden_ids(&golden, "long_ids");
        let (long_logits, _) = golden_f32(&golden, "long_logits");
        cases.push(("long_ids".into(), long, long_logits));
    }
    for (what, ids, want) in cases {
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut worst = (0.0f32, 0usize);
        session
            .prefill_all(&ids, &mut |pos, got| {
                let w = &want[pos * vocab..(pos + 1) * vocab];
                for (a, b) in got.iter().zip(w) {
                    let diff = (a - b).abs();
                    if diff > worst.0 {
                        worst = (diff, pos);
                    }
                }
            })
            .expect("prefill");
        assert!(worst.0 <= TOL, "{name} {what}: max |logit diff| {} at position {} exceeds {TOL}", worst.0, worst.1);
        eprintln!("{name} {what} (batch {max_batch}, logits_all {logits_all}): max |diff| {:.2e}", worst.0);
    }

    // Greedy: prefill row 0, then 16 steps.
    let greedy = golden_ids(&golden, "greedy_ids");
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let mut next = argmax(session.prefill(&ids[..seq]).expect("prefill"));
    let mut got = vec![];
    for _ in 0..greedy.len() {
        got.push(next);
        next = argmax(session.step(next).expect("step"));
    }
    assert_eq!(got, greedy, "{name}: greedy ids differ");
}

#[test]
fn llama_gqa() {
    check_fixture("llama-gqa", 32);
}
#[test]
fn llama_tied_bf16() {
    check_fixture("llama-tied-bf16", 32);
}
#[test]
fn qwen2_bias_f16() {
    check_fixture("qwen2-bias-f16", 32);
}
#[test]
fn llama3_ropescaled() {
    check_fixture("llama3-ropescaled", 32);
}
#[test]
fn mistral_sharded() {
    check_fixture("mistral-sharded", 32);
}
#[test]
fn llama_odd() {
    check_fixture("llama-odd", 32);
}
/// Batch boundaries must not change results: odd batch sizes split the
/// prompts into several prefill chunks.
#[test]
fn batch_sizes_agree() {
    check_fixture("llama-gqa", 1);
    check_fixture("llama-gqa", 7);
}

/// Threads split matrix products by rows: logits are bit-identical for any
/// thread count.
#[test]
fn thread_count_does_not_change_logits() {
    let bytes = convert_to_bytes(&tiny("qwen2-bias-f16"), DType::Q4);
    let model = Model::from_bytes(&bytes).expect("model");
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % model.config().vocab_size).collect();
    let mut reference: Option<Vec<f32>> = None;
    for threads in [1, 2, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        let cfg = SessionConfig {
            max_ctx: 64,
            kv: KvType::F16,
            max_batch: 16,
            threads,
            logits_all: true,
            ..Default::default()
        };
        let plan = model.plan(&cfg).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut all = Vec::new();
        pool.install(|| {
            let mut session = Session::new(&model, &plan, &mut arena).expect("session");
            session.prefill_all(&ids, &mut |_, l| all.extend_from_slice(l)).expect("prefill");
            for step in 0..8 {
                all.extend_from_slice(session.step(step).expect("step"));
            }
        });
        match &reference {
            None => reference = Some(all),
            Some(r) => {
                assert!(r.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads differ from 1")
            }
        }
    }
}
