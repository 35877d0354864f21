//! Rotary position embeddings as Hugging Face computes them, for both engines: the default,
//! linear, Llama 3, YaRN and LongRoPE frequency schedules, the attention factor that scales
//! cos/sin, and two layouts: rotate-half (pairs i, i + d/2) and interleaved (pairs 2i, 2i+1,
//! DeepSeek), whose output is written de-interleaved as transformers does. The training model
//! takes the schedule's frequencies and factor for its tables (`Model::sharded`); the
//! inference model also `tables` and `apply`.

use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Rope {
    /// Rotary dimensions (the first `dim` of a head).
    pub dim: usize,
    pub inv_freq: Vec<f64>,
    /// LongRoPE: frequencies and cos/sin scale once the sequence is longer than `original`.
    pub long: Option<(Vec<f64>, f64)>,
    pub original: usize,
    /// Scale of cos and sin (YaRN/LongRoPE attention factor).
    pub factor: f64,
    pub interleave: bool,
}

/// Reads a float field of the rope parameters.
fn f(p: &Value, key: &str) -> Option<f64> {
    p.get(key).and_then(|v| v.as_f64())
}

impl Rope {
    /// From config.json: `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x).
    /// `phimoe_mscale`: PhiMoE scales cos/sin by short_mscale/long_mscale and keeps the short
    /// frequencies. Returns an error message for an unknown rope type.
    pub fn from_config(
        cfg: &Value,
        dim: usize,
        max_pos: usize,
        interleave: bool,
        phimoe: bool,
    ) -> Result<Rope, String> {
        let mut p = serde_json::Map::new();
        if let Some(s) = cfg.get("rope_scaling").and_then(|v| v.as_object()) {
            p.extend(s.clone());
        }
        if let Some(t) = cfg.get("rope_theta") {
            p.insert("rope_theta".into(), t.clone());
        }
        if let Some(s) = cfg.get("rope_parameters").and_then(|v| v.as_object()) {
            p.extend(s.clone());
        }
        let p = Value::Object(p);
        let base = f(&p, "rope_theta").unwrap_or(10000.0);
        let kind = p.get("rope_type").or(p.get("type")).and_then(|v| v.as_str()).unwrap_or("default").to_string();
        let freqs = |scale: &dyn Fn(usize) -> f64| -> Vec<f64> {
            (0..dim / 2).map(|i| 1.0 / (scale(i) * base.powf((2 * i) as f64 / dim as f64))).collect()
        };
        let original = p.get("original_max_position_embeddings").and_then(|v| v.as_u64()).map(|v| v as usize);
        // scaling factors from a file: positive and finite, or an error naming them
        for key in ["factor", "low_freq_factor", "high_freq_factor", "attention_factor", "beta_fast", "beta_slow"] {
            if let Some(x) = f(&p, key).filter(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(format!("rope `{key}` is {x}; it must be a positive number"));
            }
        }
        if !(base.is_finite() && base > 1.0) {
            return Err(format!("rope_theta is {base}; it must be a number above 1"));
        }
        if original == Some(0) {
            return Err("rope original_max_position_embeddings is 0".into());
        }
        let mut rope =
            Rope { dim, inv_freq: freqs(&|_| 1.0), long: None, original: usize::MAX, factor: 1.0, interleave };
        match kind.as_str() {
            "default" => {}
            "linear" => {
                let k = f(&p, "factor").ok_or("rope linear without `factor`")?;
                rope.inv_freq = freqs(&|_| k);
            }
            "llama3" => {
                // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend between
                let orig = original.ok_or("llama3 rope without original_max_position_embeddings")? as f64;
                let k = f(&p, "factor").ok_or("rope llama3 without `factor`")?;
                let low = f(&p, "low_freq_factor").ok_or("rope llama3 without `low_freq_factor`")?;
                let high = f(&p, "high_freq_factor").ok_or("rope llama3 without `high_freq_factor`")?;
                if high <= low {
                    return Err(format!("rope llama3 needs high_freq_factor {high} > low_freq_factor {low}"));
                }
                let (low_wavelen, high_wavelen) = (orig / low, orig / high);
                for fr in rope.inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *fr;
                    if wavelen > low_wavelen {
                        *fr /= k;
                    } else if wavelen >= high_wavelen {
                        let smooth = (orig / wavelen - low) / (high - low);
                        *fr = (1.0 - smooth) * *fr / k + smooth * *fr;
                    }
                }
            }
            "yarn" => {
                let orig = original.ok_or("yarn rope without original_max_position_embeddings")? as f64;
                let factor = f(&p, "factor").unwrap_or(max_pos as f64 / orig);
                let mscale = |s: f64, m: f64| if s <= 1.0 { 1.0 } else { 0.1 * m * s.ln() + 1.0 };
                rope.factor = match (f(&p, "attention_factor"), f(&p, "mscale"), f(&p, "mscale_all_dim")) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => mscale(factor, m) / mscale(factor, ma),
                    _ => mscale(factor, 1.0),
                };
                let beta_fast = f(&p, "beta_fast").unwrap_or(32.0);
                let beta_slow = f(&p, "beta_slow").unwrap_or(1.0);
                let d = dim as f64;
                let corr = |rot: f64| d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
                let (mut lo, mut hi) = (corr(beta_fast), corr(beta_slow));
                if p.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true) {
                    (lo, hi) = (lo.floor(), hi.ceil());
                }
                let (lo, mut hi) = (lo.max(0.0), hi.min(d - 1.0));
                if lo == hi {
                    hi += 0.001;
                }
                rope.inv_freq = (0..dim / 2)
                    .map(|i| {
                        let pos = base.powf((2 * i) as f64 / d);
                        let extrapolate = 1.0 - ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                        (1.0 / (factor * pos)) * (1.0 - extrapolate) + (1.0 / pos) * extrapolate
                    })
                    .collect();
            }
            "longrope" => {
                let orig = original.ok_or("longrope without original_max_position_embeddings")?;
                let list = |k: &str| -> Result<Vec<f64>, String> {
                    let v = p.get(k).and_then(|v| v.as_array()).ok_or(format!("longrope without `{k}`"))?;
                    let v: Vec<f64> = v.iter().filter_map(|x| x.as_f64()).collect();
                    if v.len() != dim / 2 {
                        return Err(format!(
                            "longrope `{k}` has {} entries, rotary dim {dim} needs {}",
                            v.len(),
                            dim / 2
                        ));
                    }
                    Ok(v)
                };
                let (short, long) = (list("short_factor")?, list("long_factor")?);
                let factor = f(&p, "factor").unwrap_or(max_pos as f64 / orig as f64);
                let attn = f(&p, "attention_factor").unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / (orig as f64).ln()).sqrt()
                });
                rope.original = orig;
                rope.inv_freq = freqs(&|i| short[i]);
                if phimoe {
                    let m = |k: &str| f(&p, k).ok_or(format!("phimoe longrope without `{k}`"));
                    rope.factor = m("short_mscale")?;
                    rope.long = Some((rope.inv_freq.clone(), m("long_mscale")?));
                } else {
                    rope.factor = attn;
                    rope.long = Some((freqs(&|i| long[i]), attn));
                }
            }
            other => {
                return Err(format!(
                    "rope_type `{other}` is not supported (default, linear, llama3, yarn, longrope are)"
                ))
            }
        }
        Ok(rope)
    }

    /// cos and sin [t, dim/2] for positions pos0..pos0+t. `seq_len` picks LongRoPE's schedule.
    pub fn tables(&self, pos0: usize, t: usize, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
        let (inv, scale) = match &self.long {
            Some((inv, s)) if seq_len > self.original => (inv, *s),
            _ => (&self.inv_freq, self.factor),
        };
        let h = self.dim / 2;
        let (mut cos, mut sin) = (vec![0.0; t * h], vec![0.0; t * h]);
        for i in 0..t {
            for (j, &fr) in inv.iter().enumerate() {
                // transformers computes the angle in f32
                let a = ((pos0 + i) as f32 * fr as f32) as f64;
                cos[i * h + j] = (a.cos() * scale) as f32;
                sin[i * h + j] = (a.sin() * scale) as f32;
            }
        }
        (cos, sin)
    }

    /// Rotates the first `dim` values of one head vector x, at the row of cos/sin given.
    pub fn apply(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let h = self.dim / 2;
        if self.interleave {
            let mut tmp = [0.0f32; 512];
            let tmp = &mut tmp[..self.dim];
            for i in 0..h {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                tmp[i] = a * cos[i] - b * sin[i];
                tmp[i + h] = b * cos[i] + a * sin[i];
            }
            x[..self.dim].copy_from_slice(tmp);
        } else {
            for i in 0..h {
                let (a, b) = (x[i], x[i + h]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + h] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// DeepSeek's attention scale: 1/sqrt(d), times YaRN's mscale(factor, mscale_all_dim)^2 when
/// its rope parameters (`rope_parameters` or `rope_scaling` of config.json) scale RoPE.
pub fn deepseek_attention_scale(d: usize, params: Option<&Value>) -> f64 {
    let get = |k: &str| params.and_then(|p| p.get(k)).and_then(|x| x.as_f64());
    let kind = params.and_then(|p| p.get("rope_type").or(p.get("type"))).and_then(|x| x.as_str());
    let scale = (d as f64).powf(-0.5);
    match (kind, get("mscale_all_dim"), get("factor")) {
        (Some(k), Some(m), Some(fac)) if k != "default" && m != 0.0 && fac > 1.0 => {
            let ms = 0.1 * m * fac.ln() + 1.0;
            scale * ms * ms
        }
        _ => scale,
    }
}
