//! Function calling: a chat request's `tools` and `tool_choice`, and the calls read out of what the model wrote.
//!
//! The tools are rendered into the prompt ([`edge_node::chat_tools`]); the model calls one by writing
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. With `tool_choice` `auto` it may or may not;
//! `required` (some tool) and a named function are constrained by a grammar that admits only well-formed calls
//! whose arguments follow the tool's `parameters` schema, so they always parse. `none` leaves the tools out.
//! Each choice's events pass through [`split_calls`], which turns call blocks into [`Event::Call`]s (streamed as
//! OpenAI streams `tool_calls`) and the finish reason into `tool_calls` when the model called.

use edge_node::chat_tools::{CallSplitter, FunctionCall, Piece, CALL_CLOSE, CALL_OPEN};
use edge_protocol::stage::{Grammar, MAX_GRAMMAR};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::openai::{field, wrong_type, ApiError};
use super::submit::Event;

/// Most tools in one request.
pub const MAX_TOOLS: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Auto,
    Required,
    Named(String),
}

/// A request's tools (None from [`parse`] when it has none or `tool_choice` is `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// OpenAI's `tools` list as given, for the chat template.
    pub list: Value,
    /// Each function's name and `parameters` schema.
    functions: Vec<(String, Value)>,
    pub choice: Choice,
    /// Whether a required call may be followed by more (`parallel_tool_calls`; false by default, as in
    /// llama.cpp's server: small models tend to repeat a call until the budget ends).
    pub parallel: bool,
}

fn bad(param: &str, msg: String) -> ApiError {
    ApiError::invalid(param, msg).with_code("invalid_value")
}

pub fn parse(o: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    let list = match field(o, "tools") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => return Err(wrong_type("tools", "an array", v)),
    };
    if list.len() > MAX_TOOLS {
        return Err(bad("tools", format!("'tools' may hold at most {MAX_TOOLS} tools, got {}.", list.len())));
    }
    let mut functions = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(&param, format!("{param}.type must be 'function'.")));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(bad(&format!("{param}.function"), format!("{param} needs a 'function' object.")));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            let msg = format!("{param}.function.name must be 1 to 64 letters, digits, '_' or '-', got {name:?}.");
            return Err(bad(&format!("{param}.function.name"), msg));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(v) => return Err(wrong_type(&format!("{param}.function.parameters"), "a JSON schema object", v)),
        };
        functions.push((name.to_string(), parameters));
    }
    let choice = match field(o, "tool_choice") {
        None => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Choice::Auto,
            "none" => return Ok(None),
            "required" => Choice::Required,
            other => {
                let msg = format!("'tool_choice' must be 'none', 'auto', 'required' or a function, got {other:?}.");
                return Err(bad("tool_choice", msg));
            }
        },
        Some(v @ Value::Object(c)) => match c.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) if functions.iter().any(|(n, _)| n == name) => Choice::Named(name.to_string()),
            Some(name) => {
                return Err(bad("tool_choice", format!("'tool_choice' names {name:?}, which is not a tool.")))
            }
            None => {
                return Err(wrong_type("tool_choice", "{\"type\": \"function\", \"function\": {\"name\": ...}}", v))
            }
        },
        Some(v) => return Err(wrong_type("tool_choice", "a string or an object", v)),
    };
    let parallel = match field(o, "parallel_tool_calls") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong_type("parallel_tool_calls", "a boolean", v)),
    };
    if functions.is_empty() {
        return match choice {
            Choice::Auto => Ok(None),
            _ => Err(bad("tool_choice", "'tool_choice' needs 'tools'.".into())),
        };
    }
    Ok(Some(Tools { list: Value::Array(list), functions, choice, parallel }))
}

impl Tools {
    /// The grammar of a required or named call: a well-formed call (more than one for a required call with
    /// `parallel_tool_calls`) whose arguments follow the function's schema. None for `auto`.
    pub fn grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let call = |(name, parameters): &(String, Value)| {
            json!({"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
                   "required": ["name", "arguments"], "additionalProperties": false})
        };
        let (schema, repeat) = match &self.choice {
            Choice::Auto => return Ok(None),
            Choice::Named(n) => (call(self.functions.iter().find(|(f, _)| f == n).expect("checked")), ""),
            Choice::Required => {
                let more = if self.parallel { " (\"\\n\" call)*" } else { "" };
                (json!({"anyOf": self.functions.iter().map(call).collect::<Vec<_>>()}), more)
            }
        };
        let text = format!(
            "start: call{repeat}\ncall: {} body {}\nbody: %json {schema}\n",
            Value::from(format!("{CALL_OPEN}\n")),
            Value::from(format!("\n{CALL_CLOSE}"))
        );
        if text.len() > MAX_GRAMMAR {
            return Err(bad("tools", format!("The tools' schemas are {} bytes; at most {MAX_GRAMMAR}.", text.len())));
        }
        Ok(Some(Grammar::Lark(text)))
    }
}

/// A choice's events with the model's calls read out of its text: text before, between and after calls comes
/// as [`Event::Text`] (log-probabilities with the text that follows them), each call as [`Event::Call`], and a
/// choice that called ends with the finish reason `tool_calls`. Dropping the returned receiver drops `rx` at
/// the next event, which cancels the sequence.
pub fn split_calls(mut rx: mpsc::UnboundedReceiver<Event>) -> mpsc::UnboundedReceiver<Event> {
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut splitter = CallSplitter::default();
        let (mut held, mut called) = (Vec::new(), false);
        while let Some(ev) = rx.recv().await {
            let (pieces, end) = match ev {
                Event::Text(t, entries) => {
                    held.extend(entries);
                    (splitter.push(&t), None)
                }
                Event::Done { finish_reason, completion_tokens } => {
                    (splitter.finish(), Some((finish_reason, completion_tokens)))
                }
                other => {
                    let _ = tx.send(other);
                    return;
                }
            };
            for p in pieces {
                let ev = match p {
                    Piece::Text(t) => Event::Text(t, std::mem::take(&mut held)),
                    Piece::Call(c) => {
                        called = true;
                        Event::Call(c)
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
            if let Some((reason, completion_tokens)) = end {
                if !held.is_empty() {
                    let _ = tx.send(Event::Text(String::new(), std::mem::take(&mut held)));
                }
                let finish_reason = if called && reason == "stop" { "tool_calls" } else { reason };
                let _ = tx.send(Event::Done { finish_reason, completion_tokens });
                return;
            }
        }
    });
    out
}

/// A call in OpenAI's `tool_calls` shape (arguments as a JSON string).
pub fn call_json(c: &FunctionCall, id: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}})
}

/// A fresh call id.
pub fn call_id() -> String {
    format!("call_{}", edge_node::stage::store::hex(&rand::random::<[u8; 12]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<Option<Tools>, ApiError> {
        parse(body.as_object().unwrap())
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn tools_and_choices_are_read_and_checked() {
        assert_eq!(parsed(json!({})).unwrap(), None);
        let t = parsed(json!({"tools": [weather()]})).unwrap().unwrap();
        assert_eq!((t.choice.clone(), t.grammar().unwrap()), (Choice::Auto, None));
        assert_eq!(parsed(json!({"tools": [weather()], "tool_choice": "none"})).unwrap(), None);
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let t = parsed(json!({"tools": [weather()], "tool_choice": named})).unwrap().unwrap();
        assert_eq!(t.choice, Choice::Named("get_weather".into()));
        for (body, param) in [
            (json!({"tools": {}}), "tools"),
            (json!({"tools": [{"type": "code"}]}), "tools[0]"),
            (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "tools[0].function.name"),
            (json!({"tools": [weather()], "tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
        ] {
            assert_eq!(parsed(body.clone()).unwrap_err().param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn required_and_named_calls_compile_to_grammars_that_admit_only_calls() {
        let t = parsed(json!({"tools": [weather()], "tool_choice": "required", "parallel_tool_calls": true}));
        let t = t.unwrap().unwrap();
        let Some(Grammar::Lark(g)) = t.grammar().unwrap() else { panic!() };
        assert!(g.starts_with("start: call (\"\\n\" call)*\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\""), "{g}");
        assert!(g.contains("\"const\":\"get_weather\""), "{g}");
        let one = parsed(json!({"tools": [weather()], "tool_choice": "required"})).unwrap().unwrap();
        let Some(Grammar::Lark(g1)) = one.grammar().unwrap() else { panic!() };
        assert!(g1.starts_with("start: call\n"), "one call unless parallel_tool_calls: {g1}");
        // The grammar compiles and constrains: over single bytes, only a call to get_weather with a city parses.
        let mut pieces: Vec<Vec<u8>> = (0u8..=127).map(|b| vec![b]).collect();
        pieces.push(b"<end>".to_vec());
        let v = edge_protocol::stage::Vocabulary::from_pieces(pieces.iter().map(Vec::as_slice), vec![128], vec![128]);
        let grammars = edge_node::grammar::Grammars::new(&v).unwrap();
        let mut c = grammars.compile(&Grammar::Lark(g)).unwrap();
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        for b in text.bytes() {
            let mut logits = vec![0.0; 129];
            c.mask(&mut logits);
            assert!(logits[b as usize].is_finite(), "{:?} refused in {text}", b as char);
            c.advance(b as u32);
        }
        assert!(c.is_complete());
        let mut c = grammars.compile(&t.grammar().unwrap().unwrap()).unwrap();
        let mut logits = vec![0.0; 129];
        c.mask(&mut logits);
        let allowed: Vec<usize> = (0..129).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, [b'<' as usize], "a required call starts with the tag");
    }

    #[tokio::test]
    async fn calls_become_events_and_the_finish_reason_says_so() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut out = split_calls(rx);
        for t in [
            "Sure.",
            "\n<tool_",
            "call>\n{\"name\": \"get_weather\", ",
            "\"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
        ] {
            tx.send(Event::Text(t.into(), vec![])).unwrap();
        }
        tx.send(Event::Done { finish_reason: "stop", completion_tokens: 9 }).unwrap();
        let mut text = String::new();
        let mut calls = Vec::new();
        loop {
            match out.recv().await.unwrap() {
                Event::Text(t, _) => text.push_str(&t),
                Event::Call(c) => calls.push(c),
                Event::Done { finish_reason, completion_tokens } => {
                    assert_eq!((finish_reason, completion_tokens), ("tool_calls", 9));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(text, "Sure.\n");
        assert_eq!(calls, [FunctionCall { name: "get_weather".into(), arguments: json!({"city": "Oslo"}) }]);
        assert_eq!(call_json(&calls[0], "call_1")["function"]["arguments"], "{\"city\":\"Oslo\"}");
    }
}
