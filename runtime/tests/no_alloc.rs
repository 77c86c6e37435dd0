//! No allocation after `Session::new`: a counting global allocator sees zero
//! allocations across a prefill and 200 decode steps, for every weight type
//! and KV type.

use ferrite_format::writer::AlignedBytes;
use ferrite_format::DType;
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use ferrite_test_support::alloc::CountingAllocator;
use ferrite_test_support::{argmax, fixtures};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn converted(name: &str, weights: DType) -> AlignedBytes {
    let dir = fixtures::tiny(name);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m.frt");
    let opts = ferrite_converter::Options { weights, ..Default::default() };
    ferrite_converter::convert(&dir, &out, &opts, &mut |_| {}).expect("convert");
    AlignedBytes::read(&out).expect("read")
}

#[test]
fn zero_allocations_in_prefill_and_200_steps() {
    for (name, weights) in [
        ("llama-gqa", DType::Q4),
        ("qwen2-bias-f16", DType::Q8),
        ("llama-odd", DType::F16),
        ("llama-tied-bf16", DType::F32),
    ] {
        for kv in [KvType::F32, KvType::F16] {
            let bytes = converted(name, weights);
            let model = Model::from_bytes(&bytes).expect("model");
            let plan =
                model.plan(&SessionConfig { max_ctx: 256, kv, max_batch: 8, ..Default::default() }).expect("plan");
            let mut arena = vec![0u8; plan.arena_bytes()];
            let mut session = Session::new(&model, &plan, &mut arena).expect("session");
            let prompt: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % model.config().vocab_size).collect();

            let (checksum, n) = ALLOC.count(|| {
                let mut checksum = 0.0f32;
                let mut next = {
                    let logits = session.prefill(&prompt).expect("prefill");
                    checksum += logits[0];
                    argmax(logits)
                };
                for _ in 0..200 {
                    let logits = session.step(next).expect("step");
                    checksum += logits[0];
                    next = argmax(logits);
                }
                checksum
            });
            assert!(checksum.is_finite());
            assert_eq!(session.position(), 224);
            assert_eq!(n, 0, "{name} {weights:?} {kv:?}: {n} allocations after Session::new");
        }
    }
}
