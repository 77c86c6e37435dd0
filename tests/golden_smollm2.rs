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
    let plan = model.plan(&SessionConfig { max_ctx: 128, kv: KvType::F32, max_batch: 32 }).expect("plan");
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
