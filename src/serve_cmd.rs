//! `moe serve`: the OpenAI-compatible HTTP server (crates/moe-serve) over a Hugging Face model
//! directory, a GGUF file or a checkpoint trained here, on loopback unless told otherwise.

use crate::{args, hf};
use anyhow::{bail, Context, Result};
use clap::Args;
use moe_infer::generate::eos_ids;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// A Hugging Face model directory, or a llama.cpp GGUF file (its embedded tokenizer, or a tokenizer.json beside it).
    #[arg(long, required_unless_present = "checkpoint", conflicts_with = "checkpoint")]
    model: Option<PathBuf>,
    /// A model trained here: a checkpoint or run directory (its latest checkpoint), in any form
    /// `moe export` writes (Mixtral, Qwen2-MoE with shared experts and dense layers, OLMoE,
    /// Qwen3-MoE, GraniteMoE, dense Llama/Qwen2) or with the default preset's selection bias.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Directory of the tokenizer.json (default: the model directory; for a GGUF file, a tokenizer.json beside it, else the one embedded in the file).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The model id clients send (default: the directory or file name).
    #[arg(long)]
    alias: Option<String>,
    /// Address to listen on. Loopback by default: pass 0.0.0.0 only behind a firewall, with --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Quantise the weight matrices on load: q8_0 or q4_0.
    #[arg(long, value_parser = ["q8_0", "q4_0"])]
    quant: Option<String>,
    /// Keep the weights within this much memory (e.g. 4GiB); experts are read on demand (see generate).
    #[arg(long, value_parser = args::parse_size)]
    max_memory: Option<u64>,
    /// Sequences generated at once (continuous batching: requests join and leave every step).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Positions per sequence, prompt plus completion (capped at the model's context).
    #[arg(long, default_value_t = 4096)]
    ctx_size: usize,
    /// KV-cache cap (e.g. 2GiB; default: --parallel sequences of --ctx-size positions).
    /// Requests whose prompt plus max_tokens do not fit wait in the queue.
    #[arg(long, value_parser = args::parse_size)]
    kv_memory: Option<u64>,
    /// Prompt tokens prefilled per step, between the decode steps of running sequences (larger:
    /// more throughput under load, longer pauses of running streams while a prompt is read).
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Requests that may wait for a slot; beyond it new requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every request (401 otherwise).
    #[arg(long, env = "MOE_API_KEY")]
    api_key: Option<String>,
    /// Largest request body (413 above).
    #[arg(long, default_value = "1MiB", value_parser = args::parse_size)]
    max_body: u64,
    /// Multiply prompt chunks in bf16 (AMX or AVX512-BF16), as generate --bf16.
    #[arg(long)]
    bf16: bool,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    if a.bf16 {
        crate::enable_bf16()?;
    }
    // a checkpoint of ours is written in the inference layout to a private directory, loaded
    // (memory-mapped) and the directory removed: the mapping keeps the data
    let (path, scratch) = match (&a.model, &a.checkpoint) {
        (Some(m), _) => (m.clone(), None),
        (None, Some(c)) => {
            let ck = moe_engine::lora::merge_checkpoint(moe_engine::checkpoint::load(c)?);
            let dir = std::env::temp_dir().join(format!("moe-serve-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            moe_infer::from_moe::write_hf(&ck, &dir, true)?;
            (dir.clone(), Some(dir))
        }
        (None, None) => bail!("pass --model DIR_OR_GGUF or --checkpoint RUN_DIR"),
    };
    let loaded = (|| -> Result<_> {
        let mut model = hf::load(&path, a.quant.as_deref(), None)?;
        if let Some(max) = a.max_memory {
            model.set_max_memory(max)?;
        }
        let tok = hf::tokenizer(&path, a.tokenizer.as_deref())?;
        let eos = eos_ids(&hf::tokenizer_dir(&path, a.tokenizer.as_deref()), &model, &tok);
        Ok((model, tok, eos))
    })();
    if let Some(d) = scratch {
        let _ = std::fs::remove_dir_all(d);
    }
    let (model, tok, eos) = loaded?;
    let named = a.checkpoint.as_ref().map_or(&path, |c| c);
    let name = a.alias.clone().unwrap_or_else(|| {
        let stem = if named.is_file() { named.file_stem() } else { named.file_name() };
        stem.map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });
    let opts = moe_serve::ServeOptions {
        name: name.clone(),
        parallel: a.parallel,
        ctx: a.ctx_size,
        prefill_chunk: a.prefill_chunk,
        kv_bytes: a.kv_memory,
        max_queue: a.max_queue,
        api_key: a.api_key.clone(),
        max_body: a.max_body as usize,
    };
    let router = moe_serve::app(model, tok, eos, opts).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => bail!("cannot listen on {addr}: {e}; pick another --port"),
        };
        let local = listener.local_addr()?;
        eprintln!("serving `{name}` on http://{local}/v1 (OpenAI API; Ctrl-C or SIGTERM stops)");
        if a.api_key.is_none() && !local.ip().is_loopback() {
            eprintln!("warning: listening on {} without --api-key: anyone who reaches it can use it", local.ip());
        }
        let stop = async {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
            eprintln!("stopping: finishing the requests in flight");
        };
        moe_serve::serve(listener, router, stop).await.context("serving")
    })
}
