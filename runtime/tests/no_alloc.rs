//! No allocation after `Session::new`: a counting global allocator sees zero
//! allocations across a prefill and 200 decode steps, for every weight type
//! and KV type.

use ferrite_format::DType;
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use ferrite_test_support::alloc::CountingAllocator;
use ferrite_test_support::argmax;
use ferrite_test_support::convert::tiny_frt;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

#[test]
fn zero_allocations_in_prefill_and_200_steps() {
    for (name, weights) in [
        ("llama-gqa", DType::Q4),
        ("qwen2-bias-f16", DType::Q8),
        ("llama-odd", DType::F16),
        ("llama-tied-bf16", DType::F32),
    ] {
        for kv in [KvType::F32, KvType::F16] {
            let bytes = tiny_frt(name, weights);
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

/// The runtime's generation loop (prompt, sampling with every filter and a
/// repetition penalty, feeding back, streamed text) allocates nothing
/// either, with its buffers supplied up front.
#[test]
fn zero_allocations_in_the_generation_loop() {
    use ferrite_runtime::generate::{generate, End, GenBuffers, GenOptions, History, Observer};
    use ferrite_runtime::sampler::{Sampler, SamplerConfig};
    struct Count(usize);
    impl Observer for Count {
        fn token(&mut self, _: u32) -> std::ops::ControlFlow<()> {
            self.0 += 1;
            std::ops::ControlFlow::Continue(())
        }
    }
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let model = Model::from_bytes(&bytes).expect("model");
    let plan = model.plan(&SessionConfig { max_ctx: 64, max_batch: 8, ..Default::default() }).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let vocab = model.config().vocab_size as usize;
    let (mut logits, mut scratch, mut recent) = (vec![0f32; vocab], vec![0u32; vocab], vec![0u32; 100]);
    let mut history = History::new(&mut recent);
    let config = SamplerConfig {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        min_p: 0.02,
        repeat_penalty: 1.1,
        seed: 7,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(config).expect("sampler");
    let mut seen = Count(0);
    let prompt: Vec<u32> = (0..20).map(|i| (i * 5 + 1) % vocab as u32).collect();
    let opts = GenOptions { max_new: 300, ignore_eos: true };

    let buffers = GenBuffers { logits: &mut logits, scratch: &mut scratch };
    let (done, n) = ALLOC.count(|| {
        generate(&mut session, model.config(), None, &mut sampler, &prompt, &opts, buffers, &mut history, &mut seen)
    });
    let done = done.expect("generate");
    // 300 tokens run past the 64-slot streaming cache several times.
    assert_eq!((done.generated, done.decode_steps, seen.0), (300, 299, 300));
    assert!(matches!(done.end, End::MaxTokens));
    assert_eq!(n, 0, "{n} allocations in the generation loop");
}
