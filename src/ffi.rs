//! The C API (feature `ffi`): the functions and types `include/ferrite.h`
//! declares, built into `libferrite.a` by
//! `cargo build --release --no-default-features --features ffi`.
//!
//! The header is written by hand and is the documentation C users read;
//! `tests/ffi.rs` checks it against this module (every function's prototype,
//! every constant, every struct's size and field offsets) by compiling a C
//! program.
//!
//! # Rules at the boundary
//!
//! - Every function that can fail returns a [`FerriteStatus`] and writes
//!   its results through pointers. Only [`ferrite_version`],
//!   [`ferrite_status_string`] and [`ferrite_last_error_message`] return
//!   something else (a static or thread-local C string); none of them fails.
//! - No panic crosses the boundary: every body runs under
//!   [`std::panic::catch_unwind`], and a panic becomes
//!   [`FerriteStatus::PANIC`]. A session that panicked is poisoned: every
//!   later call on it but [`ferrite_session_free`] returns `PANIC` again.
//!   (The library must be built with `panic = "unwind"`, Rust's default.)
//! - NULL where a pointer is required, a misaligned pointer, an array longer
//!   than `isize::MAX` bytes, text that is not UTF-8, or an unknown enum
//!   value give [`FerriteStatus::INVALID_ARGUMENT`] (or `BAD_CONFIG` for a
//!   config field) before anything is done. The `*_free` functions accept
//!   NULL.
//! - Handles are `Box`es handed out as raw pointers. A model counts the
//!   sessions opened on it, and [`ferrite_model_free`] refuses
//!   ([`FerriteStatus::MODEL_IN_USE`]) while any is alive, so that mistake
//!   is an error instead of a use after free. Everything the type system
//!   cannot see (a caller buffer outliving the model or session that
//!   borrows it, no use after free, one thread per session at a time) is
//!   the caller's contract, written in the header and in each function's
//!   `# Safety` section.
#![deny(unsafe_op_in_unsafe_fn)]

use core::ffi::{c_char, c_void, CStr};
use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrite_runtime::sampler::{self, SampleError, Sampler, SamplerConfig};
use ferrite_runtime::tokenizer::{Tokenizer, TokenizerError};
use ferrite_runtime::{Error, KvType, Model, Session, SessionConfig};

// ---------------------------------------------------------------------------
// Status codes

/// What a C API call returns: `ferrite_status` (an `int32_t`) in C.
///
/// A transparent integer rather than a Rust `enum`: C may hand any value
/// back (to [`ferrite_status_string`]), and an out-of-range Rust enum is
/// undefined behaviour.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FerriteStatus(pub i32);

macro_rules! statuses {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal => $text:literal;)*) => {
        impl FerriteStatus {
            $($(#[doc = $doc])* pub const $name: FerriteStatus = FerriteStatus($value);)*
        }
        /// Every status: its value, its name in `ferrite.h` and the text
        /// [`ferrite_status_string`] returns for it.
        pub const STATUSES: &[(FerriteStatus, &str, &CStr)] =
            &[$((FerriteStatus::$name, concat!("FERRITE_", stringify!($name)), $text)),*];
    };
}

statuses! {
    /// Success.
    OK = 0 => c"ok";
    /// A NULL or misaligned pointer, an unknown enum value, text that is not
    /// UTF-8, an out-of-range length.
    INVALID_ARGUMENT = 1 => c"invalid argument";
    /// The model file could not be opened or mapped.
    IO = 2 => c"I/O error";
    /// The bytes are not a valid Ferrite file.
    INVALID_MODEL = 3 => c"invalid model file";
    /// Model bytes given to `ferrite_model_from_bytes` do not start on a
    /// 64-byte boundary.
    MISALIGNED = 4 => c"model bytes not 64-byte aligned";
    /// A session or sampler config field is out of range (or the memory it
    /// asks for overflows).
    BAD_CONFIG = 5 => c"invalid config";
    /// The arena is smaller than `ferrite_plan_arena_bytes` says.
    ARENA_TOO_SMALL = 6 => c"arena too small";
    /// A token id is not below the vocabulary size.
    BAD_TOKEN = 7 => c"token id out of range";
    /// A prompt with no tokens.
    EMPTY_PROMPT = 8 => c"empty prompt";
    /// The KV cache is full.
    CONTEXT_FULL = 9 => c"context full";
    /// A caller's output buffer is too small.
    BUFFER_TOO_SMALL = 10 => c"output buffer too small";
    /// The model file has no tokenizer.
    NO_TOKENIZER = 11 => c"model has no tokenizer";
    /// The file asks for something this runtime does not implement.
    UNSUPPORTED = 12 => c"unsupported";
    /// `ferrite_model_free` while sessions on the model are alive.
    MODEL_IN_USE = 13 => c"model still has live sessions";
    /// A panic was caught at the boundary (a bug in Ferrite).
    PANIC = 14 => c"internal panic";
    /// A runtime error this version of the C API has no code for.
    INTERNAL = 15 => c"internal error";
    /// Saved session state that cannot be restored into this session.
    BAD_STATE = 16 => c"bad session state";
}

/// A failed call: its status and the message
/// [`ferrite_last_error_message`] will return.
struct Failure {
    status: FerriteStatus,
    message: String,
}

type FfiResult<T = ()> = Result<T, Failure>;

fn fail(status: FerriteStatus, message: impl Into<String>) -> Failure {
    Failure { status, message: message.into() }
}

fn invalid(message: impl Into<String>) -> Failure {
    fail(FerriteStatus::INVALID_ARGUMENT, message)
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::Format(ferrite_format::Error::Misaligned { .. }) => FerriteStatus::MISALIGNED,
            Error::Format(ferrite_format::Error::NoTokenizer) => FerriteStatus::NO_TOKENIZER,
            Error::Format(_) => FerriteStatus::INVALID_MODEL,
            Error::ArenaTooSmall { .. } => FerriteStatus::ARENA_TOO_SMALL,
            Error::BadToken { .. } => FerriteStatus::BAD_TOKEN,
            Error::ContextFull { .. } => FerriteStatus::CONTEXT_FULL,
            Error::EmptyPrompt => FerriteStatus::EMPTY_PROMPT,
            Error::BadSessionConfig { .. } | Error::Overflow => FerriteStatus::BAD_CONFIG,
            Error::BufferTooSmall { .. } => FerriteStatus::BUFFER_TOO_SMALL,
            Error::BadState { .. } => FerriteStatus::BAD_STATE,
            _ => FerriteStatus::INTERNAL,
        };
        fail(status, e.to_string())
    }
}

impl From<TokenizerError> for Failure {
    fn from(e: TokenizerError) -> Self {
        let status = match e {
            TokenizerError::BufferTooSmall { .. } => FerriteStatus::BUFFER_TOO_SMALL,
            TokenizerError::BadToken { .. } => FerriteStatus::BAD_TOKEN,
            TokenizerError::Unsupported { .. } => FerriteStatus::UNSUPPORTED,
            _ => FerriteStatus::INTERNAL,
        };
        fail(status, e.to_string())
    }
}

impl From<SampleError> for Failure {
    fn from(e: SampleError) -> Self {
        let status = match e {
            SampleError::InvalidConfig { .. } => FerriteStatus::BAD_CONFIG,
            SampleError::TokenOutOfRange { .. } => FerriteStatus::BAD_TOKEN,
            _ => FerriteStatus::INVALID_ARGUMENT,
        };
        fail(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: the thread may be exiting (its locals destroyed).
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = message;
        }
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs `body`, turning its error or panic into a status and recording the
/// message for [`ferrite_last_error_message`]. Nothing unwinds out of it.
fn guard(body: impl FnOnce() -> FfiResult) -> FerriteStatus {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FerriteStatus::OK,
        Ok(Err(failure)) => {
            let status = failure.status;
            // Recording allocates; an allocation failure aborts, but nothing
            // here should unwind either.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || set_last_error(&failure.message)));
            status
        }
        Err(payload) => {
            let _ = panic::catch_unwind(AssertUnwindSafe(move || {
                set_last_error(&format!("panic inside ferrite: {}", panic_message(&*payload)));
                // A payload's destructor may itself panic: drop it in here.
                drop(payload);
            }));
            FerriteStatus::PANIC
        }
    }
}

// ---------------------------------------------------------------------------
// Pointer checks

/// Checks that `ptr` is non-NULL and aligned for `T`.
fn check_ptr<T>(ptr: *const T, what: &str) -> FfiResult {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    if !ptr.is_aligned() {
        return Err(invalid(format!("{what} ({ptr:p}) is not aligned to {} bytes", core::mem::align_of::<T>())));
    }
    Ok(())
}

/// Checks that `len` values of `T` span at most `isize::MAX` bytes (what
/// `slice::from_raw_parts` requires).
fn check_len<T>(len: usize, what: &str) -> FfiResult {
    match len.checked_mul(core::mem::size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(invalid(format!("{what}: length {len} is too large"))),
    }
}

/// The caller's array `(ptr, len)` as a slice; `ptr` may be NULL when
/// `len` is 0.
///
/// # Safety
///
/// When `len > 0` and `ptr` is non-NULL and aligned, `ptr` must point to
/// `len` initialized values of `T` that stay valid, and are not written,
/// for `'a`.
unsafe fn slice_in<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    check_ptr(ptr, what)?;
    check_len::<T>(len, what)?;
    // SAFETY: non-NULL, aligned and at most isize::MAX bytes (checked
    // above); validity and lifetime are the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// The handle behind `ptr`.
///
/// # Safety
///
/// `ptr` must be NULL or a live handle of type `T` returned by this module,
/// not freed during `'a`.
unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
    check_ptr(ptr, what)?;
    // SAFETY: non-NULL and aligned (checked); a live handle is a valid `T`
    // (the caller's contract).
    Ok(unsafe { &*ptr })
}

/// The handle behind `ptr`, mutably.
///
/// # Safety
///
/// As [`handle`], and no other reference to the handle may be in use during
/// `'a` (one thread per session at a time).
unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> FfiResult<&'a mut T> {
    check_ptr(ptr, what)?;
    // SAFETY: non-NULL and aligned (checked); a live handle, used by one
    // thread at a time (the caller's contract).
    Ok(unsafe { &mut *ptr })
}

/// Writes `value` to the caller's output `out`, which was checked with
/// [`check_ptr`] (the value it held is not dropped: it may be uninitialized).
///
/// # Safety
///
/// `out` must be valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) {
    // SAFETY: the caller's contract; `check_ptr` has checked non-NULL and
    // alignment.
    unsafe { out.write(value) }
}

// ---------------------------------------------------------------------------
// Version and errors

const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(v) => v,
    Err(_) => panic!("the package version contains a NUL byte"),
};

/// The library version (`"0.1.0"`): a static, NUL-terminated string.
#[no_mangle]
pub extern "C" fn ferrite_version() -> *const c_char {
    VERSION.as_ptr()
}

/// A static description of `status` (`"unknown status"` for values not in
/// [`STATUSES`]).
#[no_mangle]
pub extern "C" fn ferrite_status_string(status: FerriteStatus) -> *const c_char {
    STATUSES.iter().find(|(s, _, _)| *s == status).map_or(c"unknown status".as_ptr(), |(_, _, text)| text.as_ptr())
}

/// The message of the last call on this thread that failed (empty if none
/// did). Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn ferrite_last_error_message() -> *const c_char {
    LAST_ERROR.try_with(|slot| slot.try_borrow().map(|s| s.as_ptr()).ok()).ok().flatten().unwrap_or(c"".as_ptr())
}

// ---------------------------------------------------------------------------
// Models

/// A model (`ferrite_model` in C): the mapped file or the caller's bytes,
/// and a count of the sessions opened on it.
pub struct FerriteModel {
    model: Model<'static>,
    sessions: AtomicUsize,
}

impl FerriteModel {
    fn new_handle(model: Model<'static>) -> *mut FerriteModel {
        Box::into_raw(Box::new(FerriteModel { model, sessions: AtomicUsize::new(0) }))
    }

    fn tokenizer(&self) -> FfiResult<Tokenizer<'_>> {
        let file = self.model.file();
        let view = file
            .tokenizer()
            .copied()
            .ok_or_else(|| fail(FerriteStatus::NO_TOKENIZER, "this model file has no tokenizer"))?;
        Ok(Tokenizer::new(view)?)
    }
}

/// Opens (memory-maps) and validates the Ferrite file at `path`, a
/// NUL-terminated path. On success `*out` is a new model; on failure NULL.
///
/// # Safety
///
/// `path` must be NULL or a NUL-terminated string; `out` must be NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_model_open(path: *const c_char, out: *mut *mut FerriteModel) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract; checked
        // non-NULL and aligned).
        unsafe { put(out, core::ptr::null_mut()) };
        check_ptr(path, "path")?;
        // SAFETY: a NUL-terminated string (the caller's contract).
        let path = unsafe { CStr::from_ptr(path) };
        #[cfg(unix)]
        let path: &std::path::Path =
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()).as_ref();
        #[cfg(not(unix))]
        let path: &std::path::Path = path.to_str().map_err(|_| invalid("path is not UTF-8"))?.as_ref();
        let model = Model::open(path).map_err(|e| {
            let inner = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()).copied();
            match inner {
                Some(runtime) => {
                    let f = Failure::from(runtime);
                    fail(f.status, format!("{}: {}", path.display(), f.message))
                }
                None => fail(FerriteStatus::IO, format!("{}: {e}", path.display())),
            }
        })?;
        // SAFETY: as above.
        unsafe { put(out, FerriteModel::new_handle(model)) };
        Ok(())
    })
}

/// Validates the Ferrite file in the caller's buffer `data[0..len]`, which
/// must start on a 64-byte boundary, without copying it. On success `*out`
/// is a new model; on failure NULL.
///
/// # Safety
///
/// `data` must be NULL or point to `len` readable bytes that stay valid and
/// unchanged until the model is freed; `out` must be NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_model_from_bytes(
    data: *const u8,
    len: usize,
    out: *mut *mut FerriteModel,
) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, core::ptr::null_mut()) };
        check_ptr(data, "data")?;
        // SAFETY: `len` readable bytes that outlive the model (the caller's
        // contract), so the unbounded lifetime is the model's.
        let bytes: &'static [u8] = unsafe { slice_in(data, len, "data") }?;
        let model = Model::from_bytes(bytes)?;
        // SAFETY: as above.
        unsafe { put(out, FerriteModel::new_handle(model)) };
        Ok(())
    })
}

/// Frees a model. NULL is a no-op. Refuses with `MODEL_IN_USE` (and frees
/// nothing) while sessions opened on it are alive.
///
/// # Safety
///
/// `model` must be NULL or a live model handle, not used after this
/// returns `OK`.
#[no_mangle]
pub unsafe extern "C" fn ferrite_model_free(model: *mut FerriteModel) -> FerriteStatus {
    guard(|| {
        if model.is_null() {
            return Ok(());
        }
        // SAFETY: a live model handle (the caller's contract).
        let m = unsafe { handle(model, "model") }?;
        let live = m.sessions.load(Ordering::Acquire);
        if live != 0 {
            return Err(fail(
                FerriteStatus::MODEL_IN_USE,
                format!("{live} session(s) still use this model: free them first"),
            ));
        }
        // SAFETY: the pointer came from `Box::into_raw` in `new_handle`,
        // and no session borrows the model (counted above).
        drop(unsafe { Box::from_raw(model) });
        Ok(())
    })
}

/// What `ferrite_model_get_info` reports (`ferrite_model_info` in C).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FerriteModelInfo {
    /// Rows of the embedding/output table: ids are below it.
    pub vocab_size: u32,
    /// Decoder layers.
    pub n_layers: u32,
    /// Residual stream width.
    pub d_model: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// Width of one head.
    pub head_dim: u32,
    /// FFN inner width.
    pub ffn_dim: u32,
    /// Context length the model was trained for.
    pub trained_ctx: u32,
    /// The BOS id (valid when `has_bos`).
    pub bos_id: u32,
    /// Number of stop ids (see `ferrite_model_stop_ids`).
    pub n_stop_ids: u32,
    /// The model has a BOS token.
    pub has_bos: bool,
    /// Prompts tokenized from text start with BOS.
    pub add_bos: bool,
    /// The file has a tokenizer this runtime can use.
    pub has_tokenizer: bool,
}

/// Fills `*out` with the model's shape and special tokens.
///
/// # Safety
///
/// `model` must be NULL or a live model; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_model_get_info(
    model: *const FerriteModel,
    out: *mut FerriteModelInfo,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model (the caller's contract).
        let m = unsafe { handle(model, "model") }?;
        check_ptr(out, "out")?;
        let c = m.model.config();
        let info = FerriteModelInfo {
            vocab_size: c.vocab_size,
            n_layers: c.n_layers,
            d_model: c.d_model,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn_dim: c.ffn_dim,
            trained_ctx: c.trained_ctx,
            bos_id: c.bos().unwrap_or(0),
            n_stop_ids: c.stop_ids().len() as u32,
            has_bos: c.bos().is_some(),
            add_bos: c.add_bos(),
            has_tokenizer: m.tokenizer().is_ok(),
        };
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, info) };
        Ok(())
    })
}

/// Sets `*out` to whether `id` ends generation (is in the file's stop set).
///
/// # Safety
///
/// `model` must be NULL or a live model; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_model_is_stop(model: *const FerriteModel, id: u32, out: *mut bool) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model (the caller's contract).
        let m = unsafe { handle(model, "model") }?;
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, m.model.config().is_stop(id)) };
        Ok(())
    })
}

/// Sets `*ids` to the model's stop ids and `*n` to their count. The array
/// belongs to the model and lives as long as it.
///
/// # Safety
///
/// `model` must be NULL or a live model; `ids` and `n` NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_model_stop_ids(
    model: *const FerriteModel,
    ids: *mut *const u32,
    n: *mut usize,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model (the caller's contract).
        let m = unsafe { handle(model, "model") }?;
        check_ptr(ids, "ids")?;
        check_ptr(n, "n")?;
        let stops = m.model.config().stop_ids();
        // SAFETY: both are valid for a write (the caller's contract).
        unsafe {
            put(ids, stops.as_ptr());
            put(n, stops.len());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Sessions

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
    /// one uses Rayon's global pool. Results do not depend on it.
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
    session: Session<'static, 'static>,
    model: &'static FerriteModel,
    /// Set while a call runs: still set afterwards only if it panicked.
    poisoned: bool,
}

/// Runs `f` on a session that has not panicked before.
///
/// # Safety
///
/// `sess` must be NULL or a live session, used by no other thread now.
unsafe fn with_session(
    sess: *mut FerriteSession,
    f: impl FnOnce(&mut Session<'static, 'static>) -> FfiResult,
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
        let result = f(&mut s.session);
        s.poisoned = false;
        result
    })
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
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, core::ptr::null_mut()) };
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
        check_len::<u8>(needed, "arena")?;
        let arena = arena.cast::<u8>();
        // SAFETY: `arena` is valid for writes of `arena_len >= needed`
        // bytes (the caller's contract). Zeroing makes them initialized,
        // which a `&mut [u8]` requires (malloc'd memory is not).
        unsafe { core::ptr::write_bytes(arena, 0, needed) };
        // SAFETY: non-NULL, `needed <= isize::MAX` (checked), initialized
        // just above; nothing else uses these bytes until the session is
        // freed (the caller's contract), so the unbounded lifetime is the
        // session's and the borrow is unique.
        let arena: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(arena, needed) };
        let session = Session::new(&m.model, &plan, arena)?;
        m.sessions.fetch_add(1, Ordering::AcqRel);
        let handle = Box::into_raw(Box::new(FerriteSession { session, model: m, poisoned: false }));
        // SAFETY: as above.
        unsafe { put(out, handle) };
        Ok(())
    })
}

/// Frees a session (not its arena, which the caller owns). NULL is a no-op.
///
/// # Safety
///
/// `sess` must be NULL or a live session, not used after this returns.
#[no_mangle]
pub unsafe extern "C" fn ferrite_session_free(sess: *mut FerriteSession) -> FerriteStatus {
    guard(|| {
        if sess.is_null() {
            return Ok(());
        }
        check_ptr(sess, "session")?;
        // SAFETY: the pointer came from `Box::into_raw` in
        // `ferrite_session_new` and is live (the caller's contract).
        let s = unsafe { Box::from_raw(sess) };
        let model = s.model;
        drop(s);
        model.sessions.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    })
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
        with_session(sess, |s| {
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
    unsafe {
        with_session(sess, |s| {
            check_ptr(out, "out")?;
            // SAFETY: `out` is valid for a write (the caller's contract).
            put(out, s.position());
            Ok(())
        })
    }
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
    unsafe {
        with_session(sess, |s| {
            check_ptr(out, "out")?;
            // SAFETY: `out` is valid for a write (the caller's contract).
            put(out, s.state_len());
            Ok(())
        })
    }
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
        with_session(sess, |s| {
            check_ptr(n_out, "n_out")?;
            let needed = s.state_len();
            if cap < needed {
                // SAFETY: `n_out` is valid for a write (the caller's contract).
                put(n_out, needed);
                return Err(Error::BufferTooSmall { needed, given: cap }.into());
            }
            let out = out.cast::<u8>();
            check_ptr(out, "out")?;
            check_len::<u8>(needed, "out")?;
            // SAFETY: `cap >= needed` writable bytes (the caller's
            // contract), non-NULL, size checked; zeroed first so that the
            // slice is initialized.
            core::ptr::write_bytes(out, 0, needed);
            // SAFETY: as above; the slice lives only during this call.
            let buf = core::slice::from_raw_parts_mut(out, needed);
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
        with_session(sess, |s| {
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
        with_session(sess, |s| {
            // SAFETY: `n` readable ids (the caller's contract).
            let ids = slice_in(ids, n, "ids")?;
            if !logits_out.is_null() {
                check_ptr(logits_out, "logits_out")?;
            }
            let logits = s.prefill(ids)?;
            if !logits_out.is_null() {
                // SAFETY: checked above; valid for a write (the caller's contract).
                put(logits_out, logits.as_ptr());
            }
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
        with_session(sess, |s| {
            if !logits_out.is_null() {
                check_ptr(logits_out, "logits_out")?;
            }
            let logits = s.step(id)?;
            if !logits_out.is_null() {
                // SAFETY: checked above; valid for a write (the caller's contract).
                put(logits_out, logits.as_ptr());
            }
            Ok(())
        })
    }
}

/// Sets `*out` to the index of the largest of `logits[0..n]`, the lowest on
/// ties: greedy decoding, `ferrite_runtime::sampler::argmax` (the sampler
/// at temperature 0 chooses the same).
/// NaN or `+inf` entries, `n == 0`, or all entries `-inf` are
/// `INVALID_ARGUMENT`.
///
/// # Safety
///
/// `logits` must be NULL or `n` readable floats; `out` NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_argmax(logits: *const f32, n: usize, out: *mut u32) -> FerriteStatus {
    guard(|| {
        // SAFETY: `n` readable floats (the caller's contract).
        let logits = unsafe { slice_in(logits, n, "logits") }?;
        check_ptr(out, "out")?;
        let best = sampler::argmax(logits)?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, best) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Sampler

/// How to choose the next token (`ferrite_sampler_config` in C); see
/// `ferrite_runtime::sampler::SamplerConfig`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FerriteSamplerConfig {
    /// Softmax temperature; `<= 0` is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: u32,
    /// Nucleus: keep the smallest set reaching this probability, in [0, 1];
    /// 1 disables.
    pub top_p: f32,
    /// Drop tokens below `min_p` times the best one's probability; 0 disables.
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 disables.
    pub repeat_penalty: f32,
    /// How many of the most recent ids the penalty looks at.
    pub repeat_last_n: u32,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl FerriteSamplerConfig {
    fn from_rust(c: SamplerConfig) -> Self {
        FerriteSamplerConfig {
            temperature: c.temperature,
            top_k: u32::try_from(c.top_k).unwrap_or(u32::MAX),
            top_p: c.top_p,
            min_p: c.min_p,
            repeat_penalty: c.repeat_penalty,
            repeat_last_n: u32::try_from(c.repeat_last_n).unwrap_or(u32::MAX),
            seed: c.seed,
        }
    }

    fn to_rust(self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n as usize,
            seed: self.seed,
        }
    }
}

/// A sampler (`ferrite_sampler` in C): the runtime's sampler and the
/// buffers it works in, allocated once for a vocabulary size.
pub struct FerriteSampler {
    sampler: Sampler,
    logits: Vec<f32>,
    scratch: Vec<u32>,
}

/// Fills `*out` with the default sampling settings (temperature 0.8,
/// top-k 40, top-p 0.95, min-p 0.05, no repetition penalty, seed 0).
///
/// # Safety
///
/// `out` must be NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_config_default(out: *mut FerriteSamplerConfig) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, FerriteSamplerConfig::from_rust(SamplerConfig::default())) };
        Ok(())
    })
}

/// Creates a sampler for rows of up to `vocab_size` logits (it allocates
/// its buffers here, never while sampling). On failure `*out` is NULL.
///
/// # Safety
///
/// `cfg` must be NULL or valid for a read; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_new(
    cfg: *const FerriteSamplerConfig,
    vocab_size: usize,
    out: *mut *mut FerriteSampler,
) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, core::ptr::null_mut()) };
        // SAFETY: readable (the caller's contract).
        let cfg = unsafe { handle(cfg, "cfg") }?;
        if vocab_size == 0 || u32::try_from(vocab_size).is_err() {
            return Err(invalid(format!("vocab_size {vocab_size} (must be 1..=2^32-1)")));
        }
        let sampler = Sampler::new(cfg.to_rust())?;
        let handle = Box::new(FerriteSampler { sampler, logits: vec![0.0; vocab_size], scratch: vec![0; vocab_size] });
        // SAFETY: as above.
        unsafe { put(out, Box::into_raw(handle)) };
        Ok(())
    })
}

/// Frees a sampler. NULL is a no-op.
///
/// # Safety
///
/// `sampler` must be NULL or a live sampler, not used after this returns.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_free(sampler: *mut FerriteSampler) -> FerriteStatus {
    guard(|| {
        if sampler.is_null() {
            return Ok(());
        }
        check_ptr(sampler, "sampler")?;
        // SAFETY: from `Box::into_raw` in `ferrite_sampler_new`, live (the
        // caller's contract).
        drop(unsafe { Box::from_raw(sampler) });
        Ok(())
    })
}

/// Restarts the sampler's random stream from `seed`.
///
/// # Safety
///
/// `sampler` must be NULL or a live sampler, used by no other thread now.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_reseed(sampler: *mut FerriteSampler, seed: u64) -> FerriteStatus {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { handle_mut(sampler, "sampler") }?;
        s.sampler.reseed(seed);
        Ok(())
    })
}

/// Chooses the next token from `logits[0..n]` (`n` at most the sampler's
/// `vocab_size`; the caller's array is not modified), with the repetition
/// penalty looking at the end of `recent[0..n_recent]` (oldest first), and
/// writes it to `*out`.
///
/// # Safety
///
/// `sampler` must be NULL or a live sampler, used by no other thread now;
/// `logits` NULL or `n` readable floats; `recent` NULL or `n_recent`
/// readable ids; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_sampler_sample(
    sampler: *mut FerriteSampler,
    logits: *const f32,
    n: usize,
    recent: *const u32,
    n_recent: usize,
    out: *mut u32,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: the caller's contract, for each pointer.
        let (s, logits, recent) = unsafe {
            (handle_mut(sampler, "sampler")?, slice_in(logits, n, "logits")?, slice_in(recent, n_recent, "recent")?)
        };
        check_ptr(out, "out")?;
        if n > s.logits.len() {
            return Err(invalid(format!("{n} logits but the sampler was made for {}", s.logits.len())));
        }
        let row = &mut s.logits[..n];
        row.copy_from_slice(logits);
        let id = s.sampler.sample(row, recent, &mut s.scratch[..n])?;
        // SAFETY: `out` is valid for a write (the caller's contract).
        unsafe { put(out, id) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Tokenizer

/// Encodes the UTF-8 text `text[0..len]` (no BOS added: see
/// `ferrite_model_get_info`'s `add_bos`) into `out[0..cap]` and sets `*n_out`
/// to the number of ids. With `parse_special`, added tokens such as
/// `<|im_end|>` in the text become their ids; without, special ones are
/// encoded as plain text (for untrusted input). `cap >= 2 * len + 2`
/// always suffices ([`Tokenizer::max_tokens`]); on `BUFFER_TOO_SMALL`
/// `*n_out` is set to that bound.
///
/// # Safety
///
/// `model` must be NULL or a live model; `text` NULL or `len` readable
/// bytes; `out` NULL or `cap` writable ids; `n_out` NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_tokenize(
    model: *const FerriteModel,
    text: *const c_char,
    len: usize,
    parse_special: bool,
    out: *mut u32,
    cap: usize,
    n_out: *mut usize,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model; `len` readable bytes (the caller's contract).
        let (m, text) = unsafe { (handle(model, "model")?, slice_in(text.cast::<u8>(), len, "text")?) };
        check_ptr(n_out, "n_out")?;
        let text = core::str::from_utf8(text).map_err(|e| invalid(format!("text is not UTF-8: {e}")))?;
        let out: &mut [u32] = if cap == 0 {
            &mut []
        } else {
            check_ptr(out, "out")?;
            check_len::<u32>(cap, "out")?;
            // SAFETY: `cap` writable ids (the caller's contract), non-NULL,
            // aligned, size checked; zeroed first because a `&mut [u32]`
            // must be initialized.
            unsafe {
                core::ptr::write_bytes(out, 0, cap);
                core::slice::from_raw_parts_mut(out, cap)
            }
        };
        let tok = m.tokenizer()?;
        let result = if parse_special { tok.encode(text, out) } else { tok.encode_ordinary(text, out) };
        let n = match result {
            Ok(n) => n,
            Err(e @ TokenizerError::BufferTooSmall { .. }) => {
                // SAFETY: `n_out` is valid for a write (the caller's contract).
                unsafe { put(n_out, Tokenizer::max_tokens(len)) };
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // SAFETY: as above.
        unsafe { put(n_out, n) };
        Ok(())
    })
}

/// Sets `*ptr`/`*len` to the bytes of token `id` (raw bytes, possibly part
/// of a UTF-8 character; not NUL-terminated). They belong to the model and
/// live as long as it.
///
/// # Safety
///
/// `model` must be NULL or a live model; `ptr` and `len` NULL or valid for
/// a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_token_bytes(
    model: *const FerriteModel,
    id: u32,
    ptr: *mut *const u8,
    len: *mut usize,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model (the caller's contract).
        let m = unsafe { handle(model, "model") }?;
        check_ptr(ptr, "ptr")?;
        check_ptr(len, "len")?;
        let bytes = m.tokenizer()?.token_bytes(id)?;
        // SAFETY: both are valid for a write (the caller's contract).
        unsafe {
            put(ptr, bytes.as_ptr());
            put(len, bytes.len());
        }
        Ok(())
    })
}

/// Writes the bytes of `ids[0..n]` to `out[0..cap]` (not NUL-terminated)
/// and sets `*n_out` to how many; special tokens are left out with
/// `skip_special`. On `BUFFER_TOO_SMALL` `*n_out` is set to the bytes
/// needed.
///
/// # Safety
///
/// `model` must be NULL or a live model; `ids` NULL or `n` readable ids;
/// `out` NULL or `cap` writable bytes; `n_out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_decode(
    model: *const FerriteModel,
    ids: *const u32,
    n: usize,
    skip_special: bool,
    out: *mut c_char,
    cap: usize,
    n_out: *mut usize,
) -> FerriteStatus {
    guard(|| {
        // SAFETY: a live model; `n` readable ids (the caller's contract).
        let (m, ids) = unsafe { (handle(model, "model")?, slice_in(ids, n, "ids")?) };
        check_ptr(n_out, "n_out")?;
        let out: &mut [u8] = if cap == 0 {
            &mut []
        } else {
            check_ptr(out, "out")?;
            check_len::<u8>(cap, "out")?;
            // SAFETY: `cap` writable bytes (the caller's contract), non-NULL,
            // size checked; zeroed first so that the slice is initialized.
            unsafe {
                core::ptr::write_bytes(out, 0, cap);
                core::slice::from_raw_parts_mut(out.cast::<u8>(), cap)
            }
        };
        let tok = m.tokenizer()?;
        let result = if skip_special { tok.decode_skip_special(ids, out) } else { tok.decode(ids, out) };
        let n = match result {
            Ok(n) => n,
            Err(e @ TokenizerError::BufferTooSmall { .. }) => {
                let needed = ids
                    .iter()
                    .filter(|&&id| !(skip_special && tok.is_special(id)))
                    .map(|&id| tok.token_bytes(id).map_or(0, <[u8]>::len))
                    .fold(0usize, usize::saturating_add);
                // SAFETY: `n_out` is valid for a write (the caller's contract).
                unsafe { put(n_out, needed) };
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // SAFETY: as above.
        unsafe { put(n_out, n) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: a NUL-terminated thread-local string.
        unsafe { CStr::from_ptr(ferrite_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, FerriteStatus::PANIC);
        assert!(last_error().contains("boom"), "{}", last_error());
        let status = guard(|| std::panic::panic_any(42u8));
        assert_eq!(status, FerriteStatus::PANIC);
        assert!(last_error().contains("no message"));
    }

    #[test]
    fn failures_record_their_message() {
        assert_eq!(guard(|| Err(fail(FerriteStatus::IO, "disk on fire\0!"))), FerriteStatus::IO);
        assert_eq!(last_error(), "disk on fire\\0!");
        assert_eq!(guard(|| Ok(())), FerriteStatus::OK);
        // Success leaves the last failure's message.
        assert_eq!(last_error(), "disk on fire\\0!");
    }

    #[test]
    fn statuses_are_distinct() {
        for (i, (a, name_a, _)) in STATUSES.iter().enumerate() {
            for (b, name_b, _) in &STATUSES[i + 1..] {
                assert_ne!(a, b, "{name_a} and {name_b}");
            }
        }
    }
}
