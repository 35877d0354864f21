//! A structure-aware fuzz loop over config.json: for every fixture family, every field (top
//! level and inside `rope_scaling`) set in turn to zero, a negative, a fraction, a huge number,
//! null, a string, a list and a removal. Loading must end in a model or an error, and a model
//! that loads must run a forward pass (or return an error): never a panic.

mod common;
use moe_infer::{Cache, Model};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A copy of `src` whose files are symlinks, except config.json, which is `config`.
fn with_config(src: &Path, dst: &Path, config: &Value) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "config.json" {
            std::os::unix::fs::symlink(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(dst.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
}

/// Loads and runs the model; Err(message) on a panic.
fn try_model(dir: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    common::no_panic(move || {
        if let Ok(m) = Model::load(&dir) {
            let _ = m.forward(&[1, 2, 3], &mut Cache::new(&m.spec), false);
        }
    })
}

#[test]
fn no_config_field_value_makes_loading_or_running_panic() {
    let values = [json!(0), json!(-1), json!(0.5), json!(1e12), json!(null), json!("x"), json!([1])];
    let tmp = tempfile::tempdir().unwrap();
    let mut panics = vec![];
    let mut runs = 0;
    for family in ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "granitemoe", "phimoe", "gpt_oss"] {
        let src = fixtures().join(family);
        let base: Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        let mut paths: Vec<Vec<String>> = base.as_object().unwrap().keys().map(|k| vec![k.clone()]).collect();
        if let Some(Value::Object(rs)) = base.get("rope_scaling") {
            paths.extend(rs.keys().map(|k| vec!["rope_scaling".to_string(), k.clone()]));
        }
        for path in &paths {
            for v in values.iter().map(Some).chain([None]) {
                let mut cfg = base.clone();
                let mut obj = &mut cfg;
                for p in &path[..path.len() - 1] {
                    obj = obj.get_mut(p).unwrap();
                }
                let map = obj.as_object_mut().unwrap();
                let last = &path[path.len() - 1];
                match v {
                    Some(v) => map.insert(last.clone(), v.clone()),
                    None => map.remove(last),
                };
                let dir = tmp.path().join("m");
                with_config(&src, &dir, &cfg);
                runs += 1;
                if let Err(msg) = try_model(&dir) {
                    panics.push(format!(
                        "{family}: {} = {}: {msg}",
                        path.join("."),
                        v.map_or("(removed)".into(), |v| v.to_string())
                    ));
                }
            }
        }
    }
    assert!(runs > 500, "only {runs} configs tried");
    assert!(panics.is_empty(), "{} of {runs} configs panicked:\n{}", panics.len(), panics.join("\n"));
}
