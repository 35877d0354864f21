//! Checkpoints of an expert-parallel job, written by every rank in the ordinary format (one
//! model.safetensors and one optimizer.safetensors, loadable on any rank count): rank 0
//! creates the files at their full size with their headers and writes the replicated tensors;
//! then every rank writes, at their offsets, the experts whose first replica it holds; once
//! every rank has synced its writes, rank 0 renames the directory into place. No rank ever
//! holds more than its own shard. The checkpoint directory must be on a filesystem every rank
//! sees (as the run directory of any MPI job).

use super::data_parallel::Dist;
use crate::checkpoint::{finish, start, to_bytes, SaveRequest};
use crate::error::{Error, Result};
use crate::params::Layout;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A safetensors header for f32 tensors stored back to back in this order.
fn header(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    crate::st_write::header(tensors.iter().map(|(n, s)| (*n, "F32", &s[..], 4 * s.iter().product::<usize>())))
}

/// The two files of a checkpoint being written: (path, data start) of the weights and of the
/// optimizer moments.
struct Files {
    model: (PathBuf, u64),
    optimizer: Option<(PathBuf, u64)>,
}

impl Files {
    fn headers(full: &Layout, moments: bool) -> [Option<Vec<u8>>; 2] {
        let weights: Vec<(&str, Vec<usize>)> =
            full.tensors.iter().map(|t| (t.name.as_str(), t.shape.clone())).collect();
        let opt = moments.then(|| header(&[("adamw.m", vec![full.total]), ("adamw.v", vec![full.total])]));
        [Some(header(&weights)), opt]
    }

    fn open(path: &Path) -> Result<File> {
        OpenOptions::new().write(true).open(path).map_err(Error::io(path))
    }
}

fn write_at(f: &File, path: &Path, at: u64, data: &[f32]) -> Result<()> {
    f.write_all_at(&to_bytes(data), at).map_err(Error::io(path))
}

/// Rank 0: the temporary directory with its side files and the two files at full size, with
/// headers and replicated tensors.
fn lay_out(root: &Path, name: &str, tag: &str, req: &SaveRequest, full: &Layout) -> Result<(PathBuf, Files)> {
    let tmp = start(root, name, tag, req)?;
    let [wh, oh] = Files::headers(full, req.moments.is_some());
    let create = |file: &str, head: &[u8], total: usize| -> Result<(PathBuf, u64, File)> {
        let path = tmp.join(file);
        let f = File::create(&path).map_err(Error::io(&path))?;
        f.set_len((head.len() + 4 * total) as u64).map_err(Error::io(&path))?;
        f.write_all_at(head, 0).map_err(Error::io(&path))?;
        Ok((path, head.len() as u64, f))
    };
    let wh = wh.unwrap_or_default();
    let (wpath, wstart, wf) = create("model.safetensors", &wh, full.total)?;
    for (ft, lt) in full.tensors.iter().zip(&req.layout.tensors) {
        if lt.experts.is_none() {
            write_at(&wf, &wpath, wstart + 4 * ft.span.off as u64, lt.span.of(req.params))?;
        }
    }
    let optimizer = match (oh, req.moments) {
        (Some(oh), Some((m, v))) => {
            let (opath, ostart, of) = create("optimizer.safetensors", &oh, 2 * full.total)?;
            for (ft, lt) in full.tensors.iter().zip(&req.layout.tensors) {
                if lt.experts.is_none() {
                    for (k, buf) in [m, v].into_iter().enumerate() {
                        let at = ostart + 4 * (k * full.total + ft.span.off) as u64;
                        write_at(&of, &opath, at, lt.span.of(buf))?;
                    }
                }
            }
            Some((opath, ostart))
        }
        _ => None,
    };
    Ok((tmp, Files { model: (wpath, wstart), optimizer }))
}

/// Every rank: the experts whose first replica this rank holds (`ExpertSlots::primary`), at
/// their offsets.
fn write_experts(req: &SaveRequest, full: &Layout, files: &Files) -> Result<()> {
    let (wpath, wstart) = &files.model;
    let wf = Files::open(wpath)?;
    let of = files.optimizer.as_ref().map(|(p, _)| Files::open(p)).transpose()?;
    for (ft, lt) in full.tensors.iter().zip(&req.layout.tensors) {
        if let Some(ex) = &lt.experts {
            let n = lt.per_expert();
            for (j, &x) in ex.slots.iter().enumerate() {
                if !ex.primary[j] {
                    continue;
                }
                let slot = |buf: &[f32]| lt.span.of(buf)[j * n..(j + 1) * n].to_vec();
                write_at(&wf, wpath, wstart + 4 * (ft.span.off + x * n) as u64, &slot(req.params))?;
                if let (Some(of), Some((opath, ostart)), Some((m, v))) = (&of, &files.optimizer, req.moments) {
                    for (k, buf) in [m, v].into_iter().enumerate() {
                        let pos = ostart + 4 * (k * full.total + ft.span.off + x * n) as u64;
                        write_at(of, opath, pos, &slot(buf))?;
                    }
                }
            }
        }
    }
    wf.sync_all().map_err(Error::io(wpath))?;
    if let (Some(of), Some((opath, _))) = (of, &files.optimizer) {
        of.sync_all().map_err(Error::io(opath))?;
    }
    Ok(())
}

/// Writes checkpoint `name` under `root` from every rank (`req` holds this rank's layout and
/// buffers); every rank returns the checkpoint's path or the error of the rank that failed.
pub fn save_from_ranks(d: &Dist, root: &Path, name: &str, req: &SaveRequest, keep: usize) -> Result<PathBuf> {
    let full = Layout::new(req.config);
    let lead = d.shard.rank == 0;
    let tag = "ranks";
    let laid = if lead { Some(lay_out(root, name, tag, req, &full)) } else { None };
    let failed =
        |what: &str| Error::checkpoint(root, format!("{what} could not write the checkpoint"), "see its error");
    if d.any_failed(matches!(laid, Some(Err(_)))) {
        return Err(match laid {
            Some(Err(e)) => e,
            _ => failed("rank 0"),
        });
    }
    // Every rank derives the same file names and offsets as rank 0.
    let tmp = crate::checkpoint::tmp_dir(root, name, tag);
    let [wh, oh] = Files::headers(&full, req.moments.is_some());
    let files = Files {
        model: (tmp.join("model.safetensors"), wh.map_or(0, |h| h.len() as u64)),
        optimizer: oh.map(|h| (tmp.join("optimizer.safetensors"), h.len() as u64)),
    };
    let wrote = write_experts(req, &full, &files);
    if d.any_failed(wrote.is_err()) {
        if lead {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return Err(wrote.err().unwrap_or_else(|| failed("another rank")));
    }
    let done = if lead { finish(root, name, &tmp, keep) } else { Ok(root.join(name)) };
    if d.any_failed(done.is_err()) {
        return Err(done.err().unwrap_or_else(|| failed("rank 0")));
    }
    done
}
