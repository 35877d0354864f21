//! The scheduler (continuous batching): one thread owns the model and runs it step by step.
//! Each step takes every running sequence's next token plus chunks of the prompts being
//! prefilled (at most `prefill_chunk` prompt tokens per step, so long prompts do not stall the
//! streams that are running) through one `Model::forward_batch`, which reads each weight matrix
//! and each expert once for all the rows routed to it. Requests join at any step when a slot
//! and their KV-cache blocks are free and wait in a FIFO queue otherwise; a sequence leaves when
//! it finishes or its client goes away (its receiver is dropped), and its blocks are freed.

use crate::kv::{KvPool, BLOCK};
use crate::metrics::Metrics;
use moe_engine::generate::{sample, Sampling};
use moe_engine::rng::Rng;
use moe_engine::text::TextStream;
use moe_engine::tokenizer::Tokenizer;
use moe_infer::{Cache, Model, Seq};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// One generation to run.
pub struct Request {
    pub prompt: Vec<u32>,
    /// prompt.len() + max_tokens fits the context and the KV pool (checked by the caller).
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Generate max_tokens even past end-of-sequence tokens (for load tests).
    pub ignore_eos: bool,
    pub events: UnboundedSender<Event>,
}

/// What a request hears back, in order: text pieces, then Done or Failed.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize },
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finish {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// max_tokens or the context length.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

pub struct EngineConfig {
    /// Sequences running at once.
    pub parallel: usize,
    /// Positions per sequence.
    pub ctx: usize,
    /// Prompt tokens prefilled per step, over all sequences.
    pub prefill_chunk: usize,
    /// KV-cache cap in bytes.
    pub kv_bytes: u64,
}

/// The handle the HTTP side submits requests through. Dropping every clone ends the thread.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
}

impl Engine {
    /// Starts the scheduler thread.
    pub fn start(
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        eos: Vec<u32>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("moe-scheduler".into()).spawn(move || {
            Scheduler::new(model, tok, eos, cfg, metrics).run(rx);
        })?;
        Ok(Engine { tx })
    }

    /// Queues `r`; false when the scheduler is gone.
    pub fn submit(&self, r: Request) -> bool {
        self.tx.send(r).is_ok()
    }
}

/// What one running sequence feeds the next step.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    Idle,
    Prefill(usize),
    Decode,
}

struct Running {
    req: Request,
    cache: Cache,
    blocks: usize,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The last sampled token (fed by the next decode step) and how many were sampled.
    last: u32,
    generated: usize,
    rng: Rng,
    text: TextStream,
    step: Step,
}

struct Scheduler {
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    eos: Vec<u32>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    pool: KvPool,
    waiting: VecDeque<Request>,
    running: Vec<Running>,
    scratch: Vec<(u32, f64)>,
}

impl Scheduler {
    fn new(model: Arc<Model>, tok: Arc<Tokenizer>, eos: Vec<u32>, cfg: EngineConfig, metrics: Arc<Metrics>) -> Self {
        let pool = KvPool::new(Cache::bytes_per_token(&model.spec), cfg.kv_bytes);
        Metrics::set(&metrics.kv_capacity_bytes, pool.total as u64 * pool.block_bytes);
        Scheduler { model, tok, eos, cfg, metrics, pool, waiting: VecDeque::new(), running: vec![], scratch: vec![] }
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(r) => self.waiting.push_back(r),
                    Err(_) => return,
                }
            }
            self.waiting.extend(rx.try_iter());
            self.drop_cancelled();
            self.admit();
            self.gauges();
            if !self.running.is_empty() {
                self.step();
                self.gauges();
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len() + self.running.len();
        let waiting = self.waiting.len();
        self.waiting.retain(|r| !r.events.is_closed());
        self.metrics.queued.fetch_sub((waiting - self.waiting.len()) as u64, Relaxed);
        let pool = &mut self.pool;
        self.running.retain(|s| {
            let keep = !s.req.events.is_closed();
            if !keep {
                pool.give(s.blocks);
            }
            keep
        });
        let gone = before - self.waiting.len() - self.running.len();
        Metrics::add(&self.metrics.cancelled, gone as u64);
    }

    /// Moves waiting requests into free slots, first come first served, while their KV blocks fit.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.parallel {
            let Some(r) = self.waiting.front() else { break };
            let blocks = KvPool::blocks_for(r.prompt.len() + r.max_tokens);
            if !self.pool.try_take(blocks) {
                if self.running.is_empty() {
                    // larger than the whole pool: the HTTP side checks this, so it cannot wait forever
                    if let Some(r) = self.waiting.pop_front() {
                        self.metrics.queued.fetch_sub(1, Relaxed);
                        let _ = r.events.send(Event::Failed("the request does not fit the KV-cache cap".into()));
                    }
                    continue;
                }
                break;
            }
            let Some(req) = self.waiting.pop_front() else { break };
            self.metrics.queued.fetch_sub(1, Relaxed);
            Metrics::add(&self.metrics.prompt_tokens, req.prompt.len() as u64);
            self.running.push(Running {
                cache: Cache::with_capacity(&self.model.spec, blocks * BLOCK),
                blocks,
                fed: 0,
                last: 0,
                generated: 0,
                rng: Rng::new(req.sampling.seed),
                text: TextStream::new(req.stop.clone()).after(req.prompt.last().copied()),
                step: Step::Idle,
                req,
            });
        }
    }

    fn gauges(&self) {
        Metrics::set(&self.metrics.running, self.running.len() as u64);
        Metrics::set(&self.metrics.kv_used_bytes, self.pool.used as u64 * self.pool.block_bytes);
    }

    /// One forward over every running sequence, then sampling and streaming.
    fn step(&mut self) {
        let mut budget = self.cfg.prefill_chunk.max(1);
        for s in &mut self.running {
            s.step = if s.fed < s.req.prompt.len() {
                let n = budget.min(s.req.prompt.len() - s.fed);
                budget -= n;
                if n == 0 {
                    Step::Idle
                } else {
                    Step::Prefill(n)
                }
            } else {
                Step::Decode
            };
        }
        let t0 = Instant::now();
        let model = Arc::clone(&self.model);
        let result = {
            let mut seqs: Vec<Seq> = self
                .running
                .iter_mut()
                .filter_map(|s| match s.step {
                    Step::Idle => None,
                    Step::Prefill(n) => Some(Seq { tokens: &s.req.prompt[s.fed..s.fed + n], cache: &mut s.cache }),
                    Step::Decode => Some(Seq { tokens: std::slice::from_ref(&s.last), cache: &mut s.cache }),
                })
                .collect();
            Metrics::set(&self.metrics.batch_sequences, seqs.len() as u64);
            self.metrics.peak_batch.fetch_max(seqs.len() as u64, Relaxed);
            Metrics::set(&self.metrics.batch_rows, seqs.iter().map(|q| q.tokens.len() as u64).sum());
            catch_unwind(AssertUnwindSafe(|| model.forward_batch(&mut seqs, false)))
        };
        Metrics::add(&self.metrics.steps, 1);
        Metrics::add(&self.metrics.step_seconds_micros, t0.elapsed().as_micros() as u64);
        let logits = match result {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.fail_step(&e.to_string()),
            Err(_) => return self.fail_step("internal error: the forward step panicked"),
        };
        let mut done = vec![];
        let stepped = self.running.iter_mut().enumerate().filter(|(_, s)| s.step != Step::Idle);
        for ((i, s), lg) in stepped.zip(logits) {
            if let Step::Prefill(n) = s.step {
                s.fed += n;
                if s.fed < s.req.prompt.len() {
                    continue;
                }
            }
            let next = sample(&lg, &s.req.sampling, &mut s.rng, &mut self.scratch);
            s.last = next;
            s.generated += 1;
            Metrics::add(&self.metrics.completion_tokens, 1);
            let finish = if !s.req.ignore_eos && self.eos.contains(&next) {
                Some(Finish::Stop)
            } else {
                match s.text.push(&self.tok, next) {
                    Ok((piece, stopped)) => {
                        // one event per token, empty while the text is incomplete (as llama-server
                        // and OpenAI stream), so clients see every token's timing
                        let _ = s.req.events.send(Event::Text(piece));
                        if stopped {
                            Some(Finish::Stop)
                        } else if s.generated >= s.req.max_tokens || s.cache.len + 1 > self.cfg.ctx {
                            Some(Finish::Length)
                        } else {
                            None
                        }
                    }
                    Err(e) => {
                        let _ = s.req.events.send(Event::Failed(format!("detokenising failed: {e}")));
                        done.push(i);
                        continue;
                    }
                }
            };
            if let Some(finish) = finish {
                let rest = s.text.finish();
                if !rest.is_empty() {
                    let _ = s.req.events.send(Event::Text(rest));
                }
                let (prompt_tokens, completion_tokens) = (s.req.prompt.len(), s.generated);
                let _ = s.req.events.send(Event::Done { finish, prompt_tokens, completion_tokens });
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let s = self.running.remove(i);
            self.pool.give(s.blocks);
        }
    }

    /// A step failed: its sequences end with `msg`; the others keep running.
    fn fail_step(&mut self, msg: &str) {
        let pool = &mut self.pool;
        self.running.retain(|s| {
            if s.step == Step::Idle {
                return true;
            }
            let _ = s.req.events.send(Event::Failed(msg.to_string()));
            pool.give(s.blocks);
            false
        });
    }
}
