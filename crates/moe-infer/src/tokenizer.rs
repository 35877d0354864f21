//! A checkpoint's tokenizer (tokenizer.json, through the `tokenizers` crate), its special tokens
//! (tokenizer_config.json) and its chat template (chat_template.jinja, or the `chat_template`
//! field of tokenizer_config.json), rendered with minijinja the way transformers renders it
//! (trim_blocks, lstrip_blocks, Python string methods).

use crate::error::{io, Error, Result};
use minijinja::{context, Environment};
use moe_engine::contain::contained;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The chat template's instruction budget (minijinja fuel): real templates spend a few hundred
/// instructions per message, so this allows any real conversation and stops a template that
/// loops forever within a fraction of a second.
const TEMPLATE_FUEL_BASE: u64 = 2_000_000;
const TEMPLATE_FUEL_PER_MESSAGE: u64 = 20_000;

pub struct HfTokenizer {
    tok: tokenizers::Tokenizer,
    pub template: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    path: PathBuf,
}

/// A special token in tokenizer_config.json: a string or an AddedToken object.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl HfTokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Tokenizer { path, msg: "missing; download tokenizer.json with the model".into() });
        }
        let loaded = contained(|| tokenizers::Tokenizer::from_file(&path).map_err(|e| e.to_string()));
        let tok = loaded
            .and_then(|r| r)
            .map_err(|e| Error::Tokenizer { path: path.clone(), msg: format!("cannot read ({e})") })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::Tokenizer { path: cfg_path.clone(), msg: format!("not valid JSON: {e}") })?
        } else {
            Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(io(&jinja))?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // a list of named templates: take "default"
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        Ok(HfTokenizer {
            tok,
            template,
            bos: token_str(cfg.get("bos_token")),
            eos: token_str(cfg.get("eos_token")),
            path,
        })
    }

    /// The tokenizer embedded in a GGUF file (see `gguf_tokenizer`).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        // SAFETY: a read-only map, read while the file is open (as the model loader does).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
        let g = crate::gguf::Gguf::parse(&map, path)?;
        let e = crate::gguf_tokenizer::embedded(&g)?.ok_or_else(|| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: "has no embedded tokenizer (no tokenizer.ggml.model); put the model's tokenizer.json next to it or pass --tokenizer DIR".into(),
        })?;
        let built = contained(|| e.json.to_string().parse::<tokenizers::Tokenizer>().map_err(|err| err.to_string()));
        let tok = built.and_then(|r| r).map_err(|err| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("its embedded tokenizer cannot be built ({err})"),
        })?;
        Ok(HfTokenizer { tok, template: e.template, bos: e.bos, eos: e.eos, path: path.to_path_buf() })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer { path: self.path.clone(), msg: e.to_string() }
    }

    /// Token ids of `text`; `special` applies the tokenizer's post-processor (BOS etc.) as
    /// transformers' `encode` does by default.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = contained(|| self.tok.encode(text, special).map_err(|e| e.to_string()));
        Ok(enc.and_then(|r| r).map_err(|e| self.err(e))?.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        contained(|| self.tok.decode(ids, true).map_err(|e| e.to_string())).and_then(|r| r).map_err(|e| self.err(e))
    }

    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.tok.token_to_id(s)
    }

    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// The chat template applied to (role, content) messages.
    pub fn render_chat(&self, messages: &[(String, String)], add_generation_prompt: bool) -> Result<String> {
        let src = self.template.as_deref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template (no chat_template.jinja, no `chat_template` in tokenizer_config.json); \
                 run without --chat",
                self.path.parent().unwrap_or(Path::new(".")).display()
            ))
        })?;
        let mut env = Environment::new();
        // A template is data from a model file: one that loops forever ends in an error.
        env.set_fuel(Some(TEMPLATE_FUEL_BASE + TEMPLATE_FUEL_PER_MESSAGE * messages.len() as u64));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template("chat", src).map_err(|e| Error::Template(format!("does not parse: {e}")))?;
        let msgs: Vec<Value> = messages.iter().map(|(r, c)| serde_json::json!({"role": r, "content": c})).collect();
        let t = env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        t.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::Template(format!("rendering failed: {e}")))
    }

    /// Token ids of a chat: the rendered template, encoded without adding special tokens again
    /// (transformers' apply_chat_template(tokenize=True)).
    pub fn encode_chat(&self, messages: &[(String, String)]) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, true)?;
        self.encode(&text, false)
    }
}

/// Today's date in a strftime subset (%Y %m %d %b %B %y), for templates that print it.
fn strftime_now(fmt: &str) -> String {
    let (y, m, d) = moe_engine::clock::civil_date((moe_engine::clock::unix_secs() / 86_400) as i64);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[m as usize - 1];
    fmt.replace("%Y", &y.to_string())
        .replace("%y", &format!("{:02}", y % 100))
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", name)
        .replace("%b", &name[..3])
}
