//! The default corpus's cleaning and deduplication on small rustdoc-shaped pages, the list of its
//! crate-source part, and the epoch report. (The whole Rust documentation is
//! read by `moe corpus`, not here: it takes about 20 s in release builds.)

use moe_engine::corpus::{html_to_marked_text, html_to_text, Source, CODE_END, CODE_START};
use moe_engine::rustdocs::{dedup, normalise};
use std::path::Path;

fn code(s: &str) -> String {
    format!("{CODE_START}{s}{CODE_END}")
}

#[test]
fn rustdoc_furniture_is_removed_and_docs_kept() {
    let html = r##"<html><body><nav class="sidebar">Sidebar items</nav><main>
        <section id="main-content"><div class="main-heading"><h1>Struct <span>Vec</span>
        <a class="doc-anchor" href="#">§</a></h1><rustdoc-toolbar></rustdoc-toolbar>
        <span class="out-of-band"><a class="src" href="x">Source</a></span></div>
        <div class="docblock"><p>A contiguous growable array type.</p>
        <div class="example-wrap"><pre class="rust"><code>let v = vec![1];</code></pre>
        <a class="test-arrow" href="#">Run</a></div></div>
        <h2 id="blanket-implementations" class="section-header">Blanket Implementations</h2>
        <div id="blanket-implementations-list"><h3 class="code-header">impl&lt;T&gt; From&lt;T&gt; for T</h3></div>
        <pre class="rust"><code><a href="#1" id="1" data-nosnippet>1</a>fn main() {}</code></pre>
        </section></main></body></html>"##;
    let text = html_to_text(html);
    for kept in ["Struct Vec", "A contiguous growable array type.", "let v = vec![1];", "fn main() {}"] {
        assert!(text.contains(kept), "{kept:?} missing from {text:?}");
    }
    for gone in ["Sidebar", "§", "Source", "Run", "Blanket", "From<T>", "1fn main"] {
        assert!(!text.contains(gone), "{gone:?} left in {text:?}");
    }
    // The code blocks are marked as code.
    assert_eq!(html_to_marked_text(html).matches(CODE_START).count(), 2);
}

#[test]
fn repeated_blocks_and_pages_are_dropped_in_corpus_order() {
    let long = "Returns the number of ones in the binary representation of self, counted by the CPU.";
    let long_u64 = long.replace("self", "self (u64)");
    let long_u8 = long.replace("self", "self (u8)");
    let example = "let mut v = Vec::new();\nv.push(1);\nassert_eq!(v.len(), 1);\n";
    let pages = vec![
        (
            "a".to_string(),
            format!("Examples\n{long_u8}\n{}Another sentence that is long enough to be compared.\n", code(example)),
        ),
        // Re-export: every long block repeats (u64 normalises to u8's sentence) -> page dropped.
        ("b".to_string(), format!("Examples\n{long_u64}\n{}", code(example))),
        // Half new: kept, with its repeats removed and its short heading kept.
        (
            "c".to_string(),
            format!(
                "Examples\n{long}\nA new explanation, long enough to count as a block of substance here.\n{}",
                code("fn other() -> u32 { 42 }\n")
            ),
        ),
    ];
    let (docs, stats) = dedup(pages);
    let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!((stats.pages, stats.pages_kept), (3, 2));
    assert!(stats.chars_after < stats.chars_before);
    let c = &docs[1];
    assert!(c.text.starts_with("Examples\n"), "{:?}", c.text);
    assert!(c.text.contains(long), "the plain `self` sentence differs from `self (u8)`: kept");
    assert!(c.text.contains("A new explanation"));
    // Code ranges survive the rebuild.
    let at = c.text.find("fn other").unwrap();
    assert!(c.is_code(at) && !c.is_code(0));
    assert!(docs[0].is_code(docs[0].text.find("v.push").unwrap()));
}

#[test]
fn long_code_is_deduplicated_item_by_item() {
    // An item whose name is `word`, and one that differs from its siblings only by digits.
    let named = |word: &str| format!("pub fn {word}(a: u32) -> u32 {{\n    a.wrapping_add(1).rotate_left(3)\n}}\n\n");
    let lane = |n: u32| format!("pub fn lane_{n}(a: u{n}) -> u{n} {{\n    a.wrapping_mul(3).rotate_right(1)\n}}\n\n");
    let words = |prefix: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("{prefix}_{}{}", (b'a' + (i % 26) as u8) as char, (b'a' + (i / 26) as u8) as char))
            .collect()
    };
    let a: String = words("alpha", 30).iter().map(|w| named(w)).chain((8..18).map(lane)).collect();
    let b: String =
        words("alpha", 30).iter().map(|w| named(w)).chain(words("beta", 2).iter().map(|w| named(w))).collect();
    let c: String =
        words("gamma", 30).iter().map(|w| named(w)).chain(words("alpha", 3).iter().map(|w| named(w))).collect();
    assert!(a.len() > 2000 && b.len() > 2000 && c.len() > 2000, "long enough to be split into items");
    let (docs, _) = dedup(vec![("a".into(), code(&a)), ("b".into(), code(&b)), ("c".into(), code(&c))]);
    let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a", "c"], "b repeats a but for 2 of 32 items");
    assert_eq!(docs[0].text.matches("pub fn lane_").count(), 1, "lanes differing by digits kept once");
    assert_eq!(docs[0].text.matches("pub fn alpha_").count(), 30);
    assert_eq!(docs[1].text.matches("pub fn gamma_").count(), 30);
    assert_eq!(docs[1].text.matches("pub fn alpha_").count(), 0, "a's items are not repeated in c");
    assert!(docs[1].is_code(0));
}

#[test]
fn normalise_merges_widths_and_spacing() {
    assert_eq!(normalise("Returns  u16::MAX\n for usize"), normalise("returns u64::MAX for u8"));
    assert_ne!(normalise("wrapping add"), normalise("wrapping sub"));
}

#[test]
fn data_names_select_built_in_corpora() {
    assert!(matches!(Source::parse(None), Source::RustDocs));
    assert!(matches!(Source::parse(Some(Path::new("rust-docs"))), Source::RustDocs));
    assert!(matches!(Source::parse(Some(Path::new("rust-books"))), Source::RustBooks));
    assert!(matches!(Source::parse(Some(Path::new("./rust-docs"))), Source::Path(_)));
}

#[test]
fn corpus_crates_are_locked_dependencies() {
    let crates = moe_engine::registry::corpus_crates();
    let find = |n: &str| crates.iter().find(|(name, _)| name == n).map(|(_, v)| v.clone());
    assert!(find("serde").is_some_and(|v| v.starts_with("1.")), "serde 1.x is listed");
    assert!(find("rayon").is_some());
    assert!(find("moe-engine").is_none(), "workspace members are not registry crates");
    let names: Vec<&String> = crates.iter().map(|(n, _)| n).collect();
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "sorted by name");
    // The list must follow dependency updates: every entry is a package of Cargo.lock.
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
    for (name, version) in &crates {
        let entry = format!("name = \"{name}\"\nversion = \"{version}\"\n");
        assert!(lock.contains(&entry), "{name} {version} is not in Cargo.lock: regenerate corpus_crates.txt");
    }
}

#[test]
fn runs_report_their_epochs_and_warn_on_repeated_data() {
    let tokenizer = moe_engine::tokenizer::Tokenizer::train(["some text to train on, twice"].into_iter(), 300).unwrap();
    let data = moe_engine::dataset::Dataset {
        train: vec![0; 1_000_000],
        val: vec![0; 1000],
        tokenizer,
        cache_dir: std::path::PathBuf::new(),
        info: moe_engine::dataset::CorpusInfo {
            source: String::new(),
            documents: 1,
            chars: 1,
            tokens: 1_001_000,
            dedup: None,
        },
    };
    let once = data.epochs_message("dense", 500_000.0);
    assert!(once.contains("0.50 epochs of the 1.00 M training tokens"), "{once}");
    assert!(!once.contains("WARNING"));
    let twice = data.epochs_message("8x2", 2_400_000.0);
    assert!(twice.contains("2.40 epochs") && twice.contains("WARNING: it repeats its data"), "{twice}");
}
