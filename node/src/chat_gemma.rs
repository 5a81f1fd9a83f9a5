//! Gemma's chat format, for Gemma GGUFs without a chat template (Gemma 3's as converted by llama.cpp has none).
//!
//! For conversations that Hugging Face's Gemma 3 template accepts (roles alternate user/assistant, starting with
//! the user, after an optional system message) the rendering is that template's, byte for byte:
//!
//! ```text
//! {bos}<start_of_turn>user\n{system}\n\n{content|trim}<end_of_turn>\n<start_of_turn>model\n{content|trim}<end_of_turn>\n…<start_of_turn>model\n
//! ```
//!
//! (a leading system message is folded into the first user turn followed by "\n\n"; `assistant` is called `model`;
//! each content is stripped of surrounding whitespace like Python's `str.strip`). Where that template raises an
//! error, the conversation is folded instead of falling back to ChatML, which Gemma does not know: `tool` results
//! and any other role become user turns, consecutive turns of one role are joined by "\n\n", a system message that
//! comes after a model turn or alone becomes a user turn of its own.

use crate::tokenizer::ChatMessage;

/// Python's `str.strip()` (jinja2's `trim`): Unicode whitespace, plus the separators U+001C..U+001F.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The Gemma prompt for `messages` with the generation prompt `<start_of_turn>model\n`, starting with
/// `bos_token` (the text of `<bos>`, as the template prints it; [`crate::tokenizer::Tokenizer::chat_prompt`]
/// removes it again when encoding adds BOS).
pub fn gemma_turns(messages: &[ChatMessage], bos_token: &str) -> String {
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (Some(first.content.as_str()), rest),
        _ => (None, messages),
    };
    let mut turns: Vec<(&str, String)> = Vec::with_capacity(rest.len() + 1);
    for m in rest {
        let role = if matches!(m.role.as_str(), "assistant" | "model") { "model" } else { "user" };
        let content = py_strip(&m.content);
        match turns.last_mut() {
            Some((r, text)) if *r == role => {
                if !content.is_empty() {
                    if !text.is_empty() {
                        text.push_str("\n\n");
                    }
                    text.push_str(content);
                }
            }
            _ => turns.push((role, content.to_owned())),
        }
    }
    if let Some(system) = system {
        match turns.first_mut() {
            Some(("user", text)) => text.insert_str(0, &format!("{system}\n\n")),
            _ => turns.insert(0, ("user", py_strip(system).to_owned())),
        }
    }
    let mut s = String::from(bos_token);
    for (role, text) in turns {
        s.push_str("<start_of_turn>");
        s.push_str(role);
        s.push('\n');
        s.push_str(&text);
        s.push_str("<end_of_turn>\n");
    }
    s.push_str("<start_of_turn>model\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(m: &[(&str, &str)]) -> Vec<ChatMessage> {
        m.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    #[test]
    fn hf_template_rendering() {
        let m = msgs(&[("system", "You are a helpful assistant"), ("user", " Hello\n")]);
        assert_eq!(
            gemma_turns(&m, "<bos>"),
            "<bos><start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\n"
        );
        let m = msgs(&[("user", "a"), ("assistant", "b\u{a0}"), ("user", "")]);
        assert_eq!(
            gemma_turns(&m, ""),
            "<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n\
             <start_of_turn>user\n<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn folds_what_the_template_refuses() {
        // Tool results are user turns; consecutive user turns are joined.
        let m =
            msgs(&[("user", "2+2?"), ("assistant", "Let me compute."), ("tool", "4"), ("tool", "9"), ("user", "ok")]);
        assert_eq!(
            gemma_turns(&m, ""),
            "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\nLet me compute.<end_of_turn>\n\
             <start_of_turn>user\n4\n\n9\n\nok<end_of_turn>\n<start_of_turn>model\n"
        );
        // A conversation starting with the model, or only a system message: the system text is a user turn.
        let m = msgs(&[("system", "Be brief."), ("assistant", "Hi!")]);
        assert_eq!(
            gemma_turns(&m, ""),
            "<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            gemma_turns(&msgs(&[("system", "S")]), ""),
            "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(gemma_turns(&[], "<bos>"), "<bos><start_of_turn>model\n");
    }
}
