//! Softmax cross-entropy over vocabulary logits, forward and backward as separate passes so
//! no probability buffer is kept. The in-place backward recovers each row's logsumexp from the
//! forward's loss (lse = loss + logit of the target), so it reads the logits once. A target of
//! [`IGNORE`] (a prompt token in fine-tuning) has loss 0 and gradient 0.

use crate::softmax::logsumexp;
use crate::Float;
use rayon::prelude::*;

/// The target of a position that is no training target.
pub const IGNORE: u32 = u32::MAX;

/// losses[N] = logsumexp(logits[n]) - logits[n, target[n]] (0 where the target is IGNORE).
pub fn cross_entropy_forward<T: Float>(losses: &mut [T], logits: &[T], targets: &[u32], v: usize) {
    losses.par_iter_mut().zip(logits.par_chunks(v)).zip(targets.par_iter()).for_each(|((l, row), &tg)| {
        *l = if tg == IGNORE { T::ZERO } else { logsumexp(row) - row[tg as usize] };
    });
}

/// dlogits[N, V] = scale * (softmax(logits) - onehot(target)) (overwrites; dlogits may be a
/// separate buffer or the logits themselves via `cross_entropy_backward_inplace`).
pub fn cross_entropy_backward<T: Float>(dlogits: &mut [T], logits: &[T], targets: &[u32], v: usize, scale: T) {
    dlogits.par_chunks_mut(v).zip(logits.par_chunks(v)).zip(targets.par_iter()).for_each(|((d, row), &tg)| {
        if tg == IGNORE {
            d.fill(T::ZERO);
        } else {
            grad_row(d, row, tg as usize, scale);
        }
    });
}

/// Same as [`cross_entropy_backward`], overwriting the logits with their gradient; `losses`
/// are [`cross_entropy_forward`]'s of these logits and targets.
pub fn cross_entropy_backward_inplace<T: Float>(logits: &mut [T], losses: &[T], targets: &[u32], v: usize, scale: T) {
    let rows = logits.par_chunks_mut(v).zip(losses.par_iter()).zip(targets.par_iter());
    rows.for_each(|((row, &loss), &tg)| {
        if tg == IGNORE {
            row.fill(T::ZERO);
            return;
        }
        let lse = loss + row[tg as usize];
        for x in row.iter_mut() {
            *x = (*x - lse).exp() * scale;
        }
        row[tg as usize] -= scale;
    });
}

fn grad_row<T: Float>(d: &mut [T], row: &[T], tg: usize, scale: T) {
    let lse = logsumexp(row);
    for (dv, &x) in d.iter_mut().zip(row) {
        *dv = (x - lse).exp() * scale;
    }
    d[tg] -= scale;
}
