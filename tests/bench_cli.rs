//! `ferrite bench` on a tiny fixture converted here: the JSON output parses
//! and has one object per test and thread count with the documented keys,
//! `-p 0` / `-n 0` skip a test, the table has its columns, bad options are
//! errors.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn convert_tiny(dir: &Path, weights: &str) -> PathBuf {
    let out = dir.join(format!("tiny-{weights}.frt"));
    cli_convert_ok(&tiny("llama-gqa"), &out, weights);
    out
}

fn bench_json(model: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["bench", "-m", model.to_str().expect("utf8"), "--json"];
    args.extend_from_slice(extra);
    let o = ferrite(&args);
    assert!(o.status.success(), "ferrite {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).expect("utf8 stdout");
    let v: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {stdout}"));
    v.as_array().unwrap_or_else(|| panic!("not a JSON array: {stdout}")).clone()
}

#[test]
fn json_has_one_object_per_test_and_thread_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = convert_tiny(tmp.path(), "q4");
    let model_bytes = std::fs::metadata(&model).expect("metadata").len();
    let arr = bench_json(&model, &["-p", "40", "-n", "12", "-t", "1,2", "-r", "3"]);
    let got: Vec<(String, u64)> = arr
        .iter()
        .map(|o| (o["test"].as_str().expect("test").to_string(), o["threads"].as_u64().expect("threads")))
        .collect();
    let want: Vec<(String, u64)> =
        [("pp40", 1), ("tg12", 1), ("pp40", 2), ("tg12", 2)].iter().map(|(t, n)| (t.to_string(), *n)).collect();
    assert_eq!(got, want);
    for o in &arr {
        let mean = o["tok_s_mean"].as_f64().expect("tok_s_mean");
        let sd = o["tok_s_sd"].as_f64().expect("tok_s_sd");
        let samples: Vec<f64> =
            o["samples_tok_s"].as_array().expect("samples_tok_s").iter().map(|s| s.as_f64().expect("f64")).collect();
        assert_eq!(samples.len(), 3, "{o}");
        assert!(samples.iter().all(|&s| s.is_finite() && s > 0.0), "{o}");
        let m = samples.iter().sum::<f64>() / 3.0;
        assert!((mean - m).abs() <= 1e-9 * m, "mean {mean} vs samples {samples:?}");
        let var = samples.iter().map(|s| (s - m) * (s - m)).sum::<f64>() / 2.0;
        assert!((sd - var.sqrt()).abs() <= 1e-6 * m, "sd {sd} vs samples {samples:?}");
        assert!(o["peak_rss_bytes"].as_u64().expect("peak_rss_bytes") > model_bytes, "{o}");
        assert_eq!(o["model_bytes"].as_u64(), Some(model_bytes));
        // llama-gqa: 158016 stored parameters (tests/fixtures/README.md).
        assert_eq!(o["model_params"].as_u64(), Some(158_016));
        assert_eq!(o["repetitions"].as_u64(), Some(3));
        assert_eq!(o["kv"].as_str(), Some("f16"));
        let tier = o["kernels"].as_str().expect("kernels");
        assert!(ferrite_kernels::Tier::from_name(tier).is_some(), "{tier}");
        let (p, n) = (o["n_prompt"].as_u64(), o["n_gen"].as_u64());
        match o["test"].as_str() {
            Some("pp40") => assert_eq!((p, n), (Some(40), Some(0))),
            _ => assert_eq!((p, n), (Some(0), Some(12))),
        }
    }
}

#[test]
fn zero_skips_a_test_and_options_are_honoured() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = convert_tiny(tmp.path(), "q8");
    let arr = bench_json(&model, &["-p", "0", "-n", "8", "-t", "1", "-r", "1", "--kv", "q8", "--kernels", "reference"]);
    assert_eq!(arr.len(), 1, "{arr:?}");
    assert_eq!(arr[0]["test"].as_str(), Some("tg8"));
    assert_eq!(arr[0]["tok_s_sd"].as_f64(), Some(0.0), "one repetition has no spread");
    assert_eq!(arr[0]["kv"].as_str(), Some("q8"));
    assert_eq!(arr[0]["kernels"].as_str(), Some("reference"));

    let arr = bench_json(&model, &["-p", "24", "-n", "0", "-t", "1", "-r", "1", "-b", "7"]);
    assert_eq!(arr.len(), 1, "{arr:?}");
    assert_eq!(arr[0]["test"].as_str(), Some("pp24"));
    assert_eq!(arr[0]["batch"].as_u64(), Some(7));

    // Past the fixture's trained context (256): speed is still measured.
    let arr = bench_json(&model, &["-p", "300", "-n", "0", "-t", "1", "-r", "1"]);
    assert_eq!(arr[0]["test"].as_str(), Some("pp300"));

    // -d: every test runs on top of DEPTH cached tokens, per depth; the
    // cache holds depth + test tokens (200 + 100 > 256 trained).
    let arr = bench_json(&model, &["-p", "16", "-n", "100", "-d", "0,200", "-t", "1", "-r", "1"]);
    let got: Vec<(&str, u64)> =
        arr.iter().map(|o| (o["test"].as_str().expect("test"), o["n_depth"].as_u64().expect("n_depth"))).collect();
    assert_eq!(got, [("pp16", 0), ("tg100", 0), ("pp16 @ d200", 200), ("tg100 @ d200", 200)]);
}

#[test]
fn table_and_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = convert_tiny(tmp.path(), "q8");
    let m = model.to_str().expect("utf8");
    let o = ferrite(&["bench", "-m", m, "-p", "16", "-n", "4", "-t", "1", "-r", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "| model | size | params | kernels | threads | test | t/s |", "{text}");
    let rows: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("| tiny-q8.frt |")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].contains("| 1 | pp16 |") && rows[0].contains(" ± "), "{text}");
    assert!(rows[1].contains("| 1 | tg4 |"), "{text}");
    assert!(text.contains("peak RSS "), "{text}");

    for (args, msg) in [
        (vec!["-p", "0", "-n", "0"], "nothing to measure"),
        (vec!["-r", "0"], "-r must be at least 1"),
        (vec!["-t", "0"], "thread counts"),
        (vec!["--kernels", "sse9"], "unknown kernel tier"),
    ] {
        let mut a = vec!["bench", "-m", m];
        a.extend(args.iter());
        let o = ferrite(&a);
        assert!(!o.status.success(), "{a:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{a:?}: {err}");
    }
    let o = ferrite(&["bench", "-m", tmp.path().join("missing.frt").to_str().expect("utf8"), "-r", "1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.frt"));
}
