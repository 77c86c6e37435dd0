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

use common::{copy_fixture, dir_names, edit_json, rewrite_safetensors};
use ferrite_converter::{temp_owner, temp_prefix};
use safetensors::Dtype;

const BIN: &str = env!("CARGO_BIN_EXE_ferrite");

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

fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    edit_json(&dir.join("config.json"), |m| {
        m.insert(key.into(), value);
    });
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

fn cases() -> Vec<Case> {
    use Expect::{Error, Warning};
    vec![
        // --- config.json --------------------------------------------------
        Case {
            name: "config key missing",
            fixture: "llama-gqa",
            breaks: |d| {
                edit_json(&d.join("config.json"), |m| {
                    m.remove("hidden_size");
                });
                vec![path_of(d, "config.json"), "`hidden_size`".into(), "missing".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "config key mistyped (string for an integer)",
            fixture: "llama-gqa",
            breaks: |d| {
                set_config(d, "num_hidden_layers", serde_json::json!("2"));
                vec![path_of(d, "config.json"), "`num_hidden_layers`".into(), "\"2\"".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "config key mistyped (negative integer)",
            fixture: "llama-gqa",
            breaks: |d| {
                set_config(d, "vocab_size", serde_json::json!(-512));
                vec![path_of(d, "config.json"), "`vocab_size`".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "config key mistyped (string for a number)",
            fixture: "llama-gqa",
            breaks: |d| {
                set_config(d, "rms_norm_eps", serde_json::json!("1e-5"));
                vec![path_of(d, "config.json"), "`rms_norm_eps`".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "config architectures is not a list",
            fixture: "llama-gqa",
            breaks: |d| {
                set_config(d, "architectures", serde_json::json!("LlamaForCausalLM"));
                vec![path_of(d, "config.json"), "`architectures`".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "unknown architecture",
            fixture: "llama-gqa",
            breaks: |d| {
                set_config(d, "architectures", serde_json::json!(["GPT2LMHeadModel"]));
                vec![path_of(d, "config.json"), "GPT2LMHeadModel".into(), "LlamaForCausalLM".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "kv heads do not divide the heads",
            fixture: "llama-gqa", // 4 heads, 2 kv heads
            breaks: |d| {
                set_config(d, "num_key_value_heads", serde_json::json!(3));
                vec![path_of(d, "config.json"), "`num_key_value_heads`".into(), "(3)".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "zero kv heads",
            fixture: "llama-gqa",
            breaks: |d| {
                set_config(d, "num_key_value_heads", serde_json::json!(0));
                vec![path_of(d, "config.json"), "`num_key_value_heads`".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "heads do not divide hidden_size (no head_dim)",
            fixture: "llama-gqa", // hidden 64
            breaks: |d| {
                edit_json(&d.join("config.json"), |m| {
                    m.remove("head_dim");
                    m.insert("num_attention_heads".into(), serde_json::json!(6));
                    m.insert("num_key_value_heads".into(), serde_json::json!(2));
                });
                vec![path_of(d, "config.json"), "`hidden_size`".into(), "num_attention_heads".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "config.json is not UTF-8",
            fixture: "llama-gqa",
            breaks: |d| {
                fs::write(d.join("config.json"), b"{\"architectures\": [\"Llama\xff\xfe\"]}").unwrap();
                vec![path_of(d, "config.json"), "UTF-8".into()]
            },
            args: &[],
            expect: Error,
        },
        // --- tensors --------------------------------------------------------
        Case {
            name: "tensor shape mismatch",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.layers.1.self_attn.k_proj.weight";
                rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                    let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
                    t.2 = vec![64, 32]; // transposed: [32, 64] expected
                });
                vec![path_of(d, "model.safetensors"), name.into(), "[64, 32]".into(), "[32, 64]".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "tensor dtype not readable",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.norm.weight";
                rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                    ts.iter_mut().find(|t| t.0 == name).unwrap().1 = Dtype::I32;
                });
                vec![path_of(d, "model.safetensors"), name.into(), "I32".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "tensor dtype mismatch in a shard",
            fixture: "mistral-sharded",
            breaks: |d| {
                let name = "model.layers.0.self_attn.q_proj.weight";
                rewrite_safetensors(&d.join(SHARD2), |ts| {
                    let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
                    // Same bytes read as u8: 4× the elements, shape adjusted.
                    t.1 = Dtype::U8;
                    t.2 = vec![t.3.len()];
                });
                vec![path_of(d, SHARD2), name.into(), "U8".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "missing tensor",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.layers.1.mlp.up_proj.weight";
                rewrite_safetensors(&d.join("model.safetensors"), |ts| ts.retain(|t| t.0 != name));
                vec![d.display().to_string(), name.into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "tensor for a layer the config does not have",
            fixture: "llama-gqa", // 2 layers
            breaks: |d| {
                let name = "model.layers.7.input_layernorm.weight";
                rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                    ts.push((name.into(), Dtype::F32, vec![64], vec![0; 256]));
                });
                vec![path_of(d, "model.safetensors"), name.into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "unknown extra tensor",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.rotary_emb.inv_freq";
                rewrite_safetensors(&d.join("model.safetensors"), |ts| {
                    ts.push((name.into(), Dtype::F32, vec![8], vec![0; 32]));
                });
                vec![path_of(d, "model.safetensors"), name.into()]
            },
            args: &[],
            expect: Warning,
        },
        Case {
            name: "NaN weight",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.layers.0.self_attn.o_proj.weight";
                poke_f32(&d.join("model.safetensors"), name, 5 * 64 + 3, f32::NAN);
                vec![
                    path_of(d, "model.safetensors"),
                    name.into(),
                    "NaN".into(),
                    "row 5, column 3".into(),
                    "--allow-nonfinite".into(),
                ]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "infinite weight",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.embed_tokens.weight";
                poke_f32(&d.join("model.safetensors"), name, 100, f32::NEG_INFINITY);
                vec![path_of(d, "model.safetensors"), name.into(), "-inf".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "infinite norm weight (kept f32)",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.layers.1.post_attention_layernorm.weight";
                poke_f32(&d.join("model.safetensors"), name, 0, f32::INFINITY);
                vec![path_of(d, "model.safetensors"), name.into(), "inf".into()]
            },
            args: &["--weights", "f32"],
            expect: Error,
        },
        Case {
            name: "NaN weight with --allow-nonfinite",
            fixture: "llama-gqa",
            breaks: |d| {
                let name = "model.layers.0.self_attn.o_proj.weight";
                poke_f32(&d.join("model.safetensors"), name, 5 * 64 + 3, f32::NAN);
                vec![path_of(d, "model.safetensors"), name.into(), "non-finite".into(), "quantized as 0".into()]
            },
            args: &["--allow-nonfinite"],
            expect: Warning,
        },
        // --- files ------------------------------------------------------------
        Case {
            name: "truncated single file",
            fixture: "llama-odd",
            breaks: |d| {
                let p = d.join("model.safetensors");
                let b = fs::read(&p).unwrap();
                fs::write(&p, &b[..b.len() - 100]).unwrap();
                vec![p.display().to_string(), "truncated".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "truncated shard",
            fixture: "mistral-sharded",
            breaks: |d| {
                let p = d.join(SHARD2);
                let b = fs::read(&p).unwrap();
                fs::write(&p, &b[..b.len() / 2]).unwrap();
                vec![p.display().to_string(), "truncated".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "empty safetensors file",
            fixture: "llama-gqa",
            breaks: |d| {
                fs::write(d.join("model.safetensors"), b"").unwrap();
                vec![path_of(d, "model.safetensors")]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "index names a missing shard file",
            fixture: "mistral-sharded",
            breaks: |d| {
                let tensor = "model.layers.0.input_layernorm.weight";
                let ghost = "model-00007-of-00006.safetensors";
                edit_json(&d.join("model.safetensors.index.json"), |m| {
                    m["weight_map"][tensor] = serde_json::json!(ghost);
                });
                vec![path_of(d, "model.safetensors.index.json"), ghost.into(), tensor.into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "index entry is not a file name",
            fixture: "mistral-sharded",
            breaks: |d| {
                let tensor = "model.norm.weight";
                edit_json(&d.join("model.safetensors.index.json"), |m| {
                    m["weight_map"][tensor] = serde_json::json!(42);
                });
                vec![path_of(d, "model.safetensors.index.json"), tensor.into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "index names a shard outside the folder",
            fixture: "mistral-sharded",
            breaks: |d| {
                edit_json(&d.join("model.safetensors.index.json"), |m| {
                    m["weight_map"]["model.norm.weight"] = serde_json::json!("../model-00006-of-00006.safetensors");
                });
                vec![path_of(d, "model.safetensors.index.json"), "../model-00006-of-00006.safetensors".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "tokenizer.json is not UTF-8",
            fixture: "llama-gqa",
            breaks: |d| {
                fs::write(d.join("tokenizer.json"), b"{\"model\": {\"type\": \"BPE\xc3\x28\"}}").unwrap();
                vec![path_of(d, "tokenizer.json"), "UTF-8".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            // Before: a 128 GiB table for the id (an OOM abort).
            name: "tokenizer.json id far beyond its entries",
            fixture: "llama-gqa",
            breaks: |d| {
                let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 4294967295}, "merges": []},
                    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
                    "added_tokens": []}"#;
                fs::write(d.join("tokenizer.json"), json).unwrap();
                vec![path_of(d, "tokenizer.json"), "token id 4294967295 is beyond the 2 tokens".into()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "tokenizer.json is binary",
            fixture: "llama-gqa",
            breaks: |d| {
                fs::write(d.join("tokenizer.json"), [0xff, 0xfe, 0x00, 0x80, 0x7b]).unwrap();
                vec![path_of(d, "tokenizer.json")]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "absurd header length (u64::MAX)",
            fixture: "llama-gqa",
            breaks: |d| {
                set_header_len(&d.join("model.safetensors"), u64::MAX);
                vec![path_of(d, "model.safetensors")]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "absurd header length (1 TiB)",
            fixture: "llama-gqa",
            breaks: |d| {
                set_header_len(&d.join("model.safetensors"), 1 << 40);
                vec![path_of(d, "model.safetensors")]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "header length past the end of the file",
            fixture: "mistral-sharded",
            breaks: |d| {
                let p = d.join(SHARD2);
                let len = fs::metadata(&p).unwrap().len();
                set_header_len(&p, len); // 8 + len > len
                vec![p.display().to_string()]
            },
            args: &[],
            expect: Error,
        },
        Case {
            name: "header length cutting the JSON short",
            fixture: "llama-gqa",
            breaks: |d| {
                let p = d.join("model.safetensors");
                let b = fs::read(&p).unwrap();
                let n = u64::from_le_bytes(b[..8].try_into().unwrap());
                set_header_len(&p, n - 10);
                vec![p.display().to_string()]
            },
            args: &[],
            expect: Error,
        },
    ]
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stderr\n{}--- stdout\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
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
        let out = Command::new(BIN)
            .arg("convert")
            .arg(input.path())
            .arg("-o")
            .arg(&output)
            .args(["--quiet"])
            .args(case.args)
            .output()
            .expect("run ferrite");
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
        let out = Command::new(BIN)
            .arg("convert")
            .arg(input.path())
            .arg("-o")
            .arg(&output)
            .arg("--quiet")
            .output()
            .expect("run ferrite");
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
