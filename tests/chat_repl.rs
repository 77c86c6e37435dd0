//! `ferrite chat` driven through stdin: two turns, `/reset`, a third. The
//! first reply is what `ferrite run --chat` says; the second continues the
//! conversation with the repetition penalty looking back over all of it
//! (it equals `ferrite run` on the whole rendered conversation, whose
//! history is every prompt token); after `/reset` the reply is the first
//! one again.
#![cfg(feature = "cli")]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const SAMPLING: [&str; 8] = ["--temp", "0", "--repeat-penalty", "1.5", "-n", "6", "-t", "1"];

fn ferrite(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf8")
}

#[test]
fn two_turns_reset_and_a_third() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("m.frt");
    let m = model.to_str().expect("utf8");
    ferrite(&["convert", smollm2_dir().to_str().expect("utf8"), "-o", m, "--weights", "q8", "-q"], "");
    let chat = ferrite(&[&["chat", "-m", m][..], &SAMPLING].concat(), "Hello\nHello\n/reset\nHello\n/quit\n");
    // stdout: a "> " prompt before each input line, each reply then "\n".
    let replies: Vec<&str> =
        chat.split("> ").map(|r| r.strip_suffix('\n').unwrap_or(r)).filter(|r| !r.is_empty()).collect();
    assert_eq!(replies.len(), 3, "{chat:?}");

    let one = ferrite(&[&["run", "-m", m, "--chat", "-p", "Hello"][..], &SAMPLING].concat(), "");
    assert_eq!(replies[0], one.trim_end_matches('\n'), "first turn");
    assert_eq!(replies[2], replies[0], "after /reset");

    // SmolLM2's template over the whole conversation (under 64 tokens: the
    // penalty's window covers it all in both runs).
    let system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    let turn = "<|im_start|>user\nHello<|im_end|>\n";
    let rendered =
        format!("{system}{turn}<|im_start|>assistant\n{}<|im_end|>\n{turn}<|im_start|>assistant\n", replies[0]);
    let two = ferrite(&[&["run", "-m", m, "-p", &rendered][..], &SAMPLING].concat(), "");
    assert_eq!(replies[1], two.trim_end_matches('\n'), "second turn: the history spans the conversation");
}
