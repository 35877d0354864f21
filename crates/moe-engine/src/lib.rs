//! moe engine: configuration, parameters, the dense and MoE feed-forward blocks, the model,
//! training, inference, checkpoints and data. Kernels live in `moe-kernels`; the command line
//! lives in the `moe` binary.

pub mod config;
pub mod error;
pub mod ffn;
pub mod model;
pub mod moe;
pub mod params;
pub mod rng;

pub use error::{Error, Result};
