//! A model's chat template (Jinja, from its tokenizer files) rendered over (role, content)
//! messages with minijinja the way transformers renders it (trim_blocks, lstrip_blocks, Python
//! string methods, `raise_exception`, `strftime_now`), under an instruction budget.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{context, Environment};
use serde_json::Value;
use std::path::Path;

/// The chat template's instruction budget (minijinja fuel): real templates spend a few hundred
/// instructions per message, so this allows any real conversation and stops a template that
/// loops forever within a fraction of a second.
const TEMPLATE_FUEL_BASE: u64 = 2_000_000;
const TEMPLATE_FUEL_PER_MESSAGE: u64 = 20_000;

impl Tokenizer {
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
        self.encode(&text)
    }
}

/// Today's date in a strftime subset (%Y %m %d %b %B %y), for templates that print it.
fn strftime_now(fmt: &str) -> String {
    let (y, m, d) = crate::clock::civil_date((crate::clock::unix_secs() / 86_400) as i64);
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
