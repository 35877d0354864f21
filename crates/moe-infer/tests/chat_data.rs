//! Chat fine-tuning data: JSONL conversations rendered with the model's chat template (the tiny
//! Llama fixture's), with only the assistant turns (their content and end-of-turn token) left
//! as training targets; malformed lines are errors naming the line.

use moe_engine::chat_data::chat_encoder;
use moe_engine::dataset::NOT_TARGET;
use moe_engine::tokenizer::Tokenizer;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_dense")
}

#[test]
fn only_assistant_turns_are_targets() {
    let enc = chat_encoder(&dir()).unwrap();
    let tk = Tokenizer::load(&dir().join("tokenizer.json")).unwrap();
    let lines = [
        r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the router"}, {"role": "assistant", "content": "sends each token"}]}"#,
        r#"{"messages": [{"role": "user", "content": "experts"}, {"role": "assistant", "content": "the model"}, {"role": "user", "content": "a token"}, {"role": "assistant", "content": "to the experts"}]}"#,
    ];
    let stream = (enc.0)(&tk, &lines.join("\n")).unwrap();
    let targets: Vec<u32> = stream.iter().filter(|&&t| t & NOT_TARGET == 0).copied().collect();
    let eos = tk.eos_id().unwrap();
    let mut want = vec![];
    for answer in ["sends each token", "the model", "to the experts"] {
        want.extend(tk.encode(answer).unwrap());
        want.push(eos);
    }
    assert_eq!(targets, want);
    // the context tokens are there too: the whole rendered conversations
    assert!(stream.len() > 2 * want.len(), "{} tokens", stream.len());
}

#[test]
fn malformed_lines_are_errors_naming_the_line() {
    let enc = chat_encoder(&dir()).unwrap();
    let tk = Tokenizer::load(&dir().join("tokenizer.json")).unwrap();
    let good = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
    for (bad, says) in [
        ("not json", "line 2 is not JSON"),
        (r#"{"text": "a"}"#, "line 2 has no \"messages\""),
        (r#"{"messages": [{"role": "user"}]}"#, "line 2: a message without"),
    ] {
        let e = (enc.0)(&tk, &format!("{good}\n{bad}")).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    let e = (enc.0)(&tk, r#"{"messages": [{"role": "user", "content": "a"}]}"#).unwrap_err().to_string();
    assert!(e.contains("no conversation has an assistant turn"), "{e}");
}
