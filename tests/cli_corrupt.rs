//! Random byte flips and truncations of a valid `.frt` fed to `ferrite
//! inspect --verify` and `ferrite run` end in exit 0 or 1: never a panic
//! (101), a signal or a hang.
#![cfg(feature = "cli")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrite");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            // A signal leaves no exit code.
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("ferrite {args:?} hung for 20 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn corrupted_files_never_crash_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = tmp.path().join("good.frt");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "convert",
            tiny("qwen2-bias-f16").to_str().expect("utf8"),
            "-o",
            good.to_str().expect("utf8"),
            "--weights",
            "q4",
            "--quiet",
        ])
        .output()
        .expect("convert");
    assert!(out.status.success());
    let bytes = std::fs::read(&good).expect("read");
    let bad = tmp.path().join("bad.frt");
    let bad_s = bad.to_str().expect("utf8");
    let mut rng = ferrite_test_support::rng::XorShift64::new(0x9E37_79B9_7F4A_7C15);
    let mut next = || rng.next_u64();
    let mut outcomes = [0usize; 2];
    for case in 0..240 {
        let mut data = bytes.clone();
        if case % 4 == 3 {
            data.truncate((next() % bytes.len() as u64) as usize);
        } else {
            // Flip 1-3 bytes, mostly in the metadata, sometimes anywhere.
            for _ in 0..1 + next() % 3 {
                let span = if next() % 2 == 0 { 4096.min(bytes.len()) } else { bytes.len() };
                let at = (next() % span as u64) as usize;
                data[at] ^= 1 << (next() % 8);
            }
        }
        std::fs::write(&bad, &data).expect("write");
        for args in [
            &["inspect", bad_s, "--verify"][..],
            &["run", "-m", bad_s, "--prompt-ids", "1,2,3", "-n", "4", "--temp", "0", "--output", "ids", "-t", "1"][..],
        ] {
            let (code, err) = run_bounded(args);
            match code {
                Some(0) => outcomes[0] += 1,
                Some(1) => {
                    outcomes[1] += 1;
                    assert!(err.contains("error:"), "case {case} {args:?}: exit 1 without an error message");
                }
                other => panic!("case {case} {args:?}: exit {other:?} (panic or signal)\n{err}"),
            }
            assert!(!err.contains("panicked"), "case {case} {args:?}: {err}");
        }
    }
    // Most corruptions must be caught (checksums); some flips in tensor data
    // pass `run` (only --verify reads the data checksums).
    assert!(outcomes[1] > outcomes[0], "too few corruptions detected: {outcomes:?}");
}
