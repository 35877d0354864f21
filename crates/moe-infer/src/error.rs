//! Typed errors of the inference crate. Each names the file and tensor at fault and how to fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{dir}: no tensor `{name}` in any shard; the checkpoint is incomplete or not the architecture config.json names")]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, the config needs {want:?}; config.json and weights disagree")]
    Shape { path: PathBuf, name: String, got: Vec<usize>, want: Vec<usize> },
    #[error("{path}: tensor `{name}` has dtype {dtype}, supported are F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K (and U8 MXFP4 expert blocks); requantise a GGUF file with llama-quantize to one of them")]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Input(String),
    /// From the shared parts (tokenizer, chat template, checkpoints): they name the problem.
    #[error(transparent)]
    Engine(#[from] moe_engine::error::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attaches a path to an io::Error.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
