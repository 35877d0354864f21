//! Any text as a model's chat template (chat_template.jinja beside the OLMoE fixture's
//! tokenizer): rendering a conversation gives text or an error, never a panic, and ends within
//! the template engine's fuel limit (a template that loops forever is an error, not a hang).

use moe_engine::tokenizer::Tokenizer;

const TOKENIZER: &[u8] = include_bytes!("../../crates/moe-infer/tests/fixtures/olmoe/tokenizer.json");

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER).expect("write tokenizer");
    std::fs::write(dir.path().join("chat_template.jinja"), data).expect("write input");
    let Ok(tok) = Tokenizer::open(dir.path()) else { return };
    let messages = [
        ("system".to_string(), "Be brief.".to_string()),
        ("user".to_string(), "Hi {{ there }} {% raw %}".to_string()),
        ("assistant".to_string(), "Hello.".to_string()),
        ("user".to_string(), "Again?".to_string()),
    ];
    for gen in [false, true] {
        let _ = tok.render_chat(&messages, gen);
    }
}
