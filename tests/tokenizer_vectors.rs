//! llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf` with their
//! `.inp`/`.out` files, made by its `convert_hf_to_gguf_update.py` from each
//! model's Hugging Face tokenizer) through Ferrite: the GGUF's tokenizer
//! metadata is read by the converter's GGUF reader, built into a tokenizer
//! section by the same code the converter runs, validated by the format
//! crate and encoded by the runtime. Every case must give the expected ids
//! exactly.
//!
//! Inputs are encoded as llama.cpp's `test-tokenizer-0` does: no BOS, and
//! control tokens not matched in the text (user-defined ones are), which is
//! `Tokenizer::encode_ordinary`.
//!
//! Needs `FERRITE_LLAMA_CPP_SRC`: llama.cpp's sources as vendored in the
//! llama-cpp-python 0.3.36 sdist; `scripts/test.sh` sets it from
//! `scripts/fetch-llama-cpp-src.sh`.

use std::path::PathBuf;

use ferrite::converter::gguf::{read_tokenizer, GgufFile};
use ferrite::format::writer::AlignedBytes;
use ferrite::format::TokenizerView;
use ferrite::runtime::tokenizer::Tokenizer;

fn models_dir() -> PathBuf {
    let Some(src) = std::env::var_os("FERRITE_LLAMA_CPP_SRC") else {
        panic!(
            "FERRITE_LLAMA_CPP_SRC is not set: run the tests through scripts/test.sh, or set it with\n  \
             export FERRITE_LLAMA_CPP_SRC=$(bash scripts/fetch-llama-cpp-src.sh | tail -1)"
        );
    };
    let dir = PathBuf::from(src).join("models");
    assert!(
        dir.is_dir(),
        "{}: no such folder (FERRITE_LLAMA_CPP_SRC must be llama.cpp's source folder)",
        dir.display()
    );
    dir
}

/// The cases of `ggml-vocab-{name}.gguf.inp` / `.out`, split as
/// llama.cpp's `test-tokenizer-0` splits them.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = models_dir();
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).expect("read .inp");
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).expect("read .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(sep) {
            Some(i) => {
                inputs.push(rest[..i].to_string());
                rest = &rest[i + sep.len()..];
            }
            None => {
                inputs.push(rest.to_string());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|t| t.parse().expect("token id")).collect()).collect();
    assert_eq!(inputs.len(), outputs.len(), "{name}: .inp and .out have different numbers of cases");
    assert!(inputs.len() >= 30, "{name}: only {} cases", inputs.len());
    inputs.into_iter().zip(outputs).collect()
}

fn check(name: &str) {
    let path = models_dir().join(format!("ggml-vocab-{name}.gguf"));
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let tok = read_tokenizer(&gguf).unwrap_or_else(|e| panic!("{e}")).expect("the vocab file has a tokenizer");
    let n_tokens = tok.builder.tokens.len() as u32;
    let section = AlignedBytes::new(&tok.section_bytes().unwrap_or_else(|e| panic!("{name}: {e}")));
    let view = TokenizerView::parse(&section, n_tokens).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tokenizer = Tokenizer::new(view).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cases = cases(name);
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
        let got = match tokenizer.encode_ordinary(text, &mut out) {
            Ok(n) => out[..n].to_vec(),
            Err(e) => {
                failures.push(format!("{text:?}: {e}"));
                continue;
            }
        };
        if &got != want {
            failures.push(format!("{text:?}\n    expected {want:?}\n    got      {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn phi_3() {
    check("phi-3");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

#[test]
fn starcoder() {
    check("starcoder");
}

#[test]
fn refact() {
    check("refact");
}
