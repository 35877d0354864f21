//! Tokenizer and chat template against transformers (ids written by scripts/hf_checkpoints.py):
//! the prompt's ids, and apply_chat_template's ids, for a template in chat_template.jinja
//! (transformers 5) and one inside tokenizer_config.json (older hub repositories); text streamed
//! as generation releases it.

use moe_engine::text::TextStream;
use moe_engine::tokenizer::Tokenizer;
use safetensors::SafeTensors;
use std::path::PathBuf;

/// The texts of scripts/hf_checkpoints.py.
const PROMPT: &str = "the router sends a token to the experts";

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn ids(name: &str, key: &str) -> Vec<u32> {
    let bytes = std::fs::read(dir(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key).unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

fn chat() -> Vec<(String, String)> {
    vec![("system".into(), "be brief".into()), ("user".into(), "what is a router".into())]
}

#[test]
fn prompt_ids_match_transformers() {
    for name in ["mixtral", "deepseek_v3"] {
        let tok = Tokenizer::open(&dir(name)).unwrap();
        assert_eq!(tok.encode_with_specials(PROMPT).unwrap(), ids(name, "input_ids"), "{name}");
    }
}

#[test]
fn chat_template_from_jinja_file_matches_transformers() {
    let tok = Tokenizer::open(&dir("mixtral")).unwrap();
    assert!(dir("mixtral").join("chat_template.jinja").is_file());
    assert_eq!(tok.encode_chat(&chat()).unwrap(), ids("mixtral", "chat_ids"));
    let text = tok.render_chat(&chat(), true).unwrap();
    assert_eq!(text, "<s><|system|>be brief</s><|user|>what is a router</s><|assistant|>");
}

#[test]
fn chat_template_from_tokenizer_config_matches_transformers() {
    assert!(!dir("qwen2_moe").join("chat_template.jinja").exists());
    let tok = Tokenizer::open(&dir("qwen2_moe")).unwrap();
    assert_eq!(tok.encode_chat(&chat()).unwrap(), ids("qwen2_moe", "chat_ids"));
}

#[test]
fn template_errors_are_reported_not_panics() {
    let mut tok = Tokenizer::open(&dir("mixtral")).unwrap();
    tok.template = Some("{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}".into());
    let e = tok.render_chat(&chat(), true).unwrap_err().to_string();
    assert!(e.contains("only one message"), "{e}");
    tok.template = Some("{% for %}".into());
    assert!(tok.render_chat(&chat(), true).unwrap_err().to_string().contains("does not parse"));
    tok.template = None;
    assert!(tok.render_chat(&chat(), true).unwrap_err().to_string().contains("no chat template"));
    // A template that would loop for 10^15 steps runs out of fuel: an error, not a hang.
    let r = "range(100000)";
    tok.template = Some(format!(
        "{{% for a in {r} %}}{{% for b in {r} %}}{{% for c in {r} %}}x{{% endfor %}}{{% endfor %}}{{% endfor %}}"
    ));
    let e = tok.render_chat(&chat(), true).unwrap_err().to_string();
    assert!(e.contains("fuel"), "{e}");
    // A long conversation stays within the budget of a real template.
    tok.template = Some("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}{% endfor %}".into());
    let long: Vec<(String, String)> = (0..2000).map(|i| ("user".to_string(), format!("message {i}"))).collect();
    assert!(tok.render_chat(&long, true).unwrap().ends_with("message 1999"));
}

#[test]
fn python_string_methods_work_in_templates() {
    let mut tok = Tokenizer::open(&dir("mixtral")).unwrap();
    tok.template = Some("{% for m in messages %}{{ m['content'].strip().upper() }}|{% endfor %}".into());
    assert_eq!(tok.render_chat(&chat(), false).unwrap(), "BE BRIEF|WHAT IS A ROUTER|");
    tok.template = Some("{{ strftime_now('%d %b %Y') }}".into());
    let date = tok.render_chat(&chat(), false).unwrap();
    let parts: Vec<&str> = date.split(' ').collect();
    assert!(parts.len() == 3 && parts[0].len() == 2 && parts[1].len() == 3 && parts[2].len() == 4, "{date}");
}

/// The pieces `TextStream` releases for `text` with `stop`, and whether a stop string ended it.
fn stream(text: &str, stop: &[&str]) -> (Vec<String>, bool) {
    let t = Tokenizer::open(&dir("qwen3_moe")).unwrap();
    let mut s = TextStream::new(stop.iter().map(|x| x.to_string()).collect());
    let mut pieces = vec![];
    for id in t.encode(text).unwrap() {
        let (p, stopped) = s.push(&t, id).unwrap();
        pieces.push(p);
        if stopped {
            return (pieces, true);
        }
    }
    pieces.push(s.finish());
    (pieces, false)
}

#[test]
fn streamed_pieces_add_up_to_the_text_and_stop_strings_cut_it() {
    let text = "the cat sat on the mat"; // (the fixture vocabulary has no capitals)
    let (pieces, stopped) = stream(text, &[]);
    assert_eq!((pieces.concat(), stopped), (text.to_string(), false));
    let (pieces, stopped) = stream(text, &["t on", "zzz"]);
    assert_eq!((pieces.concat(), stopped), ("the cat sa".to_string(), true));
    // a piece that could start a stop string is held back: no released piece ever holds "t o"
    assert!(pieces.iter().all(|p| !p.contains("t o")), "{pieces:?}");
    let (pieces, stopped) = stream(text, &["mat!"]);
    assert_eq!((pieces.concat(), stopped), (text.to_string(), false), "a partial match at the end is released");
}

/// After the prompt's last token, the first generated piece keeps its leading space under a
/// SentencePiece tokenizer (Metaspace strips it at the start of a decoded sequence).
#[test]
fn the_first_streamed_piece_keeps_its_space_after_the_prompt() {
    let t = Tokenizer::open(&dir("mixtral")).unwrap();
    let ids = t.encode("the router sends").unwrap();
    let (prompt, rest) = ids.split_at(ids.len() - 1); // "▁the ▁ro uter" and "▁sends"
    let text = |mut s: TextStream| {
        let mut out: String = rest.iter().map(|&id| s.push(&t, id).unwrap().0).collect();
        out.push_str(&s.finish());
        out
    };
    assert_eq!(t.decode(prompt).unwrap(), "the router");
    assert_eq!(text(TextStream::new(vec![]).after(prompt.last().copied())), " sends");
    assert_eq!(text(TextStream::new(vec![])), "sends", "without context the decoder strips the space");
}
