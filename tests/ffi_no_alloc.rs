//! The C API allocates nothing while inferring, at 2 and 4 threads: a
//! counting allocator over every thread of the process sees zero
//! allocations across `ferrite_session_prefill` + 1 000
//! `ferrite_session_step`/`ferrite_sampler_sample` calls and across a
//! 1 000-token `ferrite_generate`, driven from a plain thread as a C program
//! drives it. (One test: nothing else of this binary runs meanwhile.)
#![cfg(all(feature = "ffi", feature = "cli"))]

mod common;

use std::ptr::null_mut;

use ferrite::ffi::*;
use ferrite_format::DType;
use ferrite_test_support::alloc::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

unsafe extern "C" fn count_token(user: *mut core::ffi::c_void, _: u32) -> i32 {
    // SAFETY: `user` is the counter the test passes.
    unsafe { *user.cast::<usize>() += 1 };
    0
}

#[test]
fn c_api_inference_allocates_nothing_at_2_and_4_threads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("m.frt");
    let opts = ferrite_converter::Options { weights: DType::Q8, ..Default::default() };
    ferrite_converter::convert(&common::tiny("llama-gqa"), &path, &opts, &mut |_| {}).expect("convert");
    let c_path = std::ffi::CString::new(path.to_str().expect("utf8")).expect("path");
    for threads in [2u32, 4] {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: valid pointers throughout; every handle is freed
                    // once, the session before its arena and model.
                    unsafe {
                        let mut model = null_mut();
                        assert_eq!(ferrite_model_open(c_path.as_ptr(), &mut model), FerriteStatus::OK);
                        let mut cfg = std::mem::MaybeUninit::uninit();
                        assert_eq!(ferrite_session_config_default(cfg.as_mut_ptr()), FerriteStatus::OK);
                        let mut cfg = cfg.assume_init();
                        (cfg.max_ctx, cfg.max_batch, cfg.threads) = (64, 8, threads);
                        let mut bytes = 0usize;
                        assert_eq!(ferrite_plan_arena_bytes(model, &cfg, &mut bytes), FerriteStatus::OK);
                        let mut arena = vec![0u8; bytes];
                        let mut sess = null_mut();
                        let st = ferrite_session_new(model, &cfg, arena.as_mut_ptr().cast(), bytes, &mut sess);
                        assert_eq!(st, FerriteStatus::OK);
                        let mut scfg = std::mem::MaybeUninit::uninit();
                        assert_eq!(ferrite_sampler_config_default(scfg.as_mut_ptr()), FerriteStatus::OK);
                        let mut sampler = null_mut();
                        assert_eq!(ferrite_sampler_new(scfg.as_ptr(), 512, &mut sampler), FerriteStatus::OK);
                        let prompt: Vec<u32> = (1..21).collect();
                        let mut recent = [0u32; 64];
                        let mut generated = 0usize;
                        let callbacks = FerriteGenerateCallbacks {
                            token: Some(count_token),
                            text: None,
                            user: (&mut generated as *mut usize).cast(),
                        };
                        let gen = FerriteGenerateOptions { max_new: 1000, ignore_eos: true };
                        let mut result = FerriteGenerateResult { generated: 0, decode_steps: 0, end: 0 };

                        ALLOC.start_all_threads();
                        let mut logits = std::ptr::null();
                        assert_eq!(
                            ferrite_session_prefill(sess, prompt.as_ptr(), prompt.len(), &mut logits),
                            FerriteStatus::OK
                        );
                        for i in 0..1000 {
                            let mut id = 0u32;
                            let st =
                                ferrite_sampler_sample(sampler, logits, 512, recent.as_ptr(), recent.len(), &mut id);
                            assert_eq!(st, FerriteStatus::OK);
                            recent[i % recent.len()] = id;
                            assert_eq!(ferrite_session_step(sess, id, &mut logits), FerriteStatus::OK);
                        }
                        assert_eq!(ferrite_session_reset(sess), FerriteStatus::OK);
                        let st = ferrite_generate(
                            sess,
                            sampler,
                            prompt.as_ptr(),
                            prompt.len(),
                            &gen,
                            &callbacks,
                            &mut result,
                        );
                        let n = ALLOC.stop();
                        assert_eq!(st, FerriteStatus::OK);
                        assert_eq!((result.generated, generated), (1000, 1000));
                        assert_eq!(n, 0, "{threads} threads: {n} allocations through the C API");

                        assert_eq!(ferrite_sampler_free(sampler), FerriteStatus::OK);
                        assert_eq!(ferrite_session_free(sess), FerriteStatus::OK);
                        drop(arena);
                        assert_eq!(ferrite_model_free(model), FerriteStatus::OK);
                    }
                })
                .join()
                .expect("thread");
        });
    }
}
