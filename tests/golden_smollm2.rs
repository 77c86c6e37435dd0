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
        let first = argmax(session.prefill(&ids).expect("prefill"));
        let got = decode_greedy(first, greedy.len(), |id| argmax(session.step(id).expect("step")));
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
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let r = ferrite_runtime::eval::perplexity(&mut session, tokens, 512, &mut |_, _, _| {}).expect("perplexity");
    assert_eq!((r.tokens, r.predicted), (2215, 2210));
    eprintln!("SmolLM2 {weights:?} weights, {kv:?} KV: mean NLL {:.6}, perplexity {:.4}", r.mean_nll(), r.perplexity());
    r.perplexity()
}

/// Perplexity on apache-2.0.txt (the golden's own token ids, ctx 512, f32 KV):
/// f32 weights within 0.1 % of transformers' 16.5223; q8 within 1 % of f32;
/// q4 within 30 % of f32 (measured 1.275x, tracked in README: symmetric q4 on
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
    // Measured 21.0628 / 16.5223 = 1.2748 (2026-12-02).
    assert!(q4_ppl / f32_ppl < 1.30, "q4 perplexity {q4_ppl} vs f32 {f32_ppl}");
}

/// `ferrite perplexity --kl-divergence-base / --kl-divergence` on SmolLM2
/// (the first 1 200 characters of apache-2.0.txt, 64-token windows, second
/// halves scored): a model against itself has KL divergence 0 and top-1
/// agreement 1; q8 and q4 diverge, q4a does not (it reproduces the source's
/// Q4_1 groups); a base made from another text or window
/// size is refused with a clear message.
#[test]
fn smollm2_kl_divergence_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = apache_text(1200);
    let text_path = dir.path().join("text.txt");
    std::fs::write(&text_path, &text).expect("write text");
    let other_path = dir.path().join("other.txt");
    std::fs::write(&other_path, text.replace("License", "Licence")).expect("write text");
    let run = |args: &[&str]| {
        let out = ferrite(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let model = |w: &str| {
        let path = dir.path().join(format!("{w}.frt"));
        let (ok, _, err) =
            run(&["convert", smollm2_dir().to_str().unwrap(), "-o", path.to_str().unwrap(), "-q", "--weights", w]);
        assert!(ok, "convert {w}: {err}");
        path.to_str().unwrap().to_owned()
    };
    let base = dir.path().join("base.kld");
    let base = base.to_str().unwrap();
    let text_arg = text_path.to_str().unwrap();
    let ppl = |m: &str, extra: &[&str]| {
        let mut args =
            vec!["perplexity", "-m", m, "-f", text_arg, "--ctx", "64", "--score", "second-half", "--json", "-t", "2"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let f32_model = model("f32");
    let (ok, out, err) = ppl(&f32_model, &["--kl-divergence-base", base]);
    assert!(ok, "{err}");
    let plain: serde_json::Value = serde_json::from_str(&out).expect("json");
    let n_tokens = plain["tokens"].as_u64().unwrap() as usize;
    assert_eq!(plain["predicted"].as_u64().unwrap() as usize, (n_tokens / 64) * 31, "second-half count");
    let compare_with = |m: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--kl-divergence", base];
        args.extend_from_slice(extra);
        let (ok, out, err) = ppl(m, &args);
        assert!(ok, "{m}: {err}");
        let j: serde_json::Value = serde_json::from_str(&out).expect("json");
        eprintln!("{m}: {j}");
        j
    };
    let compare = |m: &str| compare_with(m, &[]);
    let same = compare(&f32_model);
    assert!(same["kld_mean"].as_f64().unwrap().abs() < 1e-6, "{same}");
    assert!(same["kld_p99"].as_f64().unwrap().abs() < 1e-5, "{same}");
    assert_eq!(same["top1_agreement"].as_f64(), Some(1.0));
    assert!((same["ppl_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{same}");
    assert_eq!(same["perplexity"], plain["perplexity"]);
    let kld = |w: &str| compare(&model(w))["kld_mean"].as_f64().unwrap();
    let (q8, q4, q4a) = (kld("q8"), kld("q4"), kld("q4a"));
    assert!(q8 > 1e-5 && q8 < 0.01, "q8 KLD {q8}");
    assert!(q4 > 0.02 && q4 < 1.0, "q4 KLD {q4}");
    // q4a on the source's own Q4_1 groups (and the default q8 table on its
    // Q8_0 one) reproduces the weights: with f32 activations the divergence
    // is at f32 rounding level; by default the table's product uses int8
    // activations, which leaves a small one.
    assert!(q4a.abs() < 2e-3 && q4a < q8, "q4a KLD {q4a} vs q8 {q8} and q4 {q4}");
    let q4a_exact = compare_with(&model("q4a"), &["--f32-activations"])["kld_mean"].as_f64().unwrap();
    assert!(q4a_exact.abs() < 1e-4, "q4a KLD with f32 activations {q4a_exact}");

    // Mismatches.
    let (ok, _, err) = run(&[
        "perplexity",
        "-m",
        &f32_model,
        "-f",
        text_arg,
        "--ctx",
        "32",
        "--score",
        "second-half",
        "--kl-divergence",
        base,
    ]);
    assert!(!ok && err.contains("--ctx 64") && err.contains("--ctx 32"), "{err}");
    let (ok, _, err) = run(&["perplexity", "-m", &f32_model, "-f", text_arg, "--ctx", "64", "--kl-divergence", base]);
    assert!(!ok && err.contains("--score second-half"), "{err}");
    let (ok, _, err) = run(&[
        "perplexity",
        "-m",
        &f32_model,
        "-f",
        other_path.to_str().unwrap(),
        "--ctx",
        "64",
        "--score",
        "second-half",
        "--kl-divergence",
        base,
    ]);
    assert!(!ok && err.contains("different text or tokenizer"), "{err}");
}

/// For a model that adds BOS, `ferrite perplexity` follows llama-perplexity:
/// the text is tokenized once with BOS first and every window starts with
/// BOS in place of its own first token. SmolLM2 with `add_bos_token: true`
/// (its BOS is `<|im_start|>`, id 1): the CLI's mean NLL equals windows
/// built that way by hand and scored position by position.
#[test]
fn perplexity_starts_every_window_with_bos_when_the_model_adds_it() {
    use ferrite_runtime::tokenizer::Tokenizer;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = smollm2_variant(tmp.path(), "smollm2-bos", |t| {
        t.insert("add_bos_token".into(), serde_json::Value::Bool(true));
    });
    let frt = tmp.path().join("m.frt");
    cli_convert_ok(&dir, &frt, "q8");
    let text = apache_text(1200);
    let text_path = tmp.path().join("t.txt");
    std::fs::write(&text_path, &text).expect("write");
    let out = ferrite_ok(&[
        "perplexity",
        "-m",
        frt.to_str().expect("utf8"),
        "-f",
        text_path.to_str().expect("utf8"),
        "--ctx",
        "64",
        "--kv",
        "f32",
        "-t",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let cli_nll = v["mean_nll"].as_f64().expect("mean_nll");

    let bytes = ferrite_format::writer::AlignedBytes::read(&frt).expect("read");
    let model = Model::from_bytes(&bytes).expect("model");
    assert!(model.config().add_bos());
    let bos = model.config().bos().expect("bos");
    let tok = Tokenizer::new(*model.file().tokenizer().expect("tokenizer")).expect("tokenizer");
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(&text, &mut ids).expect("encode");
    let tokens: Vec<u32> = std::iter::once(bos).chain(ids[..n].iter().copied()).collect();
    assert_eq!(v["tokens"].as_u64(), Some(tokens.len() as u64));
    let plan = model.plan(&SessionConfig { max_ctx: 64, kv: KvType::F32, ..Default::default() }).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let (mut sum, mut predicted) = (0.0f64, 0usize);
    for chunk in tokens.chunks(64).filter(|c| c.len() >= 2) {
        let mut window = chunk.to_vec();
        window[0] = bos;
        session.reset();
        let mut next = vec![];
        session.prefill_all(&window, &mut |pos, l| next.push((pos, l.to_vec()))).expect("prefill");
        for (pos, logits) in next.iter().filter(|(pos, _)| pos + 1 < window.len()) {
            sum += ferrite_runtime::eval::token_nll(logits, chunk[pos + 1]);
            predicted += 1;
        }
    }
    assert_eq!(v["predicted"].as_u64(), Some(predicted as u64));
    let by_hand = sum / predicted as f64;
    assert!((cli_nll - by_hand).abs() < 1e-9, "CLI mean NLL {cli_nll} vs windows with BOS {by_hand}");
}
