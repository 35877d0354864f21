//! The default corpus: the Rust documentation that rustup installs with every toolchain
//! (component `rust-docs`), and Rust source, as clean deduplicated text. Four parts, in this
//! order: the single-page books (`*/print.html`), the API pages of the standard crates (std,
//! core, alloc, proc_macro, test, std_detect), the Rust sources of those crates (rustdoc's
//! `src/` pages) and the sources of the crates moe is built from (`registry`). Pages are parsed in parallel; then, in that fixed order, every block (a paragraph or a
//! whole code block) whose normalised text was already seen is dropped, so re-exported pages (std
//! of core), the same trait impl documented for hundreds of types and the intrinsics documented
//! once per architecture module appear once. The generated SIMD intrinsics (`core::arch`) are
//! left out. Owns finding, cleaning and deduplicating those
//! pages; HTML to text lives in `corpus`, tokenisation in `dataset`.

use crate::corpus::{html_to_marked_text, marked_to_document, Document, CODE_END, CODE_START};
use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Which parts of the installed documentation a corpus takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    /// The single-page books only, not deduplicated: the default corpus before 2026-12.
    Books,
    /// Books, API pages, the standard library's sources and the sources of the crates moe
    /// depends on (see `registry`).
    All,
}

/// The API crates whose pages are read (their sources too, under `src/`).
const CRATES: &[&str] = &["std", "core", "alloc", "proc_macro", "test", "std_detect"];

/// Directories of generated SIMD intrinsics (API pages and sources), left out: `core::arch`
/// alone is 24707 of the 48625 pages, and its sources (stdarch) would be a third of the text.
const GENERATED: &[&str] = &["arch", "core_arch", "stdarch"];

/// Blocks shorter than this (normalised characters) are always kept: headings such as
/// "Examples" or a closing brace carry structure, not repetition.
const MIN_DEDUP_CHARS: usize = 40;

/// A page that keeps fewer characters than this after deduplication is dropped.
const MIN_PAGE_CHARS: usize = 80;

/// The html directory of the active toolchain's documentation.
pub fn docs_dir() -> Result<PathBuf> {
    let out = std::process::Command::new("rustc").args(["--print", "sysroot"]).output();
    let sysroot = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return Err(missing("cannot run `rustc --print sysroot` to find the Rust documentation".into())),
    };
    let dir = Path::new(&sysroot).join("share/doc/rust/html");
    if !dir.is_dir() {
        return Err(missing(format!("the Rust documentation is not installed ({} is missing)", dir.display())));
    }
    Ok(dir)
}

fn missing(what: String) -> Error {
    Error::Corpus { what, hint: "install it with `rustup component add rust-docs`, or pass --data FILE_OR_DIR".into() }
}

/// The pages of `parts` under `dir`, each with its corpus name, in corpus order: books, API
/// pages, std sources (relative paths as names), then the locked crates' sources.
pub fn pages(dir: &Path, parts: Parts) -> Result<Vec<(PathBuf, String)>> {
    let mut books: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok())
        .map(|e| PathBuf::from(e.file_name()).join("print.html"))
        .filter(|p| dir.join(p).is_file())
        .collect();
    books.sort();
    if books.is_empty() {
        return Err(missing(format!("no */print.html books under {}", dir.display())));
    }
    let named = |v: Vec<PathBuf>| v.into_iter().map(|p| (dir.join(&p), p.display().to_string())).collect::<Vec<_>>();
    if parts == Parts::Books {
        return Ok(named(books));
    }
    let mut api = vec![];
    let mut src = vec![];
    for krate in CRATES {
        html_files(dir, Path::new(krate), &mut api)?;
        html_files(dir, &Path::new("src").join(krate), &mut src)?;
    }
    // all.html lists every item again; the SIMD intrinsics are generated bindings, thousands of
    // near-identical items per architecture that block deduplication cannot see as repeats.
    let generated = |p: &PathBuf| p.components().any(|c| GENERATED.iter().any(|g| c.as_os_str() == *g));
    api.retain(|p| p.file_name().is_some_and(|n| n != "all.html") && !generated(p));
    src.retain(|p| !generated(p));
    api.sort();
    src.sort();
    let mut out = named(books);
    out.extend(named(api));
    out.extend(named(src));
    out.extend(crate::registry::sources()?);
    Ok(out)
}

/// Appends the `.html` files under `dir/rel` (recursively) as paths relative to `dir`.
fn html_files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let full = dir.join(rel);
    if !full.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(&full).map_err(Error::io(&full))? {
        let e = e.map_err(Error::io(&full))?;
        let path = rel.join(e.file_name());
        let ty = e.file_type().map_err(Error::io(e.path()))?;
        if ty.is_dir() {
            html_files(dir, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "html") {
            out.push(path);
        }
    }
    Ok(())
}

/// A cheap fingerprint of the pages (name, size and modification time of each), so a cached
/// tokenisation is found without parsing 780 MB of HTML.
pub fn fingerprint(pages: &[(PathBuf, String)]) -> Result<Vec<u8>> {
    let mut out = vec![];
    for (path, name) in pages {
        let meta = std::fs::metadata(path).map_err(Error::io(path))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        out.extend(name.bytes());
        out.extend(meta.len().to_le_bytes());
        out.extend(mtime.map_or(0, |d| d.as_secs()).to_le_bytes());
    }
    Ok(out)
}

/// What deduplication removed.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DedupStats {
    pub pages: usize,
    pub pages_kept: usize,
    pub chars_before: usize,
    pub chars_after: usize,
}

/// Parses every page of `parts` (in parallel, with a progress bar when `progress`) and
/// deduplicates them in corpus order.
pub fn load(parts: Parts, progress: bool) -> Result<(Vec<Document>, DedupStats)> {
    let dir = docs_dir()?;
    let pages = pages(&dir, parts)?;
    let pb = if progress { ProgressBar::new(pages.len() as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} pages parsed {per_sec} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let marked: Result<Vec<(String, String)>> = pages
        .into_par_iter()
        .map(|(path, name)| {
            let text = crate::corpus::read_utf8(&path)?;
            pb.inc(1);
            let marked = if path.extension().is_some_and(|x| x == "rs") {
                format!("{CODE_START}{text}{CODE_END}")
            } else {
                html_to_marked_text(&text)
            };
            Ok((name, marked))
        })
        .collect();
    pb.finish_and_clear();
    let marked = marked?;
    if parts == Parts::Books {
        // The books-only corpus stays as it was before deduplication existed, so the results
        // measured on it reproduce.
        let docs: Vec<Document> = marked.into_iter().map(|(name, m)| marked_to_document(name, &m)).collect();
        let chars = docs.iter().map(|d| d.text.len()).sum();
        let stats = DedupStats { pages: docs.len(), pages_kept: docs.len(), chars_before: chars, chars_after: chars };
        return Ok((docs, stats));
    }
    Ok(dedup(marked))
}

/// Drops every block whose normalised text an earlier block of the corpus had, unless it is
/// short; drops a page whole when less than half of its long blocks' text is new (a re-export
/// or a near copy would otherwise leave its headings behind). A block is a line of prose, a code block,
/// or in a long code block (a source file) one of its blank-line-separated items. Input:
/// (name, text with code markers) in corpus order.
pub fn dedup(pages: Vec<(String, String)>) -> (Vec<Document>, DedupStats) {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stats = DedupStats { pages: pages.len(), ..Default::default() };
    let mut docs = vec![];
    for (name, marked) in pages {
        stats.chars_before += marked.len();
        let mut kept = String::with_capacity(marked.len());
        // Characters of long blocks: all, and those not seen before.
        let (mut long, mut new) = (0, 0);
        for b in blocks(&marked) {
            let key = normalise(b.text);
            let short = key.len() < MIN_DEDUP_CHARS;
            long += if short { 0 } else { key.len() };
            if short || seen.insert(hash(&key)) {
                new += if short { 0 } else { key.len() };
                if b.code {
                    kept.push(CODE_START);
                    kept.push_str(b.text);
                    kept.push(CODE_END);
                } else {
                    kept.push_str(b.text);
                }
            }
        }
        let doc = marked_to_document(name, &kept);
        if new * 2 >= long && new > 0 && doc.text.trim().len() >= MIN_PAGE_CHARS {
            stats.chars_after += doc.text.len();
            docs.push(doc);
        }
    }
    stats.pages_kept = docs.len();
    (docs, stats)
}

/// A piece of a page that is kept or dropped as a whole.
struct Block<'a> {
    text: &'a str,
    code: bool,
}

/// Code blocks longer than this are split into blank-line-separated items.
const LONG_CODE: usize = 2000;

/// Splits marked text into blocks: each line outside code, each code block, and each item of a
/// long code block. The blocks' texts (markers removed) concatenate to the unmarked text.
fn blocks(marked: &str) -> Vec<Block<'_>> {
    let mut out = vec![];
    let mut rest = marked;
    while !rest.is_empty() {
        match rest.find(CODE_START) {
            Some(0) => {
                let body = &rest[CODE_START.len_utf8()..];
                let end = body.find(CODE_END).unwrap_or(body.len());
                let code = &body[..end];
                if code.len() > LONG_CODE {
                    out.extend(code.split_inclusive("\n\n").map(|text| Block { text, code: true }));
                } else if !code.is_empty() {
                    out.push(Block { text: code, code: true });
                }
                rest = body.get(end + CODE_END.len_utf8()..).unwrap_or("");
            }
            found => {
                let prose = &rest[..found.unwrap_or(rest.len())];
                out.extend(prose.split_inclusive('\n').map(|text| Block { text, code: false }));
                rest = &rest[prose.len()..];
            }
        }
    }
    out
}

/// The text a block is compared by: lower case, whitespace collapsed, every run of digits one
/// `0` and `usize`/`isize` as `u0`/`i0`, so the same sentence written for u8 and for u64 (or for
/// two SIMD lane widths) counts as a repeat.
pub fn normalise(block: &str) -> String {
    let mut out = String::with_capacity(block.len());
    let mut prev = ' ';
    for ch in block.chars() {
        let c = match ch {
            CODE_START | CODE_END => continue,
            c if c.is_whitespace() => ' ',
            c if c.is_ascii_digit() => '0',
            c => c.to_ascii_lowercase(),
        };
        if (c == ' ' || c == '0') && prev == c {
            continue;
        }
        out.push(c);
        prev = c;
    }
    out.trim().replace("usize", "u0").replace("isize", "i0")
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
