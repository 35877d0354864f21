//! A Hugging Face MoE model at inference: weights memory-mapped from the checkpoint, a KV
//! cache, and the forward pass of every supported architecture (one sequence, or a batch of
//! sequences that share every weight read).

use crate::attention::{attend, Dims};
use crate::config::{Act, Norm, QkNorm, Spec};
use crate::error::{Error, Result};
use crate::expert_cache::{CacheStats, ExpertCache};
use crate::load::{load, Attn, FfnW, Layer, NormW, Weights};
use crate::moe::{experts_forward, route, ExpertLoad, Routing};
use crate::store::TensorStore;
use crate::weight::Quant;
use moe_engine::dist::Comm;
use moe_kernels::float::dot;
use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub struct Model {
    pub spec: Spec,
    pub store: TensorStore,
    pub w: Weights,
    /// Expert parallelism: the ranks that hold the other experts (see `shard_experts`).
    pub ep: Option<Arc<dyn Comm>>,
    /// A memory budget for the experts (see `set_max_memory`).
    pub cache: Option<Mutex<ExpertCache>>,
    /// Counts the tokens routed to each expert when set (see `count_expert_load`).
    pub load: Option<ExpertLoad>,
}

/// Keys and values of every layer for positions 0..len: k [len, G, Dk], v [len, G, Dv], and
/// the tokens they came from.
pub struct Cache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub len: usize,
    pub tokens: Vec<u32>,
}

/// One sequence of a batched forward: its new tokens and its cache.
pub struct Seq<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut Cache,
}

impl Cache {
    pub fn new(spec: &Spec) -> Self {
        Cache { k: vec![vec![]; spec.layers], v: vec![vec![]; spec.layers], len: 0, tokens: vec![] }
    }

    /// A cache that holds `tokens` positions without reallocating (its memory is allocated
    /// up front: what a server reserves for a sequence is what it uses).
    pub fn with_capacity(spec: &Spec, tokens: usize) -> Self {
        let (k, v) = Self::floats_per_token(spec);
        Cache {
            k: (0..spec.layers).map(|_| Vec::with_capacity(tokens * k)).collect(),
            v: (0..spec.layers).map(|_| Vec::with_capacity(tokens * v)).collect(),
            len: 0,
            tokens: Vec::with_capacity(tokens),
        }
    }

    /// Floats of keys and of values one position adds to one layer: [G, Dk] and [G, Dv], or
    /// MLA's latent row [kv_lora + rope] (in `k`; see `mla`).
    fn floats_per_token(spec: &Spec) -> (usize, usize) {
        match spec.mla {
            Some(m) => (m.kv_lora + m.rope, 0),
            None => (spec.kv_heads * spec.head_dim, spec.kv_heads * spec.v_dim),
        }
    }

    /// Bytes one position takes in every layer.
    pub fn bytes_per_token(spec: &Spec) -> usize {
        let (k, v) = Self::floats_per_token(spec);
        4 * spec.layers * (k + v)
    }
    fn clear(&mut self) {
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(|x| x.clear());
        self.len = 0;
        self.tokens.clear();
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.k.iter().chain(&self.v).map(|x| x.len()).sum::<usize>()
    }
}

impl Model {
    /// Opens a checkpoint directory (config.json and the safetensors shards) or a GGUF file,
    /// memory-mapped.
    pub fn load(dir: &Path) -> Result<Model> {
        let (spec, store) = if crate::gguf_model::is_gguf(dir) {
            let (config, store) = crate::gguf_model::open(dir)?;
            (Spec::parse(&config, dir)?, store)
        } else {
            (Spec::from_dir(dir)?, TensorStore::open(dir)?)
        };
        let w = load(&store, &spec)?;
        Ok(Model { spec, store, w, ep: None, cache: None, load: None })
    }

    /// Keeps the weights within `max_bytes`: the shared weights stay resident and the experts
    /// share what is left as a cache (see `expert_cache`). Returns the experts' budget. The KV
    /// cache and activations come on top.
    pub fn set_max_memory(&mut self, max_bytes: u64) -> Result<u64> {
        let experts = self.w.layers.iter().filter_map(|l| match &l.ffn {
            FfnW::Moe(m) => Some(m.experts.iter().flatten()),
            FfnW::Dense(_) => None,
        });
        if experts.flatten().flat_map(|e| e.weights()).any(|w| !w.is_mapped()) {
            return Err(Error::Input(
                "--max-memory keeps experts memory-mapped; it cannot be combined with --quant (a Q8_0 or Q4_0 GGUF file is mapped and works)".into(),
            ));
        }
        let mut cache = ExpertCache::new(&self.w, 0);
        let total: u64 = self.store.entries.values().map(|e| (e.end - e.start) as u64).sum();
        let shared = total.saturating_sub(cache.expert_bytes());
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        if max_bytes <= shared {
            return Err(Error::Input(format!(
                "--max-memory {:.2} GiB does not hold the shared (non-expert) weights, {:.2} GiB; raise it",
                gib(max_bytes),
                gib(shared)
            )));
        }
        let budget = max_bytes - shared;
        cache.budget = budget;
        self.cache = Some(Mutex::new(cache));
        Ok(budget)
    }

    /// From now on, counts the tokens routed to each expert of each MoE layer (`self.load`).
    pub fn count_expert_load(&mut self) {
        let moe_layers = self.w.layers.iter().filter(|l| matches!(l.ffn, FfnW::Moe(_))).count();
        self.load = Some(ExpertLoad::new(moe_layers, self.spec.moe.experts));
    }

    /// The MoE layers before layer `li`.
    fn moe_index(&self, li: usize) -> usize {
        self.w.layers[..li].iter().filter(|l| matches!(l.ffn, FfnW::Moe(_))).count()
    }

    /// What the expert cache did so far (None without a memory budget).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).stats)
    }

    /// Keeps only this rank's experts of every MoE layer (rank r of P holds experts
    /// [r*E/P, (r+1)*E/P); the others are dropped before their memory-mapped pages are ever
    /// read, and before quantisation). Every rank runs the same tokens through the replicated
    /// weights and its own experts; the MoE outputs are summed over ranks with one all-reduce
    /// per layer.
    pub fn shard_experts(&mut self, comm: Arc<dyn Comm>) -> Result<()> {
        let (p, r, e) = (comm.size(), comm.rank(), self.spec.moe.experts);
        if e == 0 || !e.is_multiple_of(p) {
            return Err(Error::Input(format!(
                "{e} experts cannot be split evenly over {p} ranks; use a rank count that divides the experts"
            )));
        }
        for l in &mut self.w.layers {
            if let FfnW::Moe(m) = &mut l.ffn {
                for (x, slot) in m.experts.iter_mut().enumerate() {
                    if x / (e / p) != r {
                        *slot = None;
                    }
                }
            }
        }
        self.ep = Some(comm);
        Ok(())
    }

    /// Quantises the weight matrices in memory (see `Weights::linears_mut`); matrices whose
    /// width is not a multiple of 32 stay as they are. `progress(done, total)` is called with
    /// bytes of source weights processed. Returns the bytes now held in memory.
    pub fn quantize(&mut self, kind: Quant, progress: &mut dyn FnMut(u64, u64)) -> usize {
        let mut lins = self.w.linears_mut();
        let total: u64 = lins.iter().map(|l| l.w.bytes() as u64).sum();
        let (mut done, mut bytes) = (0u64, 0);
        for lin in lins.iter_mut() {
            done += lin.w.bytes() as u64;
            if let Some(q) = lin.w.quantize(kind) {
                bytes += q.bytes();
                lin.w = q;
            }
            progress(done, total);
        }
        bytes
    }

    /// Replaces every weight matrix by its f32 decoding (a quantised model's exact float twin,
    /// to tell quantisation error from kernel error).
    pub fn dequantize(&mut self) {
        for lin in self.w.linears_mut() {
            lin.w = lin.w.dequantize();
        }
    }

    /// Runs `tokens` at positions cache.len.. and appends them to the cache. Returns the logits
    /// [T, V] of every new position when `all`, else [1, V] of the last.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache, all: bool) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&mut [Seq { tokens, cache }], all)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// One step for several sequences at once (continuous batching): each brings its new
    /// tokens (a prompt chunk or one decoded token) and its own cache. Their rows go through
    /// every weight matrix together, so each matrix and each expert is read once per step for
    /// all the rows routed to it; attention runs per sequence against its own cache. Returns
    /// each sequence's logits as `forward` does.
    ///
    /// LongRoPE switches its schedule once a sequence outgrows original_max_position_embeddings;
    /// like transformers' generate, that sequence's cached positions are then recomputed with
    /// the long one.
    pub fn forward_batch(&self, seqs: &mut [Seq], all: bool) -> Result<Vec<Vec<f32>>> {
        for sq in seqs.iter() {
            if sq.tokens.is_empty() {
                return Err(Error::Input("no tokens to run".into()));
            }
            if let Some(&bad) = sq.tokens.iter().find(|&&id| id as usize >= self.spec.vocab) {
                return Err(Error::Input(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.spec.vocab
                )));
            }
        }
        let orig = self.spec.rope.original;
        let mut toks = Vec::with_capacity(seqs.len());
        let mut rerun = vec![0; seqs.len()];
        for (sq, skip) in seqs.iter_mut().zip(&mut rerun) {
            let len = sq.cache.len;
            if self.spec.rope.long.is_some() && len > 0 && len <= orig && len + sq.tokens.len() > orig {
                let mut seq = std::mem::take(&mut sq.cache.tokens);
                *skip = seq.len();
                seq.extend_from_slice(sq.tokens);
                sq.cache.clear();
                toks.push(Cow::Owned(seq));
            } else {
                toks.push(Cow::Borrowed(sq.tokens));
            }
        }
        let mut caches: Vec<&mut Cache> = seqs.iter_mut().map(|sq| &mut *sq.cache).collect();
        let mut out = self.run(&toks, &mut caches, all)?;
        if all {
            for (o, skip) in out.iter_mut().zip(rerun) {
                o.drain(..skip * self.spec.vocab);
            }
        }
        Ok(out)
    }

    /// The forward pass of `toks[i]` at positions caches[i].len.. (rows of all sequences
    /// stacked: x [T, C] with T the sum of their lengths).
    fn run(&self, toks: &[Cow<[u32]>], caches: &mut [&mut Cache], all: bool) -> Result<Vec<Vec<f32>>> {
        let s = &self.spec;
        let c = s.hidden;
        let mut spans = Vec::with_capacity(toks.len());
        let (mut cos, mut sin) = (vec![], vec![]);
        for (tk, cache) in toks.iter().zip(caches.iter()) {
            let row0 = spans.last().map_or(0, |&(r, n)| r + n);
            spans.push((row0, tk.len()));
            let pos0 = cache.len;
            let (cs, sn) = s.rope.tables(pos0, tk.len(), pos0 + tk.len());
            cos.extend(cs);
            sin.extend(sn);
        }
        let t: usize = toks.iter().map(|tk| tk.len()).sum();
        let mut x = vec![0.0f32; t * c];
        for (row, &id) in x.chunks_exact_mut(c).zip(toks.iter().flat_map(|tk| tk.iter())) {
            self.w.embed.row_f32(id as usize, row);
            row.iter_mut().for_each(|v| *v *= s.embed_mult);
        }
        let mut hn = vec![0.0f32; t * c];
        let mut out = vec![0.0f32; t * c];
        for (li, layer) in self.w.layers.iter().enumerate() {
            norm(s, &layer.in_norm, &x, &mut hn);
            self.attention(li, layer, &hn, &spans, caches, (&cos, &sin), &mut out);
            x.iter_mut().zip(&out).for_each(|(a, b)| *a += b * s.residual_mult);
            norm(s, &layer.post_norm, &x, &mut hn);
            self.ffn(li, &hn, t, &mut out)?;
            x.iter_mut().zip(&out).for_each(|(a, b)| *a += b * s.residual_mult);
        }
        for (tk, cache) in toks.iter().zip(caches.iter_mut()) {
            cache.len += tk.len();
            cache.tokens.extend_from_slice(tk);
        }
        // the rows whose logits are wanted: all, or the last of each sequence
        let rows: Vec<(usize, usize)> = spans.iter().map(|&(r, n)| if all { (r, n) } else { (r + n - 1, 1) }).collect();
        let n: usize = rows.iter().map(|r| r.1).sum();
        let mut xs = Vec::with_capacity(n * c);
        for &(r, m) in &rows {
            xs.extend_from_slice(&x[r * c..(r + m) * c]);
        }
        let mut last = vec![0.0; xs.len()];
        norm(s, &self.w.norm, &xs, &mut last);
        let mut logits = vec![0.0; n * s.vocab];
        self.w.lm_head.forward(&last, n, &mut logits);
        if s.logits_div != 1.0 {
            logits.iter_mut().for_each(|v| *v /= s.logits_div);
        }
        let mut rest = &logits[..];
        Ok(rows
            .iter()
            .map(|&(_, m)| {
                let (head, tail) = rest.split_at(m * s.vocab);
                rest = tail;
                head.to_vec()
            })
            .collect())
    }

    /// Attention of the stacked rows x[T, C]: projections over all rows at once, then each
    /// sequence (rows spans[i] = (first row, count)) appends its keys and values to caches[i]
    /// and attends to them. (cos, sin) are the rope tables of every row.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        x: &[f32],
        spans: &[(usize, usize)],
        caches: &mut [&mut Cache],
        (cos, sin): (&[f32], &[f32]),
        out: &mut [f32],
    ) {
        let s = &self.spec;
        let t: usize = spans.iter().map(|sp| sp.1).sum();
        let (nh, g, d, dv) = (s.heads, s.kv_heads, s.head_dim, s.v_dim);
        let half = s.rope.dim / 2;
        let rot = |v: &mut [f32], heads: usize, stride: usize, off: usize| {
            for i in 0..t {
                for hh in 0..heads {
                    let at = (i * heads + hh) * stride + off;
                    s.rope.apply(&mut v[at..at + s.rope.dim], &cos[i * half..][..half], &sin[i * half..][..half]);
                }
            }
        };
        let mut q = vec![0.0; t * nh * d];
        let mut heads_out = vec![0.0; t * nh * dv];
        let (o, sinks) = match &layer.attn {
            Attn::Std { q: qp, k: kp, v: vp, o, q_norm, k_norm, sinks } => {
                let (mut k, mut v) = (vec![0.0; t * g * d], vec![0.0; t * g * d]);
                qp.forward(x, t, &mut q);
                kp.forward(x, t, &mut k);
                vp.forward(x, t, &mut v);
                if let (Some(qn), Some(kn)) = (q_norm, k_norm) {
                    let (qw, kw) = if s.qk_norm == QkNorm::PerHead { (d, d) } else { (nh * d, g * d) };
                    rms_rows(&mut q, qn, qw, s.eps);
                    rms_rows(&mut k, kn, kw, s.eps);
                }
                if let Some(lim) = s.clip_qkv {
                    for a in q.iter_mut().chain(k.iter_mut()).chain(v.iter_mut()) {
                        *a = a.clamp(-lim, lim);
                    }
                }
                rot(&mut q, nh, d, 0);
                rot(&mut k, g, d, 0);
                for (&(r, n), cache) in spans.iter().zip(caches.iter_mut()) {
                    cache.k[li].extend_from_slice(&k[r * g * d..(r + n) * g * d]);
                    cache.v[li].extend_from_slice(&v[r * g * d..(r + n) * g * d]);
                }
                (o, sinks.as_deref())
            }
            Attn::Mla { q_a, q: qp, kv_a, kv_norm, kv_b, o } => {
                let m = s.mla.expect("an MLA layer has an MLA spec");
                match q_a {
                    Some((qa, qn)) => {
                        let mut lat = vec![0.0; t * qa.out];
                        qa.forward(x, t, &mut lat);
                        rms_rows(&mut lat, qn, qa.out, moe_engine::mla::LATENT_NORM_EPS);
                        qp.forward(&lat, t, &mut q);
                    }
                    None => qp.forward(x, t, &mut q),
                }
                let w = m.kv_lora + m.rope;
                let mut ckv = vec![0.0; t * w];
                kv_a.forward(x, t, &mut ckv);
                let mut lat = vec![0.0; t * m.kv_lora];
                for (l, r) in lat.chunks_exact_mut(m.kv_lora).zip(ckv.chunks_exact(w)) {
                    l.copy_from_slice(&r[..m.kv_lora]);
                }
                rms_rows(&mut lat, kv_norm, m.kv_lora, moe_engine::mla::LATENT_NORM_EPS);
                rot(&mut q, nh, d, m.nope);
                rot(&mut ckv, 1, w, m.kv_lora);
                for (&(r, n), cache) in spans.iter().zip(caches.iter_mut()) {
                    for i in r..r + n {
                        cache.k[li].extend_from_slice(&lat[i * m.kv_lora..][..m.kv_lora]);
                        cache.k[li].extend_from_slice(&ckv[i * w + m.kv_lora..][..m.rope]);
                    }
                }
                for (&(r, n), cache) in spans.iter().zip(caches.iter()) {
                    let (qs, hs) = (&q[r * nh * d..(r + n) * nh * d], &mut heads_out[r * nh * dv..(r + n) * nh * dv]);
                    if !crate::mla::expand(&m, n, cache.len) {
                        crate::mla::attend_latent(hs, qs, &cache.k[li], cache.len, n, nh, &m, kv_b, s.attn_scale);
                        continue;
                    }
                    // Nothing cached yet: the new rows' per-head keys [n, H, nope + rope] and
                    // values [n, H, v] from the up-projection.
                    let mut kv = vec![0.0; n * nh * (m.nope + m.v)];
                    kv_b.forward(&lat[r * m.kv_lora..(r + n) * m.kv_lora], n, &mut kv);
                    let (mut k, mut v) = (Vec::with_capacity(n * nh * d), Vec::with_capacity(n * nh * dv));
                    for i in 0..n {
                        for hh in 0..nh {
                            let src = &kv[(i * nh + hh) * (m.nope + m.v)..][..m.nope + m.v];
                            k.extend_from_slice(&src[..m.nope]);
                            k.extend_from_slice(&ckv[(r + i) * w + m.kv_lora..][..m.rope]);
                            v.extend_from_slice(&src[m.nope..]);
                        }
                    }
                    let dims = Dims { t: n, pos0: 0, h: nh, g: nh, dk: d, dv };
                    attend(hs, qs, &k, &v, dims, s.attn_scale, s.windows[li], None);
                }
                o.forward(&heads_out, t, out);
                return;
            }
        };
        for (&(r, n), cache) in spans.iter().zip(caches.iter()) {
            let dims = Dims { t: n, pos0: cache.len, h: nh, g, dk: d, dv };
            let (qs, hs) = (&q[r * nh * d..(r + n) * nh * d], &mut heads_out[r * nh * dv..(r + n) * nh * dv]);
            attend(hs, qs, &cache.k[li], &cache.v[li], dims, s.attn_scale, s.windows[li], sinks);
        }
        o.forward(&heads_out, t, out);
    }

    /// Experts used by the routing `ids` [T*K], in id order.
    fn distinct(ids: &[u32]) -> Vec<usize> {
        let mut used: Vec<usize> = ids.iter().map(|&x| x as usize).collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// The top-k routing of x[T, C] by the router of MoE block `m`.
    fn route_all(&self, m: &crate::load::MoeW, x: &[f32], t: usize) -> Routing {
        let s = &self.spec;
        let (e, k) = (s.moe.experts, s.moe.top_k);
        let mut logits = vec![0.0; t * e];
        m.router.forward(x, t, &mut logits);
        let mut r = Routing { ids: vec![0; t * k], weights: vec![0.0; t * k] };
        for i in 0..t {
            let (ids, w) = (&mut r.ids[i * k..][..k], &mut r.weights[i * k..][..k]);
            route(&s.moe, &logits[i * e..][..e], m.score_bias.as_deref(), ids, w);
        }
        r
    }

    /// The experts of layer `li` to run together: all at once without a memory budget; with one,
    /// the routed experts in groups that fit it, each made resident before it runs (`fetch`).
    /// The next MoE layer's experts, as its router picks them for the same hidden state x[T, C],
    /// are requested ahead.
    fn expert_groups(&self, li: usize, r: &Routing, x: &[f32], t: usize) -> Vec<Option<Vec<usize>>> {
        let Some(cache) = &self.cache else { return vec![None] };
        let mi = self.moe_index(li);
        let next = self.w.layers[li + 1..].iter().find_map(|l| match &l.ffn {
            FfnW::Moe(m) => Some(m),
            FfnW::Dense(_) => None,
        });
        let predicted = next.map(|m| Self::distinct(&self.route_all(m, x, t).ids));
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = predicted {
            c.prefetch(&self.w, mi + 1, &p);
        }
        c.groups(mi, &Self::distinct(&r.ids)).into_iter().map(Some).collect()
    }

    /// Makes `group` of MoE layer `li` resident (with a memory budget).
    fn fetch(&self, li: usize, group: &[usize]) {
        if let Some(cache) = &self.cache {
            cache.lock().unwrap_or_else(|e| e.into_inner()).fetch(&self.w, self.moe_index(li), group);
        }
    }

    fn ffn(&self, li: usize, x: &[f32], t: usize, out: &mut [f32]) -> Result<()> {
        let s = &self.spec;
        let c = s.hidden;
        match &self.w.layers[li].ffn {
            FfnW::Dense(mlp) => mlp.forward(x, t, Act::Swiglu, out),
            FfnW::Moe(m) => {
                let r = self.route_all(m, x, t);
                if let Some(load) = &self.load {
                    load.add(self.moe_index(li), &r.ids);
                }
                out[..t * c].fill(0.0);
                for group in self.expert_groups(li, &r, x, t) {
                    if let Some(g) = &group {
                        self.fetch(li, g);
                    }
                    experts_forward(&s.moe, &m.experts, x, t, &r, group.as_deref(), out);
                }
                if let Some(comm) = &self.ep {
                    comm.all_reduce_sum_f32(&mut out[..t * c])
                        .map_err(|e| Error::Input(format!("expert-parallel all-reduce failed: {e}")))?;
                }
                if let Some(sh) = &m.shared {
                    let mut y = vec![0.0; t * c];
                    sh.forward(x, t, Act::Swiglu, &mut y);
                    let mut gate = vec![1.0; t];
                    if let Some(g) = &m.shared_gate {
                        g.forward(x, t, &mut gate);
                        gate.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
                    }
                    for ((o, yr), gv) in out.chunks_exact_mut(c).zip(y.chunks_exact(c)).zip(&gate) {
                        o.iter_mut().zip(yr).for_each(|(a, b)| *a += gv * b);
                    }
                }
            }
        }
        Ok(())
    }
}

/// y = norm(x) row by row (RMSNorm, or LayerNorm with bias).
fn norm(s: &Spec, n: &NormW, x: &[f32], y: &mut [f32]) {
    let c = n.w.len();
    for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let (mean, var) = match s.norm {
            Norm::Rms => (0.0, dot(xr, xr) / c as f32),
            Norm::Layer => {
                let m = xr.iter().sum::<f32>() / c as f32;
                (m, xr.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / c as f32)
            }
        };
        let r = 1.0 / (var + s.eps as f32).sqrt();
        for (i, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            *o = (v - mean) * r * n.w[i] + n.b.as_ref().map_or(0.0, |b| b[i]);
        }
    }
}

/// In-place RMSNorm over rows of width `w`.
fn rms_rows(x: &mut [f32], n: &NormW, w: usize, eps: f64) {
    for row in x.chunks_exact_mut(w) {
        let r = 1.0 / (dot(row, row) / w as f32 + eps as f32).sqrt();
        row.iter_mut().zip(&n.w).for_each(|(v, g)| *v = *v * r * g);
    }
}
