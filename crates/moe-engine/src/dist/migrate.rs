//! Moving experts between ranks when the placement changes (live rebalancing): every slot of
//! the new placement takes its expert's weights and optimizer moments from the first rank that
//! hosts that expert under the old placement, all tensors and buffers in one all-to-all;
//! everything that is not an expert tensor is replicated and simply copied.

use super::comm::Comm;
use super::placement::Shard;
use crate::error::{Error, Result};
use crate::params::Layout;

/// One expert slot's move: from (rank, slot) of the old placement to (rank, slot) of the new,
/// for tensor `t` of the layouts.
struct Move {
    t: usize,
    from: (usize, usize),
    to: (usize, usize),
}

/// Every slot of the new placements, in (destination rank, tensor, slot) order, with its source.
fn moves(old: &Shard, new: &Shard, layout: &Layout) -> Vec<Vec<Move>> {
    let mut by_dest: Vec<Vec<Move>> = (0..new.ranks).map(|_| vec![]).collect();
    for (t, info) in layout.tensors.iter().enumerate() {
        let Some(ex) = &info.experts else { continue };
        let (op, np) = (old.placement(ex.moe_layer, ex.total), new.placement(ex.moe_layer, ex.total));
        for (q, slots) in np.ranks.iter().enumerate() {
            for (j, &x) in slots.iter().enumerate() {
                by_dest[q].push(Move { t, from: op.hosts(x)[0], to: (q, j) });
            }
        }
    }
    by_dest
}

/// Buffers of layout `new_layout` (this rank's slots under `new`) from the same buffers of
/// layout `old_layout` (its slots under `old`), e.g. [parameters, first moments, second moments].
pub fn migrate(
    comm: &dyn Comm,
    (old, old_layout): (&Shard, &Layout),
    (new, new_layout): (&Shard, &Layout),
    bufs: &[&[f32]],
) -> Result<Vec<Vec<f32>>> {
    let me = comm.rank();
    let plan = moves(old, new, new_layout);
    let per = |t: usize| new_layout.tensors[t].per_expert();
    // Send: for each destination, the slots whose source is this rank, every buffer in turn.
    let mut send = vec![];
    let mut send_counts = vec![0usize; comm.size()];
    for (q, list) in plan.iter().enumerate() {
        let before = send.len();
        for mv in list.iter().filter(|mv| mv.from.0 == me) {
            let (n, span) = (per(mv.t), old_layout.tensors[mv.t].span);
            for b in bufs {
                let slot = &span.of(b)[mv.from.1 * n..(mv.from.1 + 1) * n];
                send.extend(slot.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        send_counts[q] = send.len() - before;
    }
    // Receive: from each source, this rank's new slots that it sends, in the same order.
    let mine = &plan[me];
    let mut recv_counts = vec![0usize; comm.size()];
    for mv in mine {
        recv_counts[mv.from.0] += per(mv.t) * 4 * bufs.len();
    }
    let mut recv = vec![0u8; recv_counts.iter().sum()];
    comm.all_to_all_v(&send, &send_counts, &mut recv, &recv_counts)
        .map_err(|e| Error::config(format!("moving experts between ranks failed: {e}"), "see the failing rank"))?;
    let mut out: Vec<Vec<f32>> = bufs.iter().map(|_| moe_kernels::buffer::zeroed::<f32>(new_layout.total)).collect();
    for (nt, ot) in new_layout.tensors.iter().zip(&old_layout.tensors) {
        if nt.experts.is_none() {
            for (o, b) in out.iter_mut().zip(bufs) {
                nt.span.of_mut(o).copy_from_slice(ot.span.of(b));
            }
        }
    }
    let mut start: Vec<usize> = recv_counts
        .iter()
        .scan(0, |acc, &c| {
            let s = *acc;
            *acc += c;
            Some(s)
        })
        .collect();
    for src in 0..comm.size() {
        for mv in mine.iter().filter(|mv| mv.from.0 == src) {
            let (n, span) = (per(mv.t), new_layout.tensors[mv.t].span);
            for o in out.iter_mut() {
                let dst = &mut span.of_mut(o)[mv.to.1 * n..(mv.to.1 + 1) * n];
                let bytes = &recv[start[src]..start[src] + 4 * n];
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                start[src] += 4 * n;
            }
        }
    }
    Ok(out)
}
