//! Threads: a session's logits are bit-identical for every thread count
//! (matrix rows and attention tokens or heads are split, never a sum), and
//! no thread allocates after `Session::new`, called from a plain thread (a
//! counting allocator that counts every thread of the process; the tests
//! of this file run one at a time).

use std::sync::Mutex;

use ferrite_format::DType;
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use ferrite_test_support::alloc::CountingAllocator;
use ferrite_test_support::argmax;
use ferrite_test_support::convert::tiny_frt;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// Held by each test: nothing else of this binary runs while one counts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Logits after a 21-token prompt (batches of 8) and 40 steps, all of them
/// concatenated, with `threads` threads.
fn run(model: &Model<'_>, kv: KvType, threads: usize) -> Vec<u32> {
    let cfg = SessionConfig { max_ctx: 32, kv, max_batch: 8, threads, sinks: 2, ..Default::default() };
    let plan = model.plan(&cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(model, &plan, &mut arena).expect("session");
    let vocab = model.config().vocab_size;
    let prompt: Vec<u32> = (0..21u32).map(|i| (i * 7 + 3) % vocab).collect();
    let mut all = Vec::new();
    let mut logits = session.prefill(&prompt).expect("prefill").to_vec();
    for i in 0..40u32 {
        all.extend(logits.iter().map(|v| v.to_bits()));
        logits = session.step((i * 13 + 1) % vocab).expect("step").to_vec();
    }
    all
}

#[test]
fn logits_are_bit_identical_for_every_thread_count() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (name, weights) in
        [("llama-gqa", DType::Q4), ("llama-gqa", DType::Q8), ("qwen2-bias-f16", DType::F32), ("llama-odd", DType::Q4)]
    {
        let bytes = tiny_frt(name, weights);
        let model = Model::from_bytes(bytes.as_slice()).expect("model");
        for kv in [KvType::F16, KvType::Q8] {
            let one = run(&model, kv, 1);
            for threads in [2, 3, 4, 7] {
                assert!(run(&model, kv, threads) == one, "{name} {weights:?} {kv:?}: {threads} threads differ");
            }
        }
    }
}

/// A session with 2 or 4 threads driven from a plain thread (as a C caller
/// does, or a Rust one without any thread pool): prefill and 1 000 decode
/// steps, through a streaming cache that wraps, allocate nothing on any
/// thread.
#[test]
fn no_thread_allocates_after_session_new() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (weights, threads) in [(DType::Q4, 2), (DType::F32, 2), (DType::Q8, 4)] {
        let bytes = tiny_frt("llama-gqa", weights);
        let model = Model::from_bytes(bytes.as_slice()).expect("model");
        let cfg = SessionConfig { max_ctx: 64, max_batch: 8, threads, ..Default::default() };
        let plan = model.plan(&cfg).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        let n = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
                    let prompt: Vec<u32> = (0..20u32).collect();
                    ALLOC.start_all_threads();
                    let mut next = session.prefill(&prompt).map(|l| argmax(l)).expect("prefill");
                    for _ in 0..1000 {
                        next = argmax(session.step(next).expect("step"));
                    }
                    ALLOC.stop()
                })
                .join()
                .expect("thread")
        });
        assert_eq!(n, 0, "{weights:?}: {n} allocations with {threads} threads (last {} bytes)", ALLOC.last_size());
    }
}
