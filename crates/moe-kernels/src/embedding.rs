//! Token embedding lookup and its scatter-add backward.

use crate::Float;

/// out[N, C] = wte[tokens[n], :].
pub fn embedding_forward<T: Float>(out: &mut [T], wte: &[T], tokens: &[u32], c: usize) {
    for (o, &t) in out.chunks_mut(c).zip(tokens) {
        o.copy_from_slice(&wte[t as usize * c..(t as usize + 1) * c]);
    }
}

/// dwte[V, C] += scatter of dout[N, C] by token id.
pub fn embedding_backward<T: Float>(dwte: &mut [T], dout: &[T], tokens: &[u32], c: usize) {
    for (d, &t) in dout.chunks(c).zip(tokens) {
        for (w, &g) in dwte[t as usize * c..(t as usize + 1) * c].iter_mut().zip(d) {
            *w += g;
        }
    }
}
