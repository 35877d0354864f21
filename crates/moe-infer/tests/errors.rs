//! Bad checkpoints give clear errors naming the file and tensor, never a panic: a missing shard,
//! a truncated or corrupt file, a tensor of the wrong shape or an unsupported dtype, a missing
//! tensor, an unknown architecture, a broken config, out-of-vocabulary ids.

use moe_infer::{Cache, Model};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A writable copy of a fixture.
fn copy(name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, t.path().join(p.file_name().unwrap())).unwrap();
    }
    t
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites model.safetensors, passing each (name, dtype, shape, bytes) through `edit` (None drops it).
fn rewrite(dir: &Path, edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| edit(&n, t.dtype(), t.shape().to_vec(), t.data().to_vec()).map(|(d, s, b)| (n, d, s, b)))
        .collect();
    let views: Vec<(String, TensorView)> =
        kept.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

const Q: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn missing_shard_names_the_file() {
    let t = copy("mixtral");
    std::fs::remove_file(t.path().join("model-00002-of-00004.safetensors")).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("model-00002-of-00004.safetensors") && e.contains("shard missing"), "{e}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let t = copy("olmoe");
    let p = t.path().join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 2).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn corrupt_header_is_an_error() {
    let t = copy("olmoe");
    std::fs::write(t.path().join("model.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(load_err(t.path()).contains("not a valid safetensors file"));
    std::fs::write(t.path().join("model.safetensors"), b"").unwrap();
    assert!(load_err(t.path()).contains("not a valid safetensors file"));
}

#[test]
fn wrong_shape_names_tensor_file_and_shapes() {
    let t = copy("olmoe");
    rewrite(t.path(), |n, d, s, b| Some((d, if n == Q { vec![16, 64] } else { s }, b)));
    let e = load_err(t.path());
    assert!(
        e.contains(Q) && e.contains("model.safetensors") && e.contains("[16, 64]") && e.contains("[32, 32]"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let t = copy("olmoe");
    rewrite(t.path(), |n, d, s, b| {
        if n != Q {
            return Some((d, s, b));
        }
        let wide: Vec<u8> =
            b.chunks_exact(4).flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes()).collect();
        Some((Dtype::F64, s, wide))
    });
    let e = load_err(t.path());
    assert!(e.contains(Q) && e.contains("F64") && e.contains("supported are"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let t = copy("olmoe");
    rewrite(t.path(), |n, d, s, b| (n != Q).then_some((d, s, b)));
    let e = load_err(t.path());
    assert!(e.contains(Q) && e.contains("no tensor"), "{e}");
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let t = copy("olmoe");
    let p = t.path().join("config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace("OlmoeForCausalLM", "FooForCausalLM");
    std::fs::write(&p, text).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("FooForCausalLM") && e.contains("MixtralForCausalLM") && e.contains("config.json"), "{e}");
}

#[test]
fn broken_config_is_named() {
    let t = copy("olmoe");
    let p = t.path().join("config.json");
    std::fs::write(&p, "{ not json").unwrap();
    assert!(load_err(t.path()).contains("not valid JSON"));
    let text =
        std::fs::read_to_string(fixture("olmoe").join("config.json")).unwrap().replace("\"hidden_size\"", "\"hidden\"");
    std::fs::write(&p, text).unwrap();
    assert!(load_err(t.path()).contains("`hidden_size`"));
    std::fs::remove_file(&p).unwrap();
    assert!(load_err(t.path()).contains("config.json"));
}

#[test]
fn missing_weights_and_bad_ids_are_errors() {
    let t = copy("olmoe");
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    std::fs::remove_file(t.path().join("reference.safetensors")).unwrap();
    assert!(load_err(t.path()).contains("no *.safetensors"));
    let m = Model::load(&fixture("olmoe")).unwrap();
    let mut c = Cache::new(&m.spec);
    assert!(m.forward(&[1, 100_000], &mut c, true).unwrap_err().to_string().contains("outside the vocabulary"));
    assert!(m.forward(&[], &mut c, true).is_err());
}

#[test]
fn shard_paths_outside_the_folder_are_refused() {
    for evil in ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", ""] {
        let t = copy("mixtral");
        let p = t.path().join("model.safetensors.index.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let map = v["weight_map"].as_object_mut().unwrap();
        let first = map.keys().next().unwrap().clone();
        map.insert(first.clone(), serde_json::Value::String(evil.into()));
        std::fs::write(&p, v.to_string()).unwrap();
        let e = load_err(t.path());
        assert!(e.contains("leaves the model folder") && e.contains(&first), "{evil}: {e}");
    }
}

/// The `config_json` fuzz target's find: a layer count of about 5 x 10^13 made parsing fill
/// per-layer tables until its timeout. Refused at once, naming the field; a thread bounds the
/// wait so a regression fails instead of hanging.
#[test]
fn a_huge_layer_count_is_refused_at_once() {
    let t = copy("mixtral");
    let p = t.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["num_hidden_layers"] = serde_json::json!(49_999_999_999_996u64);
    std::fs::write(&p, v.to_string()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = t.path().to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(load_err(&dir));
    });
    let e = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("still loading after 60 s");
    assert!(e.contains("num_hidden_layers") && e.contains("at most"), "{e}");
}

#[test]
fn a_rotary_dimension_beyond_the_head_is_refused() {
    let t = copy("olmoe");
    let p = t.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["partial_rotary_factor"] = serde_json::json!(2.0);
    std::fs::write(&p, v.to_string()).unwrap();
    let e = load_err(t.path());
    assert!(e.contains("partial_rotary_factor") && e.contains("exceeds the head dimension"), "{e}");
}
