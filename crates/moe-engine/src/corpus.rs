//! Text corpora: the default one (the single-page books of the toolchain's Rust documentation,
//! HTML turned into text with a real HTML parser) or any UTF-8 file or directory (`--data`).
//! Owns reading and cleaning text; tokenisation lives in `tokenizer`, batching in `dataset`.

use crate::error::{Error, Result};
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
    /// The rust-docs books of the active toolchain.
    RustDocs,
    /// A UTF-8 text file or a directory of them (read recursively, sorted by path).
    Path(PathBuf),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::RustDocs => "the Rust documentation books of the toolchain (rust-docs)".into(),
            Source::Path(p) => p.display().to_string(),
        }
    }
}

/// Loads every document of a source; fails if there is no text at all.
pub fn load(source: &Source) -> Result<Vec<Document>> {
    let docs = match source {
        Source::RustDocs => load_rust_docs()?,
        Source::Path(p) => load_path(p)?,
    };
    let chars: usize = docs.iter().map(|d| d.text.trim().len()).sum();
    if chars == 0 {
        return Err(Error::Corpus {
            what: format!("{} holds no text", source.describe()),
            hint: "pass --data with a non-empty UTF-8 text file or directory".into(),
        });
    }
    Ok(docs)
}

fn rust_docs_dir() -> Result<PathBuf> {
    let out = std::process::Command::new("rustc").args(["--print", "sysroot"]).output();
    let hint = "install them with `rustup component add rust-docs`, or pass --data FILE_OR_DIR";
    let sysroot = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            return Err(Error::Corpus {
                what: "cannot run `rustc --print sysroot` to find the Rust documentation".into(),
                hint: hint.into(),
            })
        }
    };
    let dir = Path::new(&sysroot).join("share/doc/rust/html");
    if !dir.is_dir() {
        return Err(Error::Corpus {
            what: format!("the Rust documentation is not installed ({} is missing)", dir.display()),
            hint: hint.into(),
        });
    }
    Ok(dir)
}

fn load_rust_docs() -> Result<Vec<Document>> {
    let dir = rust_docs_dir()?;
    let mut books: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(Error::io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path().join("print.html")))
        .filter(|p| p.is_file())
        .collect();
    books.sort();
    if books.is_empty() {
        return Err(Error::Corpus {
            what: format!("no */print.html books under {}", dir.display()),
            hint: "install them with `rustup component add rust-docs`, or pass --data FILE_OR_DIR".into(),
        });
    }
    books
        .iter()
        .map(|p| {
            let html = read_utf8(p)?;
            let name =
                p.parent().and_then(|d| d.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let (text, code) = html_to_text_with_code(&html);
            Ok(Document { name, text, code })
        })
        .collect()
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
    files.iter().map(|f| Ok(Document::from_text(f.display().to_string(), read_utf8(f)?))).collect()
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

fn read_utf8(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).map_err(Error::io(p))?;
    String::from_utf8(bytes).map_err(|e| Error::NotUtf8 { path: p.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

/// Marks the start and end of a `<pre>` block during the walk (private-use characters).
const CODE_START: char = '\u{E000}';
const CODE_END: char = '\u{E001}';

/// Plain text of an HTML page: the `<main>` element if there is one (mdBook pages), else the
/// body; scripts, styles and navigation dropped; block elements end lines; `<pre>` kept verbatim.
pub fn html_to_text(html: &str) -> String {
    html_to_text_with_code(html).0
}

/// [`html_to_text`] and the byte ranges of the text that came from `<pre>` blocks.
pub fn html_to_text_with_code(html: &str) -> (String, Vec<(usize, usize)>) {
    let marked = html_to_marked_text(html);
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
    (text, code)
}

fn html_to_marked_text(html: &str) -> String {
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

const SKIP: &[&str] = &["script", "style", "nav", "noscript", "template", "head", "button"];
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
                if SKIP.contains(&name) {
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
