//! Chat prompts are tokenized as transformers'
//! `apply_chat_template(tokenize=True)` does: the rendered template, special
//! tokens parsed, no BOS added on top of a template's `{{ bos_token }}`.
//! Goldens from `scripts/chat_goldens.py` (transformers 5.24.0) for
//! ChatML-, Llama-3- and Mistral-style templates over SmolLM2's tokenizer.
#![cfg(feature = "cli")]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use serde_json::Value;

#[test]
fn chat_prompt_ids_equal_transformers() {
    let goldens: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/chat-templates/goldens.json")).expect("goldens"),
    )
    .expect("json");
    let src = smollm2_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ferrite = env!("CARGO_BIN_EXE_ferrite");
    let mut models = BTreeMap::new();
    let cases = goldens["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let style = case["style"].as_str().expect("style");
        let model = models.entry(style.to_string()).or_insert_with(|| {
            // SmolLM2 with this case's template and BOS rule.
            let dir = tmp.path().join(style);
            std::fs::create_dir(&dir).expect("mkdir");
            for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
                std::fs::copy(src.join(f), dir.join(f)).expect("copy");
            }
            std::os::unix::fs::symlink(src.join("model.safetensors"), dir.join("model.safetensors")).expect("link");
            edit_json(&dir.join("tokenizer_config.json"), |t| {
                t.insert("chat_template".into(), case["chat_template"].clone());
                t.insert("add_bos_token".into(), case["add_bos_token"].clone());
            });
            let out = tmp.path().join(format!("{style}.frt"));
            let o = Command::new(ferrite)
                .args([
                    "convert",
                    dir.to_str().expect("utf8"),
                    "-o",
                    out.to_str().expect("utf8"),
                    "--weights",
                    "q4",
                    "-q",
                ])
                .output()
                .expect("spawn");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out
        });
        let user = case["messages"][0]["content"].as_str().expect("content");
        let o = Command::new(ferrite)
            .args(["run", "-m", model.to_str().expect("utf8"), "--chat", "-p", user, "-n", "1", "--temp", "0"])
            .args(["--verbose-prompt", "--output", "ids", "-t", "1"])
            .output()
            .expect("spawn");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        let line = err.lines().find_map(|l| l.strip_prefix("[ferrite] prompt ids (")).expect("prompt ids line");
        let got: Vec<u64> = line.split_once("): ").expect("ids").1.split(',').map(|v| v.parse().expect("id")).collect();
        let want: Vec<u64> = case["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id")).collect();
        assert_eq!(got, want, "{style}: {user:?}");
    }
}
