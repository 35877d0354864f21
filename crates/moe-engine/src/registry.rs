//! The last part of the default corpus: the Rust sources of the crates that the moe binary
//! depends on (`corpus_crates.txt`, compiled in), as cargo unpacked them into the local registry
//! to build moe. Every machine that built moe has them, in the same versions, so the corpus is
//! the same everywhere (dev-dependencies and other projects' crates, present on some machines
//! only, are not read). Owns finding those files; reading and deduplicating them is `rustdocs`'s.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `name version` per line: the normal dependencies of the moe binary.
const CRATES: &str = include_str!("corpus_crates.txt");

/// Source files larger than this are generated tables or bindings (libc, linux-raw-sys,
/// unicode data), not code people write; they are left out.
const MAX_FILE_BYTES: u64 = 256 << 10;

/// `(name, version)` of every crate of `corpus_crates.txt`, in its order (sorted by name).
pub fn corpus_crates() -> Vec<(String, String)> {
    CRATES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect()
}

/// FFI declarations (`*-sys` crates, libc): generated or per-platform copies of C headers,
/// 16 MB of near-identical declarations; left out.
fn is_bindings(name: &str) -> bool {
    name.ends_with("-sys") || name == "libc"
}

/// `$CARGO_HOME/registry/src` (default `~/.cargo`), if it exists.
fn registry_src() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let dir = home.join("registry/src");
    dir.is_dir().then_some(dir)
}

/// The `.rs` files of the corpus crates found in the local registry, crate by crate in list
/// order, files sorted by path, each with its corpus name `crates/<name>-<version>/<path>`.
pub fn sources() -> Result<Vec<(PathBuf, String)>> {
    let Some(src) = registry_src() else { return Ok(vec![]) };
    // One directory per registry index (e.g. index.crates.io-<hash>), sorted for determinism.
    let mut indexes: Vec<PathBuf> =
        std::fs::read_dir(&src).map_err(Error::io(&src))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    indexes.sort();
    let mut files = vec![];
    for (name, version) in corpus_crates() {
        if is_bindings(&name) {
            continue;
        }
        let krate = format!("{name}-{version}");
        let Some(dir) = indexes.iter().map(|i| i.join(&krate)).find(|d| d.is_dir()) else { continue };
        let mut rs = vec![];
        rust_files(&dir, &mut rs)?;
        rs.sort();
        for f in rs {
            let rel = f.strip_prefix(&dir).unwrap_or(&f).display().to_string();
            files.push((f, format!("crates/{krate}/{rel}")));
        }
    }
    Ok(files)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let e = e.map_err(Error::io(dir))?;
        let (path, ty) = (e.path(), e.file_type().map_err(Error::io(e.path()))?);
        if ty.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs")
            && e.metadata().map_err(Error::io(&path))?.len() <= MAX_FILE_BYTES
        {
            out.push(path);
        }
    }
    Ok(())
}
