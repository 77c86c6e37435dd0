//! Options that `ferrite run` would otherwise parse and then ignore are
//! errors that say why.
#![cfg(feature = "cli")]

mod common;

use std::process::Command;

use common::*;

fn ferrite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).output().expect("spawn ferrite")
}

#[test]
fn ignored_options_are_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("m.frt");
    let p = path.to_str().expect("utf8");
    let o = ferrite(&["convert", tiny("llama-gqa").to_str().expect("utf8"), "-o", p, "--weights", "q8", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = ["run", "-m", p, "--prompt-ids", "1,2", "-n", "2"];
    for (extra, msg) in [
        (&["--chat"][..], "cannot be used with '--chat'"),
        (&["--device", "cuda", "-t", "2"][..], "no effect with --device cuda"),
        (&["--device", "cuda", "--sinks", "2"][..], "the CUDA cache does not stream"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let o = ferrite(&args);
        assert_eq!(o.status.code(), Some(if extra == ["--chat"] { 2 } else { 1 }), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // The same without the conflicting option runs.
    let o = ferrite(&[&base[..], &["--temp", "0", "--sinks", "2", "-t", "1", "--output", "ids"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
