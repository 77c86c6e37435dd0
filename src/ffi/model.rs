//! The model handle: opening a file or the caller's bytes, its shape,
//! its stop ids.

use core::ffi::c_char;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrite_runtime::tokenizer::Tokenizer;
use ferrite_runtime::{Error, Model};

use super::boundary::{
    c_path, check_ptr, fail, free_handle, guard, handle, new_handle, put, put_slice, slice_in, Failure, FerriteStatus,
    FfiResult,
};

/// A model (`ferrite_model` in C): the mapped file or the caller's bytes,
/// and a count of the sessions opened on it.
pub struct FerriteModel {
    pub(super) model: Model<'static>,
    pub(super) sessions: AtomicUsize,
}

impl FerriteModel {
    fn boxed(model: Model<'static>) -> Box<FerriteModel> {
        Box::new(FerriteModel { model, sessions: AtomicUsize::new(0) })
    }

    pub(super) fn tokenizer(&self) -> FfiResult<Tokenizer<'_>> {
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
    let open = || {
        // SAFETY: NULL or a NUL-terminated string (the caller's contract).
        let path = unsafe { c_path(path, "path") }?;
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
        Ok(FerriteModel::boxed(model))
    };
    // SAFETY: `out` is NULL or valid for a write (the caller's contract).
    unsafe { new_handle(out, open) }
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
    let open = || {
        check_ptr(data, "data")?;
        // SAFETY: `len` readable bytes that outlive the model (the caller's
        // contract), so the unbounded lifetime is the model's.
        let bytes: &'static [u8] = unsafe { slice_in(data, len, "data") }?;
        Ok(FerriteModel::boxed(Model::from_bytes(bytes)?))
    };
    // SAFETY: `out` is NULL or valid for a write (the caller's contract).
    unsafe { new_handle(out, open) }
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
    let may_free = |m: &FerriteModel| match m.sessions.load(Ordering::Acquire) {
        0 => Ok(()),
        live => {
            Err(fail(FerriteStatus::MODEL_IN_USE, format!("{live} session(s) still use this model: free them first")))
        }
    };
    // SAFETY: NULL or a live model handle, not used afterwards (the
    // caller's contract); freed only when no session borrows it.
    unsafe { free_handle(model, "model", may_free, drop) }
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
        // SAFETY: both are NULL or valid for a write (the caller's contract).
        unsafe { put_slice(ids, n, ["ids", "n"], || Ok(m.model.config().stop_ids())) }
    })
}
