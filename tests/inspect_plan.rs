//! `ferrite inspect --plan` prints the arena `ferrite run` allocates with
//! the same options: defaults included (context capped at the trained
//! context, all CPUs, the runtime's batch), and it is what `Session::new`
//! needs.
#![cfg(feature = "cli")]

mod common;

use common::*;
use ferrite_runtime::{Model, Session, SessionConfig};

#[test]
fn plan_is_the_arena_run_allocates() {
    let (_tmp, path) = tiny_by_cli("llama-gqa", "q8");
    let p = path.as_str();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for (extra, ctx, batch, t) in [
        // llama-gqa is trained for 256 tokens: the default 4096 is capped.
        (vec![], 256usize, 32usize, threads),
        (vec!["--ctx", "100", "--batch", "7", "-t", "3"], 100, 7, 3),
    ] {
        let mut args = vec!["inspect", p, "--plan", "--json"];
        args.extend(&extra);
        let o = ferrite(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(
            (v["ctx"].as_u64(), v["batch"].as_u64(), v["threads"].as_u64()),
            (Some(ctx as u64), Some(batch as u64), Some(t as u64)),
            "{v}"
        );
        let arena = v["arena_bytes"].as_u64().expect("arena_bytes") as usize;
        let parts = ["kv_cache_bytes", "activation_bytes", "scratch_bytes", "views_bytes"];
        let sum: u64 = parts.iter().map(|k| v[k].as_u64().expect(k)).sum();
        assert_eq!(sum as usize + 64, arena, "{v}");

        // The library computes the same for the config `run` builds...
        let bytes = convert_to_bytes(&tiny("llama-gqa"), ferrite_format::DType::Q8);
        let model = Model::from_bytes(&bytes).expect("model");
        let cfg = SessionConfig { max_ctx: ctx, max_batch: batch, threads: t, ..Default::default() };
        let plan = model.plan(&cfg).expect("plan");
        assert_eq!(plan.arena_bytes(), arena);
        let mut buf = vec![0u8; arena];
        Session::new(&model, &plan, &mut buf).expect("a session in exactly that arena");
        let short = &mut buf[..arena - 1];
        assert!(Session::new(&model, &plan, short).is_err());

        // ...and `ferrite run` with the same options reports that arena.
        let mut args = vec!["run", "-m", p, "--prompt-ids", "1,2,3", "-n", "2", "--temp", "0", "--output", "ids"];
        args.extend(&extra);
        let o = ferrite(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("ctx {ctx}, batch {batch}, arena {arena} bytes")), "{err}");
    }
}
