//! HTTP as the API's clients speak it (ureq, statuses as values, not errors): JSON requests with an optional API
//! key, and SSE responses read to their end.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::Value;

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(180)))
        .build()
        .into()
}

/// POSTs `body` (raw bytes) with the API key `key`: status and body text.
pub fn post_raw(url: &str, path: &str, body: &[u8], key: Option<&str>) -> (u16, String) {
    let mut req = agent().post(format!("{url}{path}")).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = req.send(body).unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
}

/// GETs a document: status, content type and body text.
pub fn get_text(url: &str, path: &str, key: Option<&str>) -> (u16, String, String) {
    let mut req = agent().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let ct = resp.headers().get("content-type").map_or("", |v| v.to_str().unwrap()).to_string();
    (resp.status().as_u16(), ct, resp.body_mut().read_to_string().unwrap())
}

/// GETs a JSON document (status 200).
pub fn get_json(url: &str, path: &str, key: Option<&str>) -> Value {
    let (status, _, text) = get_text(url, path, key);
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// POSTs a JSON body: status and JSON answer.
pub fn post_json(url: &str, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let (status, text) = post_raw(url, path, body.to_string().as_bytes(), key);
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}")))
}

/// An SSE response read to its end: the `data:` payloads in order (`[DONE]` as a string).
pub fn sse(url: &str, path: &str, body: &Value, key: Option<&str>) -> Vec<Value> {
    let mut req = agent().post(format!("{url}{path}")).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = req.send(body.to_string()).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let reader = BufReader::new(resp.body_mut().as_reader());
    let mut events = Vec::new();
    let mut lines = reader.lines().map_while(Result::ok);
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let data = line.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {line:?}"));
        assert_eq!(lines.next().as_deref(), Some(""), "one data line per event");
        events.push(if data == "[DONE]" { Value::from("[DONE]") } else { serde_json::from_str(data).unwrap() });
    }
    events
}

/// The streamed text: every chunk's `text` (completions) or `delta.content` (chat).
pub fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e.get("choices")?.get(0))
        .filter_map(|c| c["text"].as_str().or(c["delta"]["content"].as_str()))
        .collect()
}
