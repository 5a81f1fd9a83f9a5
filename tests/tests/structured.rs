//! Structured output and tool calls against the real server: two CPU members in a 2-stage plan (only the last
//! stage holds the vocabulary and samples under the grammar). `response_format` json_schema and json_object, for
//! chat and legacy completions, whole and streamed, and Ollama's `format`: sampled at a temperature, the output
//! always parses and follows the schema; a schema that does not compile and a malformed format are 400s naming
//! `response_format`, and the server keeps serving. Tools: required and named calls are always well-formed calls
//! of the right function with arguments that follow its parameters, whole and streamed; a conversation carrying
//! a call and its result goes on; bad tools are 400s. Qwen2.5's own template renders the tools.

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

    tool_calls(url, &model);
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                        "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
         "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}},
                        "required": ["zone"], "additionalProperties": false}}}
    ])
}

/// The name and parsed arguments of each call in a message, checked against [`tools`].
fn calls_of(message: &Value) -> Vec<(String, Value)> {
    let calls = message["tool_calls"].as_array().unwrap_or_else(|| panic!("no tool_calls: {message}"));
    calls
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function", "{c}");
            assert!(c["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{c}");
            let name = c["function"]["name"].as_str().unwrap().to_string();
            let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            match name.as_str() {
                "get_weather" => {
                    assert!(
                        args["city"].is_string() && ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap())
                    );
                    assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
                }
                "get_time" => assert!(args["zone"].is_string() && args.as_object().unwrap().len() == 1, "{args}"),
                other => panic!("called {other}"),
            }
            (name, args)
        })
        .collect()
}

fn tool_calls(url: &str, model: &str) {
    let ask = |extra: Value| {
        let mut body = json!({"model": model, "max_tokens": 100, "tools": tools(), "messages": [
            {"role": "user", "content": "What is the weather like in Paris right now?"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    // Required, sampled with several seeds: always calls, well-formed, of a tool, with arguments that fit.
    for seed in 0..3 {
        let (status, r) = post(
            url,
            "/v1/chat/completions",
            &ask(json!({"tool_choice": "required", "temperature": 0.8,
                                                                        "seed": seed})),
        );
        assert_eq!(status, 200, "{r}");
        let c = &r["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{r}");
        assert!(c["message"]["content"].is_null(), "only calls: {r}");
        assert!(!calls_of(&c["message"]).is_empty());
    }
    // Named: exactly that function, once; streamed, the same call arrives as a tool_calls delta.
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}, "temperature": 0});
    let (status, r) = post(url, "/v1/chat/completions", &ask(named.clone()));
    assert_eq!(status, 200, "{r}");
    let whole = calls_of(&r["choices"][0]["message"]);
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].0, "get_time");
    let mut streamed = ask(named);
    streamed["stream"] = json!(true);
    let events = http::sse(url, "/v1/chat/completions", &streamed, None);
    let deltas: Vec<&Value> = events.iter().filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0)).collect();
    assert_eq!(deltas.len(), 1, "{events:?}");
    assert_eq!(deltas[0]["index"], 0);
    let message = json!({"tool_calls": [deltas[0]]});
    assert_eq!(calls_of(&message), whole, "the streamed call is the whole response's");
    assert!(events.iter().any(|e| e["choices"][0]["finish_reason"] == "tool_calls"), "{events:?}");

    // The conversation goes on with the call and its result.
    let (status, r) = post(
        url,
        "/v1/chat/completions",
        &json!({"model": model, "max_tokens": 30, "temperature": 0,
        "tools": tools(), "messages": [
            {"role": "user", "content": "What is the weather like in Paris right now?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"}]}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"].as_u64().map(|n| n > 0), Some(true), "{r}");

    // Bad tools: 400s naming the parameter.
    for (extra, param) in [
        (json!({"tool_choice": {"type": "function", "function": {"name": "launch"}}}), "tool_choice"),
        (json!({"tool_choice": "always"}), "tool_choice"),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}), "tools[0].function.name"),
        (json!({"tool_choice": "required", "response_format": {"type": "json_object"}}), "tool_choice"),
    ] {
        let (status, r) = post(url, "/v1/chat/completions", &ask(extra.clone()));
        assert_eq!((status, r["error"]["param"].as_str()), (400, Some(param)), "{extra}: {r}");
    }
}

#[test]
fn qwen_templates_render_the_tools_themselves() {
    let m = edge_node::backend::LoadedModel::open(&edge_node::setup::known_model(&edge_node::setup::QWEN_05B)).unwrap();
    let tok = edge_node::tokenizer::Tokenizer::from_gguf(&m.gguf).unwrap();
    assert!(tok.chat_template().knows_tools());
    let mut call = edge_node::tokenizer::ChatMessage::new("assistant", "");
    call.tool_calls = vec![edge_node::chat_tools::ToolCall {
        id: "call_1".into(),
        kind: "function".into(),
        function: edge_node::chat_tools::FunctionCall { name: "get_time".into(), arguments: json!({"zone": "UTC"}) },
    }];
    let mut result = edge_node::tokenizer::ChatMessage::new("tool", "12:00");
    result.tool_call_id = Some("call_1".into());
    let messages = [edge_node::tokenizer::ChatMessage::new("user", "Time?"), call, result];
    let prompt = tok.chat_prompt_with_tools(&messages, Some(&tools()));
    assert!(prompt.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), "{prompt}");
    assert!(
        prompt.contains("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"),
        "{prompt}"
    );
    assert!(prompt.contains("<tool_response>\n12:00\n</tool_response>"), "{prompt}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
}
