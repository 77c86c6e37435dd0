use std::fmt;
use std::path::Path;

/// What kind of thing went wrong in a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Reading or writing a file failed.
    Io,
    /// `config.json` / `generation_config.json` is missing, malformed or
    /// holds an invalid value.
    Config,
    /// The tokenizer files are malformed or of an unsupported kind.
    Tokenizer,
    /// A safetensors file or the shard index is malformed, truncated or missing.
    Checkpoint,
    /// The checkpoint is valid but uses something Ferrite does not support.
    Unsupported,
    /// A tensor has the wrong shape, type or is missing.
    Tensor,
    /// A tensor holds NaN or infinity.
    NonFinite,
}

/// A conversion error: its kind and a message naming the file, key or tensor.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    /// An I/O error on `path`.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{}: {err}", path.display()))
    }
    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Conversion result.
pub type Result<T> = std::result::Result<T, Error>;
