//! Interrupted conversions (issue #7, part 3): a `ferrite convert` killed
//! with SIGKILL mid-way never leaves a file at the target path, leaves an
//! existing target byte-identical, and leaves only its temp file, whose
//! name says which output and which process it belongs to; the next
//! conversion to that target removes it and says so.
//!
//! (A disk that fills up mid-way is tested in the converter crate, by
//! injecting a failing writer: `a_disk_that_fills_up_leaves_no_output_and_no_temp_file`.)
#![cfg(all(feature = "cli", target_os = "linux"))]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::dir_names;
use ferrite_converter::{temp_owner, TempOwner};
use ferrite_format::writer::AlignedBytes;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const BIN: &str = env!("CARGO_BIN_EXE_ferrite");

/// Writes a synthetic Llama checkpoint of about 49 MB (f32, 12.3 M
/// parameters: 3 layers, d_model 512, ffn 1536, vocab 4096, tied): large
/// enough that converting it takes far longer than noticing its temp file
/// and killing the converter.
fn write_big_checkpoint(dir: &Path) {
    let (d, ffn, vocab, layers) = (512usize, 1536usize, 4096usize, 3usize);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": d,
        "intermediate_size": ffn,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, d]), ("model.norm.weight".into(), vec![d])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        for m in ["q", "k", "v", "o"] {
            shapes.push((format!("{p}.self_attn.{m}_proj.weight"), vec![d, d]));
        }
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![ffn, d]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![ffn, d]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![d, ffn]));
    }
    let mut rng = ferrite_test_support::rng::Lcg::new(0x9E37_79B9_7F4A_7C15);
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            rng.vec(n, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn spawn_convert(input: &Path, output: &Path) -> Child {
    Command::new(BIN)
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(["--weights", "q8", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferrite convert")
}

/// The temp files of `output` in its folder, with their owners.
fn temps(output: &Path) -> Vec<(PathBuf, TempOwner)> {
    let dir = output.parent().unwrap();
    dir_names(dir).into_iter().filter_map(|n| Some((dir.join(&n), temp_owner(output, &n)?))).collect()
}

/// Starts a conversion to `output`, waits until its temp file holds at
/// least 1 MiB (the writer's buffer has been flushed: the conversion is
/// mid-way through the tensor data), SIGKILLs it and returns its temp file.
fn convert_and_kill_midway(input: &Path, output: &Path) -> PathBuf {
    let mut child = spawn_convert(input, output);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let temp = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the conversion ended ({status}) before it could be killed mid-way");
        }
        let mine: Vec<PathBuf> =
            temps(output).into_iter().filter(|(_, o)| *o == TempOwner::Pid(pid)).map(|(p, _)| p).collect();
        if let [temp] = mine.as_slice() {
            if fs::metadata(temp).map(|m| m.len() >= 1 << 20).unwrap_or(false) {
                break temp.clone();
            }
        }
        assert!(Instant::now() < deadline, "no temp file of process {pid} reached 1 MiB");
        // A complete conversion takes ~100 ms here (opt-level 1) and the
        // kill comes at under a tenth of it: polling every 0.2 ms leaves
        // a wide margin.
        std::thread::sleep(Duration::from_micros(200));
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the converter was not killed mid-way but ended: {status}");
    temp
}

#[test]
fn a_killed_conversion_leaves_only_a_recognisable_temp_file_which_the_next_run_removes() {
    let input = tempfile::tempdir().unwrap();
    write_big_checkpoint(input.path());
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("model.frt");
    let name_of = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();

    // 1. No file at the target: none after the kill, only the temp file.
    let temp1 = convert_and_kill_midway(input.path(), &output);
    assert!(!output.exists(), "a killed conversion left a file at the target");
    assert_eq!(dir_names(out_dir.path()), [name_of(&temp1)]);
    let temp1_name = name_of(&temp1);
    assert!(
        temp1_name.starts_with(".model.frt.") && temp1_name.ends_with(".ferrite-tmp"),
        "temp file name {temp1_name:?} does not say which output it belongs to"
    );

    // 2. An existing target is left byte-identical; this run (killed too)
    //    already removed the first one's temp file, whose process is gone.
    let previous = b"FERRITE\0 the previous model, which must survive".repeat(1000);
    fs::write(&output, &previous).unwrap();
    let temp2 = convert_and_kill_midway(input.path(), &output);
    assert!(fs::read(&output).unwrap() == previous, "a killed conversion changed the existing target");
    let mut want = vec![name_of(&temp2), "model.frt".to_string()];
    want.sort();
    assert_eq!(dir_names(out_dir.path()), want, "the first run's temp file was not removed");

    // 3. Temp files the next run must leave alone: one of a running process
    //    (this test), one without a process id (older converters), and
    //    one of another output whose process is gone.
    let live = out_dir.path().join(format!(".model.frt.{}.Live01.ferrite-tmp", std::process::id()));
    let legacy = out_dir.path().join(".model.frt.Old123.ferrite-tmp");
    let other =
        out_dir.path().join(format!(".other.frt.{}.Dead01.ferrite-tmp", name_of(&temp2).split('.').nth(3).unwrap()));
    for p in [&live, &legacy, &other] {
        fs::write(p, b"partial").unwrap();
    }

    // 4. A complete run: succeeds, removes the killed run's temp file and
    //    says so; the output is a valid file.
    let out = Command::new(BIN)
        .arg("convert")
        .arg(input.path())
        .arg("-o")
        .arg(&output)
        .args(["--weights", "q8", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!temp2.exists(), "the killed run's temp file is still there");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains(&temp2.display().to_string()) && l.contains("removed")),
        "no warning about removing {}:\n{stderr}",
        temp2.display()
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("warning: ") && l.contains(&legacy.display().to_string())),
        "no warning about {}:\n{stderr}",
        legacy.display()
    );
    assert!(!stderr.contains(&live.display().to_string()), "a live process's temp file was reported:\n{stderr}");
    let mut want: Vec<String> = [&live, &legacy, &other, &output].iter().map(|p| name_of(p)).collect();
    want.sort();
    assert_eq!(dir_names(out_dir.path()), want);
    let bytes = AlignedBytes::read(&output).unwrap();
    let file = ferrite_format::File::parse(bytes.as_slice()).expect("a valid file");
    file.verify_tensors().expect("checksums");
    assert_eq!(file.config().d_model, 512);
}
