//! Token log-probabilities as the OpenAI API reports them: each generated token with its bytes, its
//! log-probability and the most likely alternatives, in the chat shape (`logprobs.content`) or the legacy
//! completions shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`). No I/O here.

use edge_node::tokenizer::Tokenizer;
use edge_protocol::stage::TokenLogprobs;
use serde_json::{json, Map, Value};

/// What OpenAI reports for a probability that rounds to zero (JSON has no -infinity).
const FLOOR: f32 = -9999.0;

/// One generated token with its log-probability and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub token: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(Vec<u8>, f32)>,
}

impl Entry {
    pub fn new(tok: &Tokenizer, id: u32, lp: &TokenLogprobs) -> Entry {
        let bytes = |id: u32| tok.token_bytes(id).unwrap_or_default().to_vec();
        Entry { token: bytes(id), logprob: lp.logprob, top: lp.top.iter().map(|&(t, l)| (bytes(t), l)).collect() }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number(logprob: f32) -> Value {
    json!(if logprob.is_finite() { logprob.max(FLOOR) } else { FLOOR })
}

fn chat_token(bytes: &[u8], logprob: f32) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("token".into(), text(bytes).into());
    m.insert("logprob".into(), number(logprob));
    m.insert("bytes".into(), json!(bytes));
    m
}

/// The chat shape: `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null}`.
pub fn chat(entries: &[Entry]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut m = chat_token(&e.token, e.logprob);
            let top: Vec<Value> = e.top.iter().map(|(b, l)| Value::Object(chat_token(b, *l))).collect();
            m.insert("top_logprobs".into(), top.into());
            Value::Object(m)
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The legacy completions shape; `offset` is where the first entry's text starts in the whole completion
/// (characters), so streamed chunks carry the same offsets as the whole response.
pub fn completion(entries: &[Entry], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        offsets.push(at);
        at += text(&e.token).chars().count();
    }
    let top: Vec<Value> =
        entries.iter().map(|e| Value::Object(e.top.iter().map(|(b, l)| (text(b), number(*l))).collect())).collect();
    json!({
        "tokens": entries.iter().map(|e| text(&e.token)).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| number(e.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// Characters the entries' tokens add to the text (the next chunk's `offset`).
pub fn chars(entries: &[Entry]) -> usize {
    entries.iter().map(|e| text(&e.token).chars().count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str, logprob: f32, top: &[(&str, f32)]) -> Entry {
        Entry {
            token: token.as_bytes().to_vec(),
            logprob,
            top: top.iter().map(|(t, l)| (t.as_bytes().to_vec(), *l)).collect(),
        }
    }

    #[test]
    fn the_chat_shape_is_openais() {
        let v = chat(&[entry("Hi", -0.25, &[("Hi", -0.25), ("Hey", -1.5)]), entry("!", f32::NEG_INFINITY, &[])]);
        assert_eq!(
            v,
            json!({"content": [
                {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                 "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                                  {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]}]},
                {"token": "!", "logprob": -9999.0, "bytes": [33], "top_logprobs": []},
            ], "refusal": null})
        );
        // A token that is part of a UTF-8 character keeps its exact bytes.
        let half = Entry { token: vec![0xc3], logprob: -1.0, top: vec![] };
        assert_eq!(chat(&[half])["content"][0]["bytes"], json!([0xc3]));
    }

    #[test]
    fn the_completions_shape_counts_offsets_from_where_the_chunk_starts() {
        let v = completion(&[entry(" a", -0.5, &[(" a", -0.5), (" b", -1.0)]), entry("é", -2.0, &[])], 3);
        assert_eq!(
            v,
            json!({"tokens": [" a", "é"], "token_logprobs": [-0.5, -2.0],
                   "top_logprobs": [{" a": -0.5, " b": -1.0}, {}], "text_offset": [3, 5]})
        );
        assert_eq!(chars(&[entry(" a", -0.5, &[]), entry("é", -2.0, &[])]), 3);
    }
}
