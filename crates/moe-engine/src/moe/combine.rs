//! Combine stage: scale each kept expert output row by its routing weight and sum a token's rows
//! back into token order. Tokens whose assignments were all dropped get zero (the residual
//! connection carries them through).

use super::dispatch::Routing;
use moe_kernels::Float;
use rayon::prelude::*;

/// out[N,C] = sum over token n's kept rows of weight[assignment] * ys[row].
pub fn combine_forward<T: Float>(out: &mut [T], ys: &[T], weight: &[T], rt: &Routing, c: usize) {
    out.par_chunks_mut(c).enumerate().for_each(|(n, o)| {
        o.fill(T::ZERO);
        for &row in &rt.tok_rows[rt.tok_offsets[n]..rt.tok_offsets[n + 1]] {
            let row = row as usize;
            let w = weight[rt.indices[row] as usize];
            for (ov, &y) in o.iter_mut().zip(&ys[row * c..(row + 1) * c]) {
                *ov += w * y;
            }
        }
    });
}

/// dys[rows,C] = weight * dout[token] (overwritten); dweight[R] = dout[token] . ys[row], zero for
/// dropped assignments (overwritten).
pub fn combine_backward<T: Float>(
    dys: &mut [T],
    dweight: &mut [T],
    dout: &[T],
    ys: &[T],
    weight: &[T],
    token: &[u32],
    rt: &Routing,
    c: usize,
) {
    let rows = rt.rows();
    dys[..rows * c].par_chunks_mut(c).zip(rt.indices[..rows].par_iter()).for_each(|(d, &a)| {
        let n = token[a as usize] as usize;
        let w = weight[a as usize];
        for (dv, &g) in d.iter_mut().zip(&dout[n * c..(n + 1) * c]) {
            *dv = w * g;
        }
    });
    let r = token.len();
    dweight[..r].par_iter_mut().zip(rt.positions[..r].par_iter()).zip(token.par_iter()).for_each(|((dw, &row), &n)| {
        *dw = if row == super::dispatch::DROPPED {
            T::ZERO
        } else {
            let (n, row) = (n as usize, row as usize);
            moe_kernels::float::dot(&dout[n * c..(n + 1) * c], &ys[row * c..(row + 1) * c])
        };
    });
}
