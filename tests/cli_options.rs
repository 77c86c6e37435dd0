//! The CLI's options: those `ferrite run` would otherwise parse and then
//! ignore are errors that say why; the sampling options and `perplexity
//! --streaming` do what `--help` says.
#![cfg(feature = "cli")]

mod common;

use common::*;

#[test]
fn ignored_options_are_errors() {
    let (_tmp, path) = tiny_by_cli("llama-gqa", "q8");
    let p = path.as_str();
    let base = ["run", "-m", p, "--prompt-ids", "1,2", "-n", "2"];
    for (extra, msg) in [
        (&["--chat"][..], "cannot be used with '--chat'"),
        (&["--device", "cuda", "-t", "2"][..], "no effect with --device cuda"),
        (&["--device", "cuda", "--sinks", "2"][..], "the CUDA cache does not stream"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let o = ferrite(&args);
        assert_eq!(o.status.code(), Some(if extra == ["--chat"] { 2 } else { 1 }), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // The same without the conflicting option runs.
    let o = ferrite(&[&base[..], &["--temp", "0", "--sinks", "2", "-t", "1", "--output", "ids"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `ferrite run --output ids` with `extra`, on the tiny q8 model at `model`.
fn ids(model: &str, extra: &[&str]) -> String {
    let base =
        ["run", "-m", model, "--prompt-ids", "1,57,311,92", "-n", "24", "--ignore-eos", "--output", "ids", "-t", "1"];
    let o = ferrite(&[&base[..], extra].concat());
    assert!(o.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf8").trim().to_string()
}

/// The sampling options do what `--help` says: a seed repeats a run, top-k 1
/// and min-p 1 are greedy whatever the temperature, and the repetition
/// penalty gives the ids of the runtime's generation loop with that penalty
/// (and other ids than without it).
#[test]
fn sampling_options_do_what_they_say() {
    use ferrite_runtime::generate::{generate, GenBuffers, GenOptions, History};
    use ferrite_runtime::sampler::{Sampler, SamplerConfig};
    use ferrite_runtime::{Model, Session, SessionConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("m.frt");
    let p = path.to_str().expect("utf8");
    let o = ferrite(&["convert", tiny("llama-gqa").to_str().expect("utf8"), "-o", p, "--weights", "q8", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let greedy = ids(p, &["--temp", "0"]);
    let warm = ["--temp", "1.5", "--top-k", "0", "--top-p", "1", "--min-p", "0"];
    let a = ids(p, &[&warm[..], &["--seed", "5"]].concat());
    assert_eq!(a, ids(p, &[&warm[..], &["--seed", "5"]].concat()), "--seed repeats a run");
    assert_ne!(a, ids(p, &[&warm[..], &["--seed", "6"]].concat()), "another seed, other ids");
    assert_ne!(a, greedy, "temperature 1.5 samples");
    assert_eq!(ids(p, &["--temp", "1.5", "--top-k", "1", "--seed", "9"]), greedy, "--top-k 1 is greedy");
    assert_eq!(
        ids(p, &["--temp", "1.5", "--top-k", "0", "--min-p", "1", "--seed", "9"]),
        greedy,
        "--min-p 1 is greedy"
    );

    let penalized = ids(p, &["--temp", "0", "--repeat-penalty", "1.8"]);
    assert_ne!(penalized, greedy, "the penalty changes the ids");
    let bytes = convert_to_bytes(&tiny("llama-gqa"), ferrite_format::DType::Q8);
    let model = Model::from_bytes(&bytes).expect("model");
    let cfg = SessionConfig { max_ctx: 256, threads: 1, ..Default::default() };
    let plan = model.plan(&cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let config = SamplerConfig { temperature: 0.0, repeat_penalty: 1.8, ..SamplerConfig::default() };
    let mut sampler = Sampler::new(config).expect("sampler");
    let (mut logits, mut scratch, mut recent) = (vec![0f32; 512], vec![0u32; 512], vec![0u32; 200]);
    struct Ids(Vec<String>);
    impl ferrite_runtime::generate::Observer for Ids {
        fn token(&mut self, id: u32) -> std::ops::ControlFlow<()> {
            self.0.push(id.to_string());
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut seen = Ids(Vec::new());
    let opts = GenOptions { max_new: 24, ignore_eos: true };
    let buffers = GenBuffers { logits: &mut logits, scratch: &mut scratch };
    let prompt = [1, 57, 311, 92];
    generate(
        &mut session,
        model.config(),
        None,
        &mut sampler,
        &prompt,
        &opts,
        buffers,
        &mut History::new(&mut recent),
        &mut seen,
    )
    .expect("generate");
    assert_eq!(penalized, seen.0.join(","), "--repeat-penalty 1.8");
}

/// `ferrite perplexity --streaming` runs the whole text through one
/// streaming cache: its mean NLL equals feeding the tokens one at a time
/// through a session with the same 64-slot cache and scoring each next token.
#[test]
fn streaming_perplexity_equals_token_by_token() {
    use ferrite_runtime::tokenizer::Tokenizer;
    use ferrite_runtime::{KvType, Model, Session, SessionConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("m.frt");
    let p = path.to_str().expect("utf8");
    let o = ferrite(&["convert", smollm2_dir().to_str().expect("utf8"), "-o", p, "--weights", "q8", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text: String = std::fs::read_to_string(root().join("tests/fixtures/smollm2-135m/apache-2.0.txt"))
        .expect("text")
        .chars()
        .take(700)
        .collect();
    let text_path = tmp.path().join("t.txt");
    std::fs::write(&text_path, &text).expect("write");
    let args = ["perplexity", "-m", p, "-f", text_path.to_str().expect("utf8"), "--ctx", "64", "--streaming"];
    let o = ferrite(&[&args[..], &["--sinks", "4", "--kv", "f32", "-t", "1", "--json"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");

    let bytes = convert_to_bytes(&smollm2_dir(), ferrite_format::DType::Q8);
    let model = Model::from_bytes(&bytes).expect("model");
    let tok = Tokenizer::new(*model.file().tokenizer().expect("tokenizer")).expect("tokenizer");
    let mut tokens = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(&text, &mut tokens).expect("encode");
    let tokens = &tokens[..n];
    assert!(n > 128, "{n} tokens: the 64-slot cache must wrap");
    let cfg = SessionConfig { max_ctx: 64, kv: KvType::F32, sinks: 4, threads: 1, ..Default::default() };
    let plan = model.plan(&cfg).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let mut sum = 0.0;
    for (i, &id) in tokens[..n - 1].iter().enumerate() {
        sum += ferrite_runtime::eval::token_nll(session.step(id).expect("step"), tokens[i + 1]);
    }
    let by_hand = sum / (n - 1) as f64;
    assert_eq!(v["predicted"].as_u64(), Some((n - 1) as u64));
    let cli = v["mean_nll"].as_f64().expect("mean_nll");
    assert!((cli - by_hand).abs() < 1e-9, "CLI {cli} vs token by token {by_hand}");
}
