//! y = x W^T + b over a memory-mapped weight of any dtype. F32 weights are multiplied in place;
//! others are decoded in panels of rows into a small per-thread buffer and multiplied panel by
//! panel, so the weights are never copied whole.

use crate::qdot::Q8Row;
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

    /// A few tokens (decoding): each weight row is read once, in place, and dotted with every
    /// token; output rows are split over the threads.
    fn dot_rows(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (i, o) = (self.inp, self.out);
        const CHUNK: usize = 64;
        // integer dot products against the tokens quantised to Q8_0 blocks
        let q8 = self.w.dtype.has_q8_dot();
        let (mut xq, mut xd) = (vec![0i8; if q8 { n * i } else { 0 }], vec![0.0f32; if q8 { n * i / 32 } else { 0 }]);
        if q8 {
            for tok in 0..n {
                let r = tok * i..(tok + 1) * i;
                quantize_q8_row(&x[r.clone()], &mut xq[r], &mut xd[tok * i / 32..(tok + 1) * i / 32]);
            }
        }
        let xs = crate::qdot::block_sums(&xq);
        let dot = |row: usize, tok: usize| {
            if q8 {
                let b = tok * i / 32..(tok + 1) * i / 32;
                self.w.dot_row_q8(row, &xq[tok * i..(tok + 1) * i], &xd[b.clone()], &xs[b])
            } else {
                self.w.dot_row(row, &x[tok * i..(tok + 1) * i])
            }
        };
        let act = |tok: usize| {
            let b = tok * i / 32..(tok + 1) * i / 32;
            Q8Row { xq: &xq[tok * i..(tok + 1) * i], xd: &xd[b.clone()], xs: &xs[b] }
        };
        let mut t = vec![0.0f32; n * o]; // [o, n], so parallel chunks are contiguous
        t.par_chunks_mut(CHUNK * n).enumerate().for_each(|(c, ts)| {
            for (k, tr) in ts.chunks_exact_mut(n).enumerate() {
                let row = c * CHUNK + k;
                let mut tok = 0;
                // integer kernels: four tokens per pass over the row
                while q8 && tok + 4 <= n {
                    let a = [act(tok), act(tok + 1), act(tok + 2), act(tok + 3)];
                    tr[tok..tok + 4].copy_from_slice(&self.w.dot_row_q8_n(row, a));
                    tok += 4;
                }
                for (j, v) in tr.iter_mut().enumerate().skip(tok) {
                    *v = dot(row, j);
                }
            }
        });
        for tok in 0..n {
            for r in 0..o {
                y[tok * o + r] = t[r * n + tok];
            }
        }
    }

    /// [out, in] weight: panel of output rows -> columns of y.
    fn panels_out(&self, x: &[f32], n: usize, y: &mut [f32], par: bool) {
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
