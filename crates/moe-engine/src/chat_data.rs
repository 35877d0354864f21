//! Chat fine-tuning data: JSONL conversations, one per line as
//! `{"messages": [{"role": "user", "content": "..."}, ...]}`, rendered with the model's chat
//! template and tokenised with its tokenizer, every token outside the assistant turns flagged as
//! context (`NOT_TARGET`): the loss counts only what the assistant says, the template's
//! end-of-turn tokens included. Assistant turn i spans from the rendering of the turns before it
//! with the generation prompt to the rendering through it; a template that does not render a
//! conversation as the prefix of its continuation is refused.

use crate::dataset::{DocEncoder, NOT_TARGET};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

fn bad(what: String) -> Error {
    Error::Corpus {
        what,
        hint: "give one conversation per line: {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, ...]}"
            .into(),
    }
}

/// The (role, content) pairs of one JSONL line.
fn messages(line: &str, n: usize) -> Result<Vec<(String, String)>> {
    let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("line {n} is not JSON ({e})")))?;
    let list = v["messages"].as_array().ok_or_else(|| bad(format!("line {n} has no \"messages\" list")))?;
    list.iter()
        .map(|m| match (m["role"].as_str(), m["content"].as_str()) {
            (Some(r), Some(c)) => Ok((r.to_string(), c.to_string())),
            _ => Err(bad(format!("line {n}: a message without a string role and content"))),
        })
        .collect()
}

/// The rendered conversation and the byte ranges of its assistant turns.
fn render(hf: &Tokenizer, msgs: &[(String, String)], n: usize) -> Result<(String, Vec<Range<usize>>)> {
    let r = |m: &[(String, String)], gen: bool| hf.render_chat(m, gen).map_err(|e| bad(format!("line {n}: {e}")));
    let full = r(msgs, false)?;
    let mut spans = vec![];
    for (i, (role, _)) in msgs.iter().enumerate().filter(|(_, (role, _))| role == "assistant") {
        let (before, through) = (r(&msgs[..i], true)?, r(&msgs[..=i], false)?);
        if !through.starts_with(&before) || !full.starts_with(&through) {
            return Err(bad(format!(
                "line {n}: the chat template does not render the conversation up to {role} turn {i} as the beginning of the whole"
            )));
        }
        spans.push(before.len()..through.len());
    }
    Ok((full, spans))
}

/// The encoder of JSONL conversations with the chat template of the model in `dir`.
pub fn chat_encoder(dir: &Path) -> Result<DocEncoder> {
    let hf = Tokenizer::open(dir)?;
    // fail now, not in the middle of the corpus, when there is no template
    hf.render_chat(&[("user".into(), "hi".into())], true)?;
    Ok(DocEncoder(Arc::new(move |tk: &Tokenizer, text: &str| {
        let mut out = vec![];
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (full, spans) = render(&hf, &messages(line, n + 1)?, n + 1)?;
            let (ids, starts) = tk.encode_with_offsets(&full)?;
            out.extend(ids.iter().zip(&starts).map(|(&id, &s)| {
                if spans.iter().any(|r| r.contains(&s)) {
                    id
                } else {
                    id | NOT_TARGET
                }
            }));
        }
        if out.iter().all(|&t| t & NOT_TARGET != 0) {
            return Err(bad("no conversation has an assistant turn, so nothing would be learned".into()));
        }
        Ok(out)
    })))
}
