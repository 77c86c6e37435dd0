//! Chat prompts are tokenized as transformers'
//! `apply_chat_template(tokenize=True)` does: the rendered template, special
//! tokens parsed, no BOS added on top of a template's `{{ bos_token }}`.
//! Goldens from `scripts/chat_goldens.py` (transformers 5.24.0) for
//! ChatML-, Llama-3- and Mistral-style templates over SmolLM2's tokenizer.
#![cfg(feature = "cli")]

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

#[test]
fn chat_prompt_ids_equal_transformers() {
    let goldens: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/chat-templates/goldens.json")).expect("goldens"),
    )
    .expect("json");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut models = BTreeMap::new();
    let cases = goldens["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let style = case["style"].as_str().expect("style");
        let model = models.entry(style.to_string()).or_insert_with(|| {
            // SmolLM2 with this case's template and BOS rule.
            let dir = smollm2_variant(tmp.path(), style, |t| {
                t.insert("chat_template".into(), case["chat_template"].clone());
                t.insert("add_bos_token".into(), case["add_bos_token"].clone());
            });
            cli_convert_ok(&dir, &tmp.path().join(format!("{style}.frt")), "q4")
        });
        let user = case["messages"][0]["content"].as_str().expect("content");
        let run = ["run", "-m", model.as_str(), "--chat", "-p", user, "-n", "1", "--temp", "0"];
        let o = ferrite([&run[..], &["--verbose-prompt", "--output", "ids", "-t", "1"]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        let line = err.lines().find_map(|l| l.strip_prefix("[ferrite] prompt ids (")).expect("prompt ids line");
        let got: Vec<u64> = line.split_once("): ").expect("ids").1.split(',').map(|v| v.parse().expect("id")).collect();
        let want: Vec<u64> = case["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id")).collect();
        assert_eq!(got, want, "{style}: {user:?}");
    }
}
