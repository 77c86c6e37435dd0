//! The session handle: its config and arena, prefill and step, reset,
//! save and restore.

use core::ffi::c_void;
use std::sync::atomic::Ordering;

use ferrite_runtime::{Error, KvType, Session, SessionConfig};

use super::boundary::{
    check_optional, check_ptr, fail, free_handle, guard, handle, handle_mut, invalid, new_handle, put, put_optional,
    slice_in, slice_out, FerriteStatus, FfiResult,
};
use super::model::FerriteModel;

/// `kv_type` value: f16 KV cache (the default; half the memory of f32).
pub const FERRITE_KV_F16: u32 = 0;
/// `kv_type` value: f32 KV cache (exact comparisons).
pub const FERRITE_KV_F32: u32 = 1;
/// `kv_type` value: int8 KV cache, one scale per head row (about a quarter
/// of f32).
pub const FERRITE_KV_Q8: u32 = 2;
/// Every `kv_type` value and its name in `ferrite.h`.
pub const KV_TYPES: &[(u32, &str)] =
    &[(FERRITE_KV_F16, "FERRITE_KV_F16"), (FERRITE_KV_F32, "FERRITE_KV_F32"), (FERRITE_KV_Q8, "FERRITE_KV_Q8")];

fn kv_type_code(kv: KvType) -> u32 {
    match kv {
        KvType::F16 => FERRITE_KV_F16,
        KvType::F32 => FERRITE_KV_F32,
        KvType::Q8 => FERRITE_KV_Q8,
    }
}

/// What a session needs room for (`ferrite_session_config` in C). Start
/// from `ferrite_session_config_default` so that fields added later get
/// their defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FerriteSessionConfig {
    /// KV cache capacity in tokens (> 0).
    pub max_ctx: usize,
    /// Most prompt tokens per prefill batch (> 0).
    pub max_batch: usize,
    /// Attention-sink tokens pinned at the start of a streaming cache
    /// (< `max_ctx`; ignored without `streaming`).
    pub sinks: usize,
    /// Threads the matrix products are split across (1..=1024); more than
    /// one starts `threads - 1` worker threads owned by the session. Results
    /// do not depend on it.
    pub threads: u32,
    /// `FERRITE_KV_F16`, `FERRITE_KV_F32` or `FERRITE_KV_Q8`.
    pub kv_type: u32,
    /// Streaming KV cache: when full, the oldest tokens after the sinks are
    /// evicted and generation goes on; otherwise a full cache is
    /// `CONTEXT_FULL`.
    pub streaming: bool,
}

impl FerriteSessionConfig {
    fn to_rust(self) -> FfiResult<SessionConfig> {
        let kv = match self.kv_type {
            FERRITE_KV_F16 => KvType::F16,
            FERRITE_KV_F32 => KvType::F32,
            FERRITE_KV_Q8 => KvType::Q8,
            other => {
                return Err(fail(
                    FerriteStatus::BAD_CONFIG,
                    format!("invalid session config kv_type: unknown value {other}"),
                ))
            }
        };
        Ok(SessionConfig {
            max_ctx: self.max_ctx,
            kv,
            max_batch: self.max_batch,
            threads: self.threads as usize,
            streaming: self.streaming,
            sinks: self.sinks,
            ..Default::default()
        })
    }
}

/// Fills `*out` with the runtime's defaults (2048 tokens, f16 KV cache,
/// batches of 32, one thread, streaming with 4 sinks).
///
/// # Safety
///
/// `out` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_config_default(out: *mut FerriteSessionConfig) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        let d = SessionConfig::default();
        let cfg = FerriteSessionConfig {
            max_ctx: d.max_ctx,
            max_batch: d.max_batch,
            sinks: d.sinks,
            threads: u32::try_from(d.threads).unwrap_or(1),
            kv_type: kv_type_code(d.kv),
            streaming: d.streaming,
        };
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, cfg) };
        Ok(())
    })
}

/// Sets `*out` to the arena bytes a session with `cfg` on `model` needs
/// (alignment slack included: any start address will do).
///
/// # Safety
///
/// `model` must be NULL or a live model; `cfg` NULL or valid for a read;
/// `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_plan_arena_bytes(
    model: *const FerriteModel,
    cfg: *const FerriteSessionConfig,
    out: *mut usize,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model and a readable config (the caller's contract).
        let (m, cfg) = unsafe { (handle(model, "model")?, handle(cfg, "cfg")?) };
        check_ptr(out, "out")?;
        let plan = m.model.plan(&cfg.to_rust()?)?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, plan.arena_bytes()) };
        Ok(())
    })
}

/// A session (`ferrite_session` in C): the runtime's session over the
/// caller's arena, and the model it counts itself against.
pub struct FerriteSession {
    // Declared first: dropped before the model count is released.
    pub(super) session: Session<'static, 'static>,
    pub(super) model: &'static FerriteModel,
    /// Set while a call runs: still set afterwards only if it panicked.
    poisoned: bool,
}

/// Runs `f` on a session that has not panicked before.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now.
pub(super) unsafe fn with_session(
    sess: *mut FerriteSession,
    f: impl FnOnce(&mut Session<'static, 'static>, &'static FerriteModel) -> FfiResult,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { handle_mut(sess, "session") }?;
        if s.poisoned {
            return Err(fail(
                FerriteStatus::PANIC,
                "this session panicked in an earlier call; its state is undefined: free it",
            ));
        }
        s.poisoned = true;
        let result = f(&mut s.session, s.model);
        s.poisoned = false;
        result
    })
}

/// Sets `*out` to `get(session)`: what the getters share.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `out` NULL or valid for a write.
unsafe fn session_value(
    sess: *mut FerriteSession,
    out: *mut usize,
    get: impl FnOnce(&Session<'static, 'static>) -> usize,
) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe {
        with_session(sess, |s, _| {
            check_ptr(out, "out")?;
            // SAFETY: `out` is valid for a write (the caller's contract).
            put(out, get(s));
            Ok(())
        })
    }
}

/// Creates a session on `model` in the caller's arena `arena[0..arena_len]`
/// (at least `ferrite_plan_arena_bytes` bytes, any alignment, contents
/// overwritten). On success `*out` is a new session; on failure NULL.
///
/// # Safety
///
/// `model` must be NULL or a live model that outlives the session; `cfg`
/// NULL or valid for a read; `arena` NULL or valid for reads and writes of
/// `arena_len` bytes that nothing else uses until the session is freed;
/// `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_new(
    model: *const FerriteModel,
    cfg: *const FerriteSessionConfig,
    arena: *mut c_void,
    arena_len: usize,
    out: *mut *mut FerriteSession,
) -> FerriteStatus {
    let make = || {
        // SAFETY: a live model that outlives the session, so borrowing it
        // for the unbounded lifetime the session type asks for is sound
        // while the session lives; `ferrite_model_free` refuses until the
        // session is freed. `cfg` is readable.
        let (m, cfg): (&'static FerriteModel, _) = unsafe { (handle(model, "model")?, handle(cfg, "cfg")?) };
        let plan = m.model.plan(&cfg.to_rust()?)?;
        let needed = plan.arena_bytes();
        if arena.is_null() {
            return Err(invalid("arena is NULL"));
        }
        if arena_len < needed {
            return Err(Error::ArenaTooSmall { needed, given: arena_len }.into());
        }
        // SAFETY: `arena` is valid for writes of `arena_len >= needed`
        // bytes and nothing else uses them until the session is freed (the
        // caller's contract), so the unbounded lifetime is the session's
        // and the borrow is unique. `slice_out` zeroes them (malloc'd
        // memory is not initialized).
        let arena: &'static mut [u8] = unsafe { slice_out(arena.cast::<u8>(), needed, "arena") }?;
        let session = Session::new(&m.model, &plan, arena)?;
        m.sessions.fetch_add(1, Ordering::AcqRel);
        Ok(Box::new(FerriteSession { session, model: m, poisoned: false }))
    };
    // SAFETY: `out` is NULL or valid for a write (the caller's contract).
    unsafe { new_handle(out, make) }
}

/// Frees a session (not its arena, which the caller owns). NULL is a no-op.
///
/// # Safety
///
/// `sess` must be NULL or a live session, not used after this returns.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_free(sess: *mut FerriteSession) -> FerriteStatus {
    // The model's count is released after the session (which borrows the
    // model) is dropped.
    let release = |s: Box<FerriteSession>| {
        let model = s.model;
        drop(s);
        model.sessions.fetch_sub(1, Ordering::AcqRel);
    };
    // SAFETY: NULL or a live session, not used afterwards (the caller's
    // contract).
    unsafe { free_handle(sess, "session", |_| Ok(()), release) }
}

/// Empties the session's KV cache (a new conversation).
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_reset(sess: *mut FerriteSession) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe {
        with_session(sess, |s, _| {
            s.reset();
            Ok(())
        })
    }
}

/// Sets `*out` to the number of tokens in the session's KV cache.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_position(sess: *mut FerriteSession, out: *mut usize) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe { session_value(sess, out, Session::position) }
}

/// Sets `*out` to the bytes `ferrite_session_save` needs now.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_state_len(sess: *mut FerriteSession, out: *mut usize) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe { session_value(sess, out, Session::state_len) }
}

/// Saves the session's state (its position, the occupied KV cache and the
/// last logits) into `out[0..cap]` and sets `*n_out` to the bytes written.
/// On `BUFFER_TOO_SMALL` `*n_out` is set to the bytes needed.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `out` NULL or `cap` writable bytes; `n_out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_save(
    sess: *mut FerriteSession,
    out: *mut c_void,
    cap: usize,
    n_out: *mut usize,
) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe {
        with_session(sess, |s, _| {
            check_ptr(n_out, "n_out")?;
            let needed = s.state_len();
            if cap < needed {
                // SAFETY: `n_out` is valid for a write (the caller's contract).
                put(n_out, needed);
                return Err(Error::BufferTooSmall { needed, given: cap }.into());
            }
            let out = out.cast::<u8>();
            check_ptr(out, "out")?;
            // SAFETY: `cap >= needed` writable bytes (the caller's
            // contract); the slice lives only during this call.
            let buf = slice_out(out, needed, "out")?;
            let n = s.save_state(buf)?;
            // SAFETY: `n_out` is valid for a write (the caller's contract).
            put(n_out, n);
            Ok(())
        })
    }
}

/// Restores a state saved by `ferrite_session_save` from a session on the
/// same model file with the same `max_ctx`, `kv_type` and sinks; the
/// session then continues exactly as the saved one would have.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `bytes` NULL or `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_restore(
    sess: *mut FerriteSession,
    bytes: *const c_void,
    len: usize,
) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe {
        with_session(sess, |s, _| {
            // SAFETY: `len` readable bytes (the caller's contract).
            let bytes = slice_in(bytes.cast::<u8>(), len, "bytes")?;
            s.restore_state(bytes)?;
            Ok(())
        })
    }
}

/// Feeds `ids[0..n]` (batched) and, if `logits_out` is not NULL, sets
/// `*logits_out` to the `vocab_size` logits after the last one. They live
/// in the arena and stay valid until the next call on this session.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `ids` NULL or `n` readable ids; `logits_out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_prefill(
    sess: *mut FerriteSession,
    ids: *const u32,
    n: usize,
    logits_out: *mut *const f32,
) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe {
        with_session(sess, |s, _| {
            // SAFETY: `n` readable ids (the caller's contract).
            let ids = slice_in(ids, n, "ids")?;
            check_optional(logits_out, "logits_out")?;
            // SAFETY: checked above; NULL or valid for a write (the caller's
            // contract).
            put_optional(logits_out, s.prefill(ids)?.as_ptr());
            Ok(())
        })
    }
}

/// Feeds one token; otherwise as `ferrite_session_prefill`.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now;
/// `logits_out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_step(
    sess: *mut FerriteSession,
    id: u32,
    logits_out: *mut *const f32,
) -> FerriteStatus {
    // SAFETY: the caller's contract.
    unsafe {
        with_session(sess, |s, _| {
            check_optional(logits_out, "logits_out")?;
            // SAFETY: checked above; NULL or valid for a write (the caller's
            // contract).
            put_optional(logits_out, s.step(id)?.as_ptr());
            Ok(())
        })
    }
}
