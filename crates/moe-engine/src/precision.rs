//! The precision of a run's matrix products, and `auto`: which one is faster here.
//!
//! bf16 (AMX or AVX512-BF16, f32 accumulation) halves the bytes a product reads, but whether it
//! is faster depends on the CPU and the shapes: on a Xeon with AVX512-BF16 and no AMX it trains
//! at about 0.56x of fp32. So `auto` times one forward + backward pass of the run's own model
//! and batch in each precision (random tokens; the weights, data order and optimizer are not
//! touched) and keeps bf16 only when it is at least `BF16_MARGIN` faster. The measured times
//! are cached per CPU, thread count, model and batch shape in `<cache>/precision.json`
//! (`$MOE_CACHE_DIR`, else `~/.cache/moe`), so the same run on the same machine decides the same
//! way without measuring again. An explicit `bf16` that measures slower runs, with a warning
//! that gives the ratio.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::train::Trainer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// bf16 must run a training pass at least this much faster than fp32 for `auto` to take it
/// (below that, fp32's exact products are worth more than a few percent).
pub const BF16_MARGIN: f64 = 1.05;

/// Timed passes per precision (after one untimed pass each); the fastest of them counts.
const PASSES: usize = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where it measures faster for this model on this CPU, else fp32.
    Auto,
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    /// Sets the process-wide matmul precision; bf16 needs AMX or AVX512-BF16. `auto` (not yet
    /// resolved) computes in fp32.
    pub fn apply(self) -> Result<()> {
        if !moe_kernels::matmul::set_bf16_matmul(self == Precision::Bf16) {
            return Err(Error::config(
                "--precision bf16 needs a CPU with AMX-BF16 (Intel Sapphire Rapids or newer; Linux 5.16+) or AVX512-BF16 (AMD Zen 4 or newer, Intel Cooper Lake)",
                "train with --precision auto or fp32",
            ));
        }
        Ok(())
    }
}

/// The bf16 instructions this CPU offers, if any.
pub fn bf16_kernel() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    return match moe_kernels::bf16::kernel() {
        Some(moe_kernels::bf16::Kernel::Amx) => Some("AMX"),
        Some(moe_kernels::bf16::Kernel::Dpbf16) => Some("AVX512-BF16"),
        None => None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    None
}

impl std::fmt::Display for Precision {
    /// "fp32", "auto", or "bf16" with the instructions this CPU runs it on.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Precision::Auto => f.write_str("auto"),
            Precision::Fp32 => f.write_str("fp32"),
            Precision::Bf16 => match bf16_kernel() {
                Some(k) => write!(f, "bf16 ({k}, fp32 accumulation)"),
                None => f.write_str("bf16 (fp32 accumulation)"),
            },
        }
    }
}

/// Seconds of one forward + backward pass in each precision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub fp32_s: f64,
    pub bf16_s: f64,
}

impl Timing {
    /// bf16's speed relative to fp32 (> 1: bf16 is faster).
    pub fn bf16_speedup(&self) -> f64 {
        self.fp32_s / self.bf16_s
    }
}

/// What `resolve` chose and why, for the run's log.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub precision: Precision,
    /// The reason, or for an explicit bf16 that measured slower, the warning.
    pub note: String,
    /// The note is a warning (an explicit bf16 slower than fp32).
    pub warn: bool,
}

/// `auto`'s choice for a timing: bf16 only when it is at least `BF16_MARGIN` faster.
pub fn choose(t: &Timing) -> Precision {
    if t.bf16_speedup() >= BF16_MARGIN {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// The calibration file: `$MOE_CACHE_DIR/precision.json`, else `~/.cache/moe/precision.json`.
pub fn cache_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("MOE_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/moe"),
    };
    Some(dir.join("precision.json"))
}

/// This CPU, its bf16 instructions and the thread count: what a calibration holds for.
fn cpu_key() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}; {}; {} threads", bf16_kernel().unwrap_or("no bf16"), rayon::current_num_threads())
}

fn read_cache(path: &PathBuf) -> BTreeMap<String, Timing> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Records a calibration (best effort: a cache that cannot be written only costs a new
/// measurement next time).
fn write_cache(path: &PathBuf, key: &str, t: Timing) {
    let mut all = read_cache(path);
    all.insert(key.to_string(), t);
    if let (Some(dir), Ok(bytes)) = (path.parent(), serde_json::to_vec_pretty(&all)) {
        if std::fs::create_dir_all(dir).is_ok() {
            let _ = crate::checkpoint::write_atomic(path, &bytes);
        }
    }
}

/// Seconds as milliseconds with three significant digits or more.
fn ms(s: f64) -> String {
    let ms = 1e3 * s;
    match ms {
        m if m >= 100.0 => format!("{m:.0} ms"),
        m if m >= 1.0 => format!("{m:.1} ms"),
        m => format!("{m:.3} ms"),
    }
}

impl Trainer {
    /// "matrix products in <precision>", with why when `auto` chose it, or the warning when an
    /// explicit bf16 measured slower than fp32.
    pub fn precision_line(&self) -> String {
        let p = self.state.train.precision;
        match &self.precision_decision {
            Some(d) if d.warn => format!("matrix products in {p}; warning: {}", d.note),
            Some(d) => format!("matrix products in {p} ({})", d.note),
            None => format!("matrix products in {p}"),
        }
    }

    /// Switches the process's matrix products to this run's precision (several trainers may
    /// share a process: compare, bench). Resolved and checked at construction, so it holds.
    pub(crate) fn use_precision(&self) {
        moe_kernels::matmul::set_bf16_matmul(self.state.train.precision == Precision::Bf16);
    }

    /// This run's calibration key: the CPU, the model and the batch shape.
    fn precision_key(&self) -> String {
        let tc = &self.state.train;
        let model = serde_json::to_string(&self.model.cfg).unwrap_or_default();
        let h = crate::dataset::fnv(model.as_bytes(), crate::dataset::FNV_OFFSET);
        let ranks = self.rank().1;
        format!(
            "{}; model {h:016x}; batch {}x{}; {} replicas; {ranks} ranks",
            cpu_key(),
            tc.batch_size,
            tc.seq_len,
            self.replicas()
        )
    }

    /// Times forward + backward in both precisions on random tokens (gradients are zeroed by
    /// the next step; weights, moments and the data order are untouched). All ranks of an
    /// expert-parallel job measure together and share the mean.
    fn calibrate(&mut self) -> Timing {
        let (b, t) = (self.state.train.batch_size, self.state.train.seq_len);
        let mut rng = Rng::new(0xCA1B);
        let v = self.model.cfg.vocab_size;
        let x: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
        let y: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
        self.reps.load(&x, &y);
        let mut best = [f64::INFINITY; 2];
        for pass in 0..=PASSES {
            for (i, bf16) in [false, true].into_iter().enumerate() {
                moe_kernels::matmul::set_bf16_matmul(bf16);
                let t0 = Instant::now();
                self.forward(None);
                self.loss(true);
                if pass > 0 {
                    best[i] = best[i].min(t0.elapsed().as_secs_f64());
                }
            }
        }
        let mut m = [best[0], best[1]];
        if let Some(d) = &self.dist {
            d.mean(&mut m);
        }
        self.reps.zero_grads(&mut self.grads, self.model.layout.grad_range());
        Timing { fp32_s: m[0], bf16_s: m[1] }
    }

    /// The timing of this run's passes: from the cache, or measured now (and cached). Ranks
    /// of a job agree: they measure unless every one of them found the same entry.
    fn precision_timing(&mut self) -> (Timing, &'static str) {
        let key = self.precision_key();
        let path = cache_path();
        let cached = path.as_ref().and_then(|p| read_cache(p).get(&key).copied());
        let agreed = match (&self.dist, cached) {
            (Some(d), Some(c)) => {
                let mut v = [1.0, c.fp32_s, c.bf16_s];
                d.mean(&mut v);
                (v[0] == 1.0).then_some(Timing { fp32_s: v[1], bf16_s: v[2] })
            }
            (Some(d), None) => {
                d.mean(&mut [0.0, 0.0, 0.0]);
                None
            }
            (None, c) => c,
        };
        if let Some(t) = agreed {
            return (t, "cached calibration");
        }
        let t = self.calibrate();
        if let (Some(p), 0) = (&path, self.rank().0) {
            write_cache(p, &key, t);
        }
        (t, "measured now")
    }

    /// Resolves `auto` into fp32 or bf16, and checks an explicit bf16 against fp32; sets the
    /// process-wide precision and returns what to tell the user (None for an explicit fp32).
    pub(crate) fn resolve_precision(&mut self) -> Result<Option<Decision>> {
        let asked = self.state.train.precision;
        let decision = match (asked, bf16_kernel()) {
            (Precision::Fp32, _) => None,
            (Precision::Auto, None) => Some(Decision {
                precision: Precision::Fp32,
                note: "auto: fp32, this CPU has neither AMX-BF16 nor AVX512-BF16".into(),
                warn: false,
            }),
            (_, Some(kernel)) => {
                let (t, how) = self.precision_timing();
                // as printed (2 decimals), so that "0.99x" always comes with the warning
                let x = (t.bf16_speedup() * 100.0).round() / 100.0;
                let measured = format!(
                    "a forward + backward pass of this model and batch takes {} in fp32 and {} in bf16 on {kernel} ({how})",
                    ms(t.fp32_s),
                    ms(t.bf16_s)
                );
                Some(match asked {
                    Precision::Auto => {
                        let p = choose(&t);
                        let why = match p {
                            Precision::Bf16 => format!("bf16 is {x:.2}x as fast"),
                            _ => format!("bf16 runs at {x:.2}x of fp32's speed (needs >= {BF16_MARGIN}x)"),
                        };
                        Decision { precision: p, note: format!("auto: {p}: {why}; {measured}"), warn: false }
                    }
                    _ if x < 1.0 => Decision {
                        precision: Precision::Bf16,
                        note: format!(
                            "--precision bf16 runs at {x:.2}x of fp32's speed on this CPU: {measured}; --precision auto or fp32 trains faster"
                        ),
                        warn: true,
                    },
                    _ => Decision {
                        precision: Precision::Bf16,
                        note: format!("bf16 is {x:.2}x as fast as fp32: {measured}"),
                        warn: false,
                    },
                })
            }
            // the apply below says why bf16 cannot run here
            (Precision::Bf16, None) => None,
        };
        if let Some(d) = &decision {
            self.state.train.precision = d.precision;
        }
        self.state.train.precision.apply()?;
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_bf16_only_when_clearly_faster() {
        let t = |fp32_s, bf16_s| Timing { fp32_s, bf16_s };
        assert_eq!(choose(&t(1.0, 1.79)), Precision::Fp32);
        assert_eq!(choose(&t(1.0, 0.99)), Precision::Fp32);
        assert_eq!(choose(&t(1.0, 0.9)), Precision::Bf16);
        assert_eq!(choose(&t(1.0, 0.5)), Precision::Bf16);
    }

    #[test]
    fn precision_names_round_trip() {
        for p in [Precision::Auto, Precision::Fp32, Precision::Bf16] {
            let s = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Precision>(&s).unwrap(), p);
        }
        assert_eq!(serde_json::to_string(&Precision::Auto).unwrap(), "\"auto\"");
    }

    /// Calibrating (both precisions, forward + backward on random tokens) before training
    /// leaves the run exactly as it would have been: same losses, same weights.
    #[test]
    fn calibration_does_not_touch_the_run() {
        let cfg = crate::config::ModelConfig::preset("tiny").unwrap();
        let tc = crate::train::TrainConfig { batch_size: 2, seq_len: 16, steps: 3, ..Default::default() };
        let mut rng = Rng::new(3);
        let data: Vec<u32> = (0..4096).map(|_| rng.below(cfg.vocab_size) as u32).collect();
        let mut losses = vec![];
        let mut weights = vec![];
        for calibrate in [false, true] {
            let mut tr = Trainer::new(cfg.clone(), tc.clone(), "k".into()).unwrap();
            if calibrate {
                let t = tr.calibrate();
                assert!(t.fp32_s > 0.0 && t.bf16_s > 0.0, "{t:?}");
                tr.state.train.precision.apply().unwrap();
            }
            losses.push((0..3).map(|_| tr.step(&data).unwrap().loss).collect::<Vec<_>>());
            weights.push(tr.params.clone());
        }
        assert_eq!(losses[0], losses[1]);
        assert!(weights[0] == weights[1], "calibration changed the weights");
    }

    #[test]
    fn cache_round_trips_and_survives_garbage() {
        let dir = std::env::temp_dir().join(format!("moe-precision-{}", std::process::id()));
        let path = dir.join("precision.json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        assert!(read_cache(&path).is_empty());
        let t = Timing { fp32_s: 0.25, bf16_s: 0.5 };
        write_cache(&path, "cpu; model 1", t);
        write_cache(&path, "cpu; model 2", Timing { fp32_s: 1.0, bf16_s: 0.5 });
        let back = read_cache(&path);
        assert_eq!(back.get("cpu; model 1"), Some(&t));
        assert_eq!(back.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
