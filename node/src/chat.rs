//! Chat prompts from the model's own chat template (`tokenizer.chat_template`, a Jinja template), rendered the
//! way Hugging Face's `apply_chat_template(messages, add_generation_prompt=True)` does.
//!
//! HF renders with Python's jinja2 in an `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`
//! with the `loopcontrols` extension, and passes `messages`, `tools=None`, `documents=None`,
//! `add_generation_prompt` and the special-token texts (`bos_token`, `eos_token`). It adds the global
//! `raise_exception(msg)`, `strftime_now(fmt)` and its own `tojson` filter (`json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)`: Python's separators, no HTML escaping). This module sets up
//! a [`minijinja`] environment the same way; Python string/dict methods (`.strip()`, `.split()`, `.items()`, …)
//! come from `minijinja_contrib::pycompat`. node/tests/tokenizer.rs checks the renderings against jinja2's for
//! SmolLM2 and Qwen2.5 (scripts/tokenizer_fixture.py).
//!
//! Failure never reaches the caller: a GGUF without a template, a template over [`MAX_TEMPLATE_BYTES`], one that
//! does not parse, or a render that fails (`raise_exception`, an unsupported construct, more than
//! [`RENDER_FUEL`] instructions, output beyond a bound, even a panic inside the engine) all give plain ChatML
//! ([`chatml`]), or Gemma's turns for a vocabulary with `<start_of_turn>` ([`ChatFallback`],
//! [`crate::chat_gemma`]); a warning is logged once per template. [`ChatTemplate::try_render`] exposes the error.
//!
//! Known differences from jinja2 (none affects the templates tested here): `strftime_now` uses UTC (Python uses
//! local time); minijinja's own Jinja dialect applies (e.g. no `{% generation %}` tag, which then falls back).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};

use crate::tokenizer::ChatMessage;

/// Templates longer than this are not compiled (ChatML is used instead). Real templates are a few KiB.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Instruction budget of one render (minijinja "fuel"): far beyond any real conversation, small enough to stop a
/// runaway template in well under a second.
pub const RENDER_FUEL: u64 = 20_000_000;
/// The rendering may be at most this many bytes plus [`OUTPUT_PER_INPUT_BYTE`] times the messages' size.
const OUTPUT_BASE_BYTES: usize = 1 << 20;
const OUTPUT_PER_INPUT_BYTE: usize = 8;
const TEMPLATE_NAME: &str = "chat_template";

/// Why a template could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("chat template is {0} bytes (limit {MAX_TEMPLATE_BYTES})")]
    TooLarge(usize),
    #[error("chat template does not parse: {0}")]
    Parse(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// Plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per message, then `<|im_start|>assistant\n`), without
/// any default system message: the fallback when a model has no usable template.
pub fn chatml(messages: &[ChatMessage]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(&m.role);
        s.push('\n');
        s.push_str(&m.content);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

/// The prompt format used when the model's template is absent or unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFallback {
    /// Plain ChatML ([`chatml`]).
    ChatMl,
    /// Gemma's turns ([`crate::chat_gemma::gemma_turns`]), for vocabularies with `<start_of_turn>`.
    GemmaTurns,
}

impl ChatFallback {
    /// `messages` in this format, with the generation prompt (`bos_token`: the text Gemma's prompts start with;
    /// ChatML has none).
    pub fn render(self, messages: &[ChatMessage], bos_token: &str) -> String {
        match self {
            ChatFallback::ChatMl => chatml(messages),
            ChatFallback::GemmaTurns => crate::chat_gemma::gemma_turns(messages, bos_token),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChatFallback::ChatMl => "plain ChatML",
            ChatFallback::GemmaTurns => "Gemma turn",
        }
    }
}

enum Compiled {
    /// The GGUF has no template: ChatML, silently.
    Absent,
    Ready(Box<Environment<'static>>),
    Unusable(ChatTemplateError),
}

/// A model's chat template, compiled once. `Send + Sync`.
pub struct ChatTemplate {
    source: Option<String>,
    compiled: Compiled,
    bos_token: String,
    eos_token: String,
    fallback: ChatFallback,
    warned: AtomicBool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.compiled {
            Compiled::Absent => format!("absent ({})", self.fallback.name()),
            Compiled::Ready(_) => format!("{} bytes", self.source.as_ref().map_or(0, String::len)),
            Compiled::Unusable(e) => format!("unusable ({}): {e}", self.fallback.name()),
        };
        f.debug_struct("ChatTemplate").field("template", &state).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` (the GGUF's `tokenizer.chat_template`, if any). `bos_token`/`eos_token` are the texts
    /// of the BOS/EOS tokens (empty if the vocabulary has none). A template that cannot be used is logged once
    /// (here) and rendered as ChatML.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> ChatTemplate {
        ChatTemplate::with_fallback(source, bos_token, eos_token, ChatFallback::ChatMl)
    }

    /// [`ChatTemplate::new`] with another format than ChatML for when the template cannot be used.
    pub fn with_fallback(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
        fallback: ChatFallback,
    ) -> ChatTemplate {
        let compiled = match source {
            None => Compiled::Absent,
            Some(src) => match compile(src) {
                Ok(env) => Compiled::Ready(Box::new(env)),
                Err(e) => {
                    tracing::warn!("{e}; using {} prompts", fallback.name());
                    Compiled::Unusable(e)
                }
            },
        };
        let warned = AtomicBool::new(matches!(compiled, Compiled::Unusable(_)));
        ChatTemplate {
            source: source.map(str::to_owned),
            compiled,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            fallback,
            warned,
        }
    }

    /// The template text from the GGUF, if it had one (even if it is not used).
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Whether prompts come from the model's template (false: ChatML).
    pub fn is_model_template(&self) -> bool {
        matches!(self.compiled, Compiled::Ready(_))
    }

    /// The prompt for `messages` followed by the assistant's turn (`add_generation_prompt=True`); ChatML if the
    /// template is absent or unusable or fails on these messages (logged once).
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        self.render_with_tools(messages, None)
    }

    /// Whether the model's template renders tools itself (it uses the `tools` variable).
    pub fn knows_tools(&self) -> bool {
        self.is_model_template() && self.source.as_deref().is_some_and(|s| s.contains("tools"))
    }

    /// [`ChatTemplate::render`] with the `tools` variable set (OpenAI's `tools` list, as HF templates take it).
    pub fn render_with_tools(&self, messages: &[ChatMessage], tools: Option<&serde_json::Value>) -> String {
        match self.try_render_with(messages, tools) {
            Ok(s) => s,
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!("{e}; using {} prompts", self.fallback.name());
                }
                self.fallback.render(messages, &self.bos_token)
            }
        }
    }

    /// Like [`ChatTemplate::render`] but reports why the model's template could not be used (a model without a
    /// template renders ChatML without error).
    pub fn try_render(&self, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        self.try_render_with(messages, None)
    }

    fn try_render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let env = match &self.compiled {
            Compiled::Absent => return Ok(self.fallback.render(messages, &self.bos_token)),
            Compiled::Unusable(e) => return Err(e.clone()),
            Compiled::Ready(env) => env,
        };
        let input: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum::<usize>()
            + tools.map_or(0, |t| t.to_string().len());
        let limit = OUTPUT_BASE_BYTES.saturating_add(input.saturating_mul(OUTPUT_PER_INPUT_BYTE));
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            tools => tools.map_or(Value::from(()), Value::from_serialize),
            documents => Value::from(()),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let run = || -> Result<Vec<u8>, Error> {
            let mut out = BoundedWriter { buf: Vec::new(), limit };
            env.get_template(TEMPLATE_NAME)?.render_captured_to(ctx, &mut out)?;
            Ok(out.buf)
        };
        let bytes = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(ChatTemplateError::Render(describe(&e))),
            Err(_) => return Err(ChatTemplateError::Render("the template engine panicked".into())),
        };
        String::from_utf8(bytes).map_err(|_| ChatTemplateError::Render("output is not UTF-8".into()))
    }
}

/// An error with its cause chain on one line.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Collects the rendering, failing once it exceeds `limit` bytes.
struct BoundedWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other(format!("output exceeds {} bytes", self.limit)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn compile(source: &str) -> Result<Environment<'static>, ChatTemplateError> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(ChatTemplateError::TooLarge(source.len()));
    }
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(RENDER_FUEL));
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_template_owned(TEMPLATE_NAME, source.to_owned()).map_err(|e| ChatTemplateError::Parse(describe(&e)))?;
    Ok(env)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
}

// ---------------------------------------------------------------------------------------------------------------
// tojson: Python's json.dumps

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            (None, Some(s)) => Some(s.to_owned()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or string")),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap_or_default().to_owned(), b.as_str().unwrap_or_default().to_owned())
                }
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        _ => ((if indent.is_some() { "," } else { ", " }).to_owned(), ": ".to_owned()),
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// Deeper structures are refused (Python raises RecursionError around 1,000).
const MAX_JSON_DEPTH: usize = 256;

fn write_json(out: &mut String, v: &Value, o: &JsonOptions, depth: usize) -> Result<(), Error> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(v)),
        ValueKind::String => json_string(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                json_string(out, key, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, item, o, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        kind => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: a {kind} is not JSON serializable")))
        }
    }
    Ok(())
}

/// Python's conversion of dict keys: strings as they are, numbers / booleans / None as their JSON text.
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::Number => json_number(key),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::None | ValueKind::Undefined => "null".to_owned(),
        kind => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: keys must be strings, not {kind}")))
        }
    })
}

fn json_number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    match f64::try_from(v.clone()) {
        Ok(f) => python_float_repr(f),
        Err(_) => v.to_string(),
    }
}

/// `repr(float)` as Python's json module prints it (`1.0`, `0.0001`, `1e-05`, `1e+16`, `NaN`, `-Infinity`).
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // Shortest round-trip digits and the decimal exponent, e.g. "1.2345e-7".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if !(-4..16).contains(&exp) {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if (point as usize) >= digits.len() {
        format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    format!("{sign}{body}")
}

/// A JSON string literal the way Python's json module writes it.
fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------------------------
// strftime_now

/// HF's `strftime_now(format)`: the current time formatted like Python's `datetime.strftime` (UTC here).
fn strftime_now(format: String) -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(&format, secs)
}

const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
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

/// The C-locale subset of strftime that chat templates use: `%Y %y %m %B %b %d %e %j %A %a %H %I %M %S %p %%`,
/// with glibc's `%-d`-style unpadded variants. Other directives are copied through.
fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let tod = unix_secs.rem_euclid(86_400);
    let (hour, minute, second) = (tod / 3600, tod / 60 % 60, tod % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday; 0 = Monday
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |n: i64, width: usize| if unpadded { n.to_string() } else { format!("{n:0width$}") };
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&if unpadded { day.to_string() } else { format!("{day:2}") }),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num(hour12, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
        list.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    fn render(src: &str, m: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        ChatTemplate::new(Some(src), "<s>", "</s>").try_render(m)
    }

    #[test]
    fn no_template_is_chatml() {
        let t = ChatTemplate::new(None, "", "");
        assert!(!t.is_model_template());
        let m = msgs(&[("user", "Hi")]);
        assert_eq!(t.render(&m), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(t.try_render(&m).unwrap(), t.render(&m));
    }

    #[test]
    fn variables_and_whitespace_control() {
        // trim_blocks / lstrip_blocks as in HF: the block lines leave no whitespace behind.
        let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ tools is none }}\n";
        let m = msgs(&[("user", "a"), ("assistant", "b"), ("user", "c")]);
        assert_eq!(render(src, &m).unwrap(), "<s>\n[a]\n[c]\n></s>True");
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let src = "{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}{{ m.content.strip().upper() }}|{{ m['content'].split(',')|length }}|{% if m.role.startswith('us') %}U{% endif %};{% endfor %}{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}";
        let m = msgs(&[("user", "  x,y  "), ("assistant", "z"), ("user", "never")]);
        assert_eq!(render(src, &m).unwrap(), "X,Y|2|U;Z|1|;a=1");
    }

    #[test]
    fn raise_exception_falls_back_to_chatml() {
        let src = "{% if messages[0].role != 'system' %}{{ raise_exception('System first!') }}{% endif %}ok";
        let t = ChatTemplate::new(Some(src), "", "");
        let m = msgs(&[("user", "Hi")]);
        let err = t.try_render(&m).unwrap_err();
        assert!(matches!(&err, ChatTemplateError::Render(s) if s.contains("System first!")), "{err}");
        assert_eq!(t.render(&m), chatml(&m));
        assert_eq!(t.render(&msgs(&[("system", "S")])), "ok");
    }

    #[test]
    fn unusable_templates_fall_back() {
        let m = msgs(&[("user", "Hi")]);
        for src in ["{% for m in messages %}", "{{ messages[0].content.nosuchmethod() }}", "{% generation %}x"] {
            let t = ChatTemplate::new(Some(src), "", "");
            assert!(t.try_render(&m).is_err(), "{src}");
            assert_eq!(t.render(&m), chatml(&m));
        }
        let huge = format!("{{# {} #}}", "x".repeat(MAX_TEMPLATE_BYTES));
        let t = ChatTemplate::new(Some(&huge), "", "");
        assert!(matches!(t.try_render(&m), Err(ChatTemplateError::TooLarge(_))));
        assert_eq!(t.render(&m), chatml(&m));
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let m = msgs(&[("user", "Hi")]);
        // Too many instructions (nested loops of 100,000 x 100,000).
        let t = ChatTemplate::new(
            Some("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
            "",
            "",
        );
        assert!(t.try_render(&m).is_err());
        // Too much output (well within the fuel: 100,000 x 1,000,000 bytes).
        let t = ChatTemplate::new(Some("{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}"), "", "");
        assert!(t.try_render(&m).is_err());
        assert_eq!(t.render(&m), chatml(&m));
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let cases = [
            (
                "{{ {'a': 1, 'b': [true, none, 'x\"y'], 'c': {}} | tojson }}",
                r#"{"a": 1, "b": [true, null, "x\"y"], "c": {}}"#,
            ),
            ("{{ 'é\n<&>\u{1}' | tojson }}", "\"é\\n<&>\\u0001\""),
            ("{{ 'é😀' | tojson(ensure_ascii=true) }}", r#""\u00e9\ud83d\ude00""#),
            ("{{ [1, [2]] | tojson(indent=2) }}", "[\n  1,\n  [\n    2\n  ]\n]"),
            ("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true, separators=(',', ':')) }}", r#"{"a":2,"b":1}"#),
            (
                "{{ [1.0, 0.5, 1e-05, 0.0001, 1e16, 123456789012345.6, -0.0] | tojson }}",
                "[1.0, 0.5, 1e-05, 0.0001, 1e+16, 123456789012345.6, -0.0]",
            ),
        ];
        for (src, want) in cases {
            assert_eq!(render(src, &[]).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn strftime_subset() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %-d, %y %H:%M:%S %I%p day %j %%", t),
            "Thursday February 29, 24 13:05:09 01PM day 060 %"
        );
        assert_eq!(strftime("%-m/%e/%Y %q", 0), "1/ 1/1970 %q");
        let now = ChatTemplate::new(Some("{{ strftime_now('%Y') }}"), "", "").try_render(&[]).unwrap();
        assert!(now.len() == 4 && now.starts_with('2'), "{now}");
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }
}
