//! moe inference: run Hugging Face MoE checkpoints (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3,
//! Granite-MoE, PhiMoE, gpt-oss) from their safetensors, and llama.cpp GGUF files of Mixtral,
//! Qwen2/3-MoE and OLMoE, memory-mapped, with their tokenizer and chat template.

pub mod attention;
pub mod bench;
pub mod config;
pub mod error;
pub mod expert_cache;
pub mod fdot;
pub mod from_moe;
pub mod from_moe_gguf;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_tokenizer;
pub mod gguf_write;
pub mod hf_train;
pub mod linear;
pub mod load;
pub mod mla;
pub mod model;
pub mod moe;
pub mod npy;
pub mod qdot;
pub mod qgemm;
pub mod quants;
pub mod sizes;
pub mod store;
pub mod weight;

pub use error::{Error, Result};
pub use model::{Cache, Model, Seq};
