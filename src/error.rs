//! The library's error type: every failure names the thing that was wrong.

use std::path::PathBuf;

/// Errors returned by the idlm library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    /// (The cause is in the message, not the source chain, so `{:#}` does not print it twice.)
    #[error("{action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A configuration file or override was invalid.
    #[error("config: {0}")]
    Config(String),
    /// Corpus, tokenizer or packed token data was missing or malformed.
    #[error("data: {0}")]
    Data(String),
    /// A tokenizer could not be trained, loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A checkpoint was missing, corrupt or incompatible.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// An argument was out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Training diverged (NaN or Inf).
    #[error("non-finite {what} at step {step}")]
    NonFinite { what: &'static str, step: u64 },
    /// An external program (pip, npm, tar) was missing or failed.
    #[error("{0}")]
    External(String),
    /// An evaluation model (SmolLM2 GGUF, MiniLM) was missing, corrupt or unusable.
    #[error("eval model: {0}")]
    EvalModel(String),
    /// The server could not start or run (`idlm serve`).
    #[error("serve: {0}")]
    Serve(String),
}

/// Result alias for the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wrap an I/O error with the action and path it concerned.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            cause: source,
        }
    }

    /// A checkpoint error for `path`.
    pub fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
