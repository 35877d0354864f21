//! y = x W^T + b over a memory-mapped weight of any dtype. F32 weights are multiplied in place;
//! block-quantised weights take the int8 GEMM (`qgemm`) from 8 or 16 tokens on where it is
//! built; a few tokens take dot products of the rows in place; the others are decoded in panels
//! of rows into a small per-thread buffer and multiplied panel by panel, so the weights are never
//! copied whole.

use crate::qdot::{Lanes, Q8Row};
use crate::qgemm;
use crate::weight::{quantize_q8_row, Weight};
use moe_kernels::matmul::{matmul, matmul_strided, Mat};
use rayon::prelude::*;
use std::cell::RefCell;

/// Up to this many tokens, products read each weight row once as dot products (decoding).
const DOT_ROWS: usize = 4;
/// The same for weights that are decoded (quantised, bf16): up to this many rows (a batched
/// decode step, a short prompt) dot products in place beat decoding panels to f32, measured
/// with `moe serve` on the 1 B Mixtral-shaped Q8_0 and bf16 files (docs/serving.md).
const DOT_ROWS_DECODED: usize = 64;

/// Tokens per pass over a chunk of weight rows in `dot_rows` (their laid-out activations,
/// about 6 KiB per token at width 1024, stay in L2 while the rows pass).
const TOKEN_BLOCK: usize = 8;

/// Floats decoded per panel (256 KiB).
const PANEL: usize = 1 << 16;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone)]
pub struct Linear {
    pub w: Weight,
    /// false: w is [out, in] (nn.Linear); true: w is [in, out] (gpt-oss experts).
    pub transposed: bool,
    pub bias: Option<Vec<f32>>,
    pub inp: usize,
    pub out: usize,
}

impl Linear {
    pub fn new(w: Weight, bias: Option<Vec<f32>>) -> Self {
        let (out, inp) = (w.rows, w.cols);
        Linear { w, transposed: false, bias, inp, out }
    }
    pub fn transposed(w: Weight, bias: Option<Vec<f32>>) -> Self {
        let (inp, out) = (w.rows, w.cols);
        Linear { w, transposed: true, bias, inp, out }
    }

    /// y[n, out] = x[n, inp] W^T (+ b).
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (i, o) = (self.inp, self.out);
        let (x, y) = (&x[..n * i], &mut y[..n * o]);
        let par = n * i * o > 1 << 18;
        match (self.w.as_f32(), self.transposed) {
            (None, false) if n >= qgemm::min_tokens(self.w.dtype) => qgemm::forward(&self.w, x, n, y),
            (None, false) if n <= DOT_ROWS_DECODED => self.dot_rows(x, n, y),
            (_, false) if n <= DOT_ROWS => self.dot_rows(x, n, y),
            (Some(w), false) => matmul(y, Mat::new(x, n, i), Mat::new(w, o, i).t(), false, par),
            (Some(w), true) => matmul(y, Mat::new(x, n, i), Mat::new(w, i, o), false, par),
            (None, false) => self.panels_out(x, n, y, par),
            (None, true) => self.panels_in(x, n, y, par),
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(o) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
    }

    /// A few tokens (decoding, short prompts): weight rows are read in place and dotted with
    /// every token; chunks of output rows are split over the threads, and each chunk passes
    /// over the tokens in blocks of `TOKEN_BLOCK`. Types with integer kernels take the tokens
    /// quantised to Q8_0 blocks (laid out once for the pair kernels where the type has one),
    /// four, two or one per kernel call; one token (any type) and the super-block types (any
    /// count) take a chunk's rows per kernel call and token instead.
    pub fn dot_rows(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (i, o) = (self.inp, self.out);
        const CHUNK: usize = 64;
        let q8 = self.w.dtype.has_q8_dot();
        let (mut xq, mut xd) = (vec![0i8; if q8 { n * i } else { 0 }], vec![0.0f32; if q8 { n * i / 32 } else { 0 }]);
        if q8 {
            for tok in 0..n {
                let r = tok * i..(tok + 1) * i;
                quantize_q8_row(&x[r.clone()], &mut xq[r], &mut xd[tok * i / 32..(tok + 1) * i / 32]);
            }
        }
        let xs = crate::qdot::block_sums(&xq);
        let lanes: Vec<Lanes> = match (q8, self.w.dtype.lane_kind()) {
            (true, kind) => (0..n)
                .map(|tok| {
                    let b = tok * i / 32..(tok + 1) * i / 32;
                    let row = Q8Row { xq: &xq[tok * i..(tok + 1) * i], xd: &xd[b.clone()], xs: &xs[b] };
                    match kind {
                        Some(k) => Lanes::new(row, k),
                        None => Lanes::plain(row),
                    }
                })
                .collect(),
            (false, _) => Vec::new(),
        };
        let mut t = vec![0.0f32; n * o]; // [o, n], so parallel chunks are contiguous
        let runs = q8 && (n == 1 || self.w.dtype.super_block().is_some());
        t.par_chunks_mut(CHUNK * n).enumerate().for_each(|(c, ts)| {
            if runs {
                // the chunk's rows in one kernel call per token (they stay in cache for the next)
                let (mut run, m) = ([0.0f32; CHUNK], ts.len() / n);
                for (tok, l) in lanes.iter().enumerate() {
                    self.w.dot_rows_lanes(c * CHUNK, l, &mut run[..m]);
                    run[..m].iter().enumerate().for_each(|(k, &v)| ts[k * n + tok] = v);
                }
                return;
            }
            // tokens in blocks whose activations stay in cache while the chunk's rows pass
            for t0 in (0..n).step_by(TOKEN_BLOCK) {
                let t1 = (t0 + TOKEN_BLOCK).min(n);
                for (k, tr) in ts.chunks_exact_mut(n).enumerate() {
                    let row = c * CHUNK + k;
                    if !q8 {
                        for (j, v) in tr.iter_mut().enumerate().take(t1).skip(t0) {
                            *v = self.w.dot_row(row, &x[j * i..(j + 1) * i]);
                        }
                        continue;
                    }
                    let mut tok = t0;
                    while tok + 4 <= t1 {
                        let l = &lanes[tok..tok + 4];
                        tr[tok..tok + 4].copy_from_slice(&self.w.dot_row_lanes_n(row, [&l[0], &l[1], &l[2], &l[3]]));
                        tok += 4;
                    }
                    if tok + 2 <= t1 {
                        let l = &lanes[tok..tok + 2];
                        tr[tok..tok + 2].copy_from_slice(&self.w.dot_row_lanes_n(row, [&l[0], &l[1]]));
                        tok += 2;
                    }
                    if tok < t1 {
                        tr[tok] = self.w.dot_row_lanes_n(row, [&lanes[tok]])[0];
                    }
                }
            }
        });
        for tok in 0..n {
            for r in 0..o {
                y[tok * o + r] = t[r * n + tok];
            }
        }
    }

    /// [out, in] weight: panel of output rows -> columns of y (public for the benchmarks that
    /// compare the paths).
    pub fn panels_out(&self, x: &[f32], n: usize, y: &mut [f32], par: bool) {
        let per = (PANEL / self.inp).max(1);
        for o0 in (0..self.out).step_by(per) {
            let m = per.min(self.out - o0);
            with_scratch(m * self.inp, |buf| {
                self.w.rows_f32(o0, buf);
                let b = Mat::new(&buf[..], m, self.inp).t();
                matmul_strided(&mut y[o0..], self.out, Mat::new(x, n, self.inp), b, false, par);
            });
        }
    }

    /// [in, out] weight: panel of input rows, accumulated into y.
    fn panels_in(&self, x: &[f32], n: usize, y: &mut [f32], par: bool) {
        let per = (PANEL / self.out).max(1);
        for i0 in (0..self.inp).step_by(per) {
            let m = per.min(self.inp - i0);
            with_scratch(m * self.out, |buf| {
                self.w.rows_f32(i0, buf);
                let a = Mat { data: &x[i0..], rows: n, cols: m, rs: self.inp, cs: 1 };
                matmul(y, a, Mat::new(&buf[..], m, self.out), i0 > 0, par);
            });
        }
    }
}

/// Runs f on a scratch buffer of `len` floats, reused per thread. The buffer is taken out of
/// the thread slot for the call, so a rayon task stolen while f waits gets its own.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| *s.borrow_mut() = buf);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight::{Dtype, Quant};

    /// Super-block weights (Q4_K, Q6_K) take a chunk's rows per kernel call: each token of a
    /// batch gets exactly what it gets alone, close to the f32 product of the decoded weight.
    #[test]
    fn runs_of_super_block_rows_equal_one_token_at_a_time() {
        let mut rng = moe_engine::rng::Rng::new(5);
        let (rows, cols) = (70, 512); // more than one chunk of 64 rows, 2 super-blocks per row
        for (dtype, bytes, scales) in [(Dtype::Q4K, 144, &[0, 2][..]), (Dtype::Q6K, 210, &[208])] {
            let mut w: Vec<u8> = (0..rows * cols / 256 * bytes).map(|_| (rng.uniform() * 256.0) as u8).collect();
            for blk in w.chunks_exact_mut(bytes) {
                for (k, &at) in scales.iter().enumerate() {
                    let v = half::f16::from_f32(0.01 - 0.004 * k as f32).to_bits().to_le_bytes();
                    blk[at..at + 2].copy_from_slice(&v);
                }
            }
            let q = Weight::from_bytes(w, dtype, rows, cols).unwrap();
            let decoded = Linear::new(q.dequantize(), None);
            let lin = Linear::new(q, None);
            for n in [1, 2, 5] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform() as f32 - 0.5).collect();
                let (mut y, mut want) = (vec![0.0; n * rows], vec![0.0; n * rows]);
                lin.dot_rows(&x, n, &mut y);
                decoded.forward(&x, n, &mut want);
                for t in 0..n {
                    let mut one = vec![0.0; rows];
                    lin.dot_rows(&x[t * cols..(t + 1) * cols], 1, &mut one);
                    assert_eq!(&y[t * rows..(t + 1) * rows], &one[..], "{dtype:?}: token {t} of {n}");
                    // activations rounded to 8 bits per block of 32: each is off by at most half
                    // a step, max |x| / 254 with |x| < 0.5
                    let wf = decoded.w.as_f32().unwrap();
                    for (r, (a, b)) in one.iter().zip(&want[t * rows..(t + 1) * rows]).enumerate() {
                        let bound = wf[r * cols..(r + 1) * cols].iter().map(|v| v.abs()).sum::<f32>() * 0.5 / 254.0;
                        assert!(
                            (a - b).abs() <= bound + 1e-4 * b.abs(),
                            "{dtype:?} row {r}: {a} vs {b} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    /// A batch of tokens through the integer dot products (laid-out activations, in blocks of
    /// tokens, four, two and one at a time) gives each token exactly what it gets alone, for
    /// rows of odd and even block counts; and `forward` (which takes the int8 GEMM for the larger
    /// batches where it is built) is close to the f32 product of the decoded weight.
    #[test]
    fn batched_integer_products_equal_one_token_at_a_time() {
        let mut rng = moe_engine::rng::Rng::new(3);
        let mut rnd = move || rng.uniform() as f32 - 0.5;
        for cols in [96, 160, 256] {
            let rows = 70; // more than one chunk of 64 rows
            let wf: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let bytes = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
            let w32 = Weight::from_bytes(bytes, Dtype::F32, rows, cols).unwrap();
            for quant in [Quant::Q8_0, Quant::Q4_0] {
                let q = w32.quantize(quant).unwrap();
                let decoded = Linear::new(q.dequantize(), None);
                let lin = Linear::new(q, None);
                for n in [1, 2, 3, 5, 9, 17, 64] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
                    let (mut y, mut batch) = (vec![0.0; n * rows], vec![0.0; n * rows]);
                    lin.dot_rows(&x, n, &mut y);
                    lin.forward(&x, n, &mut batch);
                    let mut want = vec![0.0; n * rows];
                    decoded.forward(&x, n, &mut want);
                    for t in 0..n {
                        let mut one = vec![0.0; rows];
                        lin.forward(&x[t * cols..(t + 1) * cols], 1, &mut one);
                        assert_eq!(&y[t * rows..(t + 1) * rows], &one[..], "{quant:?} {cols} cols, token {t} of {n}");
                        let got = one.iter().chain(&batch[t * rows..(t + 1) * rows]);
                        for (r, (a, b)) in got.zip(want[t * rows..(t + 1) * rows].iter().cycle()).enumerate() {
                            // activations quantised to 8 bits per block: a small relative error
                            assert!((a - b).abs() <= 0.02 * cols as f32 / 32.0, "{quant:?} row {r}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}
