//! Expert selection: top-k of a token's selection keys (optionally limited to its best groups,
//! DeepSeek-V3), and expert choice (each expert takes its top tokens). Selection is not
//! differentiable; gradients flow through the routing weights the router computes from it.
//! The aux-loss-free selection bias (DeepSeek-V3) moves after every step from the loads it saw.

use moe_kernels::Float;

/// The k largest keys among the allowed experts, best first; ties go to the lower expert id.
pub fn topk<T: Float>(ids: &mut [u32], keys: &[T], allowed: impl Fn(usize) -> bool) {
    let k = ids.len();
    let mut filled = 0;
    for (i, &v) in keys.iter().enumerate() {
        if !allowed(i) {
            continue;
        }
        let mut pos = filled;
        while pos > 0 && keys[ids[pos - 1] as usize] < v {
            pos -= 1;
        }
        if pos < k {
            let end = filled.min(k - 1);
            for j in (pos..end).rev() {
                ids[j + 1] = ids[j];
            }
            ids[pos] = i as u32;
            filled = (filled + 1).min(k);
        }
    }
}

/// [`topk`] over all keys, each key passing down a sorted list of the best k so far and
/// swapping places where it is larger (a displaced key beats an equal one below it when its id
/// is lower), with selects instead of the insertion's data-dependent loop: a router's keys are
/// near random, so the insertion mispredicts on most winners. Falls back to [`topk`] for k > 8
/// or when fewer than k keys beat minus infinity (NaN or -inf keys), where that one decides.
pub fn topk_all<T: Float>(ids: &mut [u32], keys: &[T]) {
    const MAX_K: usize = 8;
    let k = ids.len();
    if k > MAX_K {
        return topk(ids, keys, |_| true);
    }
    let mut best = [T::from_f64(f64::NEG_INFINITY); MAX_K];
    let mut best_id = [u32::MAX; MAX_K];
    for (i, &v) in keys.iter().enumerate() {
        let (mut cv, mut ci) = (v, i as u32);
        for (bv, bi) in best[..k].iter_mut().zip(&mut best_id[..k]) {
            let gt = cv > *bv || (cv == *bv && ci < *bi);
            let (hi, hi_id) = if gt { (cv, ci) } else { (*bv, *bi) };
            let (lo, lo_id) = if gt { (*bv, *bi) } else { (cv, ci) };
            (*bv, *bi, cv, ci) = (hi, hi_id, lo, lo_id);
        }
    }
    if best_id[..k].contains(&u32::MAX) {
        return topk(ids, keys, |_| true);
    }
    ids.copy_from_slice(&best_id[..k]);
}

/// Group-limited top-k: experts form `n_group` equal groups; a group scores the sum of its two
/// best keys (its only key when a group has one expert); only the best `topk_group` groups are
/// eligible, `topk_group` being the length of the scratch `group_ids`. With n_group = 1 this is plain top-k.
pub fn topk_grouped<T: Float>(
    ids: &mut [u32],
    keys: &[T],
    n_group: usize,
    group_scores: &mut [T],
    group_ids: &mut [u32],
) {
    if n_group <= 1 {
        return topk_all(ids, keys);
    }
    let per = keys.len() / n_group;
    for (g, gs) in group_scores.iter_mut().enumerate() {
        let grp = &keys[g * per..(g + 1) * per];
        let mut best = [0u32; 2];
        let take = per.min(2);
        topk_all(&mut best[..take], grp);
        *gs = best[..take].iter().map(|&i| grp[i as usize]).sum();
    }
    topk_all(group_ids, group_scores);
    topk(ids, keys, |i| group_ids.contains(&((i / per) as u32)));
}

/// Expert choice for one expert: the `cap` tokens with the highest `col(token)`, best first (ties
/// to the lower token). `scratch` holds N token ids.
pub fn expert_choice<T: Float>(out: &mut [u32], n: usize, col: impl Fn(usize) -> T, scratch: &mut [u32]) {
    let cap = out.len();
    for (i, s) in scratch[..n].iter_mut().enumerate() {
        *s = i as u32;
    }
    let cmp = |a: &u32, b: &u32| {
        col(*b as usize).partial_cmp(&col(*a as usize)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b))
    };
    if cap < n {
        scratch[..n].select_nth_unstable_by(cap, cmp);
    }
    scratch[..cap].sort_by(cmp);
    out.copy_from_slice(&scratch[..cap]);
}

/// Aux-loss-free balancing (DeepSeek-V3): after a step, each MoE layer's selection bias in
/// `params` moves by `rate` toward the under-loaded experts: b_e += rate * sign(mean - load_e).
/// `loads`[MoE layer][expert] are the step's routed rows.
pub fn update_selection_bias(params: &mut [f32], layout: &crate::params::Layout, rate: f64, loads: &[Vec<u32>]) {
    if rate == 0.0 {
        return;
    }
    let spans = layout.layers.iter().filter_map(|l| match &l.ffn {
        crate::params::FfnSpans::Moe(sp) => sp.selection_bias,
        crate::params::FfnSpans::Dense { .. } => None,
    });
    for (span, load) in spans.zip(loads) {
        let mean = load.iter().map(|&c| c as f64).sum::<f64>() / load.len() as f64;
        for (b, &c) in span.of_mut(params).iter_mut().zip(load) {
            let diff = mean - c as f64;
            *b += rate as f32
                * if diff > 0.0 {
                    1.0
                } else if diff < 0.0 {
                    -1.0
                } else {
                    0.0
                };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The branch-free top-k picks what the insertion top-k picks, ties and odd keys included.
    #[test]
    fn topk_all_matches_insertion_topk() {
        let mut rng = Rng::new(7);
        for case in 0..3000 {
            let len = 1 + case % 40;
            let k = 1 + (case / 40) % 10.min(len);
            let k = k.min(len);
            let mut keys: Vec<f32> = (0..len).map(|_| rng.uniform() as f32 - 0.5).collect();
            match case % 5 {
                // Ties: a handful of distinct values.
                1 => keys.iter_mut().for_each(|v| *v = (*v * 4.0).round()),
                // Minus infinity and NaN among the keys.
                2 => keys[case % len] = f32::NEG_INFINITY,
                3 => keys[(case / 3) % len] = f32::NAN,
                4 => keys.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                _ => {}
            }
            let (mut want, mut got) = (vec![0u32; k], vec![0u32; k]);
            topk(&mut want, &keys, |_| true);
            topk_all(&mut got, &keys);
            // With a NaN key the insertion top-k's order is arbitrary; both must still be k
            // distinct in-range ids, and the branch-free one the best k of the other keys.
            if keys.iter().any(|v| v.is_nan()) {
                let mut sorted = got.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), k, "case {case}: {got:?}");
                assert!(got.iter().all(|&i| (i as usize) < len));
                continue;
            }
            assert_eq!(got, want, "case {case}: keys {keys:?}");
        }
    }
}
