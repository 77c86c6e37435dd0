//! Malformed checkpoints through the `ferrite convert` command, one table
//! row per way a Hugging Face folder can be broken (issue #7, part 2).
//!
//! Every row breaks a copy of a tiny fixture, runs the CLI binary and
//! checks what a user sees: a refusal exits non-zero but not with a panic
//! (101), prints one `error: ` naming the file and the key or tensor at
//! fault, and leaves the output folder empty: no output, no temp file. An
//! unknown extra tensor is the one row that is only a warning: the
//! conversion succeeds and the warning names the file and the tensor.
//! `tests/convert.rs` covers the same failures through the library, with
//! their [`ferrite_converter::ErrorKind`]s.
#![cfg(feature = "cli")]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{copy_fixture, dir_names, edit_json, rewrite_safetensors, show, BIN};
use ferrite_converter::{temp_owner, temp_prefix};
use safetensors::Dtype;

/// What a row expects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Refused: exit 1, `error: ...`, nothing written.
    Error,
    /// Converted, with a `warning: ...`.
    Warning,
}

struct Case {
    name: &'static str,
    fixture: &'static str,
    /// Breaks the copied folder; returns what the message must contain
    /// (the file's path, and the key or tensor).
    breaks: fn(&Path) -> Vec<String>,
    /// Extra `ferrite convert` arguments.
    args: &'static [&'static str],
    expect: Expect,
}

fn path_of(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// Writes `value` (little-endian f32) over element `index` of an f32 tensor.
fn poke_f32(path: &Path, tensor: &str, index: usize, value: f32) {
    rewrite_safetensors(path, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == tensor).expect("tensor in fixture");
        assert_eq!(t.1, Dtype::F32, "{tensor} is not f32");
        t.3[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes());
    });
}

/// Sets the 8-byte little-endian header length of a safetensors file.
fn set_header_len(path: &Path, len: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    fs::write(path, bytes).expect("write");
}

const SHARD2: &str = "model-00002-of-00006.safetensors";

/// What a message must contain: the path of `file` in `dir`, then `extra`.
fn naming(dir: &Path, file: &str, extra: &[&str]) -> Vec<String> {
    std::iter::once(path_of(dir, file)).chain(extra.iter().map(|s| s.to_string())).collect()
}

/// Sets `key` of `dir/config.json` to `value`; the message must name the
/// file and `extra`.
fn config_with(dir: &Path, key: &str, value: serde_json::Value, extra: &[&str]) -> Vec<String> {
    edit_json(&dir.join("config.json"), |m| {
        m.insert(key.into(), value);
    });
    naming(dir, "config.json", extra)
}

/// Overwrites `dir/file` with `bytes`; the message must name the file and `extra`.
fn replaced(dir: &Path, file: &str, bytes: &[u8], extra: &[&str]) -> Vec<String> {
    fs::write(dir.join(file), bytes).unwrap();
    naming(dir, file, extra)
}

/// Cuts `dir/file` to `keep(its length)` bytes; the message must name the
/// file and say it is truncated.
fn truncated(dir: &Path, file: &str, keep: fn(usize) -> usize) -> Vec<String> {
    let p = dir.join(file);
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..keep(b.len())]).unwrap();
    naming(dir, file, &["truncated"])
}

/// Writes `value` over element `index` of the f32 tensor `name` of
/// `dir/model.safetensors`; the message must name the file, the tensor and `extra`.
fn poked(dir: &Path, name: &str, index: usize, value: f32, extra: &[&str]) -> Vec<String> {
    poke_f32(&dir.join("model.safetensors"), name, index, value);
    naming(dir, "model.safetensors", &[&[name][..], extra].concat())
}

/// Points the weight map entry of `tensor` in the shard index at `value`;
/// the message must name the index and `extra`.
fn index_entry(dir: &Path, tensor: &str, value: serde_json::Value, extra: &[&str]) -> Vec<String> {
    edit_json(&dir.join("model.safetensors.index.json"), |m| m["weight_map"][tensor] = value);
    naming(dir, "model.safetensors.index.json", extra)
}

/// Sets the header length of `dir/file` to `len(its file length, its header length)`.
fn header_len(dir: &Path, file: &str, len: fn(u64, u64) -> u64) -> Vec<String> {
    let p = dir.join(file);
    let b = fs::read(&p).unwrap();
    set_header_len(&p, len(b.len() as u64, u64::from_le_bytes(b[..8].try_into().unwrap())));
    naming(dir, file, &[])
}

impl Case {
    /// A row refused with an error, `ferrite convert` run without extra arguments.
    fn refused(name: &'static str, fixture: &'static str, breaks: fn(&Path) -> Vec<String>) -> Case {
        Case { name, fixture, breaks, args: &[], expect: Expect::Error }
    }
    /// A row converted with a warning.
    fn warned(name: &'static str, fixture: &'static str, breaks: fn(&Path) -> Vec<String>) -> Case {
        Case { expect: Expect::Warning, ..Case::refused(name, fixture, breaks) }
    }
    /// The row with `ferrite convert` run with `args`.
    fn with(self, args: &'static [&'static str]) -> Case {
        Case { args, ..self }
    }
}

fn cases() -> Vec<Case> {
    use serde_json::json;
    const GQA: &str = "llama-gqa"; // 2 layers, hidden 64, 4 heads, 2 kv heads
    const SHARDED: &str = "mistral-sharded";
    vec![
        // --- config.json --------------------------------------------------
        Case::refused("config key missing", GQA, |d| {
            edit_json(&d.join("config.json"), |m| {
                m.remove("hidden_size");
            });
            naming(d, "config.json", &["`hidden_size`", "missing"])
        }),
        Case::refused("config key mistyped (string for an integer)", GQA, |d| {
            config_with(d, "num_hidden_layers", json!("2"), &["`num_hidden_layers`", "\"2\""])
        }),
        Case::refused("config key mistyped (negative integer)", GQA, |d| {
            config_with(d, "vocab_size", json!(-512), &["`vocab_size`"])
        }),
        Case::refused("config key mistyped (string for a number)", GQA, |d| {
            config_with(d, "rms_norm_eps", json!("1e-5"), &["`rms_norm_eps`"])
        }),
        Case::refused("config architectures is not a list", GQA, |d| {
            config_with(d, "architectures", json!("LlamaForCausalLM"), &["`architectures`"])
        }),
        Case::refused("unknown architecture", GQA, |d| {
            config_with(d, "architectures", json!(["GPT2LMHeadModel"]), &["GPT2LMHeadModel", "LlamaForCausalLM"])
        }),
        Case::refused("kv heads do not divide the heads", GQA, |d| {
            config_with(d, "num_key_value_heads", json!(3), &["`num_key_value_heads`", "(3)"])
        }),
        Case::refused("zero kv heads", GQA, |d| {
            config_with(d, "num_key_value_heads", json!(0), &["`num_key_value_heads`"])
        }),
        Case::refused("heads do not divide hidden_size (no head_dim)", GQA, |d| {
            edit_json(&d.join("config.json"), |m| {
                m.remove("head_dim");
                m.insert("num_attention_heads".into(), json!(6));
                m.insert("num_key_value_heads".into(), json!(2));
            });
            naming(d, "config.json", &["`hidden_size`", "num_attention_heads"])
        }),
        Case::refused("config.json is not UTF-8", GQA, |d| {
            replaced(d, "config.json", b"{\"architectures\": [\"Llama\xff\xfe\"]}", &["UTF-8"])
        }),
        // --- tensors --------------------------------------------------------
        Case::refused("tensor shape mismatch", GQA, |d| {
            let name = "model.layers.1.self_attn.k_proj.weight";
            rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
                t.2 = vec![64, 32]; // transposed: [32, 64] expected
            });
            naming(d, "model.safetensors", &[name, "[64, 32]", "[32, 64]"])
        }),
        Case::refused("tensor dtype not readable", GQA, |d| {
            let name = "model.norm.weight";
            rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                ts.iter_mut().find(|t| t.0 == name).unwrap().1 = Dtype::I32;
            });
            naming(d, "model.safetensors", &[name, "I32"])
        }),
        Case::refused("tensor dtype mismatch in a shard", SHARDED, |d| {
            let name = "model.layers.0.self_attn.q_proj.weight";
            rewrite_safetensors(&d.join(SHARD2), |ts| {
                let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
                // Same bytes read as u8: 4× the elements, shape adjusted.
                t.1 = Dtype::U8;
                t.2 = vec![t.3.len()];
            });
            naming(d, SHARD2, &[name, "U8"])
        }),
        Case::refused("missing tensor", GQA, |d| {
            let name = "model.layers.1.mlp.up_proj.weight";
            rewrite_safetensors(&d.join("model.safetensors"), |ts| ts.retain(|t| t.0 != name));
            vec![d.display().to_string(), name.into()]
        }),
        Case::refused("tensor for a layer the config does not have", GQA, |d| {
            let name = "model.layers.7.input_layernorm.weight";
            rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                ts.push((name.into(), Dtype::F32, vec![64], vec![0; 256]));
            });
            naming(d, "model.safetensors", &[name])
        }),
        Case::warned("unknown extra tensor", GQA, |d| {
            let name = "model.rotary_emb.inv_freq";
            rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                ts.push((name.into(), Dtype::F32, vec![8], vec![0; 32]));
            });
            naming(d, "model.safetensors", &[name])
        }),
        Case::refused("NaN weight", GQA, |d| {
            let name = "model.layers.0.self_attn.o_proj.weight";
            poked(d, name, 5 * 64 + 3, f32::NAN, &["NaN", "row 5, column 3", "--allow-nonfinite"])
        }),
        Case::refused("infinite weight", GQA, |d| {
            poked(d, "model.embed_tokens.weight", 100, f32::NEG_INFINITY, &["-inf"])
        }),
        Case::refused("infinite norm weight (kept f32)", GQA, |d| {
            poked(d, "model.layers.1.post_attention_layernorm.weight", 0, f32::INFINITY, &["inf"])
        })
        .with(&["--weights", "f32"]),
        Case::warned("NaN weight with --allow-nonfinite", GQA, |d| {
            let name = "model.layers.0.self_attn.o_proj.weight";
            poked(d, name, 5 * 64 + 3, f32::NAN, &["non-finite", "quantized as 0"])
        })
        .with(&["--allow-nonfinite"]),
        // --- files ------------------------------------------------------------
        Case::refused("truncated single file", "llama-odd", |d| truncated(d, "model.safetensors", |n| n - 100)),
        Case::refused("truncated shard", SHARDED, |d| truncated(d, SHARD2, |n| n / 2)),
        Case::refused("empty safetensors file", GQA, |d| replaced(d, "model.safetensors", b"", &[])),
        Case::refused("index names a missing shard file", SHARDED, |d| {
            let (tensor, ghost) = ("model.layers.0.input_layernorm.weight", "model-00007-of-00006.safetensors");
            index_entry(d, tensor, json!(ghost), &[ghost, tensor])
        }),
        Case::refused("index entry is not a file name", SHARDED, |d| {
            index_entry(d, "model.norm.weight", json!(42), &["model.norm.weight"])
        }),
        Case::refused("index names a shard outside the folder", SHARDED, |d| {
            let outside = "../model-00006-of-00006.safetensors";
            index_entry(d, "model.norm.weight", json!(outside), &[outside])
        }),
        Case::refused("tokenizer.json is not UTF-8", GQA, |d| {
            replaced(d, "tokenizer.json", b"{\"model\": {\"type\": \"BPE\xc3\x28\"}}", &["UTF-8"])
        }),
        Case::refused("tokenizer.json id far beyond its entries", GQA, |d| {
            // Before: a 128 GiB table for the id (an OOM abort).
            let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 4294967295}, "merges": []},
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
                "added_tokens": []}"#;
            replaced(d, "tokenizer.json", json.as_bytes(), &["token id 4294967295 is beyond the 2 tokens"])
        }),
        Case::refused("tokenizer.json is binary", GQA, |d| {
            replaced(d, "tokenizer.json", &[0xff, 0xfe, 0x00, 0x80, 0x7b], &[])
        }),
        Case::refused("absurd header length (u64::MAX)", GQA, |d| header_len(d, "model.safetensors", |_, _| u64::MAX)),
        Case::refused("absurd header length (1 TiB)", GQA, |d| header_len(d, "model.safetensors", |_, _| 1 << 40)),
        // 8 + len > len
        Case::refused("header length past the end of the file", SHARDED, |d| header_len(d, SHARD2, |len, _| len)),
        Case::refused("header length cutting the JSON short", GQA, |d| {
            header_len(d, "model.safetensors", |_, header| header - 10)
        }),
    ]
}

/// `ferrite convert INPUT -o OUTPUT --quiet ARGS`.
fn convert_quietly(input: &Path, output: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(output)
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run ferrite")
}

/// No temp file of `output` in its folder.
fn temps_of(output: &Path) -> Vec<String> {
    let dir = output.parent().expect("parent");
    let prefix = temp_prefix(output);
    dir_names(dir).into_iter().filter(|n| n.starts_with(&prefix) || temp_owner(output, n).is_some()).collect()
}

#[test]
fn every_malformed_checkpoint_is_refused_naming_the_file_and_key_or_tensor() {
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let input = copy_fixture(case.fixture);
        let needles = (case.breaks)(input.path());
        let out_dir = tempfile::tempdir().expect("tempdir");
        let output = out_dir.path().join("model.frt");
        let out = convert_quietly(input.path(), &output, case.args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut problems = Vec::new();
        if stderr.contains("panicked") || out.status.code() == Some(101) {
            problems.push("panicked".to_string());
        }
        match case.expect {
            Expect::Error => {
                match out.status.code() {
                    Some(1) => {}
                    other => problems.push(format!("exit code {other:?}, expected 1")),
                }
                let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
                if errors.len() != 1 {
                    problems.push(format!("{} `error: ` lines", errors.len()));
                }
                for n in &needles {
                    if !errors.iter().any(|l| l.contains(n.as_str())) {
                        problems.push(format!("the error does not mention {n:?}"));
                    }
                }
                let left = dir_names(out_dir.path());
                if !left.is_empty() {
                    problems.push(format!("left in the output folder: {left:?}"));
                }
            }
            Expect::Warning => {
                if !out.status.success() {
                    problems.push("failed".into());
                }
                let warned = stderr
                    .lines()
                    .any(|l| l.starts_with("warning: ") && needles.iter().all(|n| l.contains(n.as_str())));
                if !warned {
                    problems.push(format!("no `warning: ` line mentions all of {needles:?}"));
                }
                if !output.exists() {
                    problems.push("no output".into());
                }
                let temps = temps_of(&output);
                if !temps.is_empty() {
                    problems.push(format!("temp files left: {temps:?}"));
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("[{}] {}\n{}", case.name, problems.join("; "), show(&out)));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// Every row's breakage really happens in the copy, not the fixture: the
/// unbroken copy converts (so a row can only pass by being refused for the
/// reason it tests).
#[test]
fn the_unbroken_fixtures_of_the_table_convert() {
    let mut fixtures: Vec<&str> = cases().iter().map(|c| c.fixture).collect();
    fixtures.sort();
    fixtures.dedup();
    for fixture in fixtures {
        let input = copy_fixture(fixture);
        let out_dir = tempfile::tempdir().expect("tempdir");
        let output = out_dir.path().join("model.frt");
        let out = convert_quietly(input.path(), &output, &[]);
        assert!(out.status.success(), "{fixture}:\n{}", show(&out));
        assert_eq!(dir_names(out_dir.path()), ["model.frt"], "{fixture}");
    }
}

/// `--allow-nonfinite` in detail (library): NaN/inf are stored as they are
/// in f32 and f16 tensors, quantized as 0 in q8/q4 ones (the group's scale
/// from its finite elements); a finite value beyond f16's range is still
/// refused.
#[test]
fn allow_nonfinite_stores_f32_f16_as_they_are_and_quantizes_them_as_zero() {
    use ferrite_converter::{convert, ErrorKind, Options};
    use ferrite_format::writer::AlignedBytes;
    use ferrite_format::{DType, File, LayerRole, Role};

    let name = "model.layers.0.self_attn.o_proj.weight"; // [64, 64]
    let role = Role::Layer(0, LayerRole::AttnO);
    let input = copy_fixture("llama-gqa");
    let st = input.path().join("model.safetensors");
    poke_f32(&st, name, 5 * 64 + 3, f32::NAN);
    poke_f32(&st, name, 9 * 64 + 40, f32::INFINITY);
    let out_dir = tempfile::tempdir().expect("tempdir");
    for weights in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        let output = out_dir.path().join(format!("{}.frt", weights.name()));
        // Refused by default, converted when allowed.
        let err = convert(input.path(), &output, &Options { weights, ..Default::default() }, &mut |_| {})
            .expect_err("NaN must be refused by default");
        assert_eq!(err.kind(), ErrorKind::NonFinite, "{err}");
        let opts = Options { weights, allow_nonfinite: true, ..Default::default() };
        let summary = convert(input.path(), &output, &opts, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        let warning: Vec<&String> = summary.warnings.iter().filter(|w| w.contains(name)).collect();
        assert_eq!(warning.len(), 1, "{:?}", summary.warnings);
        assert!(warning[0].contains("2 non-finite") && warning[0].contains("row 5, column 3"), "{}", warning[0]);
        // The statistics stay finite.
        for (t, s) in &summary.by_type {
            assert!(s.relative_rmse().is_finite(), "{}: rmse {}", t.name(), s.relative_rmse());
        }
        let bytes = AlignedBytes::read(&output).expect("read");
        let file = File::parse(bytes.as_slice()).expect("parse");
        file.verify_tensors().expect("verify");
        let t = file.tensor(role).expect("tensor");
        let at = |r: usize, c: usize| -> f32 {
            match weights {
                DType::F32 => t.as_f32().unwrap()[r * 64 + c],
                DType::F16 => t.as_f16().unwrap()[r * 64 + c].to_f32(),
                _ => {
                    let (qs, scales) = t.quant_planes().unwrap();
                    let row_q = ferrite_format::quant::row_quant_bytes(weights, 64);
                    let mut row = [0f32; 64];
                    let (mut q, mut s) = (vec![0u8; row_q], [half::f16::ZERO; 2]);
                    ferrite_format::quant::untile_row(weights, qs, scales, r, 2, &mut q, &mut s);
                    if weights == DType::Q8 {
                        ferrite_kernels::reference::dequantize_row_q8(&q, &s, &mut row);
                    } else {
                        ferrite_kernels::reference::dequantize_row_q4(&q, &s, &mut row);
                    }
                    assert!(row.iter().all(|v| v.is_finite()), "{}: row {r} is not finite", weights.name());
                    row[c]
                }
            }
        };
        if weights.is_quantized() {
            assert_eq!(at(5, 3), 0.0, "{}", weights.name());
            assert_eq!(at(9, 40), 0.0, "{}", weights.name());
        } else {
            assert!(at(5, 3).is_nan(), "{}", weights.name());
            assert_eq!(at(9, 40), f32::INFINITY, "{}", weights.name());
        }
    }

    // A finite value f16 cannot hold is refused even when allowed.
    let big = copy_fixture("llama-gqa");
    poke_f32(&big.path().join("model.safetensors"), name, 7, 1e6);
    let output = out_dir.path().join("big.frt");
    let opts = Options { weights: DType::F16, allow_nonfinite: true, ..Default::default() };
    let err = convert(big.path(), &output, &opts, &mut |_| {}).expect_err("overflow must be refused");
    assert_eq!(err.kind(), ErrorKind::NonFinite, "{err}");
    assert!(err.to_string().contains(name) && err.to_string().contains("overflows f16"), "{err}");
    assert!(!output.exists());
}
