//! What the server did, for GET /metrics in the Prometheus text format: requests, tokens in and
//! out, batch size, queue length, KV-cache and expert-cache use, and the per-layer expert load
//! of the traffic served.

use moe_infer::Model;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    /// Requests accepted into the queue, and answered with an error (4xx/5xx).
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Forward steps run, and the sequences and token rows of the last one.
    pub steps: AtomicU64,
    pub batch_sequences: AtomicU64,
    /// The most sequences any step ran.
    pub peak_batch: AtomicU64,
    pub batch_rows: AtomicU64,
    pub step_seconds_micros: AtomicU64,
    /// Requests waiting for a slot (counted when the HTTP side queues them, so the queue cap is
    /// exact), and sequences running.
    pub queued: AtomicU64,
    pub running: AtomicU64,
    pub kv_used_bytes: AtomicU64,
    pub kv_capacity_bytes: AtomicU64,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Relaxed);
    }

    /// The Prometheus text exposition of the counters and of `model`'s caches and load.
    pub fn render(&self, model: &Model) -> String {
        let mut s = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP moe_{name} {help}\n# TYPE moe_{name} {kind}\nmoe_{name} {v}");
        };
        let g = |c: &AtomicU64| c.load(Relaxed) as f64;
        one("requests_total", "counter", "Requests accepted.", g(&self.requests));
        one("requests_rejected_total", "counter", "Requests answered with an error.", g(&self.rejected));
        one(
            "requests_cancelled_total",
            "counter",
            "Sequences dropped when their client disconnected.",
            g(&self.cancelled),
        );
        one("prompt_tokens_total", "counter", "Prompt tokens processed.", g(&self.prompt_tokens));
        one("completion_tokens_total", "counter", "Tokens generated.", g(&self.completion_tokens));
        one("steps_total", "counter", "Forward steps run.", g(&self.steps));
        one("step_seconds_total", "counter", "Time spent in forward steps.", g(&self.step_seconds_micros) * 1e-6);
        one("batch_sequences", "gauge", "Sequences in the last step.", g(&self.batch_sequences));
        one("batch_sequences_peak", "gauge", "Most sequences in one step so far.", g(&self.peak_batch));
        one("batch_rows", "gauge", "Token rows in the last step.", g(&self.batch_rows));
        one("queue_length", "gauge", "Requests waiting for a slot.", g(&self.queued));
        one("running_sequences", "gauge", "Sequences being generated.", g(&self.running));
        one("kv_cache_used_bytes", "gauge", "KV-cache bytes reserved by running sequences.", g(&self.kv_used_bytes));
        one("kv_cache_capacity_bytes", "gauge", "KV-cache cap.", g(&self.kv_capacity_bytes));
        if let Some(c) = model.cache_stats() {
            one("expert_cache_hits_total", "counter", "Expert-cache hits.", c.hits as f64);
            one("expert_cache_misses_total", "counter", "Expert-cache misses.", c.misses as f64);
            one("expert_cache_read_bytes_total", "counter", "Expert bytes read into the cache.", c.bytes_read as f64);
        }
        if let Some(load) = &model.load {
            let _ = writeln!(s, "# HELP moe_expert_tokens_total Tokens routed to each expert of each MoE layer.");
            let _ = writeln!(s, "# TYPE moe_expert_tokens_total counter");
            for (l, row) in load.snapshot().iter().enumerate() {
                for (e, n) in row.iter().enumerate() {
                    let _ = writeln!(s, "moe_expert_tokens_total{{layer=\"{l}\",expert=\"{e}\"}} {n}");
                }
            }
        }
        s
    }
}
