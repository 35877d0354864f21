//! Every block format of `quants` decodes bit for bit as gguf-py's reference dequantiser does
//! (fixtures by scripts/quant_fixtures.py): on random blocks (every bit pattern of the packed
//! scales and values) and on rows llama-quantize made with each common preset.

use moe_infer::quants::{format, FORMATS};
use moe_infer::weight::{quantize_q8_row, Dtype, Weight};
use safetensors::SafeTensors;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants").join(name)
}

/// (name, bytes, values) of every NAME.bytes / NAME.values pair.
fn pairs(st: &SafeTensors) -> Vec<(String, Vec<u8>, Vec<f32>)> {
    let mut names: Vec<String> = st.names().iter().filter_map(|n| n.strip_suffix(".bytes").map(String::from)).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let bytes = st.tensor(&format!("{n}.bytes")).unwrap().data().to_vec();
            let values = st.tensor(&format!("{n}.values")).unwrap();
            let values = values.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (n, bytes, values)
        })
        .collect()
}

/// Decodes `bytes` as `ty` and compares with gguf-py's values bit for bit (+0 and -0 equal).
fn check(what: &str, ty: &str, bytes: &[u8], want: &[f32]) {
    let f = format(ty).unwrap_or_else(|| panic!("{what}: no format {ty}"));
    assert_eq!(bytes.len() / f.bytes * f.values, want.len(), "{what}: sizes");
    let mut got = vec![f32::NAN; want.len()];
    (f.decode)(bytes, &mut got);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: value {i} (block {}) is {g}, gguf-py gives {w}", i / f.values);
    }
}

#[test]
fn every_format_decodes_random_blocks_as_gguf_py_does() {
    let bytes = std::fs::read(fixture("random.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut seen = BTreeSet::new();
    for (name, raw, values) in pairs(&st) {
        check(&name, &name, &raw, &values);
        seen.insert(name);
    }
    let all: BTreeSet<String> = FORMATS.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(seen, all, "every format has random blocks in the fixture");
    for f in &FORMATS {
        assert_eq!(Dtype::parse(f.name).and_then(|d| d.format()).map(|g| g.name), Some(f.name), "{}: a dtype", f.name);
    }
}
#[test]
fn rows_made_by_llama_quantize_decode_as_gguf_py_does() {
    let bytes = std::fs::read(fixture("llama_quantize.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut seen = BTreeSet::new();
    for (name, raw, values) in pairs(&st) {
        // PRESET/tensor/TYPE
        let ty = name.rsplit('/').next().unwrap();
        check(&name, ty, &raw, &values);
        seen.insert(ty.to_string());
        integer_dot_matches_decoded_row(&name, ty, raw, &values);
    }
    let all: BTreeSet<String> = FORMATS.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(seen, all, "the presets wrote every format");
}

/// Where the type has an integer kernel, row . x with x quantised to Q8_0 blocks equals the
/// decoded row . the decoded x (to rounding), through the engine's own dispatch.
fn integer_dot_matches_decoded_row(what: &str, ty: &str, raw: Vec<u8>, values: &[f32]) {
    let dtype = Dtype::parse(ty).unwrap();
    if !dtype.has_q8_dot() {
        return;
    }
    let cols = 256; // the fixture model's width
    let rows = values.len() / cols;
    let w = Weight::from_bytes(raw, dtype, rows, cols).unwrap();
    let x: Vec<f32> = (0..cols).map(|j| ((j * 37 % 101) as f32 / 50.0 - 1.0) * 0.3).collect();
    let (mut xq, mut xd) = (vec![0i8; cols], vec![0.0f32; cols / 32]);
    quantize_q8_row(&x, &mut xq, &mut xd);
    let xs = moe_infer::qdot::block_sums(&xq);
    for (r, row) in values.chunks_exact(cols).enumerate() {
        let terms = row.iter().enumerate().map(|(j, &v)| v as f64 * (xd[j / 32] * xq[j] as f32) as f64);
        let (want, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
        let got = w.dot_row_q8(r, &xq, &xd, &xs) as f64;
        assert!((got - want).abs() <= 1e-5 * scale, "{what} row {r}: integer dot {got}, decoded {want}");
    }
}
