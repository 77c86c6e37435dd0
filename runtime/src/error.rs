use core::fmt;

/// Everything the runtime can refuse. Never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The model file is invalid.
    Format(ferrite_format::Error),
    /// The kernel tier asked for (`FERRITE_KERNELS` or the session config)
    /// is unknown or needs CPU features this machine lacks.
    Kernels(ferrite_kernels::KernelError),
    /// The arena passed to [`crate::Session::new`] is smaller than the plan needs.
    ArenaTooSmall {
        /// Bytes the plan needs (alignment slack included).
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// A token id is not below the vocabulary size.
    BadToken {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: u32,
    },
    /// The KV cache is full (streaming is off).
    ContextFull {
        /// Tokens already in the cache.
        used: usize,
        /// Tokens that were to be added.
        adding: usize,
        /// Capacity.
        max_ctx: usize,
    },
    /// A prompt with no tokens.
    EmptyPrompt,
    /// A [`crate::SessionConfig`] value is out of range.
    BadSessionConfig {
        /// The field.
        what: &'static str,
        /// Why.
        why: &'static str,
    },
    /// A size computation overflowed.
    Overflow,
    /// The plan was made for another model.
    PlanMismatch,
    /// An output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The session's worker threads could not be started.
    Threads {
        /// Threads asked for.
        threads: usize,
    },
    /// Saved session state bytes cannot be restored here.
    BadState {
        /// Why.
        why: &'static str,
    },
}

impl From<ferrite_format::Error> for Error {
    fn from(e: ferrite_format::Error) -> Self {
        Error::Format(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Format(e) => write!(f, "invalid model file: {e}"),
            Error::Kernels(e) => write!(f, "{e}"),
            Error::ArenaTooSmall { needed, given } => {
                write!(f, "arena too small: the plan needs {needed} bytes, {given} were given")
            }
            Error::BadToken { id, vocab } => {
                write!(f, "token id {id} is out of range (vocabulary has {vocab} tokens)")
            }
            Error::ContextFull { used, adding, max_ctx } => {
                write!(f, "context full: {used} tokens in the cache + {adding} new exceed max_ctx {max_ctx}")
            }
            Error::EmptyPrompt => write!(f, "empty prompt: give at least one token"),
            Error::BadSessionConfig { what, why } => write!(f, "invalid session config {what}: {why}"),
            Error::Overflow => write!(f, "size overflow while planning memory"),
            Error::PlanMismatch => write!(f, "the plan was made for a different model"),
            Error::BufferTooSmall { needed, given } => {
                write!(f, "buffer too small: {needed} bytes needed, {given} given")
            }
            Error::BadState { why } => write!(f, "cannot restore session state: {why}"),
            Error::Threads { threads } => write!(f, "cannot start the session's {threads} threads"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
