//! The documents' claims hold against the tree (test only): every `moe` command that README.md,
//! BENCHMARKS.md, RESULTS.md, RELIABILITY.md and docs/ show parses with today's command line,
//! every file or folder they cite exists, and every test, function or field they name in code
//! spans exists in the sources. A renamed flag, a moved script or a deleted test fails here
//! instead of leaving a claim that nothing reproduces (issue 24).
//!
//! Conventions the documents may use: an UPPERCASE word stands for a value (`--seed S`,
//! `--model HF_DIR`, `<command>`), `a|b` for alternatives (the first is parsed), `[--flag v]` for an optional
//! part; a flag named without its value (`moe serve --checkpoint` in prose) is a mention.

use crate::Cli;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (file name, text) of every document checked (docs/cli.md is generated from the CLI itself).
fn documents() -> Vec<(String, String)> {
    let root = root();
    let mut paths: Vec<PathBuf> =
        ["README.md", "BENCHMARKS.md", "RESULTS.md", "RELIABILITY.md"].iter().map(|f| root.join(f)).collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md") && !p.ends_with("cli.md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.strip_prefix(&root).unwrap_or(&p).display().to_string(), text)
        })
        .collect()
}

/// Runs `check` on every line of every document (file name, 1-based line number, line); it
/// returns the problems of each item it checked. Fails with them all, or when fewer than
/// `at_least` items were checked (the extraction would be broken).
fn check_lines(what: &str, at_least: usize, mut check: impl FnMut(&str, usize, &str) -> Vec<Option<String>>) {
    let (mut bad, mut checked) = (vec![], 0);
    for (name, text) in documents() {
        for (i, line) in text.lines().enumerate() {
            for problem in check(&name, i + 1, line) {
                checked += 1;
                bad.extend(problem);
            }
        }
    }
    assert!(checked >= at_least, "only {checked} {what} found: is the extraction broken?");
    assert!(bad.is_empty(), "{what} in the documents that do not hold:\n{}", bad.join("\n"));
}

/// The inline code spans of a line.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Where a line or code span runs moe: the arguments after the program, without a trailing
/// shell comment. Accepts `moe ...`, `target/release/moe ...`, `cargo run --release -- ...`,
/// and those behind `mpirun -np N` or `taskset -c N`.
fn moe_args(code: &str) -> Option<&str> {
    let code = code.trim();
    let code = code.split("  #").next().unwrap_or(code).trim_end();
    let launchers = ["mpirun ", "taskset "];
    let runs = launchers.iter().any(|l| code.starts_with(l))
        || code.starts_with("moe ")
        || code.starts_with("target/release/moe ")
        || code.starts_with("cargo run --release -- ");
    if !runs {
        return None;
    }
    for prog in ["cargo run --release -- ", "target/release/moe ", "moe "] {
        if let Some(i) = code.find(prog) {
            let before = &code[..i];
            if i == 0 || before.ends_with(' ') {
                return Some(&code[i + prog.len()..]);
            }
        }
    }
    None
}

/// Shell words of `s` (single and double quotes, no escapes inside single quotes).
fn shell_words(s: &str) -> Option<Vec<String>> {
    let (mut words, mut cur, mut quote, mut any) = (vec![], String::new(), None, false);
    for ch in s.chars() {
        match (quote, ch) {
            (None, '\'' | '"') => (quote, any) = (Some(ch), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if any {
        words.push(cur);
    }
    Some(words)
}

/// An UPPERCASE stand-in for a value (`N`, `HF_DIR`, `KIND...`) or one in angle brackets.
fn placeholder(w: &str) -> bool {
    let w = w.trim_end_matches('.');
    if w.starts_with('<') && w.ends_with('>') {
        return true;
    }
    w.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && w.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The words as the CLI should see them: optional brackets dropped, the first of `a|b`,
/// placeholders as `1` (a number, and a path too).
fn concrete(words: Vec<String>) -> Vec<String> {
    words
        .into_iter()
        .map(|w| w.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|w| !w.is_empty())
        .map(|w| if placeholder(&w) { "1".into() } else { w })
        .map(|w| if w.starts_with('-') || !w.contains('|') { w } else { w.split('|').next().unwrap_or("").into() })
        .collect()
}

/// Why `args` is not a command of today's CLI, if it is not one. Missing required flags are
/// fine (prose names the part it is about); so is a flag named last without its value.
fn parse_error(args: &[String]) -> Option<String> {
    let err = match Cli::try_parse_from(std::iter::once("moe".to_string()).chain(args.iter().cloned())) {
        Ok(_) => return None,
        Err(e) => e,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => Some(v.clone()),
        _ => None,
    };
    match err.kind() {
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand | ErrorKind::ValueValidation => Some(err.to_string()),
        ErrorKind::InvalidValue if value.as_deref() == Some("") && args.last().is_some_and(|a| a.starts_with("--")) => {
            None
        }
        ErrorKind::InvalidValue => Some(err.to_string()),
        _ => None,
    }
}

#[test]
fn every_moe_command_in_the_documents_parses() {
    check_lines("moe commands", 100, |name, n, line| {
        let mut codes = code_spans(line);
        if line.starts_with("    ") {
            codes.push(line);
        }
        let mut out = vec![];
        for code in codes {
            // a shell variable: the script that sets it is checked by running it
            let Some(args) = moe_args(code).filter(|a| !a.contains('$')) else { continue };
            let Some(words) = shell_words(args) else {
                out.push(Some(format!("{name}:{n}: unbalanced quotes in `{args}`")));
                continue;
            };
            if words.first().is_none_or(|w| placeholder(w)) {
                continue; // `moe <command> --help`: any command
            }
            let why = parse_error(&concrete(words));
            out.push(why.map(|w| format!("{name}:{n}: `moe {args}`: {}", w.lines().next().unwrap_or(""))));
        }
        out
    });
}

/// The repository paths a line cites: words starting with one of the tree's top folders.
fn cited_paths(line: &str) -> Vec<String> {
    const TOPS: [&str; 9] = ["scripts/", "tests/", "crates/", "results/", "docs/", "fuzz/", ".ci/", "src/", "benches/"];
    let ok = |c: char| c.is_ascii_alphanumeric() || "_./+-".contains(c);
    let mut out = vec![];
    let bytes: Vec<(usize, char)> = line.char_indices().collect();
    for (k, &(i, _)) in bytes.iter().enumerate() {
        let prev = if k == 0 { ' ' } else { bytes[k - 1].1 };
        if ok(prev) || prev == '/' || prev == '~' {
            continue;
        }
        let rest = &line[i..];
        if !TOPS.iter().any(|t| rest.starts_with(t)) {
            continue;
        }
        let end = rest.find(|c: char| !ok(c)).unwrap_or(rest.len());
        let stop = rest[end..].chars().next();
        if matches!(stop, Some('<' | '*' | '{')) && !rest[..end].ends_with('/') && !rest[..end].contains('.') {
            continue; // a pattern such as results/<name>/
        }
        let p = rest[..end].trim_end_matches(['.', ',', '-']);
        out.push(p.to_string());
    }
    out
}

/// Whether `p` exists under the root, a crate or the fuzz crate; a last component followed by a
/// pattern (`...-avx2*.log`) counts as a prefix.
fn exists(p: &str) -> bool {
    let root = root();
    let mut bases = vec![root.clone(), root.join("fuzz")];
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        bases.extend(crates.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    bases.iter().any(|b| {
        let full = b.join(p);
        if full.exists() {
            return true;
        }
        let (Some(dir), Some(stem)) = (full.parent(), full.file_name().and_then(|s| s.to_str())) else { return false };
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(stem)))
        })
    })
}

#[test]
fn every_file_the_documents_cite_exists() {
    check_lines("cited files", 100, |name, n, line| {
        cited_paths(line).into_iter().map(|p| (!exists(&p)).then(|| format!("{name}:{n}: {p}"))).collect()
    });
}

/// Every identifier of the sources (Rust, Python, shell, TOML) outside build output and runs.
fn source_identifiers(dir: &Path, out: &mut HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p.is_dir() {
            if !["target", ".git", "runs", "results", "node_modules"].contains(&name.as_str()) {
                source_identifiers(&p, out);
            }
        } else if [".rs", ".py", ".sh", ".toml"].iter().any(|x| name.ends_with(x)) || name == "run" {
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.extend(text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(String::from));
            }
        }
    }
}

/// Names of the PyTorch peer (`../shared/bench`, outside this repository) that BENCHMARKS.md
/// quotes.
const PEER_NAMES: [&str; 2] = ["custom_gmm_compile", "torch_gemm_bench"];

#[test]
fn every_test_function_and_field_the_documents_name_exists() {
    let mut idents = HashSet::new();
    source_identifiers(&root(), &mut idents);
    check_lines("named tests, functions and fields", 30, |name, n, line| {
        let mut out = vec![];
        for code in code_spans(line) {
            // snake_case names of three words or more: tests, functions, config fields
            for w in code.split(|c: char| !(c.is_ascii_alphanumeric() || "_-/.".contains(c))) {
                let named = w.split('_').count() >= 3
                    && w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !w.contains("__");
                if named {
                    let known = idents.contains(w) || PEER_NAMES.contains(&w);
                    out.push((!known).then(|| format!("{name}:{n}: {w}")));
                }
            }
        }
        out
    });
}
