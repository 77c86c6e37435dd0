//! Text through the model's tokenizer: encoding, one token's bytes,
//! decoding.

use core::ffi::c_char;

use ferrite_runtime::tokenizer::{Tokenizer, TokenizerError};

use super::boundary::{check_ptr, guard, handle, invalid, put, put_slice, slice_in, slice_out, FerriteStatus};
use super::model::FerriteModel;

/// Encodes the UTF-8 text `text[0..len]` (no BOS added: see
/// `ferrite_model_get_info`'s `add_bos`) into `out[0..cap]` and sets `*n_out`
/// to the number of ids. With `parse_special`, added tokens such as
/// `<|im_end|>` in the text become their ids; without, special ones are
/// encoded as plain text (for untrusted input). `cap >= 2 * len + 2`
/// always suffices ([`Tokenizer::min_tokens`]); `8 * len + 8`
/// ([`Tokenizer::max_tokens`]) merges in O(n log n); on `BUFFER_TOO_SMALL`
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
        // SAFETY: NULL or `cap` writable ids (the caller's contract).
        let out = unsafe { slice_out(out, cap, "out") }?;
        let tok = m.tokenizer()?;
        let result = if parse_special { tok.encode(text, out) } else { tok.encode_ordinary(text, out) };
        let n = match result {
            Ok(n) => n,
            Err(e @ TokenizerError::BufferTooSmall { .. }) => {
                // SAFETY: `n_out` is valid for a write (the caller's contract).
                unsafe { put(n_out, Tokenizer::min_tokens(len)) };
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
        // SAFETY: both are NULL or valid for a write (the caller's contract).
        unsafe { put_slice(ptr, len, ["ptr", "len"], || Ok(m.tokenizer()?.token_bytes(id)?)) }
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
        // SAFETY: NULL or `cap` writable bytes (the caller's contract).
        let out = unsafe { slice_out(out.cast::<u8>(), cap, "out") }?;
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
