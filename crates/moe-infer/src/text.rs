//! The text of a sequence as it is generated: token ids decoded incrementally (a piece is
//! released once it decodes to whole characters, with one token of left context so tokenizers
//! that strip a leading space decode it right), and stop strings: generation ends before the
//! first stop string, and text that could be the start of one is held back until it is not.

use crate::tokenizer::HfTokenizer;

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

    /// Adds the token `id`; returns the text it releases and whether a stop string ended the
    /// text (the stop string and what follows are dropped).
    pub fn push(&mut self, tok: &HfTokenizer, id: u32) -> crate::Result<(String, bool)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> HfTokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_moe");
        HfTokenizer::load(&dir).unwrap()
    }

    /// The pieces released for `text` with `stop`, and whether a stop string ended it.
    fn run(text: &str, stop: &[&str]) -> (Vec<String>, bool) {
        let t = tok();
        let mut s = TextStream::new(stop.iter().map(|x| x.to_string()).collect());
        let mut pieces = vec![];
        for id in t.encode(text, false).unwrap() {
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
    fn pieces_add_up_to_the_text_and_stop_strings_cut_it() {
        let text = "the cat sat on the mat"; // (the fixture vocabulary has no capitals)
        let (pieces, stopped) = run(text, &[]);
        assert_eq!((pieces.concat(), stopped), (text.to_string(), false));
        let (pieces, stopped) = run(text, &["t on", "zzz"]);
        assert_eq!((pieces.concat(), stopped), ("the cat sa".to_string(), true));
        // a piece that could start a stop string is held back: no released piece ever holds "t o"
        assert!(pieces.iter().all(|p| !p.contains("t o")), "{pieces:?}");
        let (pieces, stopped) = run(text, &["mat!"]);
        assert_eq!((pieces.concat(), stopped), (text.to_string(), false), "a partial match at the end is released");
    }
}
