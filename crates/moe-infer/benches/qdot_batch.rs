//! Integer products of a batch of tokens against one quantised weight (a batched decode step,
//! a prefill chunk): the plain kernels (`dot_row_q8_n`, activations shuffled per row) against
//! the same kernels on activations laid out once (`dot_row_lanes_n`), the whole
//! `Linear::forward` at 1-256 tokens, and its three paths for many tokens side by side (dot
//! products, f32 panels, the int8 GEMM of `qgemm`) at 8-512 tokens; one thread, a 2048 x 1024 weight (4 MiB of f32, a
//! Mixtral-shaped expert's up-projection; `QDOT_SHAPE=ROWSxCOLS` for another), median of 15
//! repetitions. Note that the four-token kernel pass streams the whole weight (2.2 MB of Q8_0)
//! per pass, so it is bound by the read bandwidth; `Linear::forward` reuses weight rows across
//! tokens from cache.
//! `cargo bench -p moe-infer --bench qdot_batch`.

use moe_engine::rng::Rng;
use moe_infer::linear::Linear;
use moe_infer::qdot::{block_sums, Lanes, Q8Row};
use moe_infer::qgemm;
use moe_infer::weight::{quantize_q8_row, Dtype, Quant, Weight};

/// Median seconds of 15 calls after one warm-up call.
fn median(f: impl FnMut()) -> f64 {
    moe_engine::bench::median_secs(1, 15, f)
}

/// The three paths of `Linear` for many tokens side by side, ns per token and row.
fn paths(pool: &rayon::ThreadPool, w: Weight, rnd: &mut impl FnMut() -> f32) {
    let (o, i) = (w.rows, w.cols);
    let lin = Linear::new(w, None);
    println!("  {:?} {o}x{i}: tokens, then ns per token and row: dot products, f32 panels, int8 GEMM", lin.w.dtype);
    for n in [8, 16, 32, 48, 64, 96, 128, 256, 512] {
        let x: Vec<f32> = (0..n * i).map(|_| rnd()).collect();
        let mut y = vec![0f32; n * o];
        let per = |s: f64| s * 1e9 / (n * o) as f64;
        let dots = pool.install(|| median(|| lin.dot_rows(&x, n, &mut y)));
        let panels = pool.install(|| median(|| lin.panels_out(&x, n, &mut y, false)));
        let gemm = match qgemm::BUILT {
            true => format!("{:9.1}", per(pool.install(|| median(|| qgemm::forward(&lin.w, &x, n, &mut y))))),
            false => "        -".into(),
        };
        println!("  {n:>6}  {:12.1}  {:10.1}  {gemm}", per(dots), per(panels));
    }
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    let shape = std::env::var("QDOT_SHAPE").ok();
    let parsed = shape.as_deref().and_then(|s| s.split_once('x')).map(|(a, b)| (a.parse(), b.parse()));
    let (o, i) = match parsed {
        Some((Ok(o), Ok(i))) => (o, i),
        None => (2048, 1024),
        _ => panic!("QDOT_SHAPE must be ROWSxCOLS, e.g. 256x8192"),
    };
    let mut rng = Rng::new(1);
    let mut rnd = move || rng.uniform() as f32 - 0.5;
    let wf: Vec<f32> = (0..o * i).map(|_| rnd()).collect();
    let bytes: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
    let w32 = Weight::from_bytes(bytes, Dtype::F32, o, i).expect("an f32 weight");
    for quant in [Quant::Q8_0, Quant::Q4_0] {
        let w = w32.quantize(quant).expect("1024 columns quantise");
        let kind = w.dtype.lane_kind().expect("a pair kernel type");
        // four tokens, every row: the kernels alone
        let x: Vec<f32> = (0..4 * i).map(|_| rnd()).collect();
        let (mut xq, mut xd) = (vec![0i8; 4 * i], vec![0f32; 4 * i / 32]);
        for t in 0..4 {
            quantize_q8_row(&x[t * i..(t + 1) * i], &mut xq[t * i..(t + 1) * i], &mut xd[t * i / 32..(t + 1) * i / 32]);
        }
        let xs = block_sums(&xq);
        let rows: [Q8Row; 4] = std::array::from_fn(|t| {
            let b = t * i / 32..(t + 1) * i / 32;
            Q8Row { xq: &xq[t * i..(t + 1) * i], xd: &xd[b.clone()], xs: &xs[b] }
        });
        let lanes = rows.map(|r| Lanes::new(r, kind));
        let mut sink = 0.0f32;
        let plain = median(|| (0..o).for_each(|r| sink += w.dot_row_q8_n(r, rows)[0]));
        let laid = median(|| {
            (0..o).for_each(|r| sink += w.dot_row_lanes_n(r, [&lanes[0], &lanes[1], &lanes[2], &lanes[3]])[0])
        });
        println!(
            "{quant:?} {o}x{i}, 4 tokens: plain {:.3} ms, laid out {:.3} ms ({:.2}x)  [{sink:.1}]",
            plain * 1e3,
            laid * 1e3,
            plain / laid
        );
        let lin = Linear::new(w.clone(), None);
        for n in [1, 4, 16, 64, 65, 256] {
            let x: Vec<f32> = (0..n * i).map(|_| rnd()).collect();
            let mut y = vec![0f32; n * o];
            let s = pool.install(|| median(|| lin.forward(&x, n, &mut y)));
            println!(
                "  Linear::forward, {n:>3} tokens: {:.3} ms, {:.1} ns per token and row",
                s * 1e3,
                s * 1e9 / (n * o) as f64
            );
        }
        paths(&pool, w, &mut rnd);
    }
    // the k-quants of Q4_K_M files (random blocks: the time does not depend on the values)
    let mut brng = Rng::new(2);
    for dtype in [Dtype::Q4K, Dtype::Q6K] {
        let f = dtype.format().expect("a block format");
        let w = Weight::from_bytes(f.random_blocks(o * i / f.values, &mut brng), dtype, o, i).expect("whole blocks");
        paths(&pool, w, &mut rnd);
    }
}
