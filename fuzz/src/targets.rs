//! The per-target logic of the fuzz targets (issue #7 item 1), shared by
//! the libFuzzer binaries in `fuzz/fuzz_targets/` and by the replay test
//! `tests/fuzz_regressions.rs` (both include this file with `#[path]`).
//!
//! Each function takes the raw fuzz input. Errors from the library are
//! fine; a panic (including a failed assertion here), a hang or an
//! unbounded allocation is a bug.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrite_format::writer::AlignedBytes;
use ferrite_format::{File, Header, LayerRole, Role, TokenizerView, HEADER_SIZE};
use ferrite_runtime::tokenizer::{Tokenizer, Utf8Stream};
use ferrite_runtime::{Model, Session, SessionConfig};

/// The repository root (this file is compiled from the root package's
/// tests and from the `fuzz/` package).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if manifest.ends_with("fuzz") {
        manifest.parent().expect("fuzz/ has a parent").to_path_buf()
    } else {
        manifest.to_path_buf()
    }
}

/// The names of the targets (also the folders under `fuzz/regressions/`).
pub const TARGETS: [&str; 7] =
    ["format_reader", "session", "tokenizer", "converter_ingest", "gguf_reader", "hf_json", "session_ring"];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "format_reader" => format_reader(data),
        "session" => {
            session(data);
        }
        "tokenizer" => tokenizer(data),
        "converter_ingest" => converter_ingest(data),
        "gguf_reader" => gguf_reader(data),
        "hf_json" => hf_json(data),
        "session_ring" => session_ring(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

// --- (a) format_reader ------------------------------------------------------

/// `File::parse` on arbitrary bytes (64-byte aligned copy); if it parses,
/// walks every tensor view, the tokenizer lookups and `verify_tensors`.
pub fn format_reader(data: &[u8]) {
    let buf = AlignedBytes::new(data);
    let Ok(file) = File::parse(buf.as_slice()) else {
        return;
    };
    walk_file(&file);
}

fn walk_file(file: &File<'_>) {
    let _ = file.header();
    let config = *file.config();
    assert!(file.bytes().len() >= HEADER_SIZE);
    for i in 0..file.n_tensors() {
        if let Ok(t) = file.tensor_at(i) {
            assert_eq!(t.data.as_ptr() as usize % ferrite_format::ALIGN, 0, "tensor {i} misaligned");
            let _ = (t.len(), t.is_empty(), t.as_f32(), t.as_f16(), t.quant_planes());
            let _ = t.verify();
            if let Some(v) = t.as_f32() {
                let _: f32 = v.iter().sum();
            }
            if let Some((q, s)) = t.quant_planes() {
                let _ = (q.len(), s.len());
            }
        }
    }
    assert!(file.tensor_at(file.n_tensors()).is_err());
    // Lookups by role, for the globals and every layer role of the first
    // layers (the config's count is untrusted, so bound it).
    for role in [Role::Embedding, Role::OutputNorm, Role::Output] {
        let _ = file.tensor(role);
    }
    for layer in 0..config.n_layers.min(64) {
        for r in LayerRole::ALL {
            let _ = file.tensor(Role::Layer(layer, r));
        }
    }
    let _ = file.tensor(Role::Layer(u32::MAX, LayerRole::ALL[0]));
    if let Some(tok) = file.tokenizer() {
        walk_tokenizer(tok);
    }
    let _ = file.verify_tensors();
}

fn walk_tokenizer(tok: &TokenizerView<'_>) {
    let _ = (tok.header(), tok.kind(), tok.pretokenizer(), tok.n_merges());
    let _ = (tok.chat_template(), tok.eot(), tok.unk(), tok.byte_fallback(), tok.add_prefix_space());
    let n = tok.n_tokens();
    for id in 0..n {
        let bytes = tok.token_bytes(id).expect("an id below n_tokens has bytes");
        let _ = (tok.token_type(id), tok.score(id));
        if let Some(found) = tok.find(bytes) {
            assert!(found < n, "find returned {found} >= n_tokens {n}");
        }
    }
    for id in [n, n.wrapping_add(1), u32::MAX] {
        if id >= n {
            assert!(tok.token_bytes(id).is_none());
            let _ = (tok.token_type(id), tok.score(id));
        }
    }
    for &s in tok.specials() {
        let _ = tok.token_bytes(s);
    }
    for b in 0..=255u8 {
        if let Some(id) = tok.byte_token(b) {
            assert!(id < n, "byte token {id} >= n_tokens {n}");
        }
    }
    let m = n.min(64);
    for left in 0..m {
        for right in 0..m.min(8) {
            let _ = tok.merge(left, right);
        }
    }
    let _ = tok.merge(u32::MAX, u32::MAX);
    let _ = tok.find(b"");
}

// --- (b) session --------------------------------------------------------------

/// Byte offsets of the meta CRC (see `ferrite_format::header`).
const CRC_AT: usize = core::mem::offset_of!(Header, meta_crc);
const CONFIG_AT: usize = 128;
const CONFIG_LEN: usize = 256;
const DIR_AT: usize = 384;
const N_TENSORS_AT: usize = core::mem::offset_of!(Header, n_tensors);
const TOK_OFFSET_AT: usize = core::mem::offset_of!(Header, tok_offset);
const TOK_SIZE_AT: usize = core::mem::offset_of!(Header, tok_size);
const TOK_CRC_AT: usize = core::mem::offset_of!(Header, tok_crc);

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Rewrites the meta CRC over header bytes 0..124, the config (256 bytes
/// at 128) and the directory (`n_tensors * 64` bytes at 384), so that
/// mutations of the header, config or directory reach the validation
/// behind the checksum; first the tokenizer section's CRC (stored in the
/// header), when its offset and size lie in the bytes. Does nothing when
/// the bytes are too short.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < DIR_AT {
        return;
    }
    let (tok_at, tok_size) = (le_u64(bytes, TOK_OFFSET_AT), le_u64(bytes, TOK_SIZE_AT));
    if tok_size > 0 && tok_at.checked_add(tok_size).is_some_and(|end| end <= bytes.len() as u64) {
        let crc = ferrite_format::checksum(&bytes[tok_at as usize..(tok_at + tok_size) as usize]);
        bytes[TOK_CRC_AT..TOK_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let n = u32::from_le_bytes(bytes[N_TENSORS_AT..N_TENSORS_AT + 4].try_into().unwrap()) as usize;
    let dir_end = n.checked_mul(ferrite_format::DIR_ENTRY_SIZE).and_then(|d| d.checked_add(DIR_AT));
    let dir_end = match dir_end {
        Some(e) if e <= bytes.len() => e,
        _ => return,
    };
    let mut covered = Vec::with_capacity(dir_end);
    covered.extend_from_slice(&bytes[..CRC_AT]);
    covered.extend_from_slice(&bytes[CONFIG_AT..CONFIG_AT + CONFIG_LEN]);
    covered.extend_from_slice(&bytes[DIR_AT..dir_end]);
    let crc = ferrite_format::checksum(&covered);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Arena limit for a fuzzed session.
const MAX_ARENA: usize = 16 << 20;

/// Input: byte 0 is the mode, the rest a Ferrite file. Mode bit 0: reseal
/// the meta CRC first; bits 1..3: number of prompt ids minus 1; bits 3..:
/// seed of the ids (some beyond any vocabulary). Parses with
/// `Model::from_bytes`, plans a small session, runs one prefill and one step.
/// Returns whether both ran (for the replay test's sanity checks).
pub fn session(data: &[u8]) -> bool {
    let Some((&mode, file)) = data.split_first() else {
        return false;
    };
    let mut buf = AlignedBytes::new(file);
    if mode & 1 == 1 {
        reseal(buf.as_mut_slice());
    }
    let Ok(model) = Model::from_bytes(buf.as_slice()) else {
        return false;
    };
    let cfg = SessionConfig { max_ctx: 32, max_batch: 4, ..Default::default() };
    let Ok(plan) = model.plan(&cfg) else {
        return false;
    };
    if plan.arena_bytes() > MAX_ARENA {
        return false;
    }
    // The weights are read on every token: refuse what would be slow.
    if model.file().bytes().len() > 8 << 20 {
        return false;
    }
    let mut arena = vec![0u8; plan.arena_bytes()];
    let Ok(mut session) = Session::new(&model, &plan, &mut arena) else {
        return false;
    };
    let vocab = model.config().vocab_size;
    let n_ids = 1 + ((mode >> 1) & 3) as usize;
    let seed = (mode >> 3) as u32;
    let ids: Vec<u32> = (0..n_ids as u32)
        .map(|i| match (seed + i) % 8 {
            7 => vocab.wrapping_add(i), // out of range
            _ => (seed.wrapping_mul(2654435761).wrapping_add(i * 97)) % vocab.max(1),
        })
        .collect();
    let mut ran = false;
    if let Ok(logits) = session.prefill(&ids) {
        assert_eq!(logits.len(), vocab as usize);
        let next = ids[0];
        if let Ok(logits) = session.step(next) {
            assert_eq!(logits.len(), vocab as usize);
            ran = true;
        }
    }
    assert!(session.position() <= session.max_ctx());
    ran
}

// --- (c) tokenizer -------------------------------------------------------------

/// The SmolLM2 tokenizer section, built once from
/// `tests/fixtures/smollm2-135m` by the converter.
fn smollm2_section() -> &'static [u8] {
    static SECTION: OnceLock<Vec<u8>> = OnceLock::new();
    SECTION.get_or_init(|| {
        let dir = repo_root().join("tests/fixtures/smollm2-135m");
        let hf = ferrite_converter::hf_tokenizer::read(&dir)
            .expect("read the SmolLM2 tokenizer.json")
            .expect("the SmolLM2 fixture has a tokenizer.json");
        hf.builder.to_bytes().expect("tokenizer section")
    })
}

fn smollm2() -> Tokenizer<'static> {
    static BYTES: OnceLock<AlignedBytes> = OnceLock::new();
    static TOKENIZER: OnceLock<Tokenizer<'static>> = OnceLock::new();
    *TOKENIZER.get_or_init(|| {
        let bytes = BYTES.get_or_init(|| AlignedBytes::new(smollm2_section()));
        // 49152: vocab_size of the SmolLM2 config.
        let view = TokenizerView::parse(bytes.as_slice(), 49152).expect("parse the SmolLM2 tokenizer section");
        Tokenizer::new(view).expect("SmolLM2 is a byte-level BPE tokenizer")
    })
}

/// Encodes the input as (lossy) UTF-8 text, with and without special
/// tokens, checks that decoding gives the text back (less bytes the
/// vocabulary has no token for), and decodes the input read as u32 ids.
pub fn tokenizer(data: &[u8]) {
    let tok = smollm2();
    let text = String::from_utf8_lossy(data);
    let expected: Vec<u8> = text.bytes().filter(|&b| tok.view().byte_token(b).is_some()).collect();
    for specials in [true, false] {
        let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
        let n = if specials { tok.encode(&text, &mut ids) } else { tok.encode_ordinary(&text, &mut ids) }
            .expect("max_tokens(len) ids always suffice");
        assert!(n <= text.len());
        let ids = &ids[..n];
        for &id in ids {
            assert!(id < tok.n_tokens(), "encode gave id {id} >= n_tokens");
        }
        let mut out = vec![0u8; text.len()];
        let m = tok.decode(ids, &mut out).expect("decode of encode fits in the text's length");
        assert_eq!(&out[..m], &expected[..], "decode(encode(text)) != text (specials: {specials})");
        // A buffer one byte short must be refused, not overrun.
        if m > 0 {
            let mut short = vec![0u8; m - 1];
            assert!(tok.decode(ids, &mut short).is_err());
        }
        let mut skipped = vec![0u8; text.len()];
        let k = tok.decode_skip_special(ids, &mut skipped).expect("skip-special decode fits");
        assert!(k <= m);
    }
    // Arbitrary ids, any value.
    let ids: Vec<u32> = data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let need: usize = ids.iter().map(|&id| tok.token_bytes(id).map_or(0, <[u8]>::len)).sum();
    let all_valid = ids.iter().all(|&id| id < tok.n_tokens());
    let mut out = vec![0u8; need];
    match tok.decode(&ids, &mut out) {
        Ok(m) => {
            assert!(all_valid, "decode accepted an out-of-range id");
            assert_eq!(m, need);
            stream_check(&out[..m]);
        }
        Err(_) => assert!(!all_valid, "decode refused valid ids with an exact-size buffer"),
    }
    let mut small = vec![0u8; need / 2];
    let _ = tok.decode(&ids, &mut small);
    let _ = tok.decode_skip_special(&ids, &mut small);
    for &id in &ids {
        let _ = (tok.is_special(id), tok.token_bytes(id));
    }
}

/// Feeds `bytes` through a [`Utf8Stream`] in uneven pieces; valid UTF-8
/// must come out unchanged.
fn stream_check(bytes: &[u8]) {
    let mut text = String::new();
    let mut stream = Utf8Stream::new();
    let mut rest = bytes;
    let mut step = 1;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(step.min(rest.len()));
        stream.push(piece, |s| text.push_str(s));
        assert!(stream.pending() <= 3);
        rest = tail;
        step = step % 5 + 1;
    }
    stream.finish(|s| text.push_str(s));
    if let Ok(s) = std::str::from_utf8(bytes) {
        assert_eq!(text, s);
    }
}

// --- (d) converter_ingest ---------------------------------------------------------

/// The tiny fixture whose tensors the converter target feeds.
const INGEST_FIXTURE: &str = "tests/fixtures/tiny/llama-gqa";

/// The fixture's `model.safetensors`, split into header JSON and data.
fn fixture_safetensors() -> &'static (Vec<u8>, Vec<u8>) {
    static ST: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    ST.get_or_init(|| {
        let bytes = std::fs::read(repo_root().join(INGEST_FIXTURE).join("model.safetensors")).expect("fixture");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (bytes[8..8 + n].to_vec(), bytes[8 + n..].to_vec())
    })
}

/// A seed input for [`converter_ingest`]: the fixture's config and header.
pub fn converter_seed(weights_mode: u8) -> Vec<u8> {
    let config = std::fs::read(repo_root().join(INGEST_FIXTURE).join("config.json")).expect("fixture config");
    let (header, _) = fixture_safetensors();
    let mut seed = vec![weights_mode];
    seed.extend_from_slice(&(config.len() as u16).to_le_bytes());
    seed.extend_from_slice(&config);
    seed.extend_from_slice(header);
    seed
}

/// Input: byte 0 picks the weight type, bytes 1..3 (LE u16) the length of
/// the `config.json` text that follows; the rest is the safetensors header
/// JSON, written with its length prefix before the fixture's tensor data.
/// Converts the folder to a file in the same temp dir.
pub fn converter_ingest(data: &[u8]) {
    use ferrite_converter::{convert, Options};
    use ferrite_format::DType;
    if data.len() < 3 {
        return;
    }
    let weights = match data[0] % 4 {
        0 => DType::Q8,
        1 => DType::Q4,
        2 => DType::F16,
        _ => DType::F32,
    };
    let allow_nonfinite = data[0] & 4 != 0;
    let config_len = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    let (config, header) = data[3..].split_at(config_len);
    let (_, tensor_data) = fixture_safetensors();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), config).expect("write config");
    let mut st = Vec::with_capacity(8 + header.len() + tensor_data.len());
    st.extend_from_slice(&(header.len() as u64).to_le_bytes());
    st.extend_from_slice(header);
    st.extend_from_slice(tensor_data);
    std::fs::write(dir.path().join("model.safetensors"), st).expect("write safetensors");
    let out = dir.path().join("out.frt");
    let opts = Options { weights, embed: None, allow_nonfinite, ..Default::default() };
    if convert(dir.path(), &out, &opts, &mut |_| {}).is_ok() {
        // What the converter accepted must parse.
        let bytes = AlignedBytes::read(&out).expect("read the output");
        let file = File::parse(bytes.as_slice()).expect("a converted file parses");
        file.verify_tensors().expect("a converted file's tensors verify");
    }
}

// --- (e) gguf_reader ---------------------------------------------------------

/// `GgufFile::open` on arbitrary bytes written to a file; if it opens, the
/// config, the tokenizer and (for tensors of at most 64 Ki elements) the
/// data as f32. Seeds: `gguf_seed`.
pub fn gguf_reader(data: &[u8]) {
    use ferrite_converter::gguf::{read_config, read_tokenizer, GgufFile};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, data).expect("write");
    let Ok(g) = GgufFile::open(&path) else {
        return;
    };
    let _ = g.architecture();
    let _ = read_config(&g);
    if let Ok(Some(tok)) = read_tokenizer(&g) {
        let _ = tok.section_bytes();
    }
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    for (name, t) in g.tensors.iter() {
        let elems: usize = t.shape().iter().product();
        if elems <= 1 << 16 {
            if g.read_f32(name, 0, elems, &mut scratch, &mut out).is_ok() {
                assert_eq!(out.len(), elems, "{name}");
            }
        }
    }
}

/// A small valid GGUF v3 (llama, one layer, F32 and Q8_0 tensors, a
/// byte-level tokenizer) for the [`gguf_reader`] corpus.
pub fn gguf_seed() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let mut kv = Vec::new();
    let mut n_kv = 0u64;
    let mut key = |kv: &mut Vec<u8>, k: &str, ty: u32| {
        s(kv, k);
        kv.extend_from_slice(&ty.to_le_bytes());
        n_kv += 1;
    };
    key(&mut kv, "general.architecture", 8);
    s(&mut kv, "llama");
    for (k, v) in [
        ("llama.embedding_length", 32u32),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("llama.context_length", 64),
    ] {
        key(&mut kv, k, 4);
        kv.extend_from_slice(&v.to_le_bytes());
    }
    key(&mut kv, "llama.attention.layer_norm_rms_epsilon", 6);
    kv.extend_from_slice(&1e-5f32.to_le_bytes());
    key(&mut kv, "tokenizer.ggml.model", 8);
    s(&mut kv, "gpt2");
    key(&mut kv, "tokenizer.ggml.pre", 8);
    s(&mut kv, "gpt-2");
    key(&mut kv, "tokenizer.ggml.merges", 9);
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&1u64.to_le_bytes());
    s(&mut kv, "a b");
    key(&mut kv, "tokenizer.ggml.tokens", 9);
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&40u64.to_le_bytes());
    for i in 0..40u8 {
        s(&mut kv, &char::from(b'a' + i % 26).to_string().repeat(1 + usize::from(i / 26)));
    }
    let tensors: [(&str, &[u64], u32); 4] = [
        ("token_embd.weight", &[32, 40], 8),
        ("output_norm.weight", &[32], 0),
        ("blk.0.attn_norm.weight", &[32], 0),
        ("blk.0.attn_q.weight", &[32, 32], 0),
    ];
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&n_kv.to_le_bytes());
    out.extend_from_slice(&kv);
    let mut offset = 0u64;
    for (name, dims, ty) in tensors {
        s(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        let n: u64 = dims.iter().product();
        let bytes = if ty == 8 { n / 32 * 34 } else { 4 * n };
        offset += bytes.div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32 + offset as usize, 0);
    out
}

// --- (f) hf_json ---------------------------------------------------------------

/// Input: bytes 0..2 (LE u16) the length of the `config.json` text that
/// follows, the rest `tokenizer.json`; both are read as the converter reads
/// an HF folder (`hf_config::read`, `hf_tokenizer::read`) and an accepted
/// tokenizer is built into a section that must parse.
pub fn hf_json(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let config_len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (config, tokenizer) = data[2..].split_at(config_len);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), config).expect("write config");
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer).expect("write tokenizer");
    let _ = ferrite_converter::hf_config::read(dir.path());
    if let Ok(Some(tok)) = ferrite_converter::hf_tokenizer::read(dir.path()) {
        if let Ok(section) = tok.section_bytes() {
            let n = tok.builder.tokens.len() as u32;
            let bytes = AlignedBytes::new(&section);
            TokenizerView::parse(bytes.as_slice(), n).expect("a section the converter built parses");
        }
    }
}

/// A seed for [`hf_json`]: a tiny fixture's config and a small byte-level
/// tokenizer.json.
pub fn hf_json_seed() -> Vec<u8> {
    let config = std::fs::read(repo_root().join(INGEST_FIXTURE).join("config.json")).expect("fixture config");
    let tokenizer = br#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3}, "merges": ["a b"]},
 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
 "added_tokens": [{"id": 4, "content": "<|end|>", "special": true}]}"#;
    let mut seed = (config.len() as u16).to_le_bytes().to_vec();
    seed.extend_from_slice(&config);
    seed.extend_from_slice(tokenizer);
    seed
}

// --- (g) session_ring ----------------------------------------------------------

/// The tiny q8 model (converted once) through a streaming cache small
/// enough that the ring wraps and the sinks matter. Input: byte 0 sets
/// `max_ctx` (4..=19), byte 1 the sinks (0..=3) and the KV type, byte 2 the
/// batch size (1..=16); the rest are token ids (one byte each, some beyond
/// the vocabulary), fed as prompts of up to 12 ids and single steps, 8
/// calls at most: up to 52 tokens, which wraps every ring the header can ask
/// for, and few enough for about a thousand executions a second under
/// libFuzzer.
pub fn session_ring(data: &[u8]) {
    static BYTES: OnceLock<AlignedBytes> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("m.frt");
        let opts = ferrite_converter::Options { weights: ferrite_format::DType::Q8, ..Default::default() };
        ferrite_converter::convert(&repo_root().join(INGEST_FIXTURE), &out, &opts, &mut |_| {}).expect("convert");
        AlignedBytes::read(&out).expect("read")
    });
    let [a, b, c, ids @ ..] = data else { return };
    let model = Model::from_bytes(bytes.as_slice()).expect("the fixture parses");
    let kv = [ferrite_runtime::KvType::F16, ferrite_runtime::KvType::F32, ferrite_runtime::KvType::Q8]
        [(*b as usize >> 2) % 3];
    let cfg = SessionConfig {
        max_ctx: 4 + (*a as usize % 16),
        sinks: (*b & 3) as usize,
        max_batch: 1 + (*c as usize % 16),
        kv,
        ..Default::default()
    };
    let Ok(plan) = model.plan(&cfg) else { return };
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("a session for a valid plan");
    let vocab = model.config().vocab_size;
    let mut fed = 0usize;
    for (i, chunk) in ids.chunks(12).take(8).enumerate() {
        // Ids at or past 0xF0 map beyond the vocabulary (an error, not a panic).
        let ids: Vec<u32> =
            chunk.iter().map(|&x| if x >= 0xF0 { vocab + u32::from(x) } else { u32::from(x) % vocab }).collect();
        let r = if i % 2 == 0 { session.prefill(&ids).map(|l| l.len()) } else { session.step(ids[0]).map(|l| l.len()) };
        match r {
            Ok(n) => {
                assert_eq!(n, vocab as usize);
                fed += if i % 2 == 0 { ids.len() } else { 1 };
                assert!(session.logits().iter().all(|v| v.is_finite()), "non-finite logits");
            }
            Err(ferrite_runtime::Error::BadToken { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
        assert_eq!(session.position(), fed);
    }
}
