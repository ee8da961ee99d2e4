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
    /// A tensor to be written or read holds NaN or Inf (named, with where it was going or came
    /// from): nothing non-finite is written into a checkpoint, nor loaded from one.
    #[error("{path}: tensor '{tensor}' holds NaN or Inf")]
    NonFiniteTensor { path: PathBuf, tensor: String },
    /// A result (validation, evaluation) came out NaN or Inf: it is not written.
    #[error("{what} is not finite ({value})")]
    NonFiniteValue { what: String, value: f64 },
    /// A checkpoint file does not match the checksum its meta.json recorded: it was truncated or
    /// changed after it was written.
    #[error(
        "checkpoint file {path} is corrupt: {what} {actual}, meta.json records {expected} (truncated or modified after it was written)"
    )]
    Checksum {
        path: PathBuf,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// Another process holds the run folder's lock (`idlm train` / `idlm distill` on the same
    /// folder).
    #[error("{dir} is in use by another idlm process ({}): wait for it to end or stop it; a killed process releases it by itself", pid_text(.pid))]
    RunLocked { dir: PathBuf, pid: Option<u32> },
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

fn pid_text(pid: &Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_string(),
    }
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
