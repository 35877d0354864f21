//! Checkpoints: a directory with config.json (model config), model.safetensors (f32 weights,
//! named as in `params::Layout`), optional optimizer.safetensors (AdamW moments of the trained
//! part: every weight, or under LoRA the adapters), state.json
//! (training state) and tokenizer.json. A checkpoint is written into a temporary directory and
//! renamed into place only when complete, so a crash never leaves one that loads as valid but
//! wrong; the run directory's `latest` file (written atomically) names the newest one; its
//! `checksums.json` (see `checksum`) is verified on every load.

use crate::config::ModelConfig;
use crate::dist::Shard;
use crate::error::{Error, Result};
use crate::params::{Layout, TensorInfo};
use crate::st_write::{write_safetensors, Data};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;

/// Test hook of the disk-full path: bytes that `write_atomic` may still write before it fails
/// as a full disk does (ENOSPC); negative = no limit. Only tests set it.
#[doc(hidden)]
pub static DISK_BUDGET: AtomicI64 = AtomicI64::new(-1);

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    let mut w = crate::st_write::Budgeted(f);
    w.write_all(bytes).map_err(Error::io(&tmp))?;
    w.0.sync_all().map_err(Error::io(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// f32 values as little-endian bytes (safetensors data).
pub fn to_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// What a checkpoint holds.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub params: Vec<f32>,
    /// AdamW first and second moments, if saved.
    pub moments: Option<(Vec<f32>, Vec<f32>)>,
    /// Training state (JSON), if saved.
    pub state: Option<serde_json::Value>,
}

/// What to write.
pub struct SaveRequest<'a> {
    pub config: &'a ModelConfig,
    pub layout: &'a Layout,
    pub params: &'a [f32],
    pub moments: Option<(&'a [f32], &'a [f32])>,
    pub state: Option<&'a serde_json::Value>,
    /// tokenizer.json content to copy in.
    pub tokenizer_json: Option<&'a [u8]>,
    /// A packed frozen base: its matrices are written from here (their spans in `params`
    /// are unused).
    pub packed: Option<&'a crate::packed::PackedBase>,
}

/// Writes checkpoint `name` under `root` (e.g. runs/x/checkpoints/step-000100), points
/// `root/latest` at it, and keeps only the newest `keep` checkpoints.
/// A failed write (a full disk) removes the partial checkpoint and names the intact previous one.
pub fn save(root: &Path, name: &str, req: &SaveRequest, keep: usize) -> Result<PathBuf> {
    let tmp = tmp_dir(root, name, &std::process::id().to_string());
    let written = write_files(root, name, req).and_then(|tmp| finish(root, name, &tmp, keep));
    written.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        failed_write(root, name, e)
    })
}

fn write_files(root: &Path, name: &str, req: &SaveRequest) -> Result<PathBuf> {
    let tmp = start(root, name, &std::process::id().to_string(), req)?;
    // a packed base's matrices as they are held (bf16), or decoded (Q8_0)
    let data = |t: &TensorInfo| match req.packed.and_then(|pb| pb.get(t.span)) {
        Some(m) => Data::Packed(m),
        None => Data::F32(t.span.of(req.params)),
    };
    let weights: Vec<_> = req.layout.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), data(t))).collect();
    write_safetensors(&tmp.join("model.safetensors"), &weights)?;
    if let Some((m, v)) = req.moments {
        // the moments of the trained part (`Layout::grad_range`: all, or the LoRA adapters)
        let r = req.layout.grad_range();
        let (m, v) = (Data::F32(&m[r.clone()]), Data::F32(&v[r.clone()]));
        let opt = vec![("adamw.m".to_string(), vec![r.len()], m), ("adamw.v".to_string(), vec![r.len()], v)];
        write_safetensors(&tmp.join("optimizer.safetensors"), &opt)?;
    }
    Ok(tmp)
}

/// The error of a checkpoint that could not be written: the cause and what is still there.
pub(crate) fn failed_write(root: &Path, name: &str, cause: Error) -> Error {
    let kept = std::fs::read_to_string(root.join("latest")).ok().map(|l| root.join(l.trim()));
    let hint = match kept.filter(|k| k.is_dir() && k.file_name() != Some(name.as_ref())) {
        Some(k) => format!("free disk space or fix the error, then --resume from the intact {}", k.display()),
        None => "free disk space or fix the error, then run again".into(),
    };
    Error::checkpoint(root.join(name), format!("could not be written ({cause})"), hint)
}

/// Where checkpoint `name` is written before it is renamed into place (`tag`: the writer).
pub(crate) fn tmp_dir(root: &Path, name: &str, tag: &str) -> PathBuf {
    root.join(format!(".{name}.tmp-{tag}"))
}

/// Creates the temporary directory of checkpoint `name` (suffix `tag`) with config.json,
/// state.json and tokenizer.json.
pub(crate) fn start(root: &Path, name: &str, tag: &str, req: &SaveRequest) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(Error::io(root))?;
    let tmp = tmp_dir(root, name, tag);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
    let config_json = serde_json::to_vec_pretty(req.config)
        .map_err(|e| Error::checkpoint(&tmp, e.to_string(), "report this as a bug"))?;
    write_atomic(&tmp.join("config.json"), &config_json)?;
    if let Some(state) = req.state {
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::checkpoint(&tmp, e.to_string(), "report this as a bug"))?;
        write_atomic(&tmp.join("state.json"), &json)?;
    }
    if let Some(tk) = req.tokenizer_json {
        write_atomic(&tmp.join("tokenizer.json"), tk)?;
    }
    Ok(tmp)
}

/// Renames the complete temporary directory into place, updates `latest` and prunes.
pub(crate) fn finish(root: &Path, name: &str, tmp: &Path, keep: usize) -> Result<PathBuf> {
    crate::checksum::write_manifest(tmp)?;
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
    }
    std::fs::rename(tmp, &dir).map_err(Error::io(&dir))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(root, keep)?;
    Ok(dir)
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(Error::io(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    steps.sort();
    let n = steps.len();
    for old in steps.into_iter().take(n.saturating_sub(keep)) {
        std::fs::remove_dir_all(&old).map_err(Error::io(&old))?;
    }
    Ok(())
}

/// Resolves a path given by the user: a checkpoint directory, a checkpoints root with a
/// `latest` file, or a run directory holding `checkpoints/latest`.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("model.safetensors").is_file() {
        return Ok(path.to_path_buf());
    }
    for root in [path.to_path_buf(), path.join("checkpoints")] {
        let latest = root.join("latest");
        if latest.is_file() {
            let name = std::fs::read_to_string(&latest).map_err(Error::io(&latest))?;
            return Ok(root.join(name.trim()));
        }
    }
    Err(Error::checkpoint(
        path,
        "no checkpoint here (no model.safetensors, no latest)",
        "pass a directory written by `moe train` (its run directory or one of its checkpoints)",
    ))
}

/// The file memory-mapped (a rank decodes only the pages of its own experts) and its tensors.
fn map_f32_tensors(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    // SAFETY: the map is read-only and private to this load; checkpoints are written into a
    // temporary directory and renamed, never modified in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
    SafeTensors::deserialize(&map).map_err(|e| {
        Error::checkpoint(
            path,
            format!("not a valid safetensors file ({e})"),
            "the file is corrupt or truncated; use an earlier checkpoint",
        )
    })?;
    Ok(map)
}

fn tensor_f32<'a>(st: &'a SafeTensors, name: &str, expected: &[usize], path: &Path) -> Result<(&'a [u8], usize)> {
    let t = st.tensor(name).map_err(|_| {
        Error::checkpoint(path, format!("tensor `{name}` is missing"), "the weights do not belong to this config")
    })?;
    let width = match t.dtype() {
        Dtype::F32 => 4,
        // the frozen base of a LoRA run over a bf16 base
        Dtype::BF16 => 2,
        other => {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{name}` is {other:?}, expected F32 or BF16"),
                "moe checkpoints store f32 (and bf16 for a frozen bf16 base)",
            ))
        }
    };
    if t.shape() != expected {
        return Err(Error::Shape {
            path: path.to_path_buf(),
            tensor: name.into(),
            expected: expected.to_vec(),
            found: t.shape().to_vec(),
        });
    }
    Ok((t.data(), width))
}

/// Values of `width`-byte elements (4: f32, 2: bf16) into f32.
fn decode(dst: &mut [f32], src: &[u8], width: usize) {
    if width == 2 {
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *o = moe_kernels::bf16::from_bf16(u16::from_le_bytes([b[0], b[1]]));
        }
        return;
    }
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// `local`'s part (its slots, for an expert tensor) of a whole tensor's bytes `whole`.
fn decode_local(dst: &mut [f32], (whole, width): (&[u8], usize), local: &TensorInfo) {
    match &local.experts {
        None => decode(dst, whole, width),
        Some(ex) => {
            let n = local.per_expert();
            for (slot, &x) in dst.chunks_exact_mut(n).zip(&ex.slots) {
                decode(slot, &whole[x * n * width..(x + 1) * n * width], width);
            }
        }
    }
}

/// Loads and checks a checkpoint (see [`resolve`] for the accepted paths).
pub fn load(path: &Path) -> Result<Checkpoint> {
    load_sharded(path, &Shard::single())
}

/// Loads the part of a checkpoint that one rank of an expert-parallel job holds: every
/// replicated tensor and the experts of its slots (parameters and moments in the layout
/// `Layout::sharded(config, shard)`); the files are memory-mapped, so a rank copies only its
/// own experts into memory (the checksum verification streams each whole file once).
pub fn load_sharded(path: &Path, shard: &Shard) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    crate::checksum::verify(&dir)?;
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(Error::io(&cfg_path))?;
    let config: ModelConfig = serde_json::from_str(&cfg_text).map_err(|e| {
        Error::checkpoint(
            &cfg_path,
            format!("invalid config ({e})"),
            "restore config.json from the run that wrote the weights",
        )
    })?;
    config.validate()?;
    if config.num_local_experts > 0 {
        shard.validate(config.num_moe_layers(), config.num_local_experts)?;
    }
    let (full, layout) = (Layout::new(&config), Layout::sharded(&config, shard));
    let wpath = dir.join("model.safetensors");
    let map = map_f32_tensors(&wpath)?;
    let st =
        SafeTensors::deserialize(&map).map_err(|e| Error::checkpoint(&wpath, e.to_string(), "the file is corrupt"))?;
    let known: HashMap<&str, ()> = full.tensors.iter().map(|t| (t.name.as_str(), ())).collect();
    if let Some(extra) = st.names().into_iter().find(|n| !known.contains_key(n)) {
        return Err(Error::checkpoint(
            &wpath,
            format!("unexpected tensor `{extra}`"),
            "the weights do not belong to this config",
        ));
    }
    let mut params = moe_kernels::buffer::zeroed::<f32>(layout.total);
    for (ft, lt) in full.tensors.iter().zip(&layout.tensors) {
        decode_local(lt.span.of_mut(&mut params), tensor_f32(&st, &ft.name, &ft.shape, &wpath)?, lt);
    }
    let opath = dir.join("optimizer.safetensors");
    let moments = if opath.is_file() {
        let omap = map_f32_tensors(&opath)?;
        let ost = SafeTensors::deserialize(&omap)
            .map_err(|e| Error::checkpoint(&opath, e.to_string(), "the file is corrupt"))?;
        let mut mv = [moe_kernels::buffer::zeroed::<f32>(layout.total), moe_kernels::buffer::zeroed(layout.total)];
        let r = full.grad_range();
        for (name, out) in ["adamw.m", "adamw.v"].into_iter().zip(&mut mv) {
            let (flat, width) = tensor_f32(&ost, name, &[r.len()], &opath)?;
            for (ft, lt) in full.tensors.iter().zip(&layout.tensors).filter(|(ft, _)| ft.span.off >= r.start) {
                let off = ft.span.off - r.start;
                let whole = &flat[off * width..(off + ft.span.len) * width];
                decode_local(lt.span.of_mut(out), (whole, width), lt);
            }
        }
        let [m, v] = mv;
        Some((m, v))
    } else {
        None
    };
    let spath = dir.join("state.json");
    let state = if spath.is_file() {
        let text = std::fs::read_to_string(&spath).map_err(Error::io(&spath))?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| Error::checkpoint(&spath, format!("invalid state ({e})"), "use an earlier checkpoint"))?,
        )
    } else {
        None
    };
    Ok(Checkpoint { dir, config, params, moments, state })
}
