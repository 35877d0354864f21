//! Test helpers: a seeded generator and a central finite-difference gradient check in f64.
#![allow(dead_code)]

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
    pub fn vec32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform() as f32).collect()
    }
}

/// Compares `analytic` (dL/dx) with central differences of `loss` around `x`.
pub fn check_grad(name: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let h = 1e-6;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + h;
        let lp = loss(&xp);
        xp[i] = x[i] - h;
        let lm = loss(&xp);
        xp[i] = x[i];
        let num = (lp - lm) / (2.0 * h);
        let err = (num - analytic[i]).abs();
        let tol = 1e-6 * (1.0 + num.abs().max(analytic[i].abs()));
        assert!(err <= tol, "{name}[{i}]: analytic {} vs numeric {num} (err {err:e})", analytic[i]);
    }
}

pub fn dotp(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
