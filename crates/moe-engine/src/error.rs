//! The engine's typed error: every variant names the problem, and `hint` says how to fix it.

use std::path::PathBuf;

/// Errors returned by the engine. Display gives one line: the problem, then the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {what}; {hint}")]
    Config { what: String, hint: String },
    #[error("unknown preset `{name}`; choose one of: {choices}")]
    UnknownPreset { name: String, choices: String },
    #[error("corpus problem: {what}; {hint}")]
    Corpus { what: String, hint: String },
    #[error(
        "{path}: not valid UTF-8 (first bad byte at offset {offset}); convert it to UTF-8 or leave it out of --data"
    )]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("tokenizer: {what}; {hint}")]
    Tokenizer { what: String, hint: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("checkpoint {path}: {what}; {hint}")]
    Checkpoint { path: PathBuf, what: String, hint: String },
    #[error("checkpoint {path}: tensor `{tensor}` has shape {found:?}, the config expects {expected:?}; the weights do not belong to this config")]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("training stopped at step {step}: {in_a_row} steps in a row had a non-finite loss or gradient (loss {loss}, gradient norm {grad_norm}); their updates were skipped, so the last checkpoint holds the last good weights; lower --lr, raise --warmup or check the data, then --resume")]
    NonFinite { step: u64, in_a_row: u64, loss: f64, grad_norm: f64 },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
    pub(crate) fn config(what: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Config { what: what.into(), hint: hint.into() }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, what: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Checkpoint { path: path.into(), what: what.into(), hint: hint.into() }
    }
}
