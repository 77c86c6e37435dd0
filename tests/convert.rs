//! End-to-end tests of the HF → `.frt` converter: the library entry point
//! (`ferrite_converter::convert`) and the `ferrite convert` / `ferrite
//! inspect` commands, on the tiny fixtures in `tests/fixtures/tiny/`.
//!
//! Source tensors are read independently with the `safetensors` crate (and
//! f16/bf16 upcast with `half`); converted files are read back with
//! `ferrite_format::File` and quantized rows are dequantized with the
//! reference dequantizers of `ferrite_kernels::reference`.
#![cfg(feature = "cli")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use common::{
    cli_convert, copy_fixture, dir_names, edit_config, ferrite, rewrite_safetensors, show, tiny as fixture,
    TINY as FIXTURES,
};
use ferrite_converter::{convert, temp_prefix, ErrorKind, Options, Progress, Summary, TensorType, TEMP_SUFFIX};
use ferrite_format::writer::AlignedBytes;
use ferrite_format::{quant, Arch, DType, File, LayerRole, ModelConfig, Role, RopeScaling};
use ferrite_kernels::reference::{
    dequantize_row_q4, dequantize_row_q4a, dequantize_row_q8, quantize_row_q4, quantize_row_q4a, quantize_row_q8,
};
use half::{bf16, f16};
use safetensors::tensor::TensorView as StView;
use safetensors::{Dtype, SafeTensors};

const TYPES: [DType; 5] = [DType::F32, DType::F16, DType::Q8, DType::Q4, DType::Q4A];

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn opts(weights: DType) -> Options {
    Options { weights, ..Default::default() }
}

fn convert_ok(input: &Path, output: &Path, weights: DType) -> Summary {
    convert(input, output, &opts(weights), &mut |_| {})
        .unwrap_or_else(|e| panic!("converting {} at {}: {e}", input.display(), weights.name()))
}

/// Reads a converted file into aligned memory.
fn read_frt(path: &Path) -> AlignedBytes {
    AlignedBytes::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(bytes: &AlignedBytes) -> File<'_> {
    File::parse(bytes.as_slice()).unwrap_or_else(|e| panic!("File::parse: {e}"))
}

/// One source tensor as stored in the checkpoint.
struct Src {
    file: PathBuf,
    dtype: Dtype,
    shape: Vec<usize>,
    raw: Vec<u8>,
    /// Upcast to f32 (exact for f16/bf16).
    values: Vec<f32>,
}

/// Every tensor of every `*.safetensors` file of a folder (golden excluded).
fn load_source(dir: &Path) -> BTreeMap<String, Src> {
    let mut out = BTreeMap::new();
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && p.file_name().is_some_and(|n| n != "golden.safetensors")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no safetensors files", dir.display());
    for path in files {
        let bytes = fs::read(&path).expect("read safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (name, view) in st.tensors() {
            let raw = view.data().to_vec();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                Dtype::F16 => raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                Dtype::BF16 => raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                other => panic!("{}: {name} has unexpected dtype {other:?}", path.display()),
            };
            let src = Src { file: path.clone(), dtype: view.dtype(), shape: view.shape().to_vec(), raw, values };
            assert!(out.insert(name.clone(), src).is_none(), "{name} stored twice");
        }
    }
    out
}

/// The role of an HF tensor name, spelled out independently of the
/// converter's own `role_of`.
fn expected_role(name: &str) -> Option<Role> {
    const LAYER: [(&str, LayerRole); 12] = [
        ("input_layernorm.weight", LayerRole::AttnNorm),
        ("self_attn.q_proj.weight", LayerRole::AttnQ),
        ("self_attn.k_proj.weight", LayerRole::AttnK),
        ("self_attn.v_proj.weight", LayerRole::AttnV),
        ("self_attn.o_proj.weight", LayerRole::AttnO),
        ("self_attn.q_proj.bias", LayerRole::AttnQBias),
        ("self_attn.k_proj.bias", LayerRole::AttnKBias),
        ("self_attn.v_proj.bias", LayerRole::AttnVBias),
        ("post_attention_layernorm.weight", LayerRole::FfnNorm),
        ("mlp.gate_proj.weight", LayerRole::FfnGate),
        ("mlp.up_proj.weight", LayerRole::FfnUp),
        ("mlp.down_proj.weight", LayerRole::FfnDown),
    ];
    match name {
        "model.embed_tokens.weight" => return Some(Role::Embedding),
        "model.norm.weight" => return Some(Role::OutputNorm),
        "lm_head.weight" => return Some(Role::Output),
        _ => {}
    }
    for layer in 0..8u32 {
        for (suffix, r) in LAYER {
            if name == format!("model.layers.{layer}.{suffix}") {
                return Some(Role::Layer(layer, r));
            }
        }
    }
    None
}

fn role_for(name: &str) -> Role {
    let role = expected_role(name).unwrap_or_else(|| panic!("fixture tensor {name} has no role"));
    assert_eq!(ferrite_converter::role_of(name), Some(role), "converter's role_of({name})");
    assert_eq!(ferrite_converter::hf_name(role), name, "converter's hf_name({role})");
    role
}

/// The storage type the converter is documented to pick (default `embed`).
fn expected_dtype(role: Role, weights: DType) -> DType {
    if role.is_vector() {
        DType::F32
    } else if matches!(role, Role::Embedding | Role::Output) {
        if matches!(weights, DType::Q4 | DType::Q4A) {
            DType::Q8
        } else {
            weights
        }
    } else {
        weights
    }
}

/// `[rows, cols]` of a source shape as the file stores it (vectors: cols 1).
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        other => panic!("unexpected rank {other:?}"),
    }
}

fn tensor<'a>(file: &File<'a>, role: Role) -> ferrite_format::TensorView<'a> {
    file.tensor(role).unwrap_or_else(|e| panic!("tensor {role}: {e}"))
}

/// The quant planes of a q8/q4 tensor in logical row-major form (the file
/// stores 8-row tiles, `ferrite_format::quant`), after checking the tiled
/// planes' sizes and that the padding rows of the last tile are zero.
fn logical_planes(view: &ferrite_format::TensorView<'_>) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
    let (rows, cols) = (view.rows as usize, view.cols as usize);
    let (tiles, tile_scales) = view.quant_planes().expect("quant planes");
    let row_q = quant::row_quant_bytes(view.dtype, cols);
    let groups = cols.div_ceil(quant::GROUP);
    let padded = quant::padded_rows(rows);
    assert_eq!(tiles.len(), padded * row_q, "{}: quant plane size", view.role);
    assert_eq!(tile_scales.len(), padded * groups, "{}: scale plane size", view.role);
    let (mut qs, mut scales) = (vec![0u8; padded * row_q], vec![f16::ZERO; padded * groups]);
    for r in 0..padded {
        quant::untile_row(
            view.dtype,
            tiles,
            tile_scales,
            r,
            groups,
            &mut qs[r * row_q..(r + 1) * row_q],
            &mut scales[r * groups..(r + 1) * groups],
        );
    }
    // q4a: the minimums, tiled like the scales.
    let mut mins = vec![f16::ZERO; padded * groups];
    if let Some(tile_mins) = view.mins() {
        assert_eq!(tile_mins.len(), padded * groups, "{}: mins plane size", view.role);
        let mut scratch = vec![0u8; row_q];
        for r in 0..padded {
            let m = &mut mins[r * groups..(r + 1) * groups];
            quant::untile_row(view.dtype, tiles, tile_mins, r, groups, &mut scratch, m);
        }
        assert!(mins[rows * groups..].iter().all(|s| s.to_bits() == 0), "{}: padding rows have mins", view.role);
    }
    let zero = if view.dtype == DType::Q4 { 0x88 } else { 0 };
    assert!(qs[rows * row_q..].iter().all(|&b| b == zero), "{}: padding rows hold non-zero quants", view.role);
    assert!(scales[rows * groups..].iter().all(|s| s.to_bits() == 0), "{}: padding rows have scales", view.role);
    qs.truncate(rows * row_q);
    scales.truncate(rows * groups);
    mins.truncate(if view.mins().is_some() { rows * groups } else { 0 });
    (qs, scales, mins)
}

/// Dequantizes (or upcasts) a stored tensor to f32, row by row, with the
/// reference dequantizers.
fn dequantize(view: &ferrite_format::TensorView<'_>) -> Vec<f32> {
    let (rows, cols) = (view.rows as usize, view.cols as usize);
    match view.dtype {
        DType::F32 => view.as_f32().expect("f32 data").to_vec(),
        DType::F16 => view.as_f16().expect("f16 data").iter().map(|h| h.to_f32()).collect(),
        DType::Q5_0 | DType::Q5_1 | DType::Q4K | DType::Q5K | DType::Q6K => {
            let w = ferrite_kernels::Weights::from_planes(view.dtype, view.planes().expect("planes")).expect("weights");
            let m = ferrite_kernels::Matrix::new(w, rows, cols).expect("shape");
            let mut out = vec![0f32; rows * cols];
            for (r, row) in out.chunks_mut(cols).enumerate() {
                m.dequantize_row(r, row);
            }
            out
        }
        DType::Q8 | DType::Q4 | DType::Q4A => {
            let (qs, scales, mins) = logical_planes(view);
            let row_q = quant::row_quant_bytes(view.dtype, cols);
            let groups = cols.div_ceil(quant::GROUP);
            assert_eq!(qs.len(), rows * row_q, "{}: quant plane size", view.role);
            assert_eq!(scales.len(), rows * groups, "{}: scale plane size", view.role);
            assert_eq!(view.mins().is_some(), view.dtype == DType::Q4A, "{}: mins plane", view.role);
            let mut out = vec![0f32; rows * cols];
            for r in 0..rows {
                let q = &qs[r * row_q..(r + 1) * row_q];
                let s = &scales[r * groups..(r + 1) * groups];
                let dst = &mut out[r * cols..(r + 1) * cols];
                match view.dtype {
                    DType::Q8 => dequantize_row_q8(q, s, dst),
                    DType::Q4 => dequantize_row_q4(q, s, dst),
                    _ => {
                        assert_eq!(mins.len(), rows * groups, "{}: mins plane size", view.role);
                        dequantize_row_q4a(q, s, &mins[r * groups..(r + 1) * groups], dst)
                    }
                }
            }
            out
        }
    }
}

/// Quant value `j` (0..32) of group `g` of a quantized row.
fn quant_at(dtype: DType, row: &[u8], g: usize, j: usize) -> i8 {
    match dtype {
        DType::Q8 => row[g * quant::Q8_GROUP_BYTES + j] as i8,
        DType::Q4 => quant::q4_get(&row[g * quant::Q4_GROUP_BYTES..(g + 1) * quant::Q4_GROUP_BYTES], j),
        DType::Q4A => quant::q4a_get(&row[g * quant::Q4_GROUP_BYTES..(g + 1) * quant::Q4_GROUP_BYTES], j) as i8,
        _ => unreachable!(),
    }
}

/// Float slack on the `|x - q*scale| <= |scale|/2` bound: `x * (1/scale)`
/// and `q * scale` are each rounded once in f32, which can move a value that
/// sits exactly on a rounding boundary by a few ulps of `|x|` (at most
/// 128.5 * 2^-23 * |scale| ~ 1.6e-5 * |scale|). We allow `1e-4 * |scale| +
/// 1e-6 * |x|`, far below the half step (0.5 * |scale|) being checked.
fn slack(scale: f32, x: f32) -> f32 {
    1e-4 * scale.abs() + 1e-6 * x.abs()
}

/// Checks a quantized tensor against its source, row by row:
///
/// - the stored quants, scales (and q4a minimums) are bit-identical to what
///   the reference quantizer (`ferrite_kernels::reference::quantize_row_*`)
///   makes of the source row;
/// - each group's scale is non-degenerate (without this a huge scale would
///   pass any bound): symmetric types search steps that map the value of
///   largest magnitude to within 1.5 levels inside or half a level outside
///   the end of the range, then refit by least squares (which moves it a
///   little), so `max|x| / (qneg + 2) <= |scale| <= max|x| / (0.8 qpos)`,
///   with (qpos, qneg) = (127, 127) for q8 and (7, 8) for q4; q4a:
///   `(max - min) / 20 <= scale <= (max - min) / 12`;
/// - each element, dequantized with the reference dequantizer, is within
///   `|scale| / 2` (+ [`slack`]) of the source when it lies inside the range
///   of levels (±half a level); one clipped at the end of the range (the
///   search trades such clipping for finer steps) within `3 |scale|`;
/// - padding quants (beyond `cols` in the last group) are zero.
///
/// Returns (padding quants checked, elements clipped at the range's end).
fn check_quantized(what: &str, src: &[f32], view: &ferrite_format::TensorView<'_>) -> (usize, usize) {
    let dtype = view.dtype;
    assert!(dtype.is_quantized(), "{what}: {dtype:?} is not quantized");
    let (rows, cols) = (view.rows as usize, view.cols as usize);
    assert_eq!(src.len(), rows * cols, "{what}: element count");
    let (lo, hi) = match dtype {
        DType::Q8 => (-127.0f32, 127.0f32),
        DType::Q4 => (-8.0, 7.0),
        _ => (0.0, 15.0),
    };
    let (qpos, qneg) = (hi, -lo);
    let f16_rel = 1.0 / 1024.0; // f16 rounding (2^-11), doubled
    let deq = dequantize(view);
    let (qs, scales, mins) = logical_planes(view);
    let row_q = quant::row_quant_bytes(dtype, cols);
    let groups = cols.div_ceil(quant::GROUP);
    let (mut padding, mut clamped) = (0, 0);
    let mut ref_q = vec![0u8; row_q];
    let mut ref_s = vec![f16::ZERO; groups];
    let mut ref_m = vec![f16::ZERO; groups];
    for r in 0..rows {
        let qrow = &qs[r * row_q..(r + 1) * row_q];
        let srow = &scales[r * groups..(r + 1) * groups];
        let mrow = if dtype == DType::Q4A { &mins[r * groups..(r + 1) * groups] } else { &[][..] };
        let xrow = &src[r * cols..(r + 1) * cols];
        match dtype {
            DType::Q8 => quantize_row_q8(xrow, &mut ref_q, &mut ref_s),
            DType::Q4 => quantize_row_q4(xrow, &mut ref_q, &mut ref_s),
            _ => {
                quantize_row_q4a(xrow, &mut ref_q, &mut ref_s, &mut ref_m);
                assert!(
                    mrow.iter().map(|s| s.to_bits()).eq(ref_m.iter().map(|s| s.to_bits())),
                    "{what}: row {r}: minimums differ from the reference quantizer"
                );
            }
        }
        assert!(qrow == ref_q.as_slice(), "{what}: row {r}: quants differ from the reference quantizer");
        assert!(
            srow.iter().map(|s| s.to_bits()).eq(ref_s.iter().map(|s| s.to_bits())),
            "{what}: row {r}: scales differ from the reference quantizer"
        );
        for g in 0..groups {
            let lo_col = g * quant::GROUP;
            let hi_col = (lo_col + quant::GROUP).min(cols);
            let xs = &xrow[lo_col..hi_col];
            let d = srow[g].to_f32();
            let m = mrow.get(g).map_or(0.0, |m| m.to_f32());
            if dtype == DType::Q4A {
                let (min, max) = xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                let range = max - min;
                assert!(
                    d >= range / 20.0 * (1.0 - f16_rel) && d <= range / 12.0 * (1.0 + f16_rel),
                    "{what}: row {r} group {g}: scale {d} for range {range}"
                );
            } else {
                let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(
                    d.abs() >= amax / (qneg + 2.0) && d.abs() <= amax / (0.8 * qpos),
                    "{what}: row {r} group {g}: scale {d} for max|x| {amax}"
                );
            }
            for (j, &x) in xs.iter().enumerate() {
                let y = deq[r * cols + lo_col + j];
                let err = (x - y).abs();
                let q = quant_at(dtype, qrow, g, j);
                let level = if d != 0.0 { (x - m) / d } else { 0.0 };
                let bound = if level < lo - 0.5 || level > hi + 0.5 {
                    clamped += 1;
                    d.abs() * 3.0
                } else {
                    d.abs() / 2.0
                };
                assert!(
                    err <= bound + slack(d, x) + 1e-6 * m.abs(),
                    "{what}: row {r} col {}: source {x}, q {q}, scale {d}, min {m}, dequantized {y}, error {err} > {bound}",
                    lo_col + j,
                );
            }
            for j in hi_col - lo_col..quant::GROUP {
                assert_eq!(quant_at(dtype, qrow, g, j), 0, "{what}: row {r}: padding quant {j} of group {g} is not 0");
                padding += 1;
            }
        }
    }
    (padding, clamped)
}

/// Whether `name` is a temp file of the output `out_name`.
fn is_temp_of(name: &str, out_name: &str) -> bool {
    name.starts_with(&format!(".{out_name}.")) && name.ends_with(TEMP_SUFFIX)
}

/// The converter's temp-file naming is what the tests look for.
fn assert_temp_naming(output: &Path) {
    let out_name = output.file_name().expect("file name").to_str().expect("utf8");
    assert_eq!(temp_prefix(output), format!(".{out_name}."));
    assert_eq!(TEMP_SUFFIX, ".ferrite-tmp");
}

/// After a failed conversion to `output`: neither the output nor a temp file
/// of it exists (the folder holds exactly `expected_others`).
fn assert_no_output_or_temp(output: &Path, expected_others: &[&str]) {
    assert_temp_naming(output);
    let dir = output.parent().expect("parent");
    let out_name = output.file_name().expect("file name").to_str().expect("utf8");
    let names = dir_names(dir);
    assert!(!output.exists(), "{} exists after a failed conversion", output.display());
    let temps: Vec<&String> = names.iter().filter(|n| is_temp_of(n, out_name)).collect();
    assert!(temps.is_empty(), "temp files left behind: {temps:?}");
    let mut want: Vec<String> = expected_others.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "unexpected contents of {}", dir.display());
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs a conversion expected to fail; checks the error's kind and that its
/// message contains every string of `needles`, and that the output folder
/// holds neither the output nor a temp file. Returns the message.
fn expect_failure(input: &Path, kind: ErrorKind, needles: &[&str]) -> String {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let output = out_dir.path().join("model.frt");
    let err = convert(input, &output, &opts(DType::Q4), &mut |_| {})
        .err()
        .unwrap_or_else(|| panic!("converting {} succeeded; expected a {kind:?} error", input.display()));
    let msg = err.to_string();
    assert_eq!(err.kind(), kind, "error kind for message: {msg}");
    assert_eq!(err.message(), msg);
    for n in needles {
        assert!(msg.contains(n), "error message does not mention {n:?}: {msg}");
    }
    assert_no_output_or_temp(&output, &[]);
    msg
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// 1. every fixture × type converts, parses and verifies (library and CLI)
// ---------------------------------------------------------------------------

/// README numbers: stored tensors and parameters per fixture.
fn readme_counts(name: &str) -> (usize, u64) {
    match name {
        "llama-gqa" => (21, 158016),
        "llama-tied-bf16" => (29, 668544),
        "qwen2-bias-f16" => (26, 119360),
        "llama3-ropescaled" => (20, 121152),
        "mistral-sharded" => (21, 295392),
        "llama-odd" => (21, 76272),
        other => panic!("unknown fixture {other}"),
    }
}

#[test]
fn every_fixture_converts_parses_and_verifies_at_every_type() {
    for name in FIXTURES {
        let src = load_source(&fixture(name));
        let (n_tensors, n_params) = readme_counts(name);
        assert_eq!(src.len(), n_tensors, "{name}: source tensor count");
        let out_dir = tempfile::tempdir().expect("tempdir");
        for w in TYPES {
            let output = out_dir.path().join(format!("{name}-{}.frt", w.name()));
            let summary = convert_ok(&fixture(name), &output, w);
            assert_eq!(summary.output, output);
            let bytes = read_frt(&output);
            let file = parse(&bytes);
            file.verify_tensors().unwrap_or_else(|e| panic!("{name} {}: verify_tensors: {e}", w.name()));
            assert_eq!(file.n_tensors(), n_tensors, "{name} {}: directory size", w.name());
            // Every source tensor is in the file with its shape and the documented type.
            for (hf, s) in &src {
                let role = role_for(hf);
                let t = tensor(&file, role);
                assert_eq!(t.role, role);
                let (rows, cols) = rows_cols(&s.shape);
                assert_eq!((t.rows as usize, t.cols as usize), (rows, cols), "{name} {}: {hf} shape", w.name());
                assert_eq!(t.dtype, expected_dtype(role, w), "{name} {}: {hf} dtype", w.name());
                assert_eq!(t.data.len() as u64, t.dtype.tensor_bytes(t.rows as u64, t.cols as u64).unwrap());
            }
            let params: u64 = (0..file.n_tensors()).map(|i| file.tensor_at(i).unwrap().len() as u64).sum();
            assert_eq!(params, n_params, "{name} {}: stored parameters", w.name());
            // Each tensor's stored CRC is the CRC of its data: corrupting one
            // byte is caught (so the verify above is meaningful).
            let mut corrupt = read_frt(&output);
            let last = file.tensor_at(file.n_tensors() - 1).unwrap();
            let off = file.directory()[last.index as usize].offset as usize;
            corrupt.as_mut_slice()[off] ^= 0x01;
            let cfile = File::parse(corrupt.as_slice()).expect("header still parses");
            assert!(cfile.verify_tensors().is_err(), "{name}: a corrupted tensor passed verification");
        }
    }
}

#[test]
fn cli_convert_and_inspect_verify_every_fixture_and_type() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    for name in FIXTURES {
        for w in TYPES {
            let output = out_dir.path().join(format!("{name}-{}.frt", w.name()));
            let out = cli_convert(&fixture(name), &output, w.name());
            assert!(out.status.success(), "ferrite convert {name} --weights {}:\n{}", w.name(), show(&out));
            // --quiet: no progress bar / summary table; the only stderr lines are warnings.
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                assert!(line.starts_with("warning: "), "{name} {}: unexpected stderr line {line:?}", w.name());
            }
            let out = ferrite(["inspect".as_ref(), output.as_os_str(), "--verify".as_ref()]);
            assert!(out.status.success(), "ferrite inspect --verify {name} {}:\n{}", w.name(), show(&out));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let n = readme_counts(name).0;
            assert!(
                stdout.contains(&format!("all {n} tensor checksums match")),
                "{name} {}: inspect output:\n{stdout}",
                w.name()
            );
            // The CLI writes exactly what the library writes.
            let lib_output = out_dir.path().join(format!("{name}-{}-lib.frt", w.name()));
            convert_ok(&fixture(name), &lib_output, w);
            assert!(
                fs::read(&output).unwrap() == fs::read(&lib_output).unwrap(),
                "{name} {}: CLI and library outputs differ",
                w.name()
            );
            fs::remove_file(&lib_output).unwrap();
        }
    }
    // inspect --verify fails (non-zero, not a panic) on a corrupted tensor.
    let output = out_dir.path().join("llama-gqa-q4.frt");
    let bytes = read_frt(&output);
    let file = parse(&bytes);
    let off = file.directory()[3].offset as usize;
    let mut raw = fs::read(&output).unwrap();
    raw[off + 5] ^= 0x40;
    let corrupt = out_dir.path().join("corrupt.frt");
    fs::write(&corrupt, raw).unwrap();
    let out = ferrite(["inspect".as_ref(), corrupt.as_os_str(), "--verify".as_ref()]);
    assert_eq!(out.status.code(), Some(1), "inspect --verify of a corrupted file:\n{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed verification"), "{}", show(&out));
}

// ---------------------------------------------------------------------------
// 2. exactness
// ---------------------------------------------------------------------------

#[test]
fn f32_conversion_reproduces_every_source_tensor_exactly() {
    let mut dtypes_seen = BTreeSet::new();
    for name in FIXTURES {
        let src = load_source(&fixture(name));
        let out_dir = tempfile::tempdir().expect("tempdir");
        let output = out_dir.path().join("m.frt");
        convert_ok(&fixture(name), &output, DType::F32);
        let bytes = read_frt(&output);
        let file = parse(&bytes);
        for (hf, s) in &src {
            dtypes_seen.insert(format!("{:?}", s.dtype));
            let t = tensor(&file, role_for(hf));
            let got = t.as_f32().unwrap_or_else(|| panic!("{name}: {hf} is {:?}, not f32", t.dtype));
            assert_eq!(got.len(), s.values.len(), "{name}: {hf} length");
            for (i, (a, b)) in got.iter().zip(&s.values).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}: {hf} element {i}: file {a}, source {b}");
            }
        }
    }
    // The fixtures do cover all three source types.
    assert_eq!(dtypes_seen, ["BF16", "F16", "F32"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn f16_conversion_is_round_to_nearest_and_bit_exact_for_f16_source() {
    for name in FIXTURES {
        let src = load_source(&fixture(name));
        let out_dir = tempfile::tempdir().expect("tempdir");
        let output = out_dir.path().join("m.frt");
        convert_ok(&fixture(name), &output, DType::F16);
        let bytes = read_frt(&output);
        let file = parse(&bytes);
        for (hf, s) in &src {
            let role = role_for(hf);
            if role.is_vector() {
                continue; // f32, checked in norms_and_biases_are_exact_f32_in_every_mode
            }
            let t = tensor(&file, role);
            let got = t.as_f16().unwrap_or_else(|| panic!("{name}: {hf} is {:?}, not f16", t.dtype));
            if s.dtype == Dtype::F16 {
                // The f16 source is reproduced bit for bit.
                let raw: Vec<u16> = s.raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                let stored: Vec<u16> = got.iter().map(|h| h.to_bits()).collect();
                assert!(stored == raw, "{name}: {hf}: f16 source not reproduced bit-exactly");
            } else {
                for (i, (a, b)) in got.iter().zip(&s.values).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        f16::from_f32(*b).to_bits(),
                        "{name}: {hf} element {i}: {a} for source {b}"
                    );
                }
            }
        }
        if name == "qwen2-bias-f16" {
            // Sanity: that fixture's matrices really are f16.
            assert!(src.values().filter(|s| s.shape.len() == 2).all(|s| s.dtype == Dtype::F16));
        }
    }
}

#[test]
fn norms_and_biases_are_exact_f32_in_every_mode() {
    let mut biases = 0;
    for name in FIXTURES {
        let src = load_source(&fixture(name));
        let out_dir = tempfile::tempdir().expect("tempdir");
        for w in TYPES {
            let output = out_dir.path().join(format!("{}.frt", w.name()));
            convert_ok(&fixture(name), &output, w);
            let bytes = read_frt(&output);
            let file = parse(&bytes);
            for (hf, s) in &src {
                let role = role_for(hf);
                if !role.is_vector() {
                    continue;
                }
                if matches!(role, Role::Layer(_, r) if r.is_bias()) && w == DType::F32 {
                    biases += 1;
                }
                let t = tensor(&file, role);
                assert_eq!(t.dtype, DType::F32, "{name} {}: {hf}", w.name());
                let got = t.as_f32().expect("f32");
                let want: Vec<u32> = s.values.iter().map(|v| v.to_bits()).collect();
                let have: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert!(have == want, "{name} {}: {hf} not reproduced exactly", w.name());
            }
        }
    }
    assert_eq!(biases, 6, "qwen2-bias-f16 has q/k/v biases in 2 layers");
}

// ---------------------------------------------------------------------------
// 3. q8 / q4 error bounds and padding
// ---------------------------------------------------------------------------

#[test]
fn quantized_elements_are_within_half_a_step_of_the_source() {
    // Per type (q8, q4, q4a): elements clipped at the end of the range, elements.
    let (mut clamped, mut elements) = ([0usize; 3], [0usize; 3]);
    for name in FIXTURES {
        let src = load_source(&fixture(name));
        let out_dir = tempfile::tempdir().expect("tempdir");
        for w in [DType::Q8, DType::Q4, DType::Q4A] {
            let output = out_dir.path().join(format!("{}.frt", w.name()));
            convert_ok(&fixture(name), &output, w);
            let bytes = read_frt(&output);
            let file = parse(&bytes);
            let mut quantized = 0;
            for (hf, s) in &src {
                let role = role_for(hf);
                let t = tensor(&file, role);
                if role.is_vector() {
                    continue;
                }
                assert_eq!(t.dtype, expected_dtype(role, w));
                let what = format!("{name} {} {hf}", w.name());
                let (_, c) = check_quantized(&what, &s.values, &t);
                let k = [DType::Q8, DType::Q4, DType::Q4A].iter().position(|&d| d == t.dtype).unwrap();
                clamped[k] += c;
                elements[k] += s.values.len();
                quantized += 1;
            }
            assert!(quantized >= 14, "{name}: only {quantized} quantized tensors checked");
        }
    }
    // The search clips only a few values (it trades them for finer steps).
    for k in 0..3 {
        assert!(
            elements[k] > 0 && clamped[k] * 100 < elements[k],
            "type {k}: {} of {} clipped",
            clamped[k],
            elements[k]
        );
    }
    eprintln!("q8 / q4 / q4a: {elements:?} elements, of which {clamped:?} clipped at the end of the range");
}

#[test]
fn odd_widths_pad_rows_with_zero_quants() {
    let name = "llama-odd";
    let src = load_source(&fixture(name));
    let out_dir = tempfile::tempdir().expect("tempdir");
    for w in [DType::Q8, DType::Q4] {
        let output = out_dir.path().join(format!("{}.frt", w.name()));
        convert_ok(&fixture(name), &output, w);
        let bytes = read_frt(&output);
        let file = parse(&bytes);
        let mut padded_tensors = 0;
        let mut padding = 0;
        for (hf, s) in &src {
            let role = role_for(hf);
            if role.is_vector() {
                continue;
            }
            let t = tensor(&file, role);
            let cols = t.cols as usize;
            // hidden 48 and intermediate 100 are not multiples of 32.
            assert_ne!(cols % 32, 0, "{hf}: expected an odd width");
            padded_tensors += 1;
            padding += check_quantized(&format!("{name} {} {hf}", w.name()), &s.values, &t).0;
            // Dequantizing whole padded rows gives exact zeros in the padding.
            let (qs, scales, _) = logical_planes(&t);
            let row_q = quant::row_quant_bytes(t.dtype, cols);
            let groups = cols.div_ceil(32);
            let mut dst = vec![f32::NAN; quant::padded_cols(cols)];
            for r in 0..t.rows as usize {
                let q = &qs[r * row_q..(r + 1) * row_q];
                let sc = &scales[r * groups..(r + 1) * groups];
                if t.dtype == DType::Q8 {
                    dequantize_row_q8(q, sc, &mut dst);
                } else {
                    dequantize_row_q4(q, sc, &mut dst);
                }
                assert!(
                    dst[cols..].iter().all(|v| *v == 0.0),
                    "{hf} row {r}: padding dequantizes to {:?}",
                    &dst[cols..]
                );
            }
        }
        assert_eq!(padded_tensors, 16, "embedding, lm_head and 7 matrices x 2 layers");
        // embed/lm_head/q/k/v/gate/up: cols 48 -> 16 pad each row; o: cols 48; down: cols 100 -> 28.
        let expected: usize = 2 * 300 * 16 + 2 * (48 * 16 * 3 + 48 * 16 + 100 * 16 * 2 + 48 * 28);
        assert_eq!(padding, expected, "{}: padding quants checked", w.name());
    }
}

// ---------------------------------------------------------------------------
// 4. tied / untied
// ---------------------------------------------------------------------------

#[test]
fn tied_models_store_one_table_untied_store_both() {
    for name in FIXTURES {
        let tied = matches!(name, "llama-tied-bf16" | "qwen2-bias-f16" | "llama3-ropescaled");
        let src = load_source(&fixture(name));
        assert_eq!(src.contains_key("lm_head.weight"), !tied, "{name}: fixture layout");
        let out_dir = tempfile::tempdir().expect("tempdir");
        for w in TYPES {
            let output = out_dir.path().join(format!("{}.frt", w.name()));
            convert_ok(&fixture(name), &output, w);
            let bytes = read_frt(&output);
            let file = parse(&bytes);
            assert_eq!(file.config().tied_embeddings(), tied, "{name}: tied flag");
            let roles: Vec<Role> = file.directory().iter().map(|e| e.role().expect("role")).collect();
            let n_out = roles.iter().filter(|r| **r == Role::Output).count();
            let n_emb = roles.iter().filter(|r| **r == Role::Embedding).count();
            assert_eq!(n_emb, 1, "{name} {}: embedding entries", w.name());
            assert_eq!(n_out, usize::from(!tied), "{name} {}: output entries", w.name());
            let emb = tensor(&file, Role::Embedding);
            let out = tensor(&file, Role::Output);
            if tied {
                assert_eq!(out.role, Role::Embedding, "{name}: tied output resolves to the embedding");
                assert_eq!(out.index, emb.index);
                assert!(std::ptr::eq(out.data, emb.data), "{name}: tied output is the embedding's data");
            } else {
                assert_eq!(out.role, Role::Output);
                assert_ne!(out.index, emb.index);
                assert_eq!(out.dtype, expected_dtype(Role::Output, w));
                let lm = dequantize(&out);
                let em = dequantize(&emb);
                assert!(lm != em, "{name}: untied lm_head equals the embedding");
                if w == DType::F32 {
                    let want: Vec<u32> = src["lm_head.weight"].values.iter().map(|v| v.to_bits()).collect();
                    assert!(lm.iter().map(|v| v.to_bits()).collect::<Vec<_>>() == want, "{name}: lm_head");
                }
            }
        }
    }
}

#[test]
fn tied_model_with_a_stored_lm_head_uses_the_embedding_and_warns() {
    let dir = copy_fixture("llama3-ropescaled");
    let path = dir.path().join("model.safetensors");
    rewrite_safetensors(&path, |ts| {
        let emb = ts.iter().find(|t| t.0 == "model.embed_tokens.weight").unwrap().clone();
        // A different table, to see that it is not the one used.
        let data: Vec<u8> = emb.3.iter().map(|b| b.wrapping_add(1)).collect();
        ts.push(("lm_head.weight".into(), emb.1, emb.2.clone(), data));
    });
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("m.frt");
    let summary = convert_ok(dir.path(), &output, DType::F32);
    assert!(
        summary.warnings.iter().any(|w| w.contains("lm_head.weight") && w.contains("tied")),
        "{:?}",
        summary.warnings
    );
    let bytes = read_frt(&output);
    let file = parse(&bytes);
    assert!(file.directory().iter().all(|e| e.role().unwrap() != Role::Output));
    let src = load_source(&fixture("llama3-ropescaled"));
    let emb = tensor(&file, Role::Output).as_f32().unwrap().to_vec();
    assert!(emb.iter().map(|v| v.to_bits()).eq(src["model.embed_tokens.weight"].values.iter().map(|v| v.to_bits())));
}

// ---------------------------------------------------------------------------
// 5. sharded checkpoint
// ---------------------------------------------------------------------------

#[test]
fn sharded_checkpoint_tensors_all_present_and_exact() {
    let dir = fixture("mistral-sharded");
    let src = load_source(&dir);
    let shards: BTreeSet<&Path> = src.values().map(|s| s.file.as_path()).collect();
    assert_eq!(shards.len(), 6, "tensors come from 6 shards");
    // The index maps every tensor to the shard it is in.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), src.len());
    for (name, s) in &src {
        assert_eq!(map[name].as_str().unwrap(), s.file.file_name().unwrap().to_str().unwrap());
    }
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("m.frt");
    let summary = convert_ok(&dir, &output, DType::F32);
    let bytes = read_frt(&output);
    let file = parse(&bytes);
    assert_eq!(file.n_tensors(), src.len());
    let mut roles = BTreeSet::new();
    for (hf, s) in &src {
        let role = role_for(hf);
        roles.insert(role);
        let got = tensor(&file, role).as_f32().unwrap();
        assert!(
            got.iter().map(|v| v.to_bits()).eq(s.values.iter().map(|v| v.to_bits())),
            "{hf} (from {}) differs",
            s.file.display()
        );
    }
    let stored: BTreeSet<Role> = file.directory().iter().map(|e| e.role().unwrap()).collect();
    assert_eq!(stored, roles);
    assert_eq!(summary.by_type.values().map(|t| t.params).sum::<u64>(), 295392);
}

// ---------------------------------------------------------------------------
// 6. config layouts and the config record
// ---------------------------------------------------------------------------

#[test]
fn v4_and_v5_config_layouts_give_identical_files() {
    for name in FIXTURES {
        let v4 = copy_fixture(name);
        fs::rename(v4.path().join("config.v4.json"), v4.path().join("config.json")).unwrap();
        let cfg = fs::read_to_string(v4.path().join("config.json")).unwrap();
        assert!(cfg.contains("\"rope_theta\"") && !cfg.contains("rope_parameters"), "{name}: v4 layout");
        let out_dir = tempfile::tempdir().unwrap();
        let (a, b) = (out_dir.path().join("v5.frt"), out_dir.path().join("v4.frt"));
        let sa = convert_ok(&fixture(name), &a, DType::Q4);
        let sb = convert_ok(v4.path(), &b, DType::Q4);
        assert_eq!(sa.config, sb.config, "{name}: config records differ");
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{name}: v4 and v5 layouts give different files");
    }
}

struct Expect {
    arch: Arch,
    vocab: u32,
    hidden: u32,
    inter: u32,
    layers: u32,
    heads: u32,
    kv: u32,
    tied: bool,
    bias: bool,
    theta: f32,
    eps: f32,
    bos: Option<u32>,
    stops: &'static [u32],
}

fn expect(name: &str) -> Expect {
    let e = |arch, vocab, hidden, inter, layers, heads, kv, tied, theta, eps| Expect {
        arch,
        vocab,
        hidden,
        inter,
        layers,
        heads,
        kv,
        tied,
        bias: false,
        theta,
        eps,
        bos: Some(1),
        stops: &[2],
    };
    match name {
        "llama-gqa" => e(Arch::Llama, 512, 64, 176, 2, 4, 2, false, 1e4, 1e-5),
        "llama-tied-bf16" => e(Arch::Llama, 512, 128, 352, 3, 8, 8, true, 1e4, 1e-5),
        "qwen2-bias-f16" => {
            Expect { bias: true, bos: None, stops: &[], ..e(Arch::Qwen2, 512, 64, 160, 2, 4, 2, true, 1e6, 1e-6) }
        }
        "llama3-ropescaled" => e(Arch::Llama, 512, 64, 176, 2, 4, 1, true, 5e5, 1e-5),
        "mistral-sharded" => e(Arch::Mistral, 512, 96, 256, 2, 6, 2, false, 1e4, 1e-6),
        "llama-odd" => e(Arch::Llama, 300, 48, 100, 2, 3, 3, false, 1e4, 1e-5),
        other => panic!("{other}"),
    }
}

#[test]
fn config_record_matches_fixture_configs() {
    for name in FIXTURES {
        for layout in ["config.json", "config.v4.json"] {
            let dir = copy_fixture(name);
            fs::copy(fixture(name).join(layout), dir.path().join("config.json")).unwrap();
            let out_dir = tempfile::tempdir().unwrap();
            let output = out_dir.path().join("m.frt");
            let summary = convert_ok(dir.path(), &output, DType::Q4);
            let bytes = read_frt(&output);
            let file = parse(&bytes);
            let c: &ModelConfig = file.config();
            assert_eq!(Some(*c), summary.config, "{name}: summary.config is the record written");
            let x = expect(name);
            let hf: serde_json::Value = serde_json::from_slice(&fs::read(fixture(name).join(layout)).unwrap()).unwrap();
            let ctx = hf["max_position_embeddings"].as_u64().unwrap() as u32;
            let what = format!("{name} ({layout})");
            assert_eq!(c.arch().unwrap(), x.arch, "{what}");
            assert_eq!(
                (c.vocab_size, c.d_model, c.ffn_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
                (x.vocab, x.hidden, x.inter, x.layers, x.heads, x.kv, 16),
                "{what}: dimensions"
            );
            assert_eq!(c.trained_ctx, ctx, "{what}: trained_ctx");
            assert_eq!(c.tied_embeddings(), x.tied, "{what}: tied");
            assert_eq!(c.qkv_bias(), x.bias, "{what}: qkv bias");
            assert_eq!(c.rope_theta, x.theta, "{what}: rope_theta");
            assert_eq!(c.norm_eps, x.eps, "{what}: norm_eps");
            assert_eq!(c.bos(), x.bos, "{what}: bos");
            assert!(!c.add_bos(), "{what}: add_bos without a tokenizer");
            assert_eq!(c.stop_ids(), x.stops, "{what}: stop ids");
            assert_eq!(c.sliding_window(), None, "{what}: sliding window");
            if name == "llama3-ropescaled" {
                assert_eq!(c.rope_scaling().unwrap(), RopeScaling::Llama3, "{what}");
                assert_eq!(c.rope_factor, 8.0, "{what}: factor");
                assert_eq!(c.rope_low_freq_factor, 1.0, "{what}: low_freq_factor");
                assert_eq!(c.rope_high_freq_factor, 4.0, "{what}: high_freq_factor");
                assert_eq!(c.rope_original_ctx, 64, "{what}: original ctx");
                assert_eq!(c.rope_theta, 500000.0, "{what}");
            } else {
                assert_eq!(c.rope_scaling().unwrap(), RopeScaling::None, "{what}");
                assert_eq!(c.rope_factor, 1.0, "{what}");
            }
            if name == "qwen2-bias-f16" {
                assert_eq!(c.rope_theta, 1.0e6, "{what}: qwen2 theta");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 7. malformed inputs
// ---------------------------------------------------------------------------

#[test]
fn missing_config_key_is_an_error_naming_file_and_key() {
    let dir = copy_fixture("llama-gqa");
    edit_config(dir.path(), |m| {
        m.remove("hidden_size");
    });
    let cfg = path_str(&dir.path().join("config.json"));
    expect_failure(dir.path(), ErrorKind::Config, &[&cfg, "hidden_size", "missing"]);
}

#[test]
fn unknown_architecture_is_an_error_listing_supported_ones() {
    let dir = copy_fixture("llama-gqa");
    edit_config(dir.path(), |m| {
        m.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
    });
    let cfg = path_str(&dir.path().join("config.json"));
    expect_failure(
        dir.path(),
        ErrorKind::Unsupported,
        &[
            &cfg,
            "unsupported architecture",
            "GPT2LMHeadModel",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
        ],
    );
}

#[test]
fn config_shape_mismatch_is_an_error_naming_file_and_tensor() {
    let dir = copy_fixture("llama-gqa");
    edit_config(dir.path(), |m| {
        m.insert("intermediate_size".into(), serde_json::json!(160));
    });
    let st = path_str(&dir.path().join("model.safetensors"));
    let msg = expect_failure(dir.path(), ErrorKind::Tensor, &[&st, "shape", "176", "160"]);
    assert!(
        ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"].iter().any(|t| msg.contains(t)),
        "message names no MLP tensor: {msg}"
    );
}

#[test]
fn rewritten_tensor_shape_mismatch_is_an_error_naming_file_and_tensor() {
    // k_proj transposed: same element count, wrong shape.
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    let name = "model.layers.1.self_attn.k_proj.weight";
    rewrite_safetensors(&path, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        assert_eq!(t.2, vec![32, 64]);
        t.2 = vec![64, 32];
    });
    expect_failure(dir.path(), ErrorKind::Tensor, &[&path_str(&path), name, "[64, 32]", "[32, 64]"]);
    // A vector with the wrong length too.
    let dir = copy_fixture("qwen2-bias-f16");
    let path = dir.path().join("model.safetensors");
    let name = "model.layers.0.self_attn.v_proj.bias";
    rewrite_safetensors(&path, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        t.2 = vec![t.2[0] - 1];
        t.3.truncate(t.3.len() - 2);
    });
    expect_failure(dir.path(), ErrorKind::Tensor, &[&path_str(&path), name]);
}

#[test]
fn missing_shard_is_an_error_naming_it() {
    let dir = copy_fixture("mistral-sharded");
    let shard = dir.path().join("model-00003-of-00006.safetensors");
    fs::remove_file(&shard).unwrap();
    let index = path_str(&dir.path().join("model.safetensors.index.json"));
    expect_failure(dir.path(), ErrorKind::Checkpoint, &[&index, &path_str(&shard)]);
}

#[test]
fn truncated_safetensors_is_an_error_naming_the_file() {
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    expect_failure(dir.path(), ErrorKind::Checkpoint, &[&path_str(&path), "truncated"]);
    // One truncated shard of a sharded checkpoint.
    let dir = copy_fixture("mistral-sharded");
    let path = dir.path().join("model-00004-of-00006.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    expect_failure(dir.path(), ErrorKind::Checkpoint, &[&path_str(&path), "truncated"]);
    // Cut inside the header.
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..100]).unwrap();
    expect_failure(dir.path(), ErrorKind::Checkpoint, &[&path_str(&path)]);
}

#[test]
fn bad_json_is_an_error_naming_the_file() {
    let dir = copy_fixture("llama-gqa");
    let cfg = dir.path().join("config.json");
    fs::write(&cfg, b"{\"architectures\": [\"LlamaForCausalLM\"], garbage").unwrap();
    expect_failure(dir.path(), ErrorKind::Config, &[&path_str(&cfg), "JSON"]);
    // generation_config.json too.
    let dir = copy_fixture("llama-gqa");
    let gen = dir.path().join("generation_config.json");
    fs::write(&gen, b"not json at all").unwrap();
    expect_failure(dir.path(), ErrorKind::Config, &[&path_str(&gen), "JSON"]);
    // And the shard index.
    let dir = copy_fixture("mistral-sharded");
    let index = dir.path().join("model.safetensors.index.json");
    fs::write(&index, b"{\"weight_map\": {").unwrap();
    expect_failure(dir.path(), ErrorKind::Checkpoint, &[&path_str(&index), "JSON"]);
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    let name = "model.layers.1.mlp.up_proj.weight";
    rewrite_safetensors(&path, |ts| {
        let before = ts.len();
        ts.retain(|t| t.0 != name);
        assert_eq!(ts.len(), before - 1);
    });
    // The message names the checkpoint (its folder) and the tensor.
    expect_failure(dir.path(), ErrorKind::Tensor, &[&path_str(dir.path()), name]);
    // Qwen2 without one of its required biases.
    let dir = copy_fixture("qwen2-bias-f16");
    let path = dir.path().join("model.safetensors");
    let name = "model.layers.1.self_attn.q_proj.bias";
    rewrite_safetensors(&path, |ts| ts.retain(|t| t.0 != name));
    expect_failure(dir.path(), ErrorKind::Tensor, &[&path_str(dir.path()), name]);
    // Sharded: a tensor the index lists but no shard holds.
    let dir = copy_fixture("mistral-sharded");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("model.safetensors.index.json")).unwrap()).unwrap();
    let name = "model.layers.0.self_attn.o_proj.weight";
    let shard = dir.path().join(index["weight_map"][name].as_str().unwrap());
    rewrite_safetensors(&shard, |ts| ts.retain(|t| t.0 != name));
    expect_failure(dir.path(), ErrorKind::Checkpoint, &["model.safetensors.index.json", name]);
}

/// A NaN in the last tensor written makes the conversion fail after the
/// temp file exists: it must still be removed.
#[test]
fn non_finite_value_fails_after_writing_started_and_leaves_nothing() {
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    let name = "model.layers.1.mlp.down_proj.weight"; // written last
    rewrite_safetensors(&path, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
        let i = 3 * 176 + 7; // row 3, column 7
        t.3[i * 4..i * 4 + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("model.frt");
    let mut temps_seen = BTreeSet::new();
    let mut tensors_started = 0;
    let err = convert(dir.path(), &output, &opts(DType::Q4), &mut |p| {
        if let Progress::Tensor { .. } = p {
            tensors_started += 1;
            for n in dir_names(out_dir.path()) {
                if is_temp_of(&n, "model.frt") {
                    temps_seen.insert(n);
                }
            }
        }
    })
    .expect_err("NaN must fail the conversion");
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    let msg = err.to_string();
    for n in [path_str(&path), name.to_string(), "NaN".into(), "row 3".into(), "column 7".into()] {
        assert!(msg.contains(&n), "message does not mention {n:?}: {msg}");
    }
    assert_eq!(tensors_started, 21, "failed at the last tensor");
    assert_eq!(temps_seen.len(), 1, "a temp file existed while converting: {temps_seen:?}");
    assert_no_output_or_temp(&output, &[]);
}

#[test]
fn cli_truncated_shard_fails_cleanly() {
    let dir = copy_fixture("mistral-sharded");
    let path = dir.path().join("model-00002-of-00006.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("model.frt");
    let out = cli_convert(dir.path(), &output, "q4");
    let code = out.status.code().expect("exited (not killed by a signal)");
    assert_ne!(code, 0, "{}", show(&out));
    assert_ne!(code, 101, "panicked:\n{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path_str(&path)), "stderr does not name the shard:\n{}", show(&out));
    assert!(stderr.starts_with("error: "), "{}", show(&out));
    assert!(!stderr.contains("panicked"), "{}", show(&out));
    assert_no_output_or_temp(&output, &[]);
    // Unknown architecture via the CLI too.
    let dir = copy_fixture("llama-gqa");
    edit_config(dir.path(), |m| {
        m.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
    });
    let out = cli_convert(dir.path(), &output, "q8");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported architecture"), "{}", show(&out));
    assert_no_output_or_temp(&output, &[]);
}

// ---------------------------------------------------------------------------
// 8. replacing an existing output
// ---------------------------------------------------------------------------

#[test]
fn existing_output_is_replaced_atomically_on_success() {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("model.frt");
    // An existing valid file (a different model), held open by a "reader".
    convert_ok(&fixture("llama-odd"), &output, DType::F16);
    let old = fs::read(&output).unwrap();
    let old_ino = fs::metadata(&output).unwrap().ino();
    let mut reader = fs::File::open(&output).unwrap();

    let summary = convert_ok(&fixture("llama-gqa"), &output, DType::Q8);
    // The new file is in place, complete and valid.
    let fresh = out_dir.path().join("fresh.frt");
    convert_ok(&fixture("llama-gqa"), &fresh, DType::Q8);
    let new = fs::read(&output).unwrap();
    assert!(new == fs::read(&fresh).unwrap(), "replaced file differs from a fresh conversion");
    assert_eq!(summary.file_bytes, new.len() as u64);
    let bytes = read_frt(&output);
    parse(&bytes).verify_tensors().unwrap();
    // Replaced by rename, not rewritten in place: a reader of the old file
    // still sees the old bytes in full.
    let meta = fs::metadata(&output).unwrap();
    assert_ne!(meta.ino(), old_ino, "output was rewritten in place, not renamed over");
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert!(seen == old, "an open reader of the old file saw it change");
    // An ordinary data file, not the temp file's 0600.
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    fs::remove_file(&fresh).unwrap();
    assert_eq!(dir_names(out_dir.path()), vec!["model.frt".to_string()], "leftover files");
}

#[test]
fn existing_output_is_left_intact_on_failure() {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("model.frt");
    convert_ok(&fixture("llama-gqa"), &output, DType::Q4);
    let old = fs::read(&output).unwrap();

    // Failures before writing starts (config, checkpoint) and after (NaN).
    let bad_config = copy_fixture("llama-gqa");
    edit_config(bad_config.path(), |m| {
        m.remove("hidden_size");
    });
    let truncated = copy_fixture("llama-odd");
    let p = truncated.path().join("model.safetensors");
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() - 100]).unwrap();
    let nan = copy_fixture("llama-odd");
    rewrite_safetensors(&nan.path().join("model.safetensors"), |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.layers.1.mlp.down_proj.weight").unwrap();
        t.3[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    for (what, dir) in [("bad config", &bad_config), ("truncated", &truncated), ("non-finite", &nan)] {
        for w in TYPES {
            assert!(convert(dir.path(), &output, &opts(w), &mut |_| {}).is_err(), "{what}: converted");
            assert!(fs::read(&output).unwrap() == old, "{what} {}: the existing output changed", w.name());
            assert_eq!(dir_names(out_dir.path()), vec!["model.frt".to_string()], "{what}: leftover files");
        }
        // The CLI too.
        let out = cli_convert(dir.path(), &output, "q4");
        assert_eq!(out.status.code(), Some(1), "{what}:\n{}", show(&out));
        assert!(fs::read(&output).unwrap() == old, "{what} (CLI): the existing output changed");
        assert_eq!(dir_names(out_dir.path()), vec!["model.frt".to_string()], "{what} (CLI): leftover files");
    }
}

// ---------------------------------------------------------------------------
// 9. warnings
// ---------------------------------------------------------------------------

#[test]
fn no_tokenizer_and_unknown_tensors_are_warnings() {
    // The fixtures have no tokenizer.
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("a.frt");
    let summary = convert_ok(&fixture("llama-gqa"), &output, DType::Q4);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(summary.warnings[0].contains("tokenizer"), "{:?}", summary.warnings);
    let bytes = read_frt(&output);
    assert!(parse(&bytes).tokenizer().is_none());

    // An extra tensor Ferrite does not use (HF's rotary inv_freq buffer).
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    let inv_freq: Vec<f32> = (0..8).map(|i| 10000f32.powf(-(i as f32) / 8.0)).collect();
    rewrite_safetensors(&path, |ts| {
        ts.push(("model.rotary_emb.inv_freq".into(), Dtype::F32, vec![8], f32_bytes(&inv_freq)))
    });
    let output2 = out_dir.path().join("b.frt");
    let summary = convert_ok(dir.path(), &output2, DType::Q4);
    assert_eq!(summary.warnings.len(), 2, "{:?}", summary.warnings);
    assert!(summary.warnings.iter().any(|w| w.contains("tokenizer")), "{:?}", summary.warnings);
    assert!(
        summary.warnings.iter().any(|w| w.contains("model.rotary_emb.inv_freq") && w.contains(&path_str(&path))),
        "{:?}",
        summary.warnings
    );
    // Nothing else changed.
    assert!(fs::read(&output).unwrap() == fs::read(&output2).unwrap(), "the extra tensor changed the file");

    // The CLI prints the warnings.
    let output3 = out_dir.path().join("c.frt");
    let out = cli_convert(dir.path(), &output3, "q4");
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: ") && stderr.contains("model.rotary_emb.inv_freq"), "{}", show(&out));
}

/// Unused tensors are ignored whatever their type (checkpoints carry I64
/// buffers, F64 inv_freq, ...); a tensor Ferrite uses must be F32/F16/BF16.
#[test]
fn unused_tensors_of_unreadable_types_are_warnings() {
    let extra: [(&str, Dtype, usize); 3] = [
        ("model.layers.0.self_attn.rotary_emb.inv_freq", Dtype::F64, 8),
        ("model.position_ids", Dtype::I64, 8),
        ("model.layers.1.mask", Dtype::BOOL, 1),
    ];
    let out_dir = tempfile::tempdir().unwrap();
    let reference = out_dir.path().join("ref.frt");
    convert_ok(&fixture("llama-gqa"), &reference, DType::Q4);

    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    rewrite_safetensors(&path, |ts| {
        for (name, dt, size) in extra {
            ts.push((name.into(), dt, vec![8], vec![0u8; 8 * size]));
        }
    });
    let output = out_dir.path().join("a.frt");
    let summary = convert_ok(dir.path(), &output, DType::Q4);
    assert_eq!(summary.warnings.len(), 1 + extra.len(), "{:?}", summary.warnings);
    for (name, dt, _) in extra {
        assert!(
            summary
                .warnings
                .iter()
                .any(|w| w.contains(name) && w.contains(&format!("{dt:?}")) && w.contains(&path_str(&path))),
            "no warning for {name}: {:?}",
            summary.warnings
        );
    }
    assert!(fs::read(&output).unwrap() == fs::read(&reference).unwrap(), "the extra tensors changed the file");

    // In a sharded checkpoint, listed in the index.
    let dir = copy_fixture("mistral-sharded");
    let shard = "model-00002-of-00006.safetensors";
    rewrite_safetensors(&dir.path().join(shard), |ts| {
        ts.push(("model.position_ids".into(), Dtype::I64, vec![4], vec![0; 32]))
    });
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.position_ids"] = serde_json::json!(shard);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let summary = convert_ok(dir.path(), &out_dir.path().join("b.frt"), DType::F32);
    assert!(
        summary.warnings.iter().any(|w| w.contains("model.position_ids") && w.contains(shard)),
        "{:?}",
        summary.warnings
    );

    // A used tensor of an unreadable type is an error naming file, tensor and type.
    let dir = copy_fixture("llama-gqa");
    let path = dir.path().join("model.safetensors");
    rewrite_safetensors(&path, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1 = Dtype::I32;
    });
    expect_failure(dir.path(), ErrorKind::Tensor, &[&path_str(&path), "model.norm.weight", "I32"]);
}

// ---------------------------------------------------------------------------
// 10. summary statistics
// ---------------------------------------------------------------------------

#[test]
fn summary_stats_are_consistent_with_the_file() {
    for name in FIXTURES {
        let src = load_source(&fixture(name));
        let (n_tensors, n_params) = readme_counts(name);
        let aligned = src.values().all(|s| rows_cols(&s.shape).1 % 32 == 0 || s.shape.len() == 1);
        let out_dir = tempfile::tempdir().unwrap();
        for w in TYPES {
            let what = format!("{name} {}", w.name());
            let output = out_dir.path().join(format!("{}.frt", w.name()));
            let summary = convert_ok(&fixture(name), &output, w);
            assert_eq!(summary.file_bytes, fs::metadata(&output).unwrap().len(), "{what}: file_bytes");
            let bytes = read_frt(&output);
            let file = parse(&bytes);
            // Totals from the directory, per type.
            let mut dir_stats: BTreeMap<DType, (usize, u64, u64)> = BTreeMap::new();
            // Per type: elements counting row padding, and whether no row is padded.
            let mut padded_params: BTreeMap<DType, (u64, bool)> = BTreeMap::new();
            // Sums of squares recomputed from the source and the file.
            let mut sq: BTreeMap<DType, (f64, f64)> = BTreeMap::new();
            for e in file.directory() {
                let s = dir_stats.entry(e.dtype().unwrap()).or_default();
                s.0 += 1;
                s.1 += e.rows as u64 * e.cols as u64;
                s.2 += e.size;
                let p = padded_params.entry(e.dtype().unwrap()).or_insert((0, true));
                let quantized = e.dtype().unwrap().is_quantized();
                let rows = if quantized { quant::padded_rows(e.rows as usize) as u64 } else { e.rows as u64 };
                p.0 += rows * quant::padded_cols(e.cols as usize) as u64;
                p.1 &= e.cols % 32 == 0 && (!quantized || e.rows % 8 == 0);
            }
            for (hf, s) in &src {
                let t = tensor(&file, role_for(hf));
                let back = dequantize(&t);
                let acc = sq.entry(t.dtype).or_default();
                for (x, y) in s.values.iter().zip(&back) {
                    let (x, y) = (*x as f64, *y as f64);
                    acc.0 += (x - y) * (x - y);
                    acc.1 += x * x;
                }
            }
            let keys: Vec<DType> = summary.by_type.keys().copied().collect();
            assert_eq!(keys, dir_stats.keys().copied().collect::<Vec<_>>(), "{what}: types");
            for (dt, st) in &summary.by_type {
                let (n, params, bytes) = dir_stats[dt];
                assert_eq!(st.tensors, n, "{what} {}: tensors", dt.name());
                assert_eq!(st.params, params, "{what} {}: params", dt.name());
                assert_eq!(st.bytes, bytes, "{what} {}: bytes", dt.name());
                assert_eq!(st.bits_per_weight(), bytes as f64 * 8.0 / params as f64);
                let (err, val) = sq[dt];
                assert!((st.sum_sq - val).abs() <= 1e-9 * val, "{what} {}: sum_sq {} vs {val}", dt.name(), st.sum_sq);
                assert!(
                    (st.sum_sq_err - err).abs() <= 1e-9 * val,
                    "{what} {}: sum_sq_err {} vs {err}",
                    dt.name(),
                    st.sum_sq_err
                );
                let bpw = st.bits_per_weight();
                match dt {
                    DType::F32 => assert_eq!(bpw, 32.0, "{what}"),
                    DType::F16 => assert_eq!(bpw, 16.0, "{what}"),
                    DType::Q8 | DType::Q4 | DType::Q4A => {
                        let nominal = match dt {
                            DType::Q8 => 8.5,
                            DType::Q4 => 4.5,
                            _ => 5.0,
                        };
                        let (padded, aligned_dt) = padded_params[dt];
                        if aligned_dt {
                            assert_eq!(bpw, nominal, "{what} {}: bits/weight", dt.name());
                        } else {
                            // Padded rows cost their whole last group; padded
                            // tiles their whole 8 rows.
                            let want = nominal * padded as f64 / params as f64;
                            assert!(bpw > nominal, "{what} {}: {bpw} bits/weight", dt.name());
                            assert!((bpw - want).abs() < 1e-12, "{what} {}: {bpw} bits/weight, want {want}", dt.name());
                        }
                    }
                    other => panic!("{what}: {} from an HF folder", other.name()),
                }
                // Exact types have no error (f16: only for the f16 source).
                let rmse = st.relative_rmse();
                match dt {
                    DType::F32 => assert_eq!(st.sum_sq_err, 0.0, "{what}: f32 error"),
                    DType::F16 if name == "qwen2-bias-f16" => assert_eq!(st.sum_sq_err, 0.0, "{what}: f16 error"),
                    DType::F16 => assert!(rmse < 1e-3, "{what}: f16 rel. RMSE {rmse}"),
                    DType::Q8 => assert!(rmse > 0.0 && rmse < 0.01, "{what}: q8 rel. RMSE {rmse}"),
                    DType::Q4 => assert!(rmse > 0.01 && rmse < 0.2, "{what}: q4 rel. RMSE {rmse}"),
                    DType::Q4A => assert!(rmse > 0.01 && rmse < 0.2, "{what}: q4a rel. RMSE {rmse}"),
                    other => panic!("{what}: {} from an HF folder", other.name()),
                }
            }
            assert_eq!(summary.by_type.values().map(|s| s.tensors).sum::<usize>(), n_tensors, "{what}");
            assert_eq!(summary.by_type.values().map(|s| s.params).sum::<u64>(), n_params, "{what}: params");
            let elems: u64 = src.values().map(|s| s.values.len() as u64).sum();
            assert_eq!(elems, n_params, "{what}: source elements");
            if w == DType::Q4 {
                // Fixtures whose widths are all multiples of 32: exactly 4.5 bits/weight.
                assert_eq!(padded_params[&DType::Q4].1, aligned, "{what}");
                if aligned {
                    assert_eq!(summary.by_type[&DType::Q4].bits_per_weight(), 4.5, "{what}");
                }
                // q4 puts the linear layers in q4 and the embedding (and lm_head) in q8.
                let untied = src.contains_key("lm_head.weight");
                assert_eq!(summary.by_type[&DType::Q8].tensors, 1 + usize::from(untied), "{what}");
            }
        }
        // Whether the q4 nominal 4.5 bits/weight was checked exactly.
        assert_eq!(aligned, matches!(name, "llama-tied-bf16" | "qwen2-bias-f16" | "mistral-sharded"), "{name}");
    }
}

// ---------------------------------------------------------------------------
// Tensors larger than one conversion slab (the fixtures all fit in one).
// ---------------------------------------------------------------------------

/// Writes a small untied Llama with a large vocabulary: its 12000 x 48
/// embedding and lm_head (576000 elements) span several of the converter's
/// 2^18-element slabs, the last one partial, at a width that is not a
/// multiple of 32. Returns the source tensors.
fn write_large_vocab_model(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let (vocab, hidden, inter, heads, kv, hd) = (12000usize, 48usize, 40usize, 3usize, 1usize, 16usize);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": 1,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "vocab_size": vocab, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
        "rope_theta": 10000.0, "torch_dtype": "float32",
    });
    fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut add = |name: &str, shape: Vec<usize>, next: &mut dyn FnMut() -> f32| {
        let (rows, cols) = rows_cols(&shape);
        // Row magnitudes vary over 3 orders (0.1 .. 100) so scales differ.
        let v: Vec<f32> = (0..rows * cols).map(|i| next() * 10f32.powi((i / cols % 4) as i32 - 1)).collect();
        tensors.insert(name.to_string(), (shape, v));
    };
    add("model.embed_tokens.weight", vec![vocab, hidden], &mut next);
    add("lm_head.weight", vec![vocab, hidden], &mut next);
    add("model.norm.weight", vec![hidden], &mut next);
    let p = "model.layers.0.";
    add(&format!("{p}input_layernorm.weight"), vec![hidden], &mut next);
    add(&format!("{p}post_attention_layernorm.weight"), vec![hidden], &mut next);
    add(&format!("{p}self_attn.q_proj.weight"), vec![heads * hd, hidden], &mut next);
    add(&format!("{p}self_attn.k_proj.weight"), vec![kv * hd, hidden], &mut next);
    add(&format!("{p}self_attn.v_proj.weight"), vec![kv * hd, hidden], &mut next);
    add(&format!("{p}self_attn.o_proj.weight"), vec![hidden, heads * hd], &mut next);
    add(&format!("{p}mlp.gate_proj.weight"), vec![inter, hidden], &mut next);
    add(&format!("{p}mlp.up_proj.weight"), vec![inter, hidden], &mut next);
    add(&format!("{p}mlp.down_proj.weight"), vec![hidden, inter], &mut next);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, (s, v))| (n.clone(), s.clone(), f32_bytes(v))).collect();
    let views: Vec<(String, StView<'_>)> =
        raw.iter().map(|(n, s, b)| (n.clone(), StView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    tensors
}

#[test]
fn tensors_larger_than_a_slab_convert_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_large_vocab_model(dir.path());
    let out_dir = tempfile::tempdir().unwrap();
    for w in TYPES {
        let output = out_dir.path().join(format!("{}.frt", w.name()));
        let mut advanced = 0u64;
        let mut total = 0u64;
        let summary = convert(dir.path(), &output, &opts(w), &mut |p| match p {
            Progress::Start { bytes, .. } => total = bytes,
            Progress::Advance(n) => advanced += n,
            Progress::Tensor { .. } => {}
        })
        .unwrap();
        let n_elems: u64 = src.values().map(|(_, v)| v.len() as u64).sum();
        assert_eq!(total, n_elems * 4, "{}: progress total", w.name());
        assert_eq!(advanced, total, "{}: progress advanced", w.name());
        assert_eq!(summary.by_type.values().map(|s| s.params).sum::<u64>(), n_elems);
        let bytes = read_frt(&output);
        let file = parse(&bytes);
        file.verify_tensors().unwrap();
        for (hf, (shape, values)) in &src {
            let role = role_for(hf);
            let t = tensor(&file, role);
            assert_eq!((t.rows as usize, t.cols as usize), rows_cols(shape));
            match t.dtype {
                DType::F32 => assert!(
                    t.as_f32().unwrap().iter().map(|v| v.to_bits()).eq(values.iter().map(|v| v.to_bits())),
                    "{hf}"
                ),
                DType::F16 => assert!(
                    t.as_f16()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .eq(values.iter().map(|v| f16::from_f32(*v).to_bits())),
                    "{hf}"
                ),
                _ => {
                    check_quantized(&format!("{} {hf}", w.name()), values, &t);
                }
            }
        }
    }
    // A NaN deep in the last slab is reported at its true row and column.
    let path = dir.path().join("model.safetensors");
    rewrite_safetensors(&path, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "lm_head.weight").unwrap();
        let i = 11000 * 48 + 5;
        t.3[i * 4..i * 4 + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let output = out_dir.path().join("nan.frt");
    let err = convert(dir.path(), &output, &opts(DType::Q4), &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    let msg = err.to_string();
    for n in ["lm_head.weight", "element 528005", "row 11000", "column 5"] {
        assert!(msg.contains(n), "message does not mention {n:?}: {msg}");
    }
    assert!(!output.exists());
    assert!(dir_names(out_dir.path()).iter().all(|n| !is_temp_of(n, "nan.frt")));
}

// ---------------------------------------------------------------------------
// per-tensor types
// ---------------------------------------------------------------------------

/// `--tensor-type` rules (library and CLI, incl. the q4-mix preset): the
/// named tensors get their type, later rules win, others keep the default;
/// a rule that matches nothing, or does not parse, is refused.
#[test]
fn tensor_type_rules_choose_per_tensor_types() {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("mix.frt");
    let rules: Vec<TensorType> = ["attn_v=q8", "ffn_down=q4a", "blk.1.ffn_down=f16", "embedding=q4"]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    let opts = Options { weights: DType::Q4, tensor_types: rules, ..Default::default() };
    convert(&fixture("llama-gqa"), &output, &opts, &mut |_| {}).unwrap();
    let bytes = read_frt(&output);
    let file = parse(&bytes);
    file.verify_tensors().unwrap();
    for l in 0..file.config().n_layers {
        let ty = |r| tensor(&file, Role::Layer(l, r)).dtype;
        assert_eq!(ty(LayerRole::AttnV), DType::Q8);
        assert_eq!(ty(LayerRole::AttnQ), DType::Q4);
        assert_eq!(ty(LayerRole::FfnDown), if l == 1 { DType::F16 } else { DType::Q4A });
    }
    assert_eq!(tensor(&file, Role::Embedding).dtype, DType::Q4);

    // The CLI: the preset plus a rule, then run the file.
    let out = ferrite([
        "convert".as_ref(),
        fixture("llama-gqa").as_os_str(),
        "-o".as_ref(),
        output.as_os_str(),
        "-q".as_ref(),
        "--weights".as_ref(),
        "q4-mix".as_ref(),
        "--tensor-type".as_ref(),
        "attn_q=q4a,attn_k=q4a".as_ref(),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let bytes = read_frt(&output);
    let file = parse(&bytes);
    for (r, want) in [
        (LayerRole::AttnV, DType::Q8),
        (LayerRole::FfnDown, DType::Q8),
        (LayerRole::AttnQ, DType::Q4A),
        (LayerRole::AttnK, DType::Q4A),
        (LayerRole::FfnUp, DType::Q4),
    ] {
        assert_eq!(tensor(&file, Role::Layer(0, r)).dtype, want, "{r:?}");
    }
    assert_eq!(tensor(&file, Role::Embedding).dtype, DType::Q8);
    let out = ferrite([
        "run".as_ref(),
        "-m".as_ref(),
        output.as_os_str(),
        "--prompt-ids".as_ref(),
        "1,2,3".as_ref(),
        "-n".as_ref(),
        "4".as_ref(),
        "--temp".as_ref(),
        "0".as_ref(),
        "--output".as_ref(),
        "ids".as_ref(),
    ]);
    assert!(out.status.success(), "{}", show(&out));

    for (bad, msg) in [
        ("attn_x=q8", "unknown tensor"),
        ("attn_v=q5", "unknown type"),
        ("attn_v", "ROLE=TYPE"),
        ("blk.x.attn_v=q8", "bad layer"),
        ("blk.0.embedding=q8", "not a per-layer tensor"),
        ("attn_norm=q8", "unknown tensor"),
    ] {
        let e = bad.parse::<TensorType>().unwrap_err();
        assert!(e.contains(msg), "{bad}: {e}");
    }
    let opts = Options { tensor_types: vec!["blk.7.attn_v=q8".parse().unwrap()], ..Default::default() };
    let e = convert(&fixture("llama-gqa"), &output, &opts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("blk.7.attn_v=q8") && e.to_string().contains("no such tensor"), "{e}");
    let out = ferrite([
        "convert".as_ref(),
        fixture("llama-gqa").as_os_str(),
        "-o".as_ref(),
        output.as_os_str(),
        "--tensor-type".as_ref(),
        "ffn_up=q3".as_ref(),
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown type"), "{}", show(&out));
}
