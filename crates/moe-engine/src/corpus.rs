//! Text corpora: the default one (the toolchain's Rust documentation, see `rustdocs`) or any
//! UTF-8 file or directory (`--data`), and HTML turned into text with a real HTML parser.
//! Owns reading and cleaning text; tokenisation lives in `tokenizer`, batching in `dataset`.

use crate::error::{Error, Result};
use crate::rustdocs;
use scraper::{ElementRef, Html, Node, Selector};
use std::path::{Path, PathBuf};

/// One source document.
#[derive(Clone, Debug)]
pub struct Document {
    pub name: String,
    pub text: String,
    /// Byte ranges of `text` that are code (HTML `<pre>` blocks, Markdown ``` fences).
    pub code: Vec<(usize, usize)>,
}

impl Document {
    /// A plain-text document; Markdown code fences mark its code.
    pub fn from_text(name: String, text: String) -> Self {
        let mut code = vec![];
        let mut open = None;
        let mut at = 0;
        for line in text.split_inclusive('\n') {
            if line.trim_start().starts_with("```") {
                match open.take() {
                    Some(start) => code.push((start, at)),
                    None => open = Some(at + line.len()),
                }
            }
            at += line.len();
        }
        if let Some(start) = open {
            code.push((start, text.len()));
        }
        Document { name, text, code }
    }

    /// Whether byte `at` lies in code.
    pub fn is_code(&self, at: usize) -> bool {
        self.code.iter().any(|&(a, b)| at >= a && at < b)
    }
}

/// Where a corpus comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The whole Rust documentation of the active toolchain: books, API pages, std sources.
    RustDocs,
    /// Only the single-page books of the Rust documentation (the default corpus until 2026-12).
    RustBooks,
    /// A UTF-8 text file or a directory of them (read recursively, sorted by path).
    Path(PathBuf),
}

impl Source {
    /// `--data` as given: the names `rust-docs` and `rust-books` select the built-in corpora
    /// (write `./rust-docs` for a path of that name), anything else is a path.
    pub fn parse(data: Option<&Path>) -> Source {
        match data {
            None => Source::RustDocs,
            Some(p) if p == Path::new("rust-docs") => Source::RustDocs,
            Some(p) if p == Path::new("rust-books") => Source::RustBooks,
            Some(p) => Source::Path(p.to_path_buf()),
        }
    }

    /// Which parts of the Rust documentation a built-in corpus takes (None for a path).
    pub fn parts(&self) -> Option<rustdocs::Parts> {
        match self {
            Source::RustDocs => Some(rustdocs::Parts::All),
            Source::RustBooks => Some(rustdocs::Parts::Books),
            Source::Path(_) => None,
        }
    }

    /// The `--data` value that selects this source again from any working directory (a path
    /// made absolute when it exists), as a run records it for `--resume`.
    pub fn to_arg(&self) -> String {
        match self {
            Source::RustDocs => "rust-docs".into(),
            Source::RustBooks => "rust-books".into(),
            Source::Path(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::RustDocs => {
                "the Rust documentation of the toolchain and the sources of the crates moe is built from".into()
            }
            Source::RustBooks => "the Rust books".into(),
            Source::Path(p) => p.display().to_string(),
        }
    }
}

/// Loads every document of a source (a progress bar while parsing the Rust documentation when
/// `progress`); fails if there is no text at all.
pub fn load(source: &Source, progress: bool) -> Result<Vec<Document>> {
    Ok(load_with_stats(source, progress)?.0)
}

/// [`load`], with what deduplication removed from the Rust documentation.
pub fn load_with_stats(source: &Source, progress: bool) -> Result<(Vec<Document>, Option<rustdocs::DedupStats>)> {
    let (docs, stats) = match (source.parts(), source) {
        (Some(parts), _) => {
            let (docs, stats) = rustdocs::load(parts, progress)?;
            (docs, Some(stats))
        }
        (None, Source::Path(p)) => (load_path(p)?, None),
        (None, _) => unreachable!("only paths have no parts"),
    };
    let chars: usize = docs.iter().map(|d| d.text.trim().len()).sum();
    if chars == 0 {
        return Err(Error::Corpus {
            what: format!("{} holds no text", source.describe()),
            hint: "pass --data with a non-empty UTF-8 text file or directory".into(),
        });
    }
    Ok((docs, stats))
}

fn load_path(p: &Path) -> Result<Vec<Document>> {
    if !p.exists() {
        return Err(Error::Corpus {
            what: format!("{} does not exist", p.display()),
            hint: "check the --data path".into(),
        });
    }
    let mut files = vec![];
    collect_files(p, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(Error::Corpus {
            what: format!("{} contains no files", p.display()),
            hint: "point --data at UTF-8 text files".into(),
        });
    }
    // Names relative to --data (a lone file: its file name), so the corpus and its cache key do
    // not depend on how the path is spelled (a resumed run passes it absolute).
    let name = |f: &Path| match f.strip_prefix(p) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => f.file_name().map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned()),
    };
    files.iter().map(|f| Ok(Document::from_text(name(f), read_utf8(f)?))).collect()
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if p.is_dir() {
        for e in std::fs::read_dir(p).map_err(Error::io(p))? {
            let path = e.map_err(Error::io(p))?.path();
            let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden {
                collect_files(&path, out)?;
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

pub(crate) fn read_utf8(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).map_err(Error::io(p))?;
    String::from_utf8(bytes).map_err(|e| Error::NotUtf8 { path: p.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

/// Marks the start and end of a `<pre>` block during the walk (private-use characters).
pub const CODE_START: char = '\u{E000}';
pub const CODE_END: char = '\u{E001}';

/// Plain text of an HTML page: the `<main>` element if there is one (mdBook pages), else the
/// body; scripts, styles and navigation dropped; block elements end lines; `<pre>` kept verbatim.
pub fn html_to_text(html: &str) -> String {
    html_to_text_with_code(html).0
}

/// [`html_to_text`] and the byte ranges of the text that came from `<pre>` blocks.
pub fn html_to_text_with_code(html: &str) -> (String, Vec<(usize, usize)>) {
    let doc = marked_to_document(String::new(), &html_to_marked_text(html));
    (doc.text, doc.code)
}

/// A document from text whose code blocks are marked with CODE_START and CODE_END.
pub(crate) fn marked_to_document(name: String, marked: &str) -> Document {
    let mut text = String::with_capacity(marked.len());
    let mut code = vec![];
    let mut start = None;
    for ch in marked.chars() {
        match ch {
            CODE_START => start = Some(text.len()),
            CODE_END => {
                if let Some(s) = start.take() {
                    code.push((s, text.len()));
                }
            }
            _ => text.push(ch),
        }
    }
    Document { name, text, code }
}

pub fn html_to_marked_text(html: &str) -> String {
    let doc = Html::parse_document(html);
    let root = ["main", "body"].iter().filter_map(|s| Selector::parse(s).ok()).find_map(|sel| doc.select(&sel).next());
    let mut out = String::new();
    if let Some(root) = root {
        walk(root, &mut out, false);
    }
    // Collapse runs of blank lines.
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(line);
        text.push('\n');
    }
    text.trim().to_string() + "\n"
}

const SKIP: &[&str] =
    &["script", "style", "nav", "noscript", "template", "head", "button", "rustdoc-toolbar", "rustdoc-search"];
/// rustdoc's page furniture (with `<a class="src">` "Source" links): version links, "§"
/// anchors, "Run" buttons, tooltips, "Expand description", the breadcrumb, and the line numbers
/// of source pages.
const SKIP_CLASSES: &[&str] =
    &["rightside", "anchor", "doc-anchor", "test-arrow", "tooltip", "hideme", "sub-heading", "skip-main-content"];
/// rustdoc's generated impl lists: auto traits (Send, Sync, ...) and blanket impls (From<T>,
/// Any, ...) are the same on every type page.
const SKIP_IDS: &[&str] = &[
    "synthetic-implementations",
    "synthetic-implementations-list",
    "blanket-implementations",
    "blanket-implementations-list",
];

/// Whether an element is navigation or generated boilerplate rather than text.
fn skipped(e: &scraper::node::Element) -> bool {
    SKIP.contains(&e.name())
        || e.attr("data-nosnippet").is_some()
        || e.id().is_some_and(|id| SKIP_IDS.contains(&id))
        || e.classes().any(|c| SKIP_CLASSES.contains(&c))
        || (e.name() == "a" && e.classes().any(|c| c == "src"))
}
const BLOCK: &[&str] = &[
    "p",
    "div",
    "pre",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "br",
    "table",
    "ul",
    "ol",
    "blockquote",
    "section",
    "dt",
    "dd",
    "hr",
];

fn walk(el: ElementRef, out: &mut String, in_pre: bool) {
    for child in el.children() {
        match child.value() {
            Node::Text(t) => {
                if in_pre {
                    out.push_str(t);
                } else {
                    // Collapse whitespace like a browser does.
                    let mut prev_space = out.ends_with([' ', '\n']);
                    for ch in t.chars() {
                        if ch.is_whitespace() {
                            if !prev_space {
                                out.push(' ');
                                prev_space = true;
                            }
                        } else {
                            out.push(ch);
                            prev_space = false;
                        }
                    }
                }
            }
            Node::Element(e) => {
                let name = e.name();
                if skipped(e) {
                    continue;
                }
                let Some(child_el) = ElementRef::wrap(child) else {
                    continue;
                };
                let block = BLOCK.contains(&name);
                if block && !out.ends_with('\n') && !out.is_empty() {
                    out.push('\n');
                }
                let starts_code = name == "pre" && !in_pre;
                if starts_code {
                    out.push(CODE_START);
                }
                walk(child_el, out, in_pre || name == "pre");
                if starts_code {
                    out.push(CODE_END);
                }
                if block && !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => {}
        }
    }
}
