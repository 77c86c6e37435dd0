//! The runtime's generation loop against a loop written out by hand over
//! the same session calls: the same ids, the stop rule, `ignore_eos`, the
//! observer's callbacks and their order, streamed text, and errors.

use std::ops::ControlFlow;

use ferrite_format::DType;
use ferrite_runtime::generate::{generate, End, GenBuffers, GenError, GenOptions, History, Observer};
use ferrite_runtime::sampler::{Sampler, SamplerConfig};
use ferrite_runtime::{Error, Model, Session, SessionConfig};
use ferrite_test_support::convert::tiny_frt;

#[derive(Default)]
struct Log {
    prompt_rows: Vec<usize>,
    next: Vec<(usize, Vec<f32>)>,
    ids: Vec<u32>,
    prefilled: usize,
    stop_after: Option<usize>,
}

impl Observer for Log {
    fn wants_prompt_logits(&self) -> bool {
        true
    }
    fn prompt_logits(&mut self, pos: usize, _: &[f32]) {
        self.prompt_rows.push(pos);
    }
    fn prefilled(&mut self) {
        self.prefilled += 1;
    }
    fn next_logits(&mut self, index: usize, logits: &[f32]) {
        self.next.push((index, logits.to_vec()));
    }
    fn token(&mut self, id: u32) -> ControlFlow<()> {
        self.ids.push(id);
        if self.stop_after == Some(self.ids.len()) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// The hand-written loop: sample from the prefill's logits, feed back, up
/// to `max_new` ids or a stop id.
fn by_hand(
    session: &mut Session<'_, '_>,
    sampler: &mut Sampler,
    prompt: &[u32],
    max_new: usize,
    stop: &dyn Fn(u32) -> bool,
) -> Vec<u32> {
    let vocab = session.logits().len();
    let mut scratch = vec![0u32; vocab];
    let mut history = prompt.to_vec();
    let mut logits = session.prefill(prompt).expect("prefill").to_vec();
    let mut ids = vec![];
    for i in 0..max_new {
        let window = sampler.config().repeat_last_n;
        let id = sampler
            .sample(&mut logits, &history[history.len() - window.min(history.len())..], &mut scratch)
            .expect("sample");
        ids.push(id);
        history.push(id);
        if stop(id) || i + 1 == max_new {
            break;
        }
        logits.copy_from_slice(session.step(id).expect("step"));
    }
    ids
}

#[test]
fn equals_the_loop_written_by_hand() {
    let bytes = tiny_frt("llama-gqa", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let plan = model.plan(&SessionConfig { max_ctx: 48, max_batch: 5, ..Default::default() }).expect("plan");
    let vocab = model.config().vocab_size as usize;
    let prompt: Vec<u32> = (0..13).map(|i| (i * 11 + 2) % vocab as u32).collect();
    let config =
        SamplerConfig { temperature: 0.8, repeat_penalty: 1.3, repeat_last_n: 16, seed: 3, ..Default::default() };
    for max_new in [1usize, 2, 70] {
        let mut arena = vec![0u8; plan.arena_bytes()];
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let want = by_hand(&mut session, &mut Sampler::new(config).expect("sampler"), &prompt, max_new, &|_| false);

        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let (mut logits, mut scratch, mut recent) = (vec![0f32; vocab], vec![0u32; vocab], vec![0u32; 17]);
        let mut history = History::new(&mut recent);
        let mut log = Log::default();
        let opts = GenOptions { max_new, ignore_eos: true };
        let buffers = GenBuffers { logits: &mut logits, scratch: &mut scratch };
        let mut sampler = Sampler::new(config).expect("sampler");
        let done =
            generate(&mut session, model.config(), None, &mut sampler, &prompt, &opts, buffers, &mut history, &mut log)
                .expect("generate");
        assert_eq!(log.ids, want, "max_new {max_new}");
        assert_eq!((done.generated, done.decode_steps), (max_new, max_new - 1));
        assert!(matches!(done.end, End::MaxTokens));
        assert_eq!(log.prompt_rows, (0..prompt.len()).collect::<Vec<_>>());
        assert_eq!(log.prefilled, 1);
        assert_eq!(log.next.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..max_new).collect::<Vec<_>>());
        // 48 slots, 13 + 69 tokens: the streaming cache wrapped.
        assert_eq!(session.position(), prompt.len() + max_new - 1);
    }
}

#[test]
fn stops_on_a_stop_id_unless_told_not_to_and_when_the_observer_says() {
    let bytes = tiny_frt("llama-gqa", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let plan = model.plan(&SessionConfig { max_ctx: 64, ..Default::default() }).expect("plan");
    let vocab = model.config().vocab_size as usize;
    let prompt = [1u32, 57, 311, 92];
    let greedy = SamplerConfig::greedy();
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let free = by_hand(&mut session, &mut Sampler::new(greedy).expect("sampler"), &prompt, 20, &|_| false);
    let stops = model.config().stop_ids();
    let first_stop = free.iter().position(|id| stops.contains(id));

    let (mut logits, mut scratch, mut recent) = (vec![0f32; vocab], vec![0u32; vocab], vec![0u32; 100]);
    let mut run = |ignore_eos: bool, stop_after: Option<usize>| {
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut history = History::new(&mut recent);
        let mut log = Log { stop_after, ..Log::default() };
        let buffers = GenBuffers { logits: &mut logits, scratch: &mut scratch };
        let opts = GenOptions { max_new: 20, ignore_eos };
        let done = generate(
            &mut session,
            model.config(),
            None,
            &mut Sampler::new(greedy).expect("sampler"),
            &prompt,
            &opts,
            buffers,
            &mut history,
            &mut log,
        )
        .expect("generate");
        (done, log.ids)
    };
    let (done, ids) = run(true, None);
    assert_eq!(ids, free);
    assert!(matches!(done.end, End::MaxTokens));
    let (done, ids) = run(false, None);
    match first_stop {
        Some(at) => {
            assert_eq!(ids, free[..=at]);
            assert!(matches!(done.end, End::StopToken));
        }
        None => assert_eq!(ids, free),
    }
    let (done, ids) = run(true, Some(3));
    assert_eq!(ids, free[..3]);
    assert!(matches!(done.end, End::Observer));
    assert_eq!(done.decode_steps, 2);
}

#[test]
fn buffers_and_errors() {
    let bytes = tiny_frt("llama-gqa", DType::F32);
    let model = Model::from_bytes(&bytes).expect("model");
    let cfg = SessionConfig { max_ctx: 8, streaming: false, ..Default::default() };
    let plan = model.plan(&cfg).expect("plan");
    let vocab = model.config().vocab_size as usize;
    let mut arena = vec![0u8; plan.arena_bytes()];
    let (mut logits, mut scratch) = (vec![0f32; vocab], vec![0u32; vocab]);
    // One generation from a fresh session: `logits_len` of the logits
    // buffer, a history of `recent` ids.
    let mut run = |prompt: &[u32], logits_len: usize, recent: usize| {
        let mut session = Session::new(&model, &plan, &mut arena).expect("session");
        let mut history = vec![0u32; recent];
        let buffers = GenBuffers { logits: &mut logits[..logits_len], scratch: &mut scratch };
        let mut sampler = Sampler::new(SamplerConfig::greedy()).expect("sampler");
        let opts = GenOptions { max_new: 10, ignore_eos: true };
        generate(
            &mut session,
            model.config(),
            None,
            &mut sampler,
            prompt,
            &opts,
            buffers,
            &mut History::new(&mut history),
            &mut (),
        )
    };
    // Greedy's window is 64 ids: a history of 64 cannot hold it and one more.
    let r = run(&[1, 2], vocab, 64);
    assert!(matches!(r, Err(GenError::HistoryTooSmall { window: 64, given: 64 })), "{r:?}");
    let r = run(&[1, 2], vocab - 1, 65);
    assert!(matches!(r, Err(GenError::BufferTooSmall { .. })), "{r:?}");
    let r = run(&[vocab as u32], vocab, 65);
    assert!(matches!(r, Err(GenError::Backend(Error::BadToken { .. }))), "{r:?}");
    // A full cache mid-way (streaming off, 8 slots): the tokens before stand.
    let r = run(&[1, 2, 3], vocab, 65).expect("generate");
    assert!(matches!(r.end, End::Backend(Error::ContextFull { .. })), "{r:?}");
    assert_eq!((r.generated, r.decode_steps), (6, 5));
}
