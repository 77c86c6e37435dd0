//! Untrusted input at the runtime's API (issue #7, part 4): every bad
//! argument is an [`Error`], never a panic or undefined behaviour, and a
//! refused call leaves the session as it was.
//!
//! Out-of-range token ids (prefill and step), a prompt longer than the
//! context with streaming off, an arena too small, a model buffer without
//! the 64-byte alignment the reader needs, an empty prompt, and session
//! configs out of range (sinks ≥ max_ctx, ...). Saved-state errors are in
//! `streaming.rs`.

use ferrite_format::writer::AlignedBytes;
use ferrite_format::DType;
use ferrite_runtime::{Error, KvType, Model, Session, SessionConfig};
use ferrite_test_support::convert::tiny_frt;

/// The `llama-gqa` fixture converted to q8 (vocab 512, 2 layers).
const VOCAB: u32 = 512;

fn config(max_ctx: usize, streaming: bool) -> SessionConfig {
    SessionConfig { max_ctx, kv: KvType::F32, max_batch: 8, streaming, sinks: 2, ..Default::default() }
}

/// Runs `f` on a fresh session.
fn with_session(bytes: &AlignedBytes, cfg: SessionConfig, f: impl FnOnce(&mut Session<'_, '_>)) {
    let model = Model::from_bytes(bytes.as_slice()).expect("model");
    let plan = model.plan(&cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    f(&mut session);
}

/// The logits after `tokens` in a fresh session, for comparisons.
fn logits_after(bytes: &AlignedBytes, cfg: SessionConfig, tokens: &[u32]) -> Vec<f32> {
    let mut out = Vec::new();
    with_session(bytes, cfg, |s| out = s.prefill(tokens).expect("prefill").to_vec());
    out
}

#[test]
fn out_of_range_token_ids_are_refused_in_prefill_and_step() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let cfg = config(32, false);
    let reference = logits_after(&bytes, cfg, &[1, 2, 3, 4]);
    with_session(&bytes, cfg, |s| {
        for bad in [VOCAB, VOCAB + 1, u32::MAX] {
            // Anywhere in the prompt, even after valid ids.
            for prompt in [vec![bad], vec![1, 2, bad], vec![bad, 1, 2], vec![1; 20].into_iter().chain([bad]).collect()]
            {
                let r = s.prefill(&prompt).map(|_| ());
                assert_eq!(r, Err(Error::BadToken { id: bad, vocab: VOCAB }), "prefill {prompt:?}");
                assert_eq!(s.position(), 0, "a refused prompt moved the position");
            }
            let r = s.prefill_all(&[1, bad], &mut |_, _| panic!("no logits for a refused prompt")).map(|_| ());
            assert_eq!(r, Err(Error::BadToken { id: bad, vocab: VOCAB }));
        }
        // The largest valid id is fine.
        s.prefill(&[1, 2, 3]).expect("prefill");
        for bad in [VOCAB, u32::MAX] {
            assert_eq!(s.step(bad).map(|_| ()), Err(Error::BadToken { id: bad, vocab: VOCAB }), "step {bad}");
            assert_eq!(s.position(), 3);
        }
        // The refusals changed nothing: the session continues exactly as a
        // fresh one that never saw them.
        assert_eq!(s.step(4).expect("step").to_vec(), reference);
        assert!(s.step(VOCAB - 1).expect("largest id").iter().all(|v| v.is_finite()));
    });
}

#[test]
fn empty_prompt_is_refused() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    for streaming in [false, true] {
        with_session(&bytes, config(16, streaming), |s| {
            assert_eq!(s.prefill(&[]).map(|_| ()), Err(Error::EmptyPrompt));
            assert_eq!(s.prefill_all(&[], &mut |_, _| panic!("no logits")), Err(Error::EmptyPrompt));
            assert_eq!(s.position(), 0);
            s.prefill(&[5, 6]).expect("prefill");
            assert_eq!(s.prefill(&[]).map(|_| ()), Err(Error::EmptyPrompt));
            assert_eq!(s.position(), 2);
        });
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_with_streaming_off() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let ids = |n: usize| (0..n as u32).map(|i| (i * 37 + 3) % VOCAB).collect::<Vec<u32>>();
    with_session(&bytes, config(16, false), |s| {
        for n in [17, 100, 10_000] {
            let r = s.prefill(&ids(n)).map(|_| ());
            assert_eq!(r, Err(Error::ContextFull { used: 0, adding: n, max_ctx: 16 }), "{n} tokens");
            assert_eq!(s.position(), 0);
        }
        // Exactly the context fits; then nothing more.
        s.prefill(&ids(10)).expect("10 tokens");
        assert_eq!(s.prefill(&ids(7)).map(|_| ()), Err(Error::ContextFull { used: 10, adding: 7, max_ctx: 16 }));
        assert_eq!(s.position(), 10);
        s.prefill(&ids(6)).expect("up to max_ctx");
        assert_eq!(s.step(1).map(|_| ()), Err(Error::ContextFull { used: 16, adding: 1, max_ctx: 16 }));
        assert_eq!(s.position(), 16);
        // A reset makes room again.
        s.reset();
        s.prefill(&ids(16)).expect("after reset");
    });
    // With streaming on, the same long prompt runs.
    with_session(&bytes, config(16, true), |s| {
        let logits = s.prefill(&ids(100)).expect("streaming prompt");
        assert!(logits.iter().all(|v| v.is_finite()));
        assert_eq!(s.position(), 100);
    });
}

#[test]
fn an_arena_too_small_is_refused_and_any_alignment_of_a_large_enough_one_works() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let model = Model::from_bytes(bytes.as_slice()).expect("model");
    let cfg = config(32, false);
    let plan = model.plan(&cfg).expect("plan");
    let needed = plan.arena_bytes();
    assert!(needed > 64);
    let mut arena = vec![0u8; needed + 64];
    for given in [0, 1, 63, needed / 2, needed - 1] {
        let r = Session::new(&model, &plan, &mut arena[..given]).map(|_| ());
        assert_eq!(r, Err(Error::ArenaTooSmall { needed, given }), "{given} bytes");
    }
    // The plan includes the alignment slack: exactly `needed` bytes work at
    // every start address, with the same results.
    let reference = logits_after(&bytes, cfg, &[7, 8, 9]);
    for start in 0..64 {
        let mut s = Session::new(&model, &plan, &mut arena[start..start + needed])
            .unwrap_or_else(|e| panic!("arena at offset {start}: {e}"));
        assert_eq!(s.prefill(&[7, 8, 9]).expect("prefill").to_vec(), reference, "arena at offset {start}");
    }
}

#[test]
fn a_plan_for_another_model_is_refused() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let model = Model::from_bytes(bytes.as_slice()).expect("model");
    let other_bytes = tiny_frt("llama-odd", DType::Q4);
    let other = Model::from_bytes(other_bytes.as_slice()).expect("other model");
    let plan = other.plan(&config(16, false)).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes().max(1 << 20)];
    assert_eq!(Session::new(&model, &plan, &mut arena).map(|_| ()), Err(Error::PlanMismatch));
}

#[test]
fn a_misaligned_model_buffer_is_an_error_not_undefined_behaviour() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let file = bytes.as_slice();
    // The same bytes at every misaligned start (an AlignedBytes buffer is
    // 64-byte aligned; copying into it at offset k gives a start ≡ k).
    let mut padded = AlignedBytes::new(&vec![0u8; file.len() + 64]);
    for k in 1..64 {
        let buf = padded.as_mut_slice();
        buf[k..k + file.len()].copy_from_slice(file);
        let shifted = &buf[k..k + file.len()];
        assert_eq!(shifted.as_ptr() as usize % 64, k);
        match Model::from_bytes(shifted) {
            Err(Error::Format(ferrite_format::Error::Misaligned { required: 64, address, .. })) => {
                assert_eq!(address, shifted.as_ptr() as usize, "offset {k}: the error names another address");
            }
            Err(other) => panic!("offset {k}: expected Misaligned, got {other}"),
            Ok(_) => panic!("offset {k}: a misaligned buffer was accepted"),
        }
    }
    // At offset 0 the same copy is accepted.
    let buf = padded.as_mut_slice();
    buf[..file.len()].copy_from_slice(file);
    Model::from_bytes(&buf[..file.len()]).expect("aligned copy");
    // Truncated or empty buffers are errors too.
    for len in [0, 1, 127, 128, file.len() / 2, file.len() - 1] {
        assert!(
            matches!(Model::from_bytes(&file[..len]), Err(Error::Format(_))),
            "{len} of {} bytes accepted",
            file.len()
        );
    }
}

#[test]
fn session_configs_out_of_range_are_refused() {
    let bytes = tiny_frt("llama-gqa", DType::Q8);
    let model = Model::from_bytes(bytes.as_slice()).expect("model");
    let base = config(16, true);
    let bad = |what: &'static str, cfg: SessionConfig| match model.plan(&cfg) {
        Err(Error::BadSessionConfig { what: w, .. }) if w == what => {}
        other => panic!("{what}: expected BadSessionConfig, got {:?}", other.map(|p| p.arena_bytes())),
    };
    // Sinks must leave room for the window: sinks ≥ max_ctx is refused.
    bad("sinks", SessionConfig { sinks: 16, ..base });
    bad("sinks", SessionConfig { sinks: 1000, ..base });
    bad("sinks", SessionConfig { max_ctx: 1, sinks: 1, ..base });
    bad("max_ctx", SessionConfig { max_ctx: 0, ..base });
    bad("threads", SessionConfig { threads: 0, ..base });
    bad("threads", SessionConfig { threads: 100_000, ..base });
    bad("max_batch", SessionConfig { max_batch: 0, ..base });
    // Sizes that overflow are refused, not wrapped.
    for max_ctx in [usize::MAX, usize::MAX / 2, 1 << 60] {
        let r = model.plan(&SessionConfig { max_ctx, ..base }).map(|p| p.arena_bytes());
        assert_eq!(r, Err(Error::Overflow), "max_ctx {max_ctx}");
    }
    assert_eq!(
        model.plan(&SessionConfig { max_batch: usize::MAX, ..base }).map(|p| p.arena_bytes()),
        Err(Error::Overflow)
    );
    // Sinks do not matter without streaming; the largest valid value with it.
    model.plan(&SessionConfig { sinks: 16, streaming: false, ..base }).expect("no streaming");
    model.plan(&SessionConfig { sinks: 15, ..base }).expect("sinks = max_ctx - 1");
}
