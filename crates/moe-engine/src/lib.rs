//! moe engine
