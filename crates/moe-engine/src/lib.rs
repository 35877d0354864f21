//! moe engine: configuration, parameters, the dense and MoE feed-forward blocks, the model,
//! training, inference, checkpoints and data. Kernels live in `moe-kernels`; the command line
//! lives in the `moe` binary.

pub mod bench;
pub mod chat_data;
pub mod chat_template;
pub mod checkpoint;
pub mod checksum;
pub mod clock;
pub mod compare;
pub mod config;
pub mod contain;
pub mod corpus;
pub mod dataset;
pub mod dist;
pub mod error;
pub mod ffn;
pub mod generate;
pub mod inspect;
pub mod layer;
pub mod linear;
pub mod lora;
pub mod mla;
pub mod model;
pub mod moe;
pub mod nonfinite;
pub mod norm;
pub mod packed;
pub mod params;
pub mod plan;
pub mod plot;
pub mod precision;
pub mod qkv;
pub mod rebalance;
pub mod registry;
pub mod replicas;
pub mod report;
pub mod rng;
pub mod rope;
pub mod routes;
pub mod run;
pub mod rustdocs;
pub mod st_write;
pub mod text;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
