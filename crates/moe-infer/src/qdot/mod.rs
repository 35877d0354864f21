//! Integer dot products of a quantised weight row with an activation row quantised to Q8_0
//! blocks (the decode kernel of quantised models), as llama.cpp does: per block of 32, sum_j
//! qw_j * qx_j in integers, scaled by dw * dx. Q8_0, Q4_0, Q5_0 and IQ4_NL blocks are signed
//! values with one scale; the super-block formats carry a scale per 16 (Q3_K, Q6_K) or 32
//! (Q4_K, Q5_K with a min each: minus dmin min dx times the activations' block sum, IQ4_XS).
//! Q4_1 and Q5_1 add m dx times the block sum; Q2_K has no integer kernel (rows decode to f32).
//! Built for the machine (`-C target-cpu=native`): with AVX-512 VNNI Q8_0 and Q4_0 take two
//! blocks per 512-bit `vpdpbusd` (`vnni`); with AVX2 one block per 256-bit product (`x86`,
//! also Q6_K everywhere); elsewhere the portable twins (`scalar`) run. Tests compare them.
//! Activations must lie in [-127, 127] (as `quantize_q8_row` makes them): x * sign(w) of -128
//! would wrap. Weights may take any int8 value.

/// How far ahead of the weight bytes being read the decode kernels (here and in `fdot`) ask for
/// the next ones (`prefetcht0`) on Intel CPUs: a row and the rows after it stream from memory,
/// and the hardware prefetcher alone kept decoding at about half of the read bandwidth. 4 KiB
/// ahead measured best among 0.5-8 KiB (Intel Xeon, OLMoE Q8_0: about 45 -> 55-70 tokens/s).
pub const PREFETCH: usize = 4096;

/// The distance the kernels prefetch at on this machine, 0 for none: `PREFETCH`, but none on
/// AMD CPUs, whose hardware prefetcher streams a row faster alone (AMD EPYC Zen 4, one thread,
/// a 150 MB Q4_K weight: 16.1-16.6 GB/s without, 13.8-14.5 with prefetches 4 KiB ahead).
/// `MOE_PREFETCH=BYTES` sets it (0: none), for measuring.
pub fn prefetch_distance() -> usize {
    static D: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *D.get_or_init(|| {
        let default = if cpu_vendor() == *b"AuthenticAMD" { 0 } else { PREFETCH };
        match std::env::var("MOE_PREFETCH") {
            Err(_) => default,
            Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                eprintln!("warning: MOE_PREFETCH={v:?} is not a byte count; prefetching {default} bytes ahead");
                default
            }),
        }
    })
}

/// The CPU vendor string (cpuid leaf 0), zeros off x86-64.
fn cpu_vendor() -> [u8; 12] {
    #[cfg(target_arch = "x86_64")]
    {
        // cpuid leaf 0 exists on every x86-64 CPU
        let r = std::arch::x86_64::__cpuid(0);
        let mut v = [0u8; 12];
        for (i, w) in [r.ebx, r.edx, r.ecx].iter().enumerate() {
            v[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        v
    }
    #[cfg(not(target_arch = "x86_64"))]
    [0; 12]
}

#[inline(always)]
fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// One activation row quantised to Q8_0 blocks: values, one scale per 32, block sums.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub xq: &'a [i8],
    pub xd: &'a [f32],
    pub xs: &'a [i32],
}

impl<'a> Q8Row<'a> {
    /// The activations from block `b` on.
    pub fn skip(self, b: usize) -> Q8Row<'a> {
        Q8Row { xq: &self.xq[32 * b..], xd: &self.xd[b..], xs: &self.xs[b..] }
    }
}

/// Sums of each block of 32 activation values (the Q4_0 kernel subtracts 8 x these instead of
/// re-centring every weight).
pub fn block_sums(xq: &[i8]) -> Vec<i32> {
    xq.chunks_exact(32).map(|b| b.iter().map(|&v| v as i32).sum()).collect()
}

pub mod lanes;
pub mod scalar;

pub use lanes::{LaneKind, Lanes};

/// Whether the 512-bit pair kernels (`vnni`), the readers of [`Lanes`] layouts, are built.
pub const PAIR_KERNELS: bool = cfg!(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
));

// Built for the machine (`-C target-cpu=native`): AVX-512 VNNI, else AVX2, else portable.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
))]
pub mod vnni;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
pub mod x86;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
))]
pub use vnni::{dot_q4_0_lanes, dot_q4_0_n, dot_q8_0_lanes, dot_q8_0_n};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
pub use x86::{dot_iq4_nl_n, dot_q4_1_n, dot_q5_0_n, dot_q5_1_n};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod superblock;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
pub use superblock::dot_super_rows;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    not(all(target_feature = "avx512vnni", target_feature = "avx512vl"))
))]
pub use x86::{dot_q4_0_n, dot_q8_0_n};

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
pub use scalar::{dot_iq4_nl_n, dot_q4_0_n, dot_q4_1_n, dot_q5_0_n, dot_q5_1_n, dot_q8_0_n, dot_super_rows};

/// Where the pair kernels are not built, laid-out activations are multiplied as their plain rows.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
)))]
mod plain_lanes {
    use super::{dot_q4_0_n, dot_q8_0_n, Lanes};
    pub fn dot_q8_0_lanes<const N: usize>(row: &[u8], x: [&Lanes; N]) -> [f32; N] {
        dot_q8_0_n(row, x.map(|l| l.x))
    }
    pub fn dot_q4_0_lanes<const N: usize>(row: &[u8], x: [&Lanes; N]) -> [f32; N] {
        dot_q4_0_n(row, x.map(|l| l.x))
    }
}
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "avx512vnni",
    target_feature = "avx512vl"
)))]
pub use plain_lanes::{dot_q4_0_lanes, dot_q8_0_lanes};

/// The super-block formats (256 values per block, a scale per 16 or 32), whose kernels
/// (`dot_super_rows`) take a run of rows per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Super {
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4XS,
}

impl Super {
    /// Bytes per super-block.
    pub const fn bytes(self) -> usize {
        match self {
            Super::Q3K => 110,
            Super::Q4K => 144,
            Super::Q5K => 176,
            Super::Q6K => 210,
            Super::IQ4XS => 136,
        }
    }
}

/// The bytes of each row of a run of `n` rows of `kind` over `len` bytes. Panics unless the
/// run splits into n rows of whole super-blocks.
fn run_row_bytes(kind: Super, len: usize, n: usize) -> usize {
    let rb = len.checked_div(n).unwrap_or(0);
    assert!(rb * n == len && rb.is_multiple_of(kind.bytes()), "{len} bytes are not {n} rows of {kind:?}");
    rb
}

/// One row of a super-block format dotted with one activation row.
pub fn dot_super(kind: Super, row: &[u8], x: Q8Row) -> f32 {
    let mut out = [0.0];
    dot_super_rows(kind, row, x, &mut out);
    out[0]
}

/// Q6_K row dotted with one activation row (values and scales; Q6_K needs no block sums).
pub fn dot_q6_k(row: &[u8], xq: &[i8], xd: &[f32]) -> f32 {
    dot_super(Super::Q6K, row, Q8Row { xq, xd, xs: &[] })
}

/// Q4_K (or Q5_K: `five`) row dotted with one activation row.
pub fn dot_q45_k(row: &[u8], x: Q8Row, five: bool) -> f32 {
    dot_super(if five { Super::Q5K } else { Super::Q4K }, row, x)
}

/// Q3_K row dotted with one activation row.
pub fn dot_q3_k(row: &[u8], x: Q8Row) -> f32 {
    dot_super(Super::Q3K, row, x)
}

/// IQ4_XS row dotted with one activation row.
pub fn dot_iq4_xs(row: &[u8], x: Q8Row) -> f32 {
    dot_super(Super::IQ4XS, row, x)
}

/// Q8_0 row dotted with one activation row.
pub fn dot_q8_0(row: &[u8], xq: &[i8], xd: &[f32], xs: &[i32]) -> f32 {
    dot_q8_0_n(row, [Q8Row { xq, xd, xs }])[0]
}

/// Q4_0 row dotted with one activation row.
pub fn dot_q4_0(row: &[u8], xq: &[i8], xd: &[f32], xs: &[i32]) -> f32 {
    dot_q4_0_n(row, [Q8Row { xq, xd, xs }])[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u8
    }

    /// A row of `blocks` blocks of `bytes` bytes with finite f16 scales, and Q8_0 activations.
    fn data(blocks: usize, bytes: usize, seed: &mut u64) -> (Vec<u8>, Vec<i8>, Vec<f32>) {
        let mut row: Vec<u8> = (0..blocks * bytes).map(|_| rng(seed)).collect();
        for b in row.chunks_exact_mut(bytes) {
            let d = half::f16::from_f32(0.001 + rng(seed) as f32 / 1000.0).to_bits().to_le_bytes();
            b[..2].copy_from_slice(&d);
        }
        let xq = (0..blocks * 32).map(|_| (rng(seed) as i8).max(-127)).collect();
        let xd = (0..blocks).map(|_| rng(seed) as f32 / 500.0).collect();
        (row, xq, xd)
    }

    /// n activation rows of `blocks` blocks: values, scales, block sums.
    struct Act(Vec<i8>, Vec<f32>, Vec<i32>);
    impl Act {
        fn row(&self) -> Q8Row<'_> {
            Q8Row { xq: &self.0, xd: &self.1, xs: &self.2 }
        }
    }
    fn activations(n: usize, blocks: usize, bytes: usize, seed: &mut u64) -> Vec<Act> {
        (0..n)
            .map(|_| {
                let (_, xq, xd) = data(blocks, bytes, seed);
                let xs = block_sums(&xq);
                Act(xq, xd, xs)
            })
            .collect()
    }

    #[test]
    #[should_panic(expected = "activations differ")]
    fn a_q6_k_row_longer_than_its_activations_is_refused() {
        let row = vec![0u8; 2 * 210];
        // One super-block of activations for two of weights.
        dot_q6_k(&row, &[0i8; 256], &[0.0; 8]);
    }

    #[test]
    fn four_rows_at_once_equal_one_at_a_time() {
        let mut seed = 11;
        for blocks in [1, 2, 7, 32] {
            for bytes in [34, 18] {
                let (row, _, _) = data(blocks, bytes, &mut seed);
                let acts = activations(4, blocks, bytes, &mut seed);
                let x: [Q8Row; 4] = std::array::from_fn(|k| acts[k].row());
                let (four, one): ([f32; 4], [f32; 4]) = if bytes == 34 {
                    (dot_q8_0_n(&row, x), x.map(|r| dot_q8_0(&row, r.xq, r.xd, r.xs)))
                } else {
                    (dot_q4_0_n(&row, x), x.map(|r| dot_q4_0(&row, r.xq, r.xd, r.xs)))
                };
                assert_eq!(four, one, "{blocks} blocks of {bytes} bytes");
                let scalar = if bytes == 34 { scalar::dot_q8_0_n(&row, x) } else { scalar::dot_q4_0_n(&row, x) };
                for (a, b) in four.iter().zip(scalar) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{blocks} x {bytes}: {a} vs scalar {b}");
                }
            }
        }
    }

    #[test]
    fn laid_out_activations_give_the_same_sums_bit_for_bit() {
        let mut seed = 13;
        for blocks in [1, 2, 3, 8, 33] {
            for (bytes, kind) in [(34, LaneKind::Q8_0), (18, LaneKind::Q4_0)] {
                let (row, _, _) = data(blocks, bytes, &mut seed);
                let acts = activations(3, blocks, bytes, &mut seed);
                let x: [Q8Row; 3] = std::array::from_fn(|k| acts[k].row());
                let lanes = x.map(|r| Lanes::new(r, kind));
                assert_eq!(lanes[0].laid_out(), PAIR_KERNELS && blocks >= 2);
                let l = [&lanes[0], &lanes[1], &lanes[2]];
                let (laid, plain) = match kind {
                    LaneKind::Q8_0 => (dot_q8_0_lanes(&row, l), dot_q8_0_n(&row, x)),
                    LaneKind::Q4_0 => (dot_q4_0_lanes(&row, l), dot_q4_0_n(&row, x)),
                };
                assert_eq!(laid, plain, "{kind:?}, {blocks} blocks");
            }
        }
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx512vnni", target_feature = "avx512vl"))]
    #[test]
    #[should_panic(expected = "another format")]
    fn activations_laid_out_for_another_format_are_refused() {
        let (xq, xd) = (vec![1i8; 64], vec![1.0f32; 2]);
        let xs = block_sums(&xq);
        let l = Lanes::new(Q8Row { xq: &xq, xd: &xd, xs: &xs }, LaneKind::Q4_0);
        dot_q8_0_lanes(&[0u8; 68], [&l]);
    }

    #[test]
    fn kernels_equal_their_scalar_twins() {
        let mut seed = 7;
        for blocks in [1, 2, 7, 32, 113] {
            let (row, xq, xd) = data(blocks, 34, &mut seed);
            let xs = block_sums(&xq);
            let (a, b) = (dot_q8_0(&row, &xq, &xd, &xs), scalar::dot_q8_0(&row, &xq, &xd, &xs));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "Q8_0 x{blocks}: {a} vs {b}");
            let (row, xq, xd) = data(blocks, 18, &mut seed);
            let xs = block_sums(&xq);
            let (a, b) = (dot_q4_0(&row, &xq, &xd, &xs), scalar::dot_q4_0(&row, &xq, &xd, &xs));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "Q4_0 x{blocks}: {a} vs {b}");
        }
        for supers in [1, 3, 8] {
            // Q6_K: super-blocks of 210 bytes (d last) against 8 activation blocks each.
            let (mut row, xq, xd) = data(8 * supers, 32, &mut seed);
            row.truncate(210 * supers);
            for blk in row.chunks_exact_mut(210) {
                blk[208..].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            }
            let (a, b) = (dot_q6_k(&row, &xq, &xd), scalar::dot_q6_k(&row, &xq, &xd));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "Q6_K x{supers}: {a} vs {b}");
        }
    }

    /// A run of rows in one call (the decode path) gives each row what it gets alone, bit for
    /// bit, and what the scalar twin gives; a run that is not whole rows is refused.
    #[test]
    fn a_run_of_rows_equals_the_rows_one_at_a_time() {
        let kinds = [
            (Super::Q3K, &[108][..]),
            (Super::Q4K, &[0, 2]),
            (Super::Q5K, &[0, 2]),
            (Super::Q6K, &[208]),
            (Super::IQ4XS, &[0]),
        ];
        let mut seed = 11;
        for (kind, scales) in kinds {
            let (n, supers, bytes) = (7, 2, kind.bytes());
            let (mut rows, xq, xd) = data(8 * n * supers, 32, &mut seed);
            rows.truncate(n * supers * bytes);
            for (i, blk) in rows.chunks_exact_mut(bytes).enumerate() {
                for (k, &at) in scales.iter().enumerate() {
                    let v = half::f16::from_f32(0.01 + 0.001 * i as f32 - 0.007 * k as f32);
                    blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            let (xq, xd) = (&xq[..256 * supers], &xd[..8 * supers]);
            let xs = block_sums(xq);
            let x = Q8Row { xq, xd, xs: &xs };
            let (mut run, mut twin) = (vec![0.0; n], vec![0.0; n]);
            dot_super_rows(kind, &rows, x, &mut run);
            scalar::dot_super_rows(kind, &rows, x, &mut twin);
            // the rows' sums cancel: the tolerance is relative to the largest of them
            let tol = 1e-5 * twin.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (r, row) in rows.chunks_exact(supers * bytes).enumerate() {
                assert_eq!(run[r].to_bits(), dot_super(kind, row, x).to_bits(), "{kind:?} row {r}");
                assert!((run[r] - twin[r]).abs() <= tol, "{kind:?} row {r}: {run:?} vs {twin:?}");
            }
            let short = std::panic::catch_unwind(|| dot_super_rows(kind, &rows[1..], x, &mut [0.0; 7]));
            assert!(short.is_err(), "{kind:?}: a run of partial rows was taken");
        }
    }

    #[test]
    fn super_block_kernels_equal_their_scalar_twins_and_the_decoded_rows() {
        type Kernel = fn(&[u8], Q8Row) -> f32;
        type Decode = fn(&[u8], &mut [f32]);
        /// name, block bytes, offsets of the f16 scales, kernel, scalar twin, decoder
        type Case = (&'static str, usize, &'static [usize], Kernel, Kernel, Decode);
        let cases: [Case; 4] = [
            (
                "Q4_K",
                144,
                &[0, 2],
                |r, x| dot_q45_k(r, x, false),
                |r, x| scalar::dot_q45_k(r, x, false),
                crate::quants::decode_q4_k,
            ),
            (
                "Q5_K",
                176,
                &[0, 2],
                |r, x| dot_q45_k(r, x, true),
                |r, x| scalar::dot_q45_k(r, x, true),
                crate::quants::decode_q5_k,
            ),
            ("Q3_K", 110, &[108], dot_q3_k, scalar::dot_q3_k, crate::quants::decode_q3_k),
            ("IQ4_XS", 136, &[0], dot_iq4_xs, scalar::dot_iq4_xs, crate::quants::decode_iq4_xs),
        ];
        let mut seed = 3;
        for (name, bytes, scales, kernel, twin, decode) in cases {
            for supers in [1, 3, 8] {
                let (mut row, xq, xd) = data(8 * supers, 32, &mut seed);
                row.truncate(bytes * supers);
                for blk in row.chunks_exact_mut(bytes) {
                    for (k, &at) in scales.iter().enumerate() {
                        let v = half::f16::from_f32(0.01 - 0.007 * k as f32);
                        blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
                    }
                }
                let xs = block_sums(&xq);
                let x = Q8Row { xq: &xq, xd: &xd, xs: &xs };
                let (a, b) = (kernel(&row, x), twin(&row, x));
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name} x{supers}: {a} vs scalar {b}");
                // the twin against the decoded row and activations, in f64
                let mut w = vec![0.0f32; 256 * supers];
                decode(&row, &mut w);
                let terms = w.iter().enumerate().map(|(j, &v)| v as f64 * (xd[j / 32] * xq[j] as f32) as f64);
                let (exact, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                assert!((b as f64 - exact).abs() <= 1e-5 * scale, "{name} x{supers}: {b} vs decoded {exact}");
            }
        }
    }

    #[test]
    fn blocks_of_32_kernels_equal_their_scalar_twins_and_the_decoded_rows() {
        let mut seed = 9;
        type Kernel = fn(&[u8], [Q8Row; 2]) -> [f32; 2];
        type Decode = fn(&[u8], &mut [f32]);
        let cases: [(usize, Kernel, Kernel, Decode); 4] = [
            (22, dot_q5_0_n::<2>, scalar::dot_q5_0_n::<2>, crate::quants::decode_q5_0),
            (20, dot_q4_1_n::<2>, scalar::dot_q4_1_n::<2>, crate::quants::decode_q4_1),
            (24, dot_q5_1_n::<2>, scalar::dot_q5_1_n::<2>, crate::quants::decode_q5_1),
            (18, dot_iq4_nl_n::<2>, scalar::dot_iq4_nl_n::<2>, crate::quants::decode_iq4_nl),
        ];
        for (bytes, kernel, twin, decode) in cases {
            for blocks in [1, 2, 7, 14] {
                let (mut row, xq0, xd0) = data(blocks, bytes, &mut seed);
                if bytes == 20 || bytes == 24 {
                    // Q4_1 and Q5_1 carry a finite f16 offset m after d
                    for b in row.chunks_exact_mut(bytes) {
                        b[2..4].copy_from_slice(&half::f16::from_f32(-0.02).to_bits().to_le_bytes());
                    }
                }
                let (_, xq1, xd1) = data(blocks, bytes, &mut seed);
                let (xs0, xs1) = (block_sums(&xq0), block_sums(&xq1));
                let x = [Q8Row { xq: &xq0, xd: &xd0, xs: &xs0 }, Q8Row { xq: &xq1, xd: &xd1, xs: &xs1 }];
                let (got, want) = (kernel(&row, x), twin(&row, x));
                let mut w = vec![0.0f32; 32 * blocks];
                decode(&row, &mut w);
                for k in 0..2 {
                    let (a, b) = (got[k], want[k]);
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{bytes}-byte x{blocks}: {a} vs scalar {b}");
                    let (xq, xd) = if k == 0 { (&xq0, &xd0) } else { (&xq1, &xd1) };
                    let terms = w.iter().enumerate().map(|(j, &v)| v as f64 * (xd[j / 32] * xq[j] as f32) as f64);
                    let (exact, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    assert!((b as f64 - exact).abs() <= 1e-5 * scale, "{bytes}-byte x{blocks}: {b} vs decoded {exact}");
                }
            }
        }
    }

    /// Where AVX-512 VNNI runs, the 256-bit kernels still run its odd tails: test them whole.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[test]
    fn the_256_bit_kernels_equal_their_scalar_twins() {
        let mut seed = 5;
        for blocks in [1, 2, 7, 33] {
            for (bytes, kernel, twin) in [
                (
                    34,
                    x86::dot_q8_0_n::<2> as fn(&[u8], [Q8Row; 2]) -> [f32; 2],
                    scalar::dot_q8_0_n::<2> as fn(&[u8], [Q8Row; 2]) -> [f32; 2],
                ),
                (18, x86::dot_q4_0_n::<2>, scalar::dot_q4_0_n::<2>),
            ] {
                let (row, xq0, xd0) = data(blocks, bytes, &mut seed);
                let (_, xq1, xd1) = data(blocks, bytes, &mut seed);
                let (xs0, xs1) = (block_sums(&xq0), block_sums(&xq1));
                let x = [Q8Row { xq: &xq0, xd: &xd0, xs: &xs0 }, Q8Row { xq: &xq1, xd: &xd1, xs: &xs1 }];
                for (a, b) in kernel(&row, x).into_iter().zip(twin(&row, x)) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{blocks} x {bytes}: {a} vs scalar {b}");
                }
            }
        }
        // w = -128 against x = -127 in every lane: the largest pair sum of vpmaddubsw
        let mut row = vec![0x80u8; 34];
        row[..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
        let (xq, xd) = (vec![-127i8; 32], vec![1.0f32]);
        let xs = block_sums(&xq);
        assert_eq!(x86::dot_q8_0_n(&row, [Q8Row { xq: &xq, xd: &xd, xs: &xs }]), [32.0 * 128.0 * 127.0]);
    }

    #[test]
    fn extreme_values_are_exact_in_integers() {
        // w = -128 and x = -127 in every lane, then w = 127 and x = 127: 32 * 128 * 127 and
        // 32 * 127 * 127 per block, for one block alone and for pairs of blocks.
        for (w, x) in [(0x80u8, -127i8), (0x7f, 127)] {
            let want = 32.0 * (w as i8 as f32) * x as f32;
            for blocks in [1, 2, 3] {
                let mut row = vec![w; 34 * blocks];
                for b in row.chunks_exact_mut(34) {
                    b[..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
                }
                let (xq, xd) = (vec![x; 32 * blocks], vec![1.0f32; blocks]);
                let xs = block_sums(&xq);
                assert_eq!(dot_q8_0(&row, &xq, &xd, &xs), want * blocks as f32, "{blocks} blocks of {w}, {x}");
                assert_eq!(scalar::dot_q8_0(&row, &xq, &xd, &xs), want * blocks as f32);
            }
        }
    }
}
