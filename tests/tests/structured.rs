//! Structured output against the real server: two CPU members in a 2-stage plan (only the last stage holds the
//! vocabulary and samples under the grammar). `response_format` json_schema and json_object, for chat and
//! legacy completions, whole and streamed, and Ollama's `format`: sampled at a temperature, the output always
//! parses and follows the schema; a schema that does not compile and a malformed format are 400s naming
//! `response_format`, and the server keeps serving.

use edge_tests::{http, new_key, Node, NodeSpec, Server};
use serde_json::{json, Value};

fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    http::post_json(url, path, body, None)
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["engineer", "artist", "farmer"]},
            "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}
        },
        "required": ["name", "age", "role", "skills"],
        "additionalProperties": false
    })
}

/// Panics unless `text` is a person as [`person_schema`] says.
fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let o = v.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
    assert_eq!(o.len(), 4, "{text}");
    assert!(v["name"].as_str().is_some_and(|n| n.chars().count() <= 24), "{text}");
    assert!(v["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)), "{text}");
    assert!(["engineer", "artist", "farmer"].contains(&v["role"].as_str().unwrap_or("")), "{text}");
    let skills = v["skills"].as_array().unwrap_or_else(|| panic!("{text}"));
    assert!(skills.len() <= 3 && skills.iter().all(|s| s.as_str().is_some_and(|s| s.chars().count() <= 16)));
}

#[test]
fn structured_output_always_follows_the_schema() {
    let key = new_key();
    let a = Node::start(&key, NodeSpec::default());
    let b = Node::start(&key, NodeSpec { peers: &[&a.addr], ..Default::default() });
    let server = Server::start(&key, &[&a, &b], &["--stages", "2", "--ctx", "512", "--sequences", "2"]);
    let url = server.url.as_str();
    let model = edge_node::setup::default_model().file_stem().unwrap().to_string_lossy().into_owned();
    let chat = |extra: Value| {
        let mut body = json!({"model": model, "max_tokens": 120, "messages": [
            {"role": "user", "content": "Describe a person who lives in a small village, as JSON."}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let schema_format = json!({"type": "json_schema",
                               "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});

    // Sampled at a temperature, with several seeds: every answer is a person, ended by the model (not cut).
    for seed in 0..3 {
        let (status, r) = post(
            url,
            "/v1/chat/completions",
            &chat(json!({"response_format": schema_format, "temperature": 0.8, "seed": seed})),
        );
        assert_eq!(status, 200, "{r}\n{}", server.log());
        check_person(r["choices"][0]["message"]["content"].as_str().unwrap());
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "the grammar ends the answer: {r}");
    }
    // Greedy, streamed: the chunks spell the whole answer, which follows the schema.
    let greedy = chat(json!({"response_format": schema_format, "temperature": 0}));
    let (status, whole) = post(url, "/v1/chat/completions", &greedy);
    assert_eq!(status, 200, "{whole}");
    let whole = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    check_person(&whole);
    let mut stream = greedy.clone();
    stream["stream"] = json!(true);
    assert_eq!(http::streamed_text(&http::sse(url, "/v1/chat/completions", &stream, None)), whole);
    // Without a format the same request is free text (the model does not answer with this JSON by itself).
    let (_, free) = post(url, "/v1/chat/completions", &chat(json!({"temperature": 0})));
    assert_ne!(free["choices"][0]["message"]["content"].as_str().unwrap(), whole, "the grammar changed the answer");

    // json_object: any object, for chat and for a legacy completion (with n = 2 choices).
    let (status, r) = post(
        url,
        "/v1/chat/completions",
        &chat(json!({"response_format": {"type": "json_object"},
                                                                        "temperature": 0.7, "seed": 5})),
    );
    assert_eq!(status, 200, "{r}");
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).unwrap_or_else(|e| panic!("{e}: {text}")).is_object());
    let body = json!({"model": model, "prompt": "The weather today, as JSON:", "max_tokens": 100, "n": 2,
                      "temperature": 0.9, "seed": 3,
                      "response_format": {"type": "json_object", "schema": {"type": "object",
                          "properties": {"sunny": {"type": "boolean"}, "celsius": {"type": "integer"}},
                          "required": ["sunny", "celsius"], "additionalProperties": false}}});
    let (status, r) = post(url, "/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    for c in r["choices"].as_array().unwrap() {
        let v: Value = serde_json::from_str(c["text"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {c}"));
        assert!(v["sunny"].is_boolean() && v["celsius"].is_i64() && v.as_object().unwrap().len() == 2, "{v}");
    }

    // Ollama: format as a schema, and "json".
    let body = json!({"model": model, "stream": false, "format": person_schema(), "options": {"num_predict": 120},
                      "messages": [{"role": "user", "content": "Describe a farmer as JSON."}]});
    let (status, r) = post(url, "/api/chat", &body);
    assert_eq!(status, 200, "{r}");
    check_person(r["message"]["content"].as_str().unwrap());
    let body = json!({"model": model, "stream": false, "format": "json", "prompt": "What is the capital of France? Answer as JSON.",
                      "options": {"num_predict": 80, "temperature": 0}});
    let (status, r) = post(url, "/api/generate", &body);
    assert_eq!(status, 200, "{r}");
    assert!(serde_json::from_str::<Value>(r["response"].as_str().unwrap()).is_ok_and(|v| v.is_object()), "{r}");

    // Bad formats: a 400 naming the parameter (and for a schema that does not compile, why), nothing queued.
    for (format, param, says) in [
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}),
            "response_format",
            "frobnicate",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}),
            "response_format",
            "missing",
        ),
        (json!({"type": "xml"}), "response_format.type", "xml"),
        (json!({"type": "json_schema"}), "response_format.json_schema", "json_schema"),
    ] {
        let (status, r) = post(url, "/v1/chat/completions", &chat(json!({"response_format": format})));
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{r}");
    }
    let (status, r) = post(url, "/v1/chat/completions", &greedy);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], whole.as_str(), "the server keeps serving, the same answer");
}
