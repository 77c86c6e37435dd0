//! What every function of the C API shares: the status codes, the
//! [`Failure`] a body returns and the message it records, [`guard`] (no
//! panic crosses the boundary) and the checks that turn the caller's raw
//! pointers into references and slices.

use core::ffi::{c_char, CStr};
use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{self, AssertUnwindSafe};

use ferrite_runtime::sampler::SampleError;
use ferrite_runtime::tokenizer::TokenizerError;
use ferrite_runtime::Error;

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
pub(super) struct Failure {
    pub(super) status: FerriteStatus,
    pub(super) message: String,
}

pub(super) type FfiResult<T = ()> = Result<T, Failure>;

pub(super) fn fail(status: FerriteStatus, message: impl Into<String>) -> Failure {
    Failure { status, message: message.into() }
}

pub(super) fn invalid(message: impl Into<String>) -> Failure {
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
pub(super) fn guard(body: impl FnOnce() -> FfiResult) -> FerriteStatus {
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
pub(super) fn check_ptr<T>(ptr: *const T, what: &str) -> FfiResult {
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
pub(super) unsafe fn slice_in<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    check_ptr(ptr, what)?;
    check_len::<T>(len, what)?;
    // SAFETY: non-NULL, aligned and at most isize::MAX bytes (checked
    // above); validity and lifetime are the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// The caller's output array `(ptr, len)` as a slice, zeroed first (a
/// `&mut [T]` must be initialized; the caller's memory may not be); `ptr`
/// may be NULL when `len` is 0.
///
/// # Safety
///
/// When `len > 0` and `ptr` is non-NULL and aligned, `ptr` must be valid
/// for writes of `len` values of `T`, and nothing else may use them, for
/// `'a`. All-zero bytes must be a valid `T` (integers).
pub(super) unsafe fn slice_out<'a, T>(ptr: *mut T, len: usize, what: &str) -> FfiResult<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_ptr(ptr, what)?;
    check_len::<T>(len, what)?;
    // SAFETY: non-NULL, aligned and at most isize::MAX bytes (checked
    // above); writable and unshared for `'a` (the caller's contract);
    // zeroed first so that the slice is initialized (all-zero is a valid
    // `T`, the caller's contract).
    unsafe {
        core::ptr::write_bytes(ptr, 0, len);
        Ok(core::slice::from_raw_parts_mut(ptr, len))
    }
}

/// The NUL-terminated path `ptr` (bytes as they are on Unix; UTF-8
/// elsewhere).
///
/// # Safety
///
/// `ptr` must be NULL or a NUL-terminated string that stays valid for `'a`.
pub(super) unsafe fn c_path<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a std::path::Path> {
    check_ptr(ptr, what)?;
    // SAFETY: a NUL-terminated string (the caller's contract).
    let path = unsafe { CStr::from_ptr(ptr) };
    #[cfg(unix)]
    let path: &std::path::Path =
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()).as_ref();
    #[cfg(not(unix))]
    let path: &std::path::Path = path.to_str().map_err(|_| invalid(format!("{what} is not UTF-8")))?.as_ref();
    Ok(path)
}

/// The handle behind `ptr`.
///
/// # Safety
///
/// `ptr` must be NULL or a live handle of type `T` returned by this module,
/// not freed during `'a`.
pub(super) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> FfiResult<&'a T> {
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
pub(super) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> FfiResult<&'a mut T> {
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
pub(super) unsafe fn put<T>(out: *mut T, value: T) {
    // SAFETY: the caller's contract; `check_ptr` has checked non-NULL and
    // alignment.
    unsafe { out.write(value) }
}

/// Checks the caller's optional output `out`: NULL (nothing is written) or
/// aligned.
pub(super) fn check_optional<T>(out: *mut T, what: &str) -> FfiResult {
    if out.is_null() {
        Ok(())
    } else {
        check_ptr(out, what)
    }
}

/// Writes `value` to the caller's optional output `out`, which was checked
/// with [`check_optional`]: nothing when it is NULL.
///
/// # Safety
///
/// `out` must be NULL or valid for a write of `T`.
pub(super) unsafe fn put_optional<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-NULL and checked; valid for a write (the caller's
        // contract).
        unsafe { put(out, value) }
    }
}

/// Checks the caller's outputs `ptr` and `len` (named `what[0]` and
/// `what[1]` in errors), then sets them to the address and length of the
/// slice `items` returns. The slice is not copied: it must outlive what the
/// caller does with it (it belongs to a handle).
///
/// # Safety
///
/// `ptr` and `len` must be NULL or valid for a write.
pub(super) unsafe fn put_slice<'a, T: 'a>(
    ptr: *mut *const T,
    len: *mut usize,
    what: [&str; 2],
    items: impl FnOnce() -> FfiResult<&'a [T]>,
) -> FfiResult {
    check_ptr(ptr, what[0])?;
    check_ptr(len, what[1])?;
    let items = items()?;
    // SAFETY: both are valid for a write (the caller's contract; checked
    // non-NULL and aligned).
    unsafe {
        put(ptr, items.as_ptr());
        put(len, items.len());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Handles

/// What every constructor of a handle shares: `*out` is set to NULL first,
/// so that it is NULL on every failure, then to the handle `make` returns.
///
/// # Safety
///
/// `out` must be NULL or valid for a write.
pub(super) unsafe fn new_handle<T>(out: *mut *mut T, make: impl FnOnce() -> FfiResult<Box<T>>) -> FerriteStatus {
    guard(|| {
        check_ptr(out, "out")?;
        // SAFETY: `out` is valid for a write (the caller's contract; checked
        // non-NULL and aligned).
        unsafe { put(out, core::ptr::null_mut()) };
        let handle = make()?;
        // SAFETY: as above.
        unsafe { put(out, Box::into_raw(handle)) };
        Ok(())
    })
}

/// What every `ferrite_*_free` shares: NULL is a no-op; otherwise `ptr`
/// (named `what` in errors) is checked, `may_free` may refuse (and nothing
/// is freed), and `release` takes the handle back.
///
/// # Safety
///
/// `ptr` must be NULL or a live handle made by [`new_handle`], not used
/// after this returns `OK`.
pub(super) unsafe fn free_handle<T>(
    ptr: *mut T,
    what: &str,
    may_free: impl FnOnce(&T) -> FfiResult,
    release: impl FnOnce(Box<T>),
) -> FerriteStatus {
    guard(|| {
        if ptr.is_null() {
            return Ok(());
        }
        // SAFETY: a live handle (the caller's contract).
        may_free(unsafe { handle(ptr, what) }?)?;
        // SAFETY: the pointer came from `Box::into_raw` in `new_handle` and
        // is live (the caller's contract); the reference `may_free` had is
        // gone.
        release(unsafe { Box::from_raw(ptr) });
        Ok(())
    })
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
