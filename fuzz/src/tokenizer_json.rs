//! Any bytes as the tokenizer.json of a model directory (beside the OLMoE fixture's
//! tokenizer_config.json): loading gives a tokenizer or an error, never a panic; a tokenizer
//! that loads encodes and decodes a fixed text (ASCII, multi-byte UTF-8, special-looking
//! tokens) and renders the fixture's chat template, each to a value or an error.

use moe_engine::tokenizer::Tokenizer;

const TOKENIZER_CONFIG: &str = include_str!("../../crates/moe-infer/tests/fixtures/olmoe/tokenizer_config.json");
const TEXT: &str = "fn main() { println!(\"héllo, 世界 🦀\"); } <|endoftext|> <s>\n\t  x";

/// One input: an error or a value, never a panic.
pub fn run(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tokenizer.json"), data).expect("write input");
    std::fs::write(dir.path().join("tokenizer_config.json"), TOKENIZER_CONFIG).expect("write config");
    let Ok(tok) = Tokenizer::open(dir.path()) else { return };
    for ids in [tok.encode(TEXT), tok.encode_with_specials(TEXT)].into_iter().flatten() {
        let _ = tok.decode(&ids);
    }
    let _ = tok.decode(&[0, 1, 2, u32::MAX, (tok.vocab_size() as u32).saturating_sub(1)]);
    let messages = [("system".to_string(), "Be brief.".to_string()), ("user".to_string(), TEXT.to_string())];
    let _ = tok.encode_chat(&messages);
}
