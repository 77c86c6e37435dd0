//! `ferrite convert model.gguf`: SmolLM2-135M-Instruct's Q4_1 GGUF converted
//! to f32 must give exactly the file (hence the tensors and the logits) of
//! the HF-folder route, whose f32 folder `scripts/fetch-models.sh` made from
//! that same GGUF; `--weights`/`--embed` apply; and malformed GGUF files end
//! in errors naming the file and the problem, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ferrite_converter::{convert, ErrorKind, Options};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::{DType, File, LayerRole, Role};
use ferrite_runtime::{KvType, Model, Session, SessionConfig};

/// SmolLM2's GGUF: `FERRITE_SMOLLM2_GGUF` (set by scripts/test.sh), else
/// beside the f32 folder in the cache, where scripts/fetch-models.sh puts it.
fn smollm2_gguf() -> PathBuf {
    let path = std::env::var_os("FERRITE_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        let f32_dir = smollm2_dir();
        f32_dir.parent().unwrap_or(Path::new(".")).join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(
        path.is_file(),
        "SmolLM2 GGUF not found at {}: run `bash scripts/fetch-models.sh` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn convert_file(input: &Path, out: &Path, opts: &Options) {
    convert(input, out, opts, &mut |_| {}).unwrap_or_else(|e| panic!("converting {}: {e}", input.display()));
}

fn logits(bytes: &AlignedBytes, ids: &[u32]) -> Vec<f32> {
    let model = Model::from_bytes(bytes).expect("model");
    let plan =
        model.plan(&SessionConfig { max_ctx: 64, kv: KvType::F32, max_batch: 16, ..Default::default() }).expect("plan");
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena).expect("session");
    let mut all = Vec::new();
    session.prefill_all(ids, &mut |_, l| all.extend_from_slice(l)).expect("prefill");
    all
}

#[test]
fn smollm2_gguf_gives_the_hf_folders_file_and_logits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = Options { weights: DType::F32, ..Default::default() };
    let (from_gguf, from_hf) = (tmp.path().join("gguf.frt"), tmp.path().join("hf.frt"));
    convert_file(&smollm2_gguf(), &from_gguf, &opts);
    convert_file(&smollm2_dir(), &from_hf, &opts);
    let a = AlignedBytes::read(&from_gguf).expect("read");
    let b = AlignedBytes::read(&from_hf).expect("read");
    let (fa, fb) = (File::parse(&a).expect("parse"), File::parse(&b).expect("parse"));
    assert_eq!(fa.config(), fb.config(), "model records differ");
    assert_eq!(fa.n_tensors(), fb.n_tensors());
    for i in 0..fa.n_tensors() {
        let (ta, tb) = (fa.tensor_at(i).expect("tensor"), fb.tensor_at(i).expect("tensor"));
        assert_eq!(ta.role, tb.role);
        assert_eq!((ta.dtype, ta.rows, ta.cols), (tb.dtype, tb.rows, tb.cols));
        assert!(ta.data == tb.data, "tensor {:?} differs", ta.role);
    }
    assert!(a[..] == b[..], "the files differ outside the tensors (tokenizer section?)");

    // Both sessions' logits, bit for bit, on a chat prompt.
    let ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, 19556, 314];
    let (la, lb) = (logits(&a, &ids), logits(&b, &ids));
    assert_eq!(la.len(), ids.len() * fa.config().vocab_size as usize);
    assert!(la.iter().all(|x| x.is_finite()));
    assert!(la.iter().zip(&lb).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ");
}

#[test]
fn gguf_respects_weights_and_embed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("m.frt");
    let opts = Options { weights: DType::Q4, embed: Some(DType::F16), ..Default::default() };
    convert_file(&smollm2_gguf(), &out, &opts);
    let bytes = AlignedBytes::read(&out).expect("read");
    let file = File::parse(&bytes).expect("parse");
    let dtype = |role| file.tensor(role).expect("tensor").dtype;
    assert_eq!(dtype(Role::Embedding), DType::F16);
    assert_eq!(dtype(Role::Layer(0, LayerRole::AttnQ)), DType::Q4);
    assert_eq!(dtype(Role::Layer(29, LayerRole::FfnDown)), DType::Q4);
    assert_eq!(dtype(Role::OutputNorm), DType::F32);
}

/// A small GGUF v3 file: metadata, then tensors of the given types and
/// dims (data zero-filled), 32-byte aligned.
struct GgufBuilder {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
}

fn gguf_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufBuilder {
    fn llama() -> Self {
        let mut b = GgufBuilder { kv: Vec::new(), n_kv: 0, tensors: Vec::new() };
        b.string("general.architecture", "llama");
        for (k, v) in [
            ("llama.embedding_length", 64u32),
            ("llama.block_count", 1),
            ("llama.feed_forward_length", 128),
            ("llama.attention.head_count", 2),
            ("llama.attention.head_count_kv", 1),
            ("llama.context_length", 256),
        ] {
            b.u32(k, v);
        }
        b.key("llama.attention.layer_norm_rms_epsilon", 6);
        b.kv.extend_from_slice(&1e-5f32.to_le_bytes());
        b
    }
    fn key(&mut self, k: &str, ty: u32) {
        gguf_str(&mut self.kv, k);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.n_kv += 1;
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.kv.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        gguf_str(&mut self.kv, v);
    }
    /// A tensor of ggml type `ty` with `bytes` bytes of data.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, bytes: u64) {
        self.tensors.push((name.to_string(), dims.to_vec(), ty, bytes));
    }
    fn llama_tensors(&mut self) {
        let f32_tensor = |b: &mut Self, name: &str, dims: &[u64]| {
            let n: u64 = dims.iter().product();
            b.tensor(name, dims, 0, 4 * n);
        };
        f32_tensor(self, "token_embd.weight", &[64, 100]);
        f32_tensor(self, "output_norm.weight", &[64]);
        f32_tensor(self, "blk.0.attn_norm.weight", &[64]);
        f32_tensor(self, "blk.0.attn_q.weight", &[64, 64]);
        f32_tensor(self, "blk.0.attn_k.weight", &[64, 32]);
        f32_tensor(self, "blk.0.attn_v.weight", &[64, 32]);
        f32_tensor(self, "blk.0.attn_output.weight", &[64, 64]);
        f32_tensor(self, "blk.0.ffn_norm.weight", &[64]);
        f32_tensor(self, "blk.0.ffn_gate.weight", &[64, 128]);
        f32_tensor(self, "blk.0.ffn_up.weight", &[64, 128]);
        f32_tensor(self, "blk.0.ffn_down.weight", &[128, 64]);
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        let mut offset = 0u64;
        for (name, dims, ty, bytes) in &self.tensors {
            gguf_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += bytes.div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32 + offset as usize, 0);
        out
    }
}

fn convert_bytes(bytes: &[u8]) -> Result<(), ferrite_converter::Error> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("m.gguf");
    std::fs::write(&input, bytes).expect("write");
    let r =
        convert(&input, &tmp.path().join("m.frt"), &Options { weights: DType::F32, ..Default::default() }, &mut |_| {});
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    if r.is_err() {
        assert_eq!(left, ["m.gguf"], "a failed conversion left files behind");
    }
    r.map(|_| ())
}

/// A GGUF of `b`'s tensors with tensor `index`'s data replaced by `data`
/// (the builder writes zeros; tensors are 32-byte aligned, in order, at the
/// end of the file).
fn with_data(b: &GgufBuilder, index: usize, data: &[u8]) -> Vec<u8> {
    let mut bytes = b.bytes();
    let sizes: Vec<usize> = b.tensors.iter().map(|t| (t.3 as usize).div_ceil(32) * 32).collect();
    let start = bytes.len() - sizes.iter().sum::<usize>() + sizes[..index].iter().sum::<usize>();
    bytes[start..start + data.len()].copy_from_slice(data);
    bytes
}

/// Without `--weights`, a Q5_0 attn_q (a tensor llama.cpp permuted for
/// RoPE) is transcoded into q5_0 with its rows un-permuted: it dequantizes
/// to exactly the f32 values `--weights f32` stores; `--weights q8`
/// requantizes it instead, and the summary's error says so.
#[test]
fn gguf_tensors_keep_their_types_unless_an_option_names_them() {
    let mut b = GgufBuilder::llama();
    b.llama_tensors();
    // blk.0.attn_q.weight [64, 64] as Q5_0: 2 blocks of 22 bytes per row.
    b.tensors[3].2 = 6;
    b.tensors[3].3 = 64 * 2 * 22;
    let mut rng = ferrite_test_support::rng::SplitMix64::new(7);
    let mut data: Vec<u8> = (0..64 * 2 * 22).map(|_| (rng.next_u64() >> 32) as u8).collect();
    for (i, block) in data.chunks_exact_mut(22).enumerate() {
        block[..2].copy_from_slice(&half::f16::from_f32(0.01 + i as f32 * 1e-4).to_le_bytes());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("m.gguf");
    std::fs::write(&input, with_data(&b, 3, &data)).expect("write");
    let run = |opts: &Options, name: &str| {
        let out = tmp.path().join(name);
        let summary = convert(&input, &out, opts, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        (summary, AlignedBytes::read(&out).expect("read"))
    };
    let keep = ferrite_converter::KeepTypes { weights: true, embed: true };
    let (kept, kept_bytes) = run(&Options { keep, ..Default::default() }, "kept.frt");
    let (_, f32_bytes) = run(&Options { weights: DType::F32, ..Default::default() }, "f32.frt");
    let (q8, _) = run(&Options { weights: DType::Q8, ..Default::default() }, "q8.frt");
    let role = Role::Layer(0, LayerRole::AttnQ);
    let kept_file = File::parse(kept_bytes.as_slice()).expect("parse");
    let view = kept_file.tensor(role).expect("attn_q");
    assert_eq!(view.dtype, DType::Q5_0);
    assert_eq!(kept.by_type[&DType::Q5_0].sum_sq_err, 0.0, "transcoding is exact");
    let w = ferrite_kernels::Weights::from_planes(DType::Q5_0, view.planes().expect("planes")).expect("weights");
    let m = ferrite_kernels::Matrix::new(w, 64, 64).expect("shape");
    let mut got = vec![0f32; 64 * 64];
    for (r, row) in got.chunks_mut(64).enumerate() {
        m.dequantize_row(r, row);
    }
    let f32_file = File::parse(f32_bytes.as_slice()).expect("parse");
    let want = f32_file.tensor(role).expect("attn_q").as_f32().expect("f32").to_vec();
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "kept q5_0 values differ from f32's");
    assert!(want.iter().any(|&v| v != 0.0), "the test data is all zero");
    // The F32 tensors stayed f32; --weights q8 requantized attn_q.
    assert!(kept.by_type.keys().all(|d| [DType::F32, DType::Q5_0].contains(d)), "{:?}", kept.by_type.keys());
    assert!(!q8.by_type.contains_key(&DType::Q5_0) && q8.by_type[&DType::Q8].sum_sq_err > 0.0);
}

#[test]
fn a_valid_small_gguf_converts() {
    let mut b = GgufBuilder::llama();
    b.llama_tensors();
    convert_bytes(&b.bytes()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn malformed_gguf_files_end_in_errors() {
    let mut b = GgufBuilder::llama();
    b.llama_tensors();
    let good = b.bytes();
    let expect_err = |bytes: &[u8], kind: ErrorKind, needle: &str| {
        let e = convert_bytes(bytes).err().unwrap_or_else(|| panic!("converted; expected an error with {needle:?}"));
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.to_string().contains(needle), "{needle:?} not in: {e}");
        assert!(e.to_string().contains("m.gguf"), "the message names no file: {e}");
    };

    // Bad magic is not taken for GGUF at all: it is no HF folder either.
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGUG");
    assert!(convert_bytes(&bad).is_err());
    // Through the reader itself, the magic is named.
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("m.gguf");
    std::fs::write(&p, &bad).expect("write");
    let e = ferrite_converter::gguf::GgufFile::open(&p).err().expect("bad magic refused");
    assert!(e.to_string().contains("not a GGUF file"), "{e}");

    // Version.
    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&4u32.to_le_bytes());
    expect_err(&bad, ErrorKind::Checkpoint, "GGUF version 4 is not supported");

    // Truncation: in the header, the metadata, the tensor infos, the data.
    let header_end = good.len() - (100 * 64 + 64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3 + 64 * 3) * 4;
    for cut in [4, 5, 8, 16, 23, 24, 40, 100, header_end - 1, header_end, header_end + 1, good.len() - 1] {
        expect_err(&good[..cut], ErrorKind::Checkpoint, "truncated");
    }
    // Every shorter prefix errs too (never a panic); prefixes of up to 4
    // bytes are not GGUF files at all.
    for cut in 4..header_end + 40 {
        assert!(convert_bytes(&good[..cut]).is_err(), "prefix of {cut} bytes converted");
    }

    // Tensor types the converter does not read, on a tensor it needs.
    for (ty, name) in
        [(10, "Q2_K (type 10)"), (11, "Q3_K (type 11)"), (23, "IQ4_XS (type 23)"), (39, "MXFP4 (type 39)")]
    {
        let mut b = GgufBuilder::llama();
        b.llama_tensors();
        b.tensors[3].2 = ty; // blk.0.attn_q.weight
        expect_err(&b.bytes(), ErrorKind::Unsupported, &format!("blk.0.attn_q.weight has ggml type {name}"));
    }

    // A row length that is not a whole number of blocks.
    let mut b = GgufBuilder::llama();
    b.llama_tensors();
    b.tensors[0] = ("token_embd.weight".into(), vec![48, 100], 8, 100 * 2 * 34);
    expect_err(&b.bytes(), ErrorKind::Checkpoint, "not a multiple of Q8_0's block of 32");

    // An array count far beyond the file.
    let mut b = GgufBuilder::llama();
    b.key("tokenizer.ggml.tokens", 9);
    b.kv.extend_from_slice(&8u32.to_le_bytes());
    b.kv.extend_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&b.bytes(), ErrorKind::Checkpoint, "array elements");

    // An array whose values would take more memory than any real
    // tokenizer's (10 M bools: 10 MB of file, ~320 MB of values): refused
    // once the values made reach the 256 MiB bound, not read whole.
    let mut b = GgufBuilder::llama();
    b.key("tokenizer.ggml.token_type_flags", 9);
    b.kv.extend_from_slice(&7u32.to_le_bytes());
    b.kv.extend_from_slice(&10_000_000u64.to_le_bytes());
    b.kv.resize(b.kv.len() + 10_000_000, 1);
    b.llama_tensors();
    expect_err(&b.bytes(), ErrorKind::Checkpoint, "GGUF metadata larger than 256 MiB in memory");

    // Absurd tensor and metadata counts.
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_err(&bad, ErrorKind::Checkpoint, "cannot fit");

    // Too many dimensions.
    let mut b = GgufBuilder::llama();
    b.llama_tensors();
    b.tensors[1].1 = vec![64, 1, 1, 1, 1];
    expect_err(&b.bytes(), ErrorKind::Checkpoint, "5 dimensions");

    // A tensor whose shape disagrees with the metadata.
    let mut b = GgufBuilder::llama();
    b.llama_tensors();
    b.tensors[4].1 = vec![64, 48];
    b.tensors[4].3 = 64 * 48 * 4;
    expect_err(
        &b.bytes(),
        ErrorKind::Tensor,
        "blk.0.attn_k.weight (model.layers.0.self_attn.k_proj.weight) has shape [48, 64]",
    );

    // An architecture other than llama/qwen2.
    let mut b = GgufBuilder::llama();
    b.kv.clear();
    b.n_kv = 0;
    b.string("general.architecture", "gptneox");
    expect_err(&b.bytes(), ErrorKind::Unsupported, "GGUF architecture `gptneox` is not supported");
}
