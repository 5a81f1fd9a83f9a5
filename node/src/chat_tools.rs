//! Tools in a chat: the functions a model may call, rendered into its prompt, and its calls read back out of the
//! text it generates. The call syntax is the one Qwen2.5, Hermes and many others are trained on:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! A template that knows tools (it uses the `tools` variable, as HF's `apply_chat_template(tools=...)` does)
//! renders them and the conversation's calls and results itself. For any other template the tools are described
//! in the system message in that same syntax (as Qwen2.5's template does), earlier calls become that text in the
//! assistant's turn and tool results a user turn of `<tool_response>` blocks, so every model sees one convention.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::tokenizer::ChatMessage;

pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

/// A call an assistant made, as OpenAI's `tool_calls` entries (and HF chat templates) hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A function's name and its arguments (a JSON object, as chat templates expect them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: Value,
}

impl FunctionCall {
    /// The call as the model writes it between the tags.
    pub fn text(&self) -> String {
        format!("{{\"name\": {}, \"arguments\": {}}}", Value::from(self.name.as_str()), self.arguments)
    }
}

/// The prompt for `messages` with `tools` (OpenAI's `tools` list; None or empty: no tools).
pub fn render(t: &ChatTemplate, messages: &[ChatMessage], tools: Option<&Value>) -> String {
    let tools = tools.filter(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    if t.knows_tools() {
        return t.render_with_tools(messages, tools);
    }
    t.render(&in_plain_turns(messages, tools))
}

/// The system message's description of `tools` (Qwen2.5's wording).
pub fn instructions(tools: &Value) -> String {
    let list: Vec<String> = tools.as_array().into_iter().flatten().map(Value::to_string).collect();
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with \
         function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\nFor each function call, \
         return a json object with function name and arguments within {CALL_OPEN}{CALL_CLOSE} XML tags:\n\
         {CALL_OPEN}\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n{CALL_CLOSE}",
        list.join("\n")
    )
}

/// The conversation for a template that knows only system, user and assistant turns.
fn in_plain_turns(messages: &[ChatMessage], tools: Option<&Value>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if let Some(tools) = tools {
        let text = instructions(tools);
        match messages.first() {
            Some(m) if m.role == "system" => {
                out.push(ChatMessage::new("system", format!("{}\n\n{text}", m.content)));
                rest = &messages[1..];
            }
            _ => out.push(ChatMessage::new("system", text)),
        }
    }
    for m in rest {
        match m.role.as_str() {
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Results of one round of calls share one user turn.
                match out.last_mut() {
                    Some(prev) if prev.role == "user" && prev.content.ends_with("</tool_response>") => {
                        prev.content = format!("{}\n{block}", prev.content)
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    text = format!("{text}\n{CALL_OPEN}\n{}\n{CALL_CLOSE}", c.function.text());
                }
                out.push(ChatMessage::new("assistant", text.trim_start()));
            }
            _ => out.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
    }
    out
}

/// A piece of generated text: plain text, or a complete call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(FunctionCall),
}

/// Reads calls out of text as it streams: text before a call comes out at once (holding back only what could
/// be the start of `<tool_call>`), each call once its closing tag (or the end) has arrived. A block that is not a
/// well-formed call stays text.
#[derive(Debug, Default)]
pub struct CallSplitter {
    buf: String,
    in_call: bool,
}

impl CallSplitter {
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if !self.in_call {
                if let Some(i) = self.buf.find(CALL_OPEN) {
                    push_text(&mut out, &self.buf[..i]);
                    self.buf.drain(..i + CALL_OPEN.len());
                    self.in_call = true;
                    continue;
                }
                let keep = (1..CALL_OPEN.len().min(self.buf.len() + 1))
                    .rev()
                    .find(|&k| {
                        self.buf.is_char_boundary(self.buf.len() - k)
                            && CALL_OPEN.starts_with(&self.buf[self.buf.len() - k..])
                    })
                    .unwrap_or(0);
                let cut = self.buf.len() - keep;
                push_text(&mut out, &self.buf[..cut]);
                self.buf.drain(..cut);
                return out;
            }
            let Some(i) = self.buf.find(CALL_CLOSE) else { return out };
            let body: String = self.buf.drain(..i + CALL_CLOSE.len()).collect();
            out.push(block(&body[..i], true));
            self.in_call = false;
        }
    }

    /// The rest at the end of the text (a call cut short by the end of generation is still read if it parses).
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        if std::mem::take(&mut self.in_call) {
            out.push(block(&rest, false));
        } else {
            push_text(&mut out, &rest);
        }
        out
    }
}

fn push_text(out: &mut Vec<Piece>, t: &str) {
    if !t.is_empty() {
        out.push(Piece::Text(t.to_string()));
    }
}

/// The body of a `<tool_call>` block as a call, or as the text it was.
fn block(body: &str, closed: bool) -> Piece {
    #[derive(Deserialize)]
    struct Raw {
        name: String,
        #[serde(default)]
        arguments: Value,
    }
    match serde_json::from_str::<Raw>(body.trim()) {
        Ok(Raw { name, arguments }) if !name.is_empty() => {
            let arguments = if arguments.is_null() { serde_json::json!({}) } else { arguments };
            Piece::Call(FunctionCall { name, arguments })
        }
        _ => Piece::Text(format!("{CALL_OPEN}{body}{}", if closed { CALL_CLOSE } else { "" })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, arguments: Value) -> Piece {
        Piece::Call(FunctionCall { name: name.into(), arguments })
    }

    #[test]
    fn calls_come_out_of_streamed_text_in_any_split() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n\
                    </tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let want = vec![
            Piece::Text("Let me check.\n".into()),
            call("weather", json!({"city": "Paris"})),
            Piece::Text("\n".into()),
            call("time", json!({})),
        ];
        for step in [1, 2, 3, 7, 40, text.len()] {
            let mut s = CallSplitter::default();
            let mut got: Vec<Piece> = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for part in chars.chunks(step) {
                got.extend(s.push(&part.iter().collect::<String>()));
            }
            got.extend(s.finish());
            // Text may come in several pieces: join neighbours before comparing.
            let mut joined: Vec<Piece> = Vec::new();
            for p in got {
                match (joined.last_mut(), p) {
                    (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                    (_, p) => joined.push(p),
                }
            }
            assert_eq!(joined, want, "steps of {step}");
        }
    }

    #[test]
    fn text_that_only_looks_like_a_call_stays_text() {
        let mut s = CallSplitter::default();
        assert_eq!(s.push("a <tool"), vec![Piece::Text("a ".into())], "the possible tag is held back");
        assert_eq!(s.push(" b"), vec![Piece::Text("<tool b".into())]);
        let mut s = CallSplitter::default();
        let mut got = s.push("<tool_call>not json</tool_call>é");
        got.extend(s.finish());
        assert_eq!(got, vec![Piece::Text("<tool_call>not json</tool_call>".into()), Piece::Text("é".into())]);
        // A call the end of generation cut before its closing tag is still a call.
        let mut s = CallSplitter::default();
        assert!(s.push("<tool_call>\n{\"name\": \"f\"}").is_empty());
        assert_eq!(s.finish(), vec![call("f", json!({}))]);
    }

    #[test]
    fn a_template_without_tools_gets_them_in_the_system_message() {
        let tools = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
        let calls = vec![ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall { name: "weather".into(), arguments: json!({"city": "Oslo"}) },
        }];
        let mut assistant = ChatMessage::new("assistant", "");
        assistant.tool_calls = calls;
        let mut result = ChatMessage::new("tool", "-3 C");
        result.tool_call_id = Some("call_1".into());
        let messages =
            [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Weather in Oslo?"), assistant, result];
        let plain = in_plain_turns(&messages, Some(&tools));
        let roles: Vec<&str> = plain.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(plain[0].content.starts_with("Be brief.\n\n# Tools") && plain[0].content.contains("\"weather\""));
        assert_eq!(
            plain[2].content,
            "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\":\"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(plain[3].content, "<tool_response>\n-3 C\n</tool_response>");
        // ChatML (no template) renders the same turns.
        let prompt = render(&ChatTemplate::new(None, "", ""), &messages, Some(&tools));
        assert!(prompt.contains("<|im_start|>user\n<tool_response>\n-3 C\n</tool_response><|im_end|>"), "{prompt}");
        assert!(!render(&ChatTemplate::new(None, "", ""), &messages[..2], None).contains("# Tools"));
    }
}
