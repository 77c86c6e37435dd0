//! The streaming KV cache, the int8 KV cache and session save/restore.

use ferrite_format::DType;
use ferrite_runtime::{Error, KvType, Model, Session, SessionConfig};
use ferrite_test_support::alloc::CountingAllocator;
use ferrite_test_support::argmax;
use ferrite_test_support::convert::tiny_frt;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn prompt(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 131 + 7) % vocab).collect()
}

/// 100,000 decode steps through a 64-slot cache: no allocation, no error,
/// finite logits, and the position keeps counting.
#[test]
fn hundred_thousand_steps_in_bounded_memory() {
    for kv in [KvType::F16, KvType::Q8] {
        let bytes = tiny_frt("llama-gqa", DType::Q8);
        let model = Model::from_bytes(&bytes).expect("model");
        let cfg = SessionConfig { max_ctx: 64, kv, sinks: 4, streaming: true, ..Default::default() };
        let plan = model.plan(&cfg).expect("plan");
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let vocab = model.config().vocab_size;
        let ids = prompt(10, vocab);
        let (finite, allocations) = ALLOC.count(|| {
            let mut next = argmax(session.prefill(&ids).expect("prefill"));
            let mut finite = true;
            for i in 0..100_000u32 {
                let logits = session.step(next).expect("step");
                finite &= logits.iter().all(|v| v.is_finite());
                // Mix in a counter so the stream does not settle into a short cycle.
                next = (argmax(logits) + i % 7) % vocab;
            }
            finite
        });
        assert!(finite, "{kv:?}: non-finite logits");
        assert_eq!(session.position(), 100_010);
        assert_eq!(allocations, 0, "{kv:?}: allocations while streaming (last of {} bytes)", ALLOC.last_size());
    }
}

fn logits_trace(model: &Model<'_>, cfg: SessionConfig, tokens: &[u32], batch_split: usize) -> Vec<f32> {
    let plan = model.plan(&cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(model, &plan, &mut arena).expect("session");
    let mut out = Vec::new();
    for part in tokens.chunks(batch_split) {
        session.prefill_all(part, &mut |_, l| out.extend_from_slice(l)).expect("prefill");
    }
    out
}

/// A first batch that holds the sink positions and runs past the cache
/// (batch > max_ctx - sinks): its later queries must see the sinks of the
/// batch itself, not cache rows not written yet (zero in a fresh arena,
/// stale after a reset). Logits equal feeding the tokens one at a time.
#[test]
fn a_batch_longer_than_the_ring_sees_its_own_sinks() {
    let bytes = tiny_frt("qwen2-bias-f16", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let tokens = prompt(40, model.config().vocab_size);
    let other = prompt(40, model.config().vocab_size - 3);
    for kv in [KvType::F32, KvType::F16, KvType::Q8] {
        for max_ctx in [12, 16] {
            for max_batch in [16, 32] {
                let cfg = SessionConfig { max_ctx, kv, sinks: 4, max_batch, ..Default::default() };
                let one = logits_trace(&model, cfg, &tokens, 1);
                let batched = logits_trace(&model, cfg, &tokens, 40);
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&one, &batched), "{kv:?} ctx {max_ctx} batch {max_batch}: fresh arena");
                // After a reset the cache holds another text's sinks.
                let plan = model.plan(&cfg).expect("plan");
                let mut arena = vec![0u8; plan.arena_bytes()];
                let mut session = Session::new(&model, &plan, &mut arena).expect("session");
                session.prefill(&other).expect("prefill");
                session.reset();
                let mut again = Vec::new();
                session.prefill_all(&tokens, &mut |_, l| again.extend_from_slice(l)).expect("prefill");
                assert!(same(&one, &again), "{kv:?} ctx {max_ctx} batch {max_batch}: after reset");
            }
        }
    }
}

/// Streaming gives the same logits however the tokens are batched, across
/// many evictions, for every KV type.
#[test]
fn streaming_is_batch_invariant() {
    let bytes = tiny_frt("qwen2-bias-f16", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let tokens = prompt(300, model.config().vocab_size);
    for kv in [KvType::F32, KvType::F16, KvType::Q8] {
        let cfg = SessionConfig { max_ctx: 40, kv, sinks: 4, max_batch: 16, ..Default::default() };
        let one = logits_trace(&model, cfg, &tokens, 1);
        for split in [7, 64, 300] {
            let other = logits_trace(&model, cfg, &tokens, split);
            assert!(one.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()), "{kv:?}: split {split} differs");
        }
    }
}

/// Before the cache is full, streaming changes nothing; after, sinks change
/// the result (the sink keys are really attended).
#[test]
fn streaming_before_and_after_eviction() {
    let bytes = tiny_frt("llama-gqa", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let vocab = model.config().vocab_size as usize;
    let tokens = prompt(100, model.config().vocab_size);
    let base = SessionConfig { max_ctx: 48, kv: KvType::F32, max_batch: 8, ..Default::default() };
    let full = logits_trace(&model, SessionConfig { max_ctx: 128, streaming: false, ..base }, &tokens, 100);
    let sinks4 = logits_trace(&model, SessionConfig { sinks: 4, ..base }, &tokens, 100);
    let sinks0 = logits_trace(&model, SessionConfig { sinks: 0, ..base }, &tokens, 100);
    let head = 48 * vocab;
    assert_eq!(&full[..head], &sinks4[..head], "streaming must not change anything before eviction");
    assert_eq!(&full[..head], &sinks0[..head]);
    assert_ne!(&sinks4[head..], &sinks0[head..], "sinks must matter after eviction");
    assert_ne!(&sinks4[head..], &full[head..], "eviction must change attention");
    assert!(sinks4.iter().all(|v| v.is_finite()));
}

/// Without streaming, a full cache is an error, not a panic.
#[test]
fn full_cache_without_streaming_is_an_error() {
    let bytes = tiny_frt("llama-gqa", DType::Q4);
    let model = Model::from_bytes(&bytes).expect("model");
    let plan = model.plan(&SessionConfig { max_ctx: 16, streaming: false, ..Default::default() }).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    assert!(matches!(session.prefill(&prompt(17, 512)), Err(Error::ContextFull { used: 0, adding: 17, max_ctx: 16 })));
    session.prefill(&prompt(16, 512)).expect("exactly full");
    assert!(matches!(session.step(1), Err(Error::ContextFull { used: 16, adding: 1, .. })));
}

/// The logits' bits over 50 greedy steps from where `s` stands.
fn greedy_trace(s: &mut Session<'_, '_>) -> Vec<u32> {
    let mut trace = Vec::new();
    let mut next = argmax(s.logits());
    for _ in 0..50 {
        let l = s.step(next).expect("step");
        trace.extend(l.iter().map(|v| v.to_bits()));
        next = argmax(l);
    }
    trace
}

/// A saved state restores into a fresh session that then continues
/// bit-identically, before and after eviction, for every KV type.
#[test]
fn save_and_restore_continue_identically() {
    let bytes = tiny_frt("mistral-sharded", DType::Q8);
    let model = Model::from_bytes(&bytes).expect("model");
    let vocab = model.config().vocab_size;
    for kv in [KvType::F32, KvType::F16, KvType::Q8] {
        for prompt_len in [20, 90] {
            let cfg = SessionConfig { max_ctx: 64, kv, max_batch: 8, ..Default::default() };
            let plan = model.plan(&cfg).expect("plan");
            let mut arena = vec![0u8; plan.arena_bytes()];
            let mut a = Session::new(&model, &plan, &mut arena).expect("session");
            a.prefill(&prompt(prompt_len, vocab)).expect("prefill");
            let mut state = vec![0u8; a.state_len()];
            assert_eq!(a.save_state(&mut state).expect("save"), state.len());
            let trace_a = greedy_trace(&mut a);

            let mut arena_b = vec![0u8; plan.arena_bytes()];
            let mut b = Session::new(&model, &plan, &mut arena_b).expect("session");
            b.prefill(&prompt(5, vocab)).expect("unrelated history is replaced");
            b.restore_state(&state).expect("restore");
            assert_eq!(b.position(), prompt_len);
            let trace_b = greedy_trace(&mut b);
            assert!(trace_a == trace_b, "{kv:?}, prompt {prompt_len}: restored session diverged");
        }
    }
}

#[test]
fn bad_states_are_refused() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let model = Model::from_bytes(&bytes).expect("model");
    let plan = model.plan(&SessionConfig { max_ctx: 32, kv: KvType::F16, ..Default::default() }).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut a = Session::new(&model, &plan, &mut arena).expect("session");
    a.prefill(&prompt(10, 512)).expect("prefill");
    let mut state = vec![0u8; a.state_len()];
    a.save_state(&mut state).expect("save");
    assert!(matches!(a.save_state(&mut [0u8; 10]), Err(Error::BufferTooSmall { .. })));

    let other = model.plan(&SessionConfig { max_ctx: 32, kv: KvType::Q8, ..Default::default() }).expect("plan");
    let mut arena_b = vec![0u8; other.arena_bytes()];
    let mut b = Session::new(&model, &other, &mut arena_b).expect("session");
    assert!(matches!(b.restore_state(&state), Err(Error::BadState { .. })), "KV type mismatch");
    drop(b);
    let mut corrupt = state.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(matches!(a.restore_state(&corrupt), Err(Error::BadState { .. })), "checksum");
    assert!(matches!(a.restore_state(&state[..state.len() - 4]), Err(Error::BadState { .. })), "truncated");
    assert!(matches!(a.restore_state(&state[..20]), Err(Error::BadState { .. })), "header");
    let mut magic = state.clone();
    magic[0] = b'X';
    assert!(matches!(a.restore_state(&magic), Err(Error::BadState { .. })), "magic");
}

/// int8 KV stays close to f16 KV.
#[test]
fn q8_kv_close_to_f16() {
    let bytes = tiny_frt("llama-tied-bf16", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let tokens = prompt(60, model.config().vocab_size);
    let base = SessionConfig { max_ctx: 64, max_batch: 16, ..Default::default() };
    let f16 = logits_trace(&model, SessionConfig { kv: KvType::F16, ..base }, &tokens, 60);
    let q8 = logits_trace(&model, SessionConfig { kv: KvType::Q8, ..base }, &tokens, 60);
    let max_diff = f16.iter().zip(&q8).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let max_abs = f16.iter().map(|v| v.abs()).fold(0.0, f32::max);
    eprintln!("q8 vs f16 KV: max |logit diff| {max_diff} = {:.4} of max |logit| {max_abs}", max_diff / max_abs);
    assert!(max_diff > 0.0, "q8 KV must actually quantize");
    // Measured 0.0674 of the largest logit (2026-12-02).
    assert!(max_diff < 0.08 * max_abs, "q8 KV drifts too far: {max_diff} (max |logit| {max_abs})");
}
