//! Tiny random-weight models: Ferrite's f32 forward pass (f32 weights, f32
//! KV cache) against transformers' logits and greedy tokens, at every kernel
//! tier this CPU has (or the one `FERRITE_KERNELS` forces: `common::tiers`).

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
    for tier in tiers() {
        let cfg = SessionConfig {
            max_ctx: 256,
            kv: KvType::F32,
            max_batch,
            logits_all,
            kernels: Some(tier),
            ..Default::default()
        };
        check_session(name, &dir, &model, &cfg);
    }
}

fn check_session(name: &str, dir: &std::path::Path, model: &Model<'_>, cfg: &SessionConfig) {
    let (max_batch, logits_all) = (cfg.max_batch, cfg.logits_all);
    let tier = cfg.kernels.map_or("default".to_string(), |t| t.to_string());
    let vocab = model.config().vocab_size as usize;
    let plan = model.plan(cfg).expect("plan");
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
        let mut session = Session::new(model, &plan, &mut arena).expect("session");
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
        assert!(
            worst.0 <= TOL,
            "{name} {what} ({tier}): max |logit diff| {} at position {} exceeds {TOL}",
            worst.0,
            worst.1
        );
        eprintln!("{name} {what} ({tier}, batch {max_batch}, logits_all {logits_all}): max |diff| {:.2e}", worst.0);
    }

    // Greedy: prefill row 0, then 16 steps.
    let greedy = golden_ids(&golden, "greedy_ids");
    let mut session = Session::new(model, &plan, &mut arena).expect("session");
    let first = argmax(session.prefill(&ids[..seq]).expect("prefill"));
    let got = decode_greedy(first, greedy.len(), |id| argmax(session.step(id).expect("step")));
    assert_eq!(got, greedy, "{name} ({tier}): greedy ids differ");
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
    for tier in tiers() {
        thread_counts_agree(&model, &ids, tier);
    }
}

fn thread_counts_agree(model: &Model<'_>, ids: &[u32], tier: ferrite_kernels::Tier) {
    let mut reference: Option<Vec<f32>> = None;
    for threads in [1, 2, 3, 4] {
        let cfg = SessionConfig {
            max_ctx: 64,
            kv: KvType::F16,
            max_batch: 16,
            threads,
            logits_all: true,
            kernels: Some(tier),
            ..Default::default()
        };
        let plan = model.plan(&cfg).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut all = Vec::new();
        let mut session = Session::new(model, &plan, &mut arena).expect("session");
        session.prefill_all(ids, &mut |_, l| all.extend_from_slice(l)).expect("prefill");
        for step in 0..8 {
            all.extend_from_slice(session.step(step).expect("step"));
        }
        match &reference {
            None => reference = Some(all),
            Some(r) => {
                assert!(
                    r.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{tier}: {threads} threads differ from 1"
                )
            }
        }
    }
}

/// Quantized tiny models against transformers' f32 logits: mean KL
/// divergence (golden || quantized) over every position of `input_ids`, and
/// top-1 agreement. Random weights are near-Gaussian, where q4a's extra
/// minimum buys less than on real (skewed) groups, and these small random
/// models are far more sensitive than trained ones (their logits are nearly
/// flat): q8 must stay 8 times below the 4-bit types, and each type within
/// 15 % above the KLD measured for it on each fixture (2026-12-02, avx512
/// tier; the other tiers differ in float rounding only). The printed table
/// is the one in README.
#[test]
fn quantized_models_track_the_f32_logits() {
    use ferrite_runtime::eval;
    let mut table = String::new();
    // Measured mean KLD of q8, q4, q4a per fixture.
    let measured = [
        ("llama-gqa", [0.00795, 0.41671, 0.40427]),
        ("llama-tied-bf16", [0.05805, 1.97230, 1.80814]),
        ("qwen2-bias-f16", [0.00531, 0.51397, 0.37689]),
        ("llama3-ropescaled", [0.00651, 0.54349, 0.45565]),
        ("mistral-sharded", [0.02290, 0.96464, 0.64581]),
        ("llama-odd", [0.00618, 0.53190, 0.33787]),
    ];
    for (name, bound) in measured {
        let dir = tiny(name);
        let golden_bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden");
        let golden = SafeTensors::deserialize(&golden_bytes).expect("golden parse");
        let ids = golden_ids(&golden, "input_ids");
        let (logits, shape) = golden_f32(&golden, "logits");
        let (seq, vocab) = (shape[1], shape[2]);
        let converted: Vec<_> = [DType::Q8, DType::Q4, DType::Q4A].map(|d| (d, convert_to_bytes(&dir, d))).into();
        for tier in tiers() {
            let mut kld = Vec::new();
            for (dtype, bytes) in &converted {
                let dtype = *dtype;
                let model = Model::from_bytes(bytes).expect("model");
                let cfg = SessionConfig {
                    max_ctx: 256,
                    kv: KvType::F32,
                    logits_all: true,
                    kernels: Some(tier),
                    ..Default::default()
                };
                let plan = model.plan(&cfg).expect("plan");
                let mut arena = vec![0u8; plan.arena_bytes()];
                let mut session = Session::new(&model, &plan, &mut arena).expect("session");
                let (mut sum, mut same, mut n) = (0.0f64, 0usize, 0usize);
                let mut base = vec![0f32; vocab];
                session
                    .prefill_all(&ids[..seq], &mut |pos, got| {
                        eval::log_softmax(&logits[pos * vocab..(pos + 1) * vocab], &mut base);
                        let d = eval::divergence(&base, got);
                        sum += d.kld;
                        same += d.same_top as usize;
                        n += 1;
                    })
                    .expect("prefill");
                let mean = sum / n as f64;
                assert!(mean.is_finite() && mean >= -1e-6, "{name} {}: KLD {mean}", dtype.name());
                let row =
                    format!("| {name} | {} | {mean:.5} | {:.1} % |\n", dtype.name(), 100.0 * same as f64 / n as f64);
                eprint!("{tier}: {row}");
                if tier == ferrite_kernels::Tier::Reference || tiers().len() == 1 {
                    table.push_str(&row);
                }
                kld.push(mean);
            }
            assert!(kld[0] * 8.0 < kld[1].min(kld[2]), "{name} ({tier}): q8/q4/q4a KLD {kld:?}");
            for (got, want) in kld.iter().zip(bound) {
                assert!(*got <= want * 1.15, "{name} ({tier}): q8/q4/q4a KLD {kld:?}, measured {bound:?}");
            }
        }
    }
    eprintln!("| fixture | type | mean KLD | top-1 |\n|---|---|---|---|\n{table}");
}
