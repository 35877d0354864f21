//! A checkpoint's tensors, memory-mapped: the safetensors shards of a directory (through
//! model.safetensors.index.json when present), headers parsed, data left in the page cache.
//! Nothing is copied at open time; `Weight`s point into the maps.

use crate::error::{io, Error, Result};
use crate::weight::{Bytes, Dtype, Weight};
use memmap2::Mmap;
use safetensors::SafeTensors;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct Entry {
    pub shard: usize,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range inside the shard's map.
    pub start: usize,
    pub end: usize,
}

pub struct TensorStore {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    maps: Vec<Arc<Bytes>>,
    pub entries: HashMap<String, Entry>,
}

impl TensorStore {
    /// Opens every shard of `dir`: the files named by model.safetensors.index.json, else
    /// model.safetensors, else every *.safetensors file.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let (files, index) = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io(&index_path))?;
            let bad = |msg: &str| Error::Format { path: index_path.clone(), msg: msg.to_string() };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object"))?;
            let mut index = HashMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| bad(&format!("weight_map[{name}] is not a file name")))?;
                // Shards live in the model folder: no `..`, no absolute path.
                let inside =
                    std::path::Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if !inside || file.is_empty() {
                    return Err(bad(&format!(
                        "weight_map[{name}] = `{file}` leaves the model folder; shards must be files inside it"
                    )));
                }
                index.insert(name.clone(), file.to_string());
            }
            let files: BTreeSet<String> = index.values().cloned().collect();
            (files.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(), Some(index))
        } else if dir.join("model.safetensors").exists() {
            (vec![dir.join("model.safetensors")], None)
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            (files, None)
        };
        if files.is_empty() {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                msg: "no *.safetensors weights here; download the model's safetensors files (not .bin/.pt)".into(),
            });
        }
        let mut store = TensorStore { dir: dir.to_path_buf(), files: vec![], maps: vec![], entries: HashMap::new() };
        for path in files {
            store.add_shard(&path)?;
        }
        if let Some(index) = index {
            for (name, file) in index {
                let e = store.entries.get(&name);
                if e.is_none_or(|e| store.files[e.shard].file_name() != Some(file.as_ref())) {
                    return Err(Error::Format {
                        path: dir.join(&file),
                        msg: format!("the index places `{name}` here but the file has no such tensor"),
                    });
                }
            }
        }
        Ok(store)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Format {
                path: path.to_path_buf(),
                msg: "shard missing: the index names it but it is not on disk; download it again".into(),
            },
            _ => Error::Io { path: path.to_path_buf(), source: e },
        })?;
        // SAFETY: the map is read-only; a checkpoint changed on disk while we run is undefined
        // behaviour we accept, as every mmap-based loader does.
        let map = unsafe { Mmap::map(&file) }.map_err(io(path))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a valid safetensors file ({e}); truncated or corrupt download?"),
        })?;
        let shard = self.files.len();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            let entry = Entry {
                shard,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                start: 8 + n + a,
                end: 8 + n + b,
            };
            if let Some(prev) = self.entries.insert(name.clone(), entry) {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    msg: format!("tensor `{name}` is also in {}", self.files[prev.shard].display()),
                });
            }
        }
        self.files.push(path.to_path_buf());
        self.maps.push(Arc::new(Bytes::Map(map, file)));
        Ok(())
    }

    /// A store over one map with the given entries (a GGUF file).
    pub(crate) fn from_map(path: &Path, map: Arc<Bytes>, entries: HashMap<String, Entry>) -> Self {
        TensorStore { dir: path.to_path_buf(), files: vec![path.to_path_buf()], maps: vec![map], entries }
    }

    /// Adds f32 tensors made in memory (from other tensors, at open time) as one more shard.
    pub(crate) fn add_f32(&mut self, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) {
        let shard = self.maps.len();
        let mut bytes = Vec::new();
        for (name, shape, data) in tensors {
            let start = bytes.len();
            bytes.extend(data.iter().flat_map(|x| x.to_le_bytes()));
            let entry = Entry { shard, dtype: "F32".into(), shape, start, end: bytes.len() };
            self.entries.insert(name, entry);
        }
        self.maps.push(Arc::new(Bytes::Heap(bytes)));
        self.files.push(self.files[0].clone());
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The first of `names` that exists.
    pub fn find<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names.iter().copied().find(|n| self.contains(n))
    }

    /// The tensor `name`, checked to have shape `want` (and a float dtype unless `raw`).
    fn get(&self, name: &str, want: &[usize], raw: bool) -> Result<Weight> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor { dir: self.dir.clone(), name: name.to_string() })?;
        let path = &self.files[e.shard];
        if e.shape != want {
            return Err(Error::Shape {
                path: path.clone(),
                name: name.into(),
                got: e.shape.clone(),
                want: want.to_vec(),
            });
        }
        let dtype = Dtype::parse(&e.dtype)
            .filter(|d| d.is_float() || d.is_block_quant() || raw)
            .ok_or_else(|| Error::Dtype { path: path.clone(), name: name.into(), dtype: e.dtype.clone() })?;
        Ok(Weight::new(self.maps[e.shard].clone(), e.start, e.end, dtype, want))
    }

    /// A float tensor `name` of shape `want`.
    pub fn weight(&self, name: &str, want: &[usize]) -> Result<Weight> {
        self.get(name, want, false)
    }

    /// An MXFP4 matrix [rows, cols] from `<name>_blocks` [.., cols/32, 16] and `<name>_scales` [.., cols/32] (U8),
    /// where `lead` are the leading dimensions whose product is rows.
    pub fn mxfp4(&self, name: &str, lead: &[usize], cols: usize) -> Result<Weight> {
        let rows: usize = lead.iter().product();
        let blocks = self.get(&format!("{name}_blocks"), &[lead, &[cols / 32, 16]].concat(), true)?;
        let scales = self.get(&format!("{name}_scales"), &[lead, &[cols / 32]].concat(), true)?;
        for (w, n) in [(&blocks, "blocks"), (&scales, "scales")] {
            if w.dtype != Dtype::U8 {
                let e = &self.entries[&format!("{name}_{n}")];
                return Err(Error::Dtype {
                    path: self.files[e.shard].clone(),
                    name: format!("{name}_{n}"),
                    dtype: e.dtype.clone(),
                });
            }
        }
        Ok(Weight::mxfp4(blocks, scales, rows, cols))
    }

    /// A small tensor (norm, bias) copied out as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let w = self.weight(name, &[len])?;
        let mut out = vec![0.0; len];
        w.row_f32(0, &mut out);
        Ok(out)
    }

    /// Bytes per dtype over all tensors.
    pub fn bytes_by_dtype(&self) -> Vec<(String, usize)> {
        let mut m: std::collections::BTreeMap<String, usize> = Default::default();
        for e in self.entries.values() {
            *m.entry(e.dtype.clone()).or_default() += e.end - e.start;
        }
        m.into_iter().collect()
    }
}
