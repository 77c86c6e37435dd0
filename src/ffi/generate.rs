//! `ferrite_generate`: the runtime's generation loop
//! (`ferrite_runtime::generate`) over a session and a sampler, with C
//! callbacks for the new tokens and their text.

use core::ffi::{c_char, c_void};
use core::ops::ControlFlow;

use ferrite_runtime::generate::{self, End, GenBuffers, GenError, GenOptions, History, Observer};

use super::boundary::{
    check_optional, fail, handle, handle_mut, put_optional, slice_in, Failure, FerriteStatus, FfiResult,
};
use super::sampler::FerriteSampler;
use super::session::{with_session, FerriteSession};

/// `end` value: generation ended on a stop id (the last new token).
pub const FERRITE_END_STOP_TOKEN: u32 = 0;
/// `end` value: `max_new` tokens were generated.
pub const FERRITE_END_MAX_TOKENS: u32 = 1;
/// `end` value: the token callback returned non-zero.
pub const FERRITE_END_CALLBACK: u32 = 2;
/// `end` value: feeding a new token back failed (the status says why); the
/// tokens before it stand.
pub const FERRITE_END_ERROR: u32 = 3;
/// Every `end` value and its name in `ferrite.h`.
pub const END_REASONS: &[(u32, &str)] = &[
    (FERRITE_END_STOP_TOKEN, "FERRITE_END_STOP_TOKEN"),
    (FERRITE_END_MAX_TOKENS, "FERRITE_END_MAX_TOKENS"),
    (FERRITE_END_CALLBACK, "FERRITE_END_CALLBACK"),
    (FERRITE_END_ERROR, "FERRITE_END_ERROR"),
];

/// How long to generate (`ferrite_generate_options` in C).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FerriteGenerateOptions {
    /// Most new tokens (a stop id that ends generation counts).
    pub max_new: usize,
    /// Keep going after a stop id.
    pub ignore_eos: bool,
}

/// Called for each new token (the stop id included) with the caller's
/// `user` pointer; non-zero ends the generation.
pub type FerriteTokenFn = unsafe extern "C" fn(user: *mut c_void, id: u32) -> i32;

/// Called with the decoded text of the new tokens, in whole UTF-8
/// characters (`len` bytes at `text`, not NUL-terminated; valid only during
/// the call), after the token callback of the token it completes.
pub type FerriteTextFn = unsafe extern "C" fn(user: *mut c_void, text: *const c_char, len: usize);

/// What `ferrite_generate` calls back (`ferrite_generate_callbacks` in C).
/// Either function may be NULL; a text callback needs a model with a
/// tokenizer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FerriteGenerateCallbacks {
    /// For each new token.
    pub token: Option<FerriteTokenFn>,
    /// For the decoded text.
    pub text: Option<FerriteTextFn>,
    /// Passed to both.
    pub user: *mut c_void,
}

/// What a generation produced (`ferrite_generate_result` in C).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FerriteGenerateResult {
    /// New tokens (the stop id included when generation ended on one).
    pub generated: usize,
    /// Tokens fed back through single decode steps.
    pub decode_steps: usize,
    /// Why it ended: a `FERRITE_END_*` value.
    pub end: u32,
}

struct Callbacks(FerriteGenerateCallbacks);

impl Observer for Callbacks {
    fn token(&mut self, id: u32) -> ControlFlow<()> {
        match self.0.token {
            // SAFETY: the caller's function, called as its contract says.
            Some(f) if unsafe { f(self.0.user, id) } != 0 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
    fn text(&mut self, text: &str) {
        if let Some(f) = self.0.text {
            // SAFETY: as above; `text` is `len` readable bytes for the call.
            unsafe { f(self.0.user, text.as_ptr().cast(), text.len()) };
        }
    }
}

/// Feeds `prompt[0..n_prompt]` to the session, then samples with `sampler`
/// and feeds back up to `opts->max_new` tokens, stopping after a stop id of
/// the model (unless `opts->ignore_eos`) or when the token callback returns
/// non-zero; the callbacks see every new token and its text. The prompt
/// and the new ids make up the repetition history (fresh for each call).
/// `*result` (when not NULL) is written whenever the prompt was processed,
/// also when a later step fails: then the step's status is returned (e.g.
/// `CONTEXT_FULL` with streaming off) and `result->end` is
/// `FERRITE_END_ERROR`. Nothing is allocated: the sampler's buffers were
/// made by `ferrite_sampler_new`.
///
/// # Safety
///
/// `sess` must be NULL or a live session and `sampler` NULL or a live
/// sampler, each used by no other thread now; `prompt` NULL or `n_prompt`
/// readable ids; `opts` NULL or valid for a read; `callbacks` NULL (no
/// callbacks) or valid for a read, its functions callable as their types
/// say with its `user` pointer; `result` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ferrite_generate(
    sess: *mut FerriteSession,
    sampler: *mut FerriteSampler,
    prompt: *const u32,
    n_prompt: usize,
    opts: *const FerriteGenerateOptions,
    callbacks: *const FerriteGenerateCallbacks,
    result: *mut FerriteGenerateResult,
) -> FerriteStatus {
    // SAFETY: the caller's contract (`sess`).
    unsafe {
        with_session(sess, |session, model| {
            // SAFETY: the caller's contract, for each pointer.
            let (s, prompt, opts) =
                (handle_mut(sampler, "sampler")?, slice_in(prompt, n_prompt, "prompt")?, *handle(opts, "opts")?);
            let callbacks = if callbacks.is_null() {
                FerriteGenerateCallbacks { token: None, text: None, user: core::ptr::null_mut() }
            } else {
                // SAFETY: valid for a read (the caller's contract).
                *handle(callbacks, "callbacks")?
            };
            check_optional(result, "result")?;
            run(session, model, s, prompt, opts, callbacks, result)
        })
    }
}

fn run(
    session: &mut ferrite_runtime::Session<'static, 'static>,
    model: &'static super::model::FerriteModel,
    s: &mut FerriteSampler,
    prompt: &[u32],
    opts: FerriteGenerateOptions,
    callbacks: FerriteGenerateCallbacks,
    result: *mut FerriteGenerateResult,
) -> FfiResult {
    let tokenizer = match callbacks.text {
        Some(_) => Some(model.tokenizer()?),
        None => None,
    };
    let config = model.model.config();
    let buffers = GenBuffers { logits: &mut s.logits, scratch: &mut s.scratch };
    let mut history = History::new(&mut s.recent);
    let options = GenOptions { max_new: opts.max_new, ignore_eos: opts.ignore_eos };
    let mut observer = Callbacks(callbacks);
    let done = generate::generate(
        session,
        config,
        tokenizer.as_ref(),
        &mut s.sampler,
        prompt,
        &options,
        buffers,
        &mut history,
        &mut observer,
    )
    .map_err(|e| match e {
        GenError::Backend(e) => Failure::from(e),
        GenError::Sample(e) => Failure::from(e),
        GenError::Tokenizer(e) => Failure::from(e),
        GenError::BufferTooSmall { needed, given } => fail(
            FerriteStatus::INVALID_ARGUMENT,
            format!("the sampler was made for {given} logits but the model has {needed}"),
        ),
        e @ GenError::HistoryTooSmall { .. } => fail(FerriteStatus::INTERNAL, e.to_string()),
    })?;
    let (end, error) = match done.end {
        End::StopToken => (FERRITE_END_STOP_TOKEN, None),
        End::MaxTokens => (FERRITE_END_MAX_TOKENS, None),
        End::Observer => (FERRITE_END_CALLBACK, None),
        End::Backend(e) => (FERRITE_END_ERROR, Some(Failure::from(e))),
    };
    let r = FerriteGenerateResult { generated: done.generated, decode_steps: done.decode_steps, end };
    // SAFETY: checked by `check_optional`; NULL or valid for a write (the
    // caller's contract).
    unsafe { put_optional(result, r) };
    error.map_or(Ok(()), Err)
}
