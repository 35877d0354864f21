//! Checkpoint integrity: `checksums.json` lists every file of a checkpoint directory with its
//! size and CRC-32, written last before the directory is renamed into place and verified on
//! load, so a flipped or lost byte anywhere is an error naming the file, never a silently
//! different model. CRC-32 catches every error burst up to 32 bits (any one flipped byte).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "checksums.json";

/// Size and CRC-32 of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub crc32: u32,
}

/// Reads `path` through and returns its size and CRC-32.
pub fn file_sum(path: &Path) -> Result<FileSum> {
    let mut f = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum { bytes, crc32: h.finalize() })
}

/// Writes the manifest of every regular file in `dir` (the manifest itself excepted).
pub fn write_manifest(dir: &Path) -> Result<()> {
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_file() && name != MANIFEST {
            sums.insert(name, file_sum(&path)?);
        }
    }
    let json =
        serde_json::to_vec_pretty(&sums).map_err(|e| Error::checkpoint(dir, e.to_string(), "report this as a bug"))?;
    crate::checkpoint::write_atomic(&dir.join(MANIFEST), &json)
}

/// Checks every file the manifest of `dir` lists. A checkpoint without a manifest (written
/// before 2026-12-06) passes; its files are still checked by their parsers.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(());
    }
    let corrupt = |file: &Path, what: String| {
        Error::checkpoint(file, what, "the checkpoint is damaged; resume from or load an earlier checkpoint of the run")
    };
    let text = std::fs::read(&path).map_err(Error::io(&path))?;
    let sums: BTreeMap<String, FileSum> =
        serde_json::from_slice(&text).map_err(|e| corrupt(&path, format!("the checksum manifest is corrupt ({e})")))?;
    for (name, want) in &sums {
        if Path::new(name).components().count() != 1 || name.contains("..") {
            return Err(corrupt(&path, format!("the checksum manifest names `{name}`, outside the checkpoint")));
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Err(corrupt(&file, "is missing (the checksum manifest lists it)".into()));
        }
        let got = file_sum(&file)?;
        if got.bytes != want.bytes {
            return Err(corrupt(
                &file,
                format!("is corrupt or truncated: {} bytes, {} when written", got.bytes, want.bytes),
            ));
        }
        if got.crc32 != want.crc32 {
            return Err(corrupt(
                &file,
                format!("is corrupt: CRC-32 {:08x}, {:08x} when written (changed bytes)", got.crc32, want.crc32),
            ));
        }
    }
    Ok(())
}
