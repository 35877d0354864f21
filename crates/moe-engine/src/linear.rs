//! A linear layer y = x W^T, the unit every projection of the model is made of: its weight
//! W[O,I] (f32/f64 in the parameter buffer, or packed in bf16/Q8_0 for a frozen base, decoded a
//! block of rows at a time: `packed`), plus an optional LoRA adapter (Hu et al. 2021), a
//! trainable low-rank update scale * B[O,R] A[R,I], so y = x W^T + scale (x A^T) B^T.
//! Under LoRA the base weight is frozen: its gradient is not computed (`LinGrad::w` = None),
//! while A and B get theirs and the input gradient flows through W and the adapter. The
//! product x A^T [N,R] is recomputed in the backward instead of saved (R is small).
//! `GradCursor` hands out the gradient views of a block's layers.

use crate::packed::{PackedMat, Weights};
use crate::params::{Span, SpanCursor};
use moe_kernels::matmul::{linear_backward, linear_forward, matmul, matmul_strided, Mat};
use moe_kernels::Float;

/// A low-rank adapter: a[R,I], b[O,R], and the scale alpha / R.
#[derive(Clone, Copy)]
pub struct Lora<'a, T> {
    pub a: &'a [T],
    pub b: &'a [T],
    pub scale: T,
}

/// A weight matrix W[O,I]: values of the model's float type, or packed (a frozen base).
#[derive(Clone, Copy)]
pub enum Wt<'a, T> {
    Plain(&'a [T]),
    Packed(PackedMat<'a>),
}

/// The weight of one linear layer, w[O,I], and its adapter if it has one.
#[derive(Clone, Copy)]
pub struct Lin<'a, T> {
    pub w: Wt<'a, T>,
    pub lora: Option<Lora<'a, T>>,
}

/// Elements of a packed weight decoded at once (1 MiB of f32): a block of whole rows.
const DECODE_BLOCK: usize = 1 << 18;

/// Gradients of an adapter, same shapes.
pub struct LoraGrad<'a, T> {
    pub a: &'a mut [T],
    pub b: &'a mut [T],
}

/// Gradients of a linear layer: the weight's (None when it is frozen) and the adapter's.
pub struct LinGrad<'a, T> {
    pub w: Option<&'a mut [T]>,
    pub lora: Option<LoraGrad<'a, T>>,
}

/// The spans of an adapter in the parameter buffer: a[R,I] (or [E,R,I]) and b[O,R] ([E,O,R]),
/// and its scale alpha / R.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraSpans {
    pub a: Span,
    pub b: Span,
    pub scale: f64,
}

impl<'a, T> From<&'a [T]> for Lin<'a, T> {
    /// A plain weight without an adapter.
    fn from(w: &'a [T]) -> Self {
        Lin { w: Wt::Plain(w), lora: None }
    }
}

impl<'a, T> From<&'a mut [T]> for LinGrad<'a, T> {
    /// The gradient of a plain trainable weight.
    fn from(w: &'a mut [T]) -> Self {
        LinGrad { w: Some(w), lora: None }
    }
}

impl<'a, T: Float> Lin<'a, T> {
    /// The layer at `w` (packed if `ws` holds it packed), with the adapter at `lora`.
    pub fn at(ws: Weights<'a, T>, w: Span, lora: Option<LoraSpans>) -> Self {
        let lora = lora.map(|l| Lora { a: l.a.of(ws.p), b: l.b.of(ws.p), scale: T::from_f64(l.scale) });
        let w = match ws.packed.and_then(|pb| pb.get(w)) {
            Some(m) => Wt::Packed(m),
            None => Wt::Plain(w.of(ws.p)),
        };
        Lin { w, lora }
    }

    /// Part `i` of `parts` equal parts of every tensor (one expert of a stacked layer).
    pub fn part(&self, i: usize, parts: usize) -> Self {
        let cut = |x: &'a [T]| {
            let n = x.len() / parts;
            &x[i * n..(i + 1) * n]
        };
        let w = match self.w {
            Wt::Plain(w) => Wt::Plain(cut(w)),
            Wt::Packed(m) => Wt::Packed(m.part(i, parts)),
        };
        Lin { w, lora: self.lora.map(|l| Lora { a: cut(l.a), b: cut(l.b), scale: l.scale }) }
    }

    /// Calls `f(o0, o1, rows)` for consecutive blocks of rows [o0, o1) of a packed W[O,I],
    /// decoded.
    fn packed_rows(m: &PackedMat, o: usize, i: usize, mut f: impl FnMut(usize, usize, &[T])) {
        let rows = (DECODE_BLOCK / i.max(1)).clamp(1, o.max(1));
        let mut buf = vec![T::ZERO; rows * i];
        for o0 in (0..o).step_by(rows) {
            let o1 = (o0 + rows).min(o);
            let blk = &mut buf[..(o1 - o0) * i];
            m.decode(o0 * i, blk);
            f(o0, o1, blk);
        }
    }

    /// y[N,O] = x[N,I] W^T (+ scale (x A^T) B^T).
    pub fn forward(&self, y: &mut [T], x: &[T], n: usize, i: usize, o: usize, par: bool) {
        match &self.w {
            Wt::Plain(w) => linear_forward(y, x, w, n, i, o, par),
            // y[:, o0..o1] = x W[o0..o1]^T
            Wt::Packed(m) => Self::packed_rows(m, o, i, |o0, o1, w| {
                let xm = Mat::new(x, n, i);
                matmul_strided(&mut y[o0..], o, xm, Mat::new(w, o1 - o0, i).t(), false, par)
            }),
        }
        if let Some(l) = self.lora {
            let r = l.a.len() / i;
            // t[N,R] = scale * x A^T; y += t B^T
            let mut t = vec![T::ZERO; n * r];
            linear_forward(&mut t, x, l.a, n, i, r, par);
            t.iter_mut().for_each(|v| *v *= l.scale);
            matmul(y, Mat::new(&t, n, r), Mat::new(l.b, o, r).t(), true, par);
        }
    }

    /// dx[N,I] (+)= dy W (+ scale (dy B) A) (accumulated when `dx_acc`); the weight's gradient
    /// dy^T x when it has one, and the adapter's: dB += scale dy^T (x A^T), dA += scale (dy B)^T x.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dx: &mut [T],
        g: LinGrad<T>,
        dy: &[T],
        x: &[T],
        n: usize,
        i: usize,
        o: usize,
        dx_acc: bool,
        par: bool,
    ) {
        match (&self.w, g.w) {
            (Wt::Plain(w), Some(dw)) => linear_backward(dx, dw, dy, x, w, n, i, o, dx_acc, par),
            (Wt::Plain(w), None) => matmul(dx, Mat::new(dy, n, o), Mat::new(w, o, i), dx_acc, par),
            // dx += dy[:, o0..o1] W[o0..o1]
            (Wt::Packed(m), None) => Self::packed_rows(m, o, i, |o0, o1, w| {
                let dym = Mat { data: &dy[o0..], rows: n, cols: o1 - o0, rs: o, cs: 1 };
                matmul(dx, dym, Mat::new(w, o1 - o0, i), dx_acc || o0 > 0, par)
            }),
            (Wt::Packed(_), Some(_)) => unreachable!("packed weights are frozen"),
        }
        if let (Some(l), Some(lg)) = (self.lora, g.lora) {
            let r = l.a.len() / i;
            let (mut t, mut u) = (vec![T::ZERO; n * r], vec![T::ZERO; n * r]);
            // t = scale * x A^T, u = scale * dy B   [N,R]
            linear_forward(&mut t, x, l.a, n, i, r, par);
            matmul(&mut u, Mat::new(dy, n, o), Mat::new(l.b, o, r), false, par);
            t.iter_mut().chain(u.iter_mut()).for_each(|v| *v *= l.scale);
            matmul(lg.b, Mat::new(dy, n, o).t(), Mat::new(&t, n, r), true, par);
            matmul(lg.a, Mat::new(&u, n, r).t(), Mat::new(x, n, i), true, par);
            matmul(dx, Mat::new(&u, n, r), Mat::new(l.a, r, i), true, par);
        }
    }
}

/// Hands out gradient views: base tensors' from the buffer's first `base_total` elements,
/// adapters' from the rest, each part in increasing offset order. When the base is frozen
/// (LoRA), no base tensor gets a gradient: the backward writes only the adapters'.
pub struct GradCursor<'a, T> {
    base: SpanCursor<'a, T>,
    adapters: SpanCursor<'a, T>,
    pub frozen: bool,
}

impl<'a, T> GradCursor<'a, T> {
    pub fn new(gr: &'a mut [T], base_total: usize, frozen: bool) -> Self {
        let (b, a) = gr.split_at_mut(base_total);
        GradCursor { base: SpanCursor::new(b), adapters: SpanCursor::at(a, base_total), frozen }
    }
    /// The gradient of the linear layer at `w` with the adapter at `lora`.
    pub fn lin(&mut self, w: Span, lora: Option<LoraSpans>) -> LinGrad<'a, T> {
        let w = (!self.frozen).then(|| self.base.take(w));
        let lora = lora.map(|l| LoraGrad { a: self.adapters.take(l.a), b: self.adapters.take(l.b) });
        LinGrad { w, lora }
    }
    /// The gradient of a base tensor (norm weights); empty when the base is frozen (the norm
    /// backward then computes no weight gradient).
    pub fn take(&mut self, s: Span) -> &'a mut [T] {
        if self.frozen {
            return Default::default();
        }
        self.base.take(s)
    }
    /// The gradient of an optional base tensor; None when the base is frozen.
    pub fn opt(&mut self, s: Option<Span>) -> Option<&'a mut [T]> {
        s.filter(|_| !self.frozen).map(|s| self.base.take(s))
    }
}

impl<'a, T> LinGrad<'a, T> {
    /// The gradients of `parts` equal parts (experts) of a stacked layer, in order.
    pub fn split(self, parts: usize) -> Vec<LinGrad<'a, T>> {
        fn cut<T>(x: &mut [T], parts: usize) -> Vec<&mut [T]> {
            let n = x.len() / parts;
            x.chunks_mut(n).collect()
        }
        let w: Vec<Option<&'a mut [T]>> = match self.w {
            Some(w) => cut(w, parts).into_iter().map(Some).collect(),
            None => (0..parts).map(|_| None).collect(),
        };
        let lora: Vec<Option<LoraGrad<'a, T>>> = match self.lora {
            Some(l) => cut(l.a, parts).into_iter().zip(cut(l.b, parts)).map(|(a, b)| Some(LoraGrad { a, b })).collect(),
            None => (0..parts).map(|_| None).collect(),
        };
        w.into_iter().zip(lora).map(|(w, lora)| LinGrad { w, lora }).collect()
    }
}
