//! `FERRITE_KERNELS` through the command line, for every kernel tier at once
//! (what `scripts/x86-tiers.sh` did by re-running cargo once per tier):
//! forcing each tier this CPU has gives the same greedy ids as the reference
//! tier on tiny q4 and q8 models (their integer products are bit-identical
//! across tiers, and these short runs have no near-ties in float), a tier the
//! CPU lacks and an unknown name are a clear error with exit status 1.
//! `tests/golden_tiny.rs` checks the logits at every tier in-process.

mod common;

use std::process::{Command, Output};

use common::*;
use ferrite_kernels::Tier;

fn ferrite(tier: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).env("FERRITE_KERNELS", tier).output().expect("spawn ferrite")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_tier_generates_the_reference_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let supported: Vec<Tier> = Tier::ALL.into_iter().filter(|t| t.supported()).collect();
    assert!(supported.contains(&Tier::Reference));
    for weights in ["q4", "q8"] {
        let model = tmp.path().join(format!("tiny-{weights}.frt"));
        let model = model.to_str().expect("UTF-8 path");
        let fixture = tiny("llama-gqa");
        let fixture = fixture.to_str().expect("UTF-8 path");
        let out = ferrite("", &["convert", fixture, "-o", model, "--weights", weights, "--quiet"]);
        assert!(out.status.success(), "convert: {}", stderr(&out));
        let run = ["run", "-m", model, "--prompt-ids", "1,2,3,4,5,6,7,8,9,10,11", "-n", "16", "--temp", "0"];
        let run = [&run[..], &["--ignore-eos", "--output", "ids"]].concat();
        let mut reference: Option<String> = None;
        for tier in &supported {
            let out = ferrite(tier.name(), &run);
            assert!(out.status.success(), "{weights} {tier}: {}", stderr(&out));
            let ids = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(ids.split(',').count(), 16, "{weights} {tier}: {ids}");
            eprintln!("{weights} {:<9} {ids}", tier.name());
            match &reference {
                None => reference = Some(ids),
                Some(want) => assert_eq!(&ids, want, "{weights}: tier {tier} differs from the reference"),
            }
        }

        for tier in Tier::ALL.into_iter().filter(|t| !t.supported()) {
            let out = ferrite(tier.name(), &run);
            assert_eq!(out.status.code(), Some(1), "{tier} on a CPU without it: {}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("kernel tier {tier} needs CPU features this machine lacks")),
                "{tier}: {}",
                stderr(&out)
            );
        }
        let out = ferrite("avx3000", &run);
        assert_eq!(out.status.code(), Some(1), "unknown tier: {}", stderr(&out));
        assert!(stderr(&out).contains("FERRITE_KERNELS must be one of: reference"), "{}", stderr(&out));
    }
}
