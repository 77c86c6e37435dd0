//! The real SmolLM2-135M-Instruct (f32 weights, f32 KV cache) against
//! transformers: logits of both golden prompts within 2e-3, and all 32
//! greedy ids. Needs `scripts/fetch-models.sh` (README's test command runs it).

mod common;

use common::*;
use ferrite_format::DType;
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use safetensors::SafeTensors;

const TOL: f32 = 2e-3;

#[test]
fn smollm2_f32_matches_transformers() {
    let bytes = convert_to_bytes(&smollm2_dir(), DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let vocab = model.config().vocab_size as usize;
    let plan = model
        .plan(&SessionConfig { max_ctx: 128, kv: KvType::F32, max_batch: 32, ..Default::default() })
        .expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let golden_bytes = std::fs::read(root().join("tests/fixtures/smollm2-135m/golden.safetensors")).expect("golden");
    let golden = SafeTensors::deserialize(&golden_bytes).expect("golden parse");
    for prompt in ["prompt0", "prompt1"] {
        let ids = golden_ids(&golden, &format!("{prompt}_ids"));
        let (want, _) = golden_f32(&golden, &format!("{prompt}_logits"));
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut worst = (0.0f32, 0usize);
        session
            .prefill_all(&ids, &mut |pos, got| {
                for (a, b) in got.iter().zip(&want[pos * vocab..(pos + 1) * vocab]) {
                    if (a - b).abs() > worst.0 {
                        worst = ((a - b).abs(), pos);
                    }
                }
            })
            .expect("prefill");
        eprintln!("{prompt}: max |logit diff| {:.2e} at position {}", worst.0, worst.1);
        assert!(worst.0 <= TOL, "{prompt}: max |logit diff| {} exceeds {TOL}", worst.0);

        let greedy = golden_ids(&golden, &format!("{prompt}_greedy"));
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut next = argmax(session.prefill(&ids).expect("prefill"));
        let mut got = vec![];
        for _ in 0..greedy.len() {
            got.push(next);
            next = argmax(session.step(next).expect("step"));
        }
        assert_eq!(got, greedy, "{prompt}: greedy ids differ");
    }
}

fn perplexity_of(weights: DType, tokens: &[u32]) -> f64 {
    perplexity_with(weights, KvType::F32, tokens)
}

fn perplexity_with(weights: DType, kv: KvType, tokens: &[u32]) -> f64 {
    let bytes = convert_to_bytes(&smollm2_dir(), weights);
    let model = Model::from_bytes(&bytes).expect("model");
    let plan = model
        .plan(&SessionConfig { max_ctx: 512, kv, max_batch: 32, threads: 2, logits_all: true, ..Default::default() })
        .expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    let r = pool.install(|| {
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        ferrite_runtime::eval::perplexity(&mut session, tokens, 512, &mut |_, _, _| {}).expect("perplexity")
    });
    assert_eq!((r.tokens, r.predicted), (2215, 2210));
    eprintln!("SmolLM2 {weights:?} weights, {kv:?} KV: mean NLL {:.6}, perplexity {:.4}", r.mean_nll(), r.perplexity());
    r.perplexity()
}

/// Perplexity on apache-2.0.txt (the golden's own token ids, ctx 512, f32 KV):
/// f32 weights within 0.1 % of transformers' 16.5223; q8 within 1 % of f32;
/// q4 within 50 % of f32 (a sanity bound that a broken q4 path fails by
/// orders of magnitude; measured 1.35x, tracked in README: symmetric q4 on
/// weights that were asymmetric Q4_1 in the source GGUF).
fn golden_perplexity() -> (Vec<u32>, f64) {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/smollm2-135m/perplexity.json")).expect("read"),
    )
    .expect("json");
    let tokens: Vec<u32> =
        json["token_ids"].as_array().expect("token_ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
    (tokens, json["perplexity"].as_f64().expect("perplexity"))
}

/// The int8 KV cache costs under 0.5 % of perplexity against the f16 one.
#[test]
fn smollm2_q8_kv_perplexity() {
    let (tokens, _) = golden_perplexity();
    let f16 = perplexity_with(DType::F32, KvType::F16, &tokens);
    let q8 = perplexity_with(DType::F32, KvType::Q8, &tokens);
    assert!((q8 / f16 - 1.0).abs() < 5e-3, "q8 KV perplexity {q8} vs f16 KV {f16}");
}

#[test]
fn smollm2_perplexity() {
    let (tokens, golden) = golden_perplexity();
    let f32_ppl = perplexity_of(DType::F32, &tokens);
    assert!((f32_ppl / golden - 1.0).abs() < 1e-3, "f32 perplexity {f32_ppl} vs transformers {golden}");
    let q8_ppl = perplexity_of(DType::Q8, &tokens);
    assert!((q8_ppl / f32_ppl - 1.0).abs() < 1e-2, "q8 perplexity {q8_ppl} vs f32 {f32_ppl}");
    let q4_ppl = perplexity_of(DType::Q4, &tokens);
    assert!(q4_ppl / f32_ppl < 1.5, "q4 perplexity {q4_ppl} vs f32 {f32_ppl}");
}
