//! Criterion benchmarks of tokenization: Ferrite's tokenizer and the
//! `tokenizers` crate (Hugging Face's, with the same `tokenizer.json`) on
//! the same inputs in the same run, in MB/s of input text.
//!
//! Inputs: 1 MiB of English prose (`apache-2.0.txt` repeated), 1 MiB of
//! one repeated character, 256 KiB of spaces. Vocabularies: SmolLM2's
//! byte-level BPE (`tests/fixtures/smollm2-135m/tokenizer.json`, both
//! tokenizers), and llama.cpp's `ggml-vocab-llama-spm.gguf` SentencePiece
//! vocabulary (Ferrite only: there is no `tokenizer.json` of it here), read
//! from `FERRITE_LLAMA_CPP_SRC` when that is set
//! (`export FERRITE_LLAMA_CPP_SRC=$(bash scripts/fetch-llama-cpp-src.sh | tail -1)`).
//! Every input's ids are checked equal between the two tokenizers before
//! it is timed.
//!
//! Run: `cargo bench --bench tokenizer`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrite::converter::gguf::{read_tokenizer, GgufFile};
use ferrite::converter::hf_tokenizer;
use ferrite::format::writer::AlignedBytes;
use ferrite::format::TokenizerView;
use ferrite::runtime::tokenizer::Tokenizer;

fn inputs() -> Vec<(&'static str, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prose = std::fs::read_to_string(root.join("tests/fixtures/smollm2-135m/apache-2.0.txt")).expect("text");
    let mut mib = String::with_capacity((1 << 20) + prose.len());
    while mib.len() < 1 << 20 {
        mib.push_str(&prose);
    }
    let cut = (0..=1 << 20).rev().find(|&i| mib.is_char_boundary(i)).unwrap_or(0);
    mib.truncate(cut);
    vec![("prose-1MiB", mib), ("one-char-1MiB", "a".repeat(1 << 20)), ("spaces-256KiB", " ".repeat(256 << 10))]
}

fn ferrite_encode(t: &Tokenizer<'_>, text: &str, out: &mut [u32]) -> usize {
    t.encode(text, out).unwrap_or_else(|e| panic!("{e}"))
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/smollm2-135m");
    let hf = hf_tokenizer::read(&dir).expect("read").expect("tokenizer.json");
    let n_tokens = hf.builder.tokens.len() as u32;
    let section = AlignedBytes::new(&hf.section_bytes().expect("section"));
    let ours = Tokenizer::new(TokenizerView::parse(&section, n_tokens).expect("view")).expect("tokenizer");
    let theirs = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizers");
    let spm = std::env::var_os("FERRITE_LLAMA_CPP_SRC").map(|src| {
        let gguf = GgufFile::open(&Path::new(&src).join("models/ggml-vocab-llama-spm.gguf")).expect("spm vocab");
        let tok = read_tokenizer(&gguf).expect("tokenizer").expect("a tokenizer");
        let n = tok.builder.tokens.len() as u32;
        (AlignedBytes::new(&tok.section_bytes().expect("section")), n)
    });
    let spm = spm.as_ref().map(|(b, n)| Tokenizer::new(TokenizerView::parse(b, *n).expect("view")).expect("spm"));
    if spm.is_none() {
        eprintln!("FERRITE_LLAMA_CPP_SRC is not set: the SentencePiece rows are skipped");
    }
    for (name, text) in inputs() {
        let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
        let n = ferrite_encode(&ours, &text, &mut out);
        let want = theirs.encode(text.as_str(), false).expect("encode").get_ids().to_vec();
        assert_eq!(out[..n], want[..], "{name}: ids differ from the tokenizers crate");
        let mut g = c.benchmark_group(format!("tokenize/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        g.bench_function("ferrite/byte-level", |b| b.iter(|| black_box(ferrite_encode(&ours, &text, &mut out))));
        g.bench_function("tokenizers/byte-level", |b| {
            b.iter(|| black_box(theirs.encode(text.as_str(), false).expect("encode").len()))
        });
        if let Some(spm) = &spm {
            g.bench_function("ferrite/sentencepiece", |b| b.iter(|| black_box(ferrite_encode(spm, &text, &mut out))));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
