//! The text of a sequence as it is generated: token ids decoded incrementally (a piece is
//! released once it decodes to whole characters, with one token of left context so tokenizers
//! that strip a leading space decode it right), and stop strings: generation ends before the
//! first stop string, and text that could be the start of one is held back until it is not.

use crate::tokenizer::Tokenizer;

pub struct TextStream {
    ids: Vec<u32>,
    /// ids[prefix..read] decoded to the text already released.
    prefix: usize,
    read: usize,
    /// Decoded text not yet released (it may begin a stop string).
    held: String,
    stop: Vec<String>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream { ids: vec![], prefix: 0, read: 0, held: String::new(), stop }
    }

    /// The same, after the prompt's last token `id`: the first generated token is decoded with
    /// it as left context (so a SentencePiece tokenizer keeps that token's leading space).
    pub fn after(mut self, id: Option<u32>) -> Self {
        self.ids.extend(id);
        self.read = self.ids.len();
        self
    }

    /// Adds the token `id`; returns the text it releases and whether a stop string ended the
    /// text (the stop string and what follows are dropped).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> crate::Result<(String, bool)> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(new) = now.strip_prefix(before.as_str()) {
                self.held.push_str(new);
                self.prefix = self.read;
                self.read = self.ids.len();
            }
        }
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            return Ok((std::mem::take(&mut self.held), true));
        }
        // hold back the longest tail that is the beginning of a stop string
        let keep = self
            .stop
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let out: String = self.held.drain(..self.held.len() - keep).collect();
        Ok((out, false))
    }

    /// The text still held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}
