//! Replays every input under `fuzz/regressions/<target>/` through the same
//! code as the cargo-fuzz target `<target>` (`fuzz/src/targets.rs`), without
//! libFuzzer, so a crash once found and fixed stays fixed (issue #7 item 1).
//! Also runs each target on a few hand-made inputs so the shared code is
//! exercised even while the regression folders are empty.
#![cfg(feature = "cli")]

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::fs;

#[test]
fn replay_regressions() {
    let root = targets::repo_root().join("fuzz/regressions");
    let mut replayed = 0;
    for target in targets::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("dir entry").path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for path in paths {
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let data = fs::read(&path).expect("read regression input");
            eprintln!("replaying {target}: {}", path.display());
            targets::run(target, &data);
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} regression inputs");
    // The folders hold the minimized corpora of the fuzz runs README
    // reports (507 inputs: gguf_reader 160, hf_json 318, session_ring 29): none found
    // means the replay looked in the wrong place.
    assert!(replayed > 0, "no input under {}", root.display());
    // Any folder under fuzz/regressions must name a target.
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries {
            let e = e.expect("dir entry");
            if e.path().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(targets::TARGETS.contains(&name.as_str()), "fuzz/regressions/{name} is not a fuzz target");
            }
        }
    }
}

#[test]
fn smoke_inputs() {
    for target in targets::TARGETS {
        targets::run(target, b"");
        targets::run(target, b"\x01");
        targets::run(target, &[0xff; 600]);
    }
    targets::tokenizer("Hello, world! <|im_start|>user\ncafé 🤖 \u{0}\r\n\t  x".as_bytes());
    targets::tokenizer(b"\xc3\x28 invalid \xf0\x9f utf-8 \xff");
    targets::converter_ingest(&targets::converter_seed(0));
    targets::converter_ingest(&targets::converter_seed(2));
    targets::converter_ingest(&targets::converter_seed(1));
    targets::gguf_reader(&targets::gguf_seed());
    // The GGUF seed is a valid file with a tokenizer (coverage starts deep).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("seed.gguf");
    fs::write(&path, targets::gguf_seed()).expect("write");
    let g = ferrite_converter::gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(ferrite_converter::gguf::read_tokenizer(&g).unwrap_or_else(|e| panic!("{e}")).is_some());
    targets::hf_json(&targets::hf_json_seed());
    for header in [[0u8, 0, 0], [12, 3, 15], [0xff, 0xfe, 0x07]] {
        let ids: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        targets::session_ring(&[&header[..], &ids].concat());
    }
}

/// Writes the seed inputs of the targets whose seeds are built in code
/// into `$FERRITE_FUZZ_CORPUS/<target>/` (`scripts/fuzz.sh` runs it).
#[test]
#[ignore = "run by scripts/fuzz.sh to seed the corpus"]
fn write_seed_corpus() {
    let Some(root) = std::env::var_os("FERRITE_FUZZ_CORPUS") else { panic!("set FERRITE_FUZZ_CORPUS") };
    let root = std::path::PathBuf::from(root);
    let ring: Vec<u8> = [10u8, 2, 7].into_iter().chain((0..96u32).map(|i| (i * 37 % 240) as u8)).collect();
    for (target, name, data) in [
        ("gguf_reader", "llama-seed.gguf", targets::gguf_seed()),
        ("hf_json", "gqa-config-bpe", targets::hf_json_seed()),
        ("session_ring", "ctx14-sinks2-q8", ring),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(name), data).expect("write seed");
    }
}

/// The session target reaches prefill and step on valid tiny files (its
/// seeds), with and without resealing; a resealed config change is refused
/// or run, never a panic.
#[test]
fn session_seeds_run() {
    use ferrite_converter::{convert, Options};
    use ferrite_format::DType;
    let dir = tempfile::tempdir().expect("tempdir");
    for weights in [DType::Q8, DType::Q4] {
        let out = dir.path().join("m.frt");
        let fixture = targets::repo_root().join("tests/fixtures/tiny/llama-gqa");
        convert(&fixture, &out, &Options { weights, ..Default::default() }, &mut |_| {}).expect("convert");
        let file = fs::read(&out).expect("read");
        targets::format_reader(&file);
        for mode in [0u8, 1, 7, 0x30, 0xff] {
            let mut input = vec![mode];
            input.extend_from_slice(&file);
            let ran = targets::session(&input);
            // Mode bits 3.. pick the ids; (seed + i) % 8 == 7 is out of range.
            let out_of_range = (0..=(mode >> 1 & 3) as u32).any(|i| ((mode >> 3) as u32 + i) % 8 == 7);
            assert_eq!(ran, !out_of_range, "{weights:?} mode {mode:#x}");
            // Flip a config byte: without resealing the meta CRC refuses it.
            input[1 + 128 + 8] ^= 0x55;
            if mode & 1 == 0 {
                assert!(!targets::session(&input));
            } else {
                let _ = targets::session(&input);
            }
        }
    }
}
