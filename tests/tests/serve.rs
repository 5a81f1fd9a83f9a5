//! `edge-coord serve` with real processes on 127.0.0.1: two `edge-node serve` members (wgpu on lavapipe) and the
//! server over a 2-stage pipeline, driven through its HTTP API like an OpenAI client would: greedy text equal to
//! the single-node tokens, streaming (SSE) equal to the whole response, stop strings, concurrent requests, every
//! error shape, a client that disconnects mid-stream, `/api/status` and `edge-coord status`.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_node::tokenizer::Tokenizer;
use edge_tests::http::{self, agent, get_text, streamed_text};
use edge_tests::{bin, new_key, Node, NodeSpec, Server, GREEDY_32, REFERENCE_PROMPT};
use serde_json::{json, Value};

const KEY: &str = "sk-test-0123456789";
/// Context of the server's sequences (small: quick to allocate, and an easy overlong prompt).
const CTX: usize = 256;
const CTX_ARG: &str = "256";

fn post_raw(url: &str, path: &str, body: &[u8], key: Option<&str>) -> (u16, String) {
    http::post_raw(url, path, body, key)
}

fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    http::post_json(url, path, body, Some(KEY))
}

fn get(url: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = agent().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = resp.body_mut().read_to_string().unwrap();
    (resp.status().as_u16(), serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}")))
}

/// The value of one sample line of a Prometheus exposition (`name{labels}` exactly as written).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
        .parse()
        .unwrap()
}

fn stream(url: &str, path: &str, body: &Value) -> Vec<Value> {
    http::sse(url, path, body, Some(KEY))
}

fn completion(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "prompt": REFERENCE_PROMPT, "max_tokens": 32, "temperature": 0});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn gpu_node(key: &str, peers: &[&str]) -> Node {
    Node::start(key, NodeSpec { peers, backend: Some("wgpu"), ..Default::default() })
}

fn model_path() -> std::path::PathBuf {
    std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model)
}

/// `edge-coord status` against `url`: (stdout, stderr, success).
fn status_cli(url: &str, extra: &[&str]) -> (String, String, bool) {
    let out = Command::new(bin("edge-coord"))
        .args(["status", "--url", url])
        .args(extra)
        .env_remove("EDGE_API_KEY")
        .output()
        .unwrap();
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into(), out.status.success())
}

/// The tests start GPU members on a 2-core machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn the_openai_api_serves_the_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = edge_tests::smollm2();
    let tok = Tokenizer::from_gguf(&m.gguf).unwrap();
    let greedy_text = tok.decode(&GREEDY_32);
    let key = new_key();
    let a = gpu_node(&key, &[]);
    let b = gpu_node(&key, &[&a.addr]);
    let server =
        Server::start(&key, &[&a, &b], &["--ctx", CTX_ARG, "--stages", "2", "--sequences", "2", "--api-key", KEY]);
    let url = server.url.clone();
    let started = Instant::now();

    // The model list: the GGUF file stem.
    let (status, models) = get(&url, "/v1/models", Some(KEY));
    assert_eq!(status, 200, "{models}");
    let want_id = model_path().file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], want_id.as_str());
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["owned_by"], "edge-infer");
    let model = want_id.as_str();

    // A greedy completion: the single-node tokens.
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({})));
    assert_eq!(status, 200, "{r}\n{}", server.log());
    assert_eq!(r["object"], "text_completion");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r["model"], model);
    assert_eq!(r["choices"][0]["text"], greedy_text.as_str(), "the single-node greedy text");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["choices"][0]["index"], 0);
    assert_eq!(r["usage"], json!({"prompt_tokens": 11, "completion_tokens": 32, "total_tokens": 43}));
    let first_id = r["id"].as_str().unwrap().to_string();

    // The same, streamed: the chunks add up to the same text, the last names the finish, then usage, then [DONE].
    let events = stream(
        &url,
        "/v1/completions",
        &completion(model, json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(streamed_text(&events), greedy_text);
    let n = events.len();
    assert_eq!(events[n - 2]["choices"], json!([]));
    assert_eq!(events[n - 2]["usage"], json!({"prompt_tokens": 11, "completion_tokens": 32, "total_tokens": 43}));
    assert_eq!(events[n - 3]["choices"][0]["finish_reason"], "length");
    assert!(events[..n - 3].iter().all(|e| e["choices"][0]["finish_reason"].is_null()));
    assert!(events[..n - 1].iter().all(|e| e["object"] == "text_completion" && e["id"] == events[0]["id"]));

    // Stop strings: the text ends right before the first one, in both modes, and the sequence stops early.
    let cut = greedy_text.find("glitter").unwrap();
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"stop": ["zzz", "glitter"]})));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], &greedy_text[..cut]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() < 32, "{r}");
    let cut = greedy_text.find("\n\nOne").unwrap();
    let events = stream(&url, "/v1/completions", &completion(model, json!({"stream": true, "stop": "\n\nOne"})));
    assert_eq!(streamed_text(&events), &greedy_text[..cut], "nothing of the stop string is streamed");
    assert_eq!(events[events.len() - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events.last().unwrap(), "[DONE]");

    // Log-probabilities: the greedy text unchanged, one entry per token, each token the most likely of its top 5.
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"logprobs": 5})));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], greedy_text.as_str(), "asking for log-probabilities changes nothing");
    let lp = &r["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.len(), 32, "{lp}");
    assert_eq!(tokens.concat(), greedy_text, "the tokens spell the text");
    let mut offset = 0;
    for (i, t) in tokens.iter().enumerate() {
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
        let own = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(top.len() <= 5 && top.len() >= 4, "{top:?}");
        assert!(own <= 0.0 && (own - best).abs() < 1e-5, "greedy token {i} is the most likely: {own} vs {best}");
        assert_eq!(top.get(*t).and_then(Value::as_f64), Some(own), "{top:?}");
        assert_eq!(lp["text_offset"][i], offset);
        offset += t.chars().count();
    }
    // Streamed: the chunks carry the same entries.
    let events = stream(&url, "/v1/completions", &completion(model, json!({"stream": true, "logprobs": 5})));
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| e.get("choices")?.get(0)?.get("logprobs"))
        .filter(|l| !l.is_null())
        .flat_map(|l| {
            let n = l["tokens"].as_array().unwrap().len();
            (0..n).map(|i| json!([l["tokens"][i], l["token_logprobs"][i], l["text_offset"][i]])).collect::<Vec<_>>()
        })
        .collect();
    let whole: Vec<Value> =
        (0..32).map(|i| json!([lp["tokens"][i], lp["token_logprobs"][i], lp["text_offset"][i]])).collect();
    assert_eq!(streamed, whole);
    assert_eq!(streamed_text(&events), greedy_text);

    // Logit bias: -100 on the greedy first token picks another; +100 on a token makes every token that one.
    let first = GREEDY_32[0].to_string();
    let (status, r) = post(
        &url,
        "/v1/completions",
        &completion(model, json!({"max_tokens": 1, "logit_bias": {first.as_str(): -100}})),
    );
    assert_eq!(status, 200, "{r}");
    assert_ne!(r["choices"][0]["text"], tok.decode(&GREEDY_32[..1]).as_str(), "{r}");
    let forced = GREEDY_32[5];
    let body = completion(model, json!({"max_tokens": 3, "logit_bias": {forced.to_string(): 100}}));
    let (status, r) = post(&url, "/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], tok.decode(&[forced; 3]).as_str(), "{r}");

    // Penalties change the greedy text, and the same request gives the same text again.
    let body = completion(model, json!({"frequency_penalty": 1.5, "presence_penalty": 0.5}));
    let (status, r) = post(&url, "/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    let penalized = r["choices"][0]["text"].as_str().unwrap().to_string();
    assert_ne!(penalized, greedy_text, "32 tokens of a story repeat some token");
    assert_eq!(post(&url, "/v1/completions", &body).1["choices"][0]["text"], penalized.as_str());

    // n choices: each its own sequence, choice i sampled with seed + i (so it equals that request alone), the
    // usage counting them all; streamed, each index spells the same text.
    let body = completion(model, json!({"n": 3, "temperature": 0.9, "seed": 7, "max_tokens": 12}));
    let (status, r) = post(&url, "/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    let texts: Vec<&str> = choices.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "three seeds, one text: {texts:?}");
    assert_eq!(r["usage"]["completion_tokens"], 36, "{r}");
    let n_prompt = r["usage"]["prompt_tokens"].as_f64().unwrap();
    let alone = completion(model, json!({"temperature": 0.9, "seed": 9, "max_tokens": 12}));
    assert_eq!(post(&url, "/v1/completions", &alone).1["choices"][0]["text"], texts[2], "choice 2 is seed 9");
    let mut streamed_n = body.clone();
    streamed_n["stream"] = json!(true);
    let events = stream(&url, "/v1/completions", &streamed_n);
    for (i, want) in texts.iter().enumerate() {
        let got: String = events
            .iter()
            .filter_map(|e| e.get("choices")?.get(0))
            .filter(|c| c["index"] == i)
            .filter_map(|c| c["text"].as_str())
            .collect();
        assert_eq!(&got, want, "streamed choice {i}");
    }
    let finishes = events.iter().filter(|e| !e["choices"][0]["finish_reason"].is_null()).count();
    assert_eq!((finishes, events.last().unwrap()), (3, &json!("[DONE]")));

    // Chat, whole and streamed: same text, the first chunk carries the role, usage matches.
    let chat = json!({"model": model, "temperature": 0, "max_tokens": 40,
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (status, r) = post(&url, "/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let answer = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!answer.is_empty());
    let usage = r["usage"].clone();
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    let finish = r["choices"][0]["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if completion_tokens < 40 { "stop" } else { "length" }, "{r}");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = stream(&url, "/v1/chat/completions", &streamed);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert!(events[1..].iter().all(|e| e.get("choices").is_none_or(|c| c[0]["delta"].get("role").is_none())));
    assert_eq!(streamed_text(&events), answer);
    let n = events.len();
    assert_eq!(events[n - 1], "[DONE]");
    assert_eq!(events[n - 2]["usage"], usage);
    assert_eq!(events[n - 3]["choices"][0]["finish_reason"], finish);
    // Chat log-probabilities, streamed: an entry per completion token (the end-of-turn token is not one), each
    // the first of its top 2, the same text.
    streamed["logprobs"] = json!(true);
    streamed["top_logprobs"] = json!(2);
    let events = stream(&url, "/v1/chat/completions", &streamed);
    assert_eq!(streamed_text(&events), answer);
    let entries: Vec<Value> = events
        .iter()
        .filter_map(|e| e.get("choices")?.get(0)?.get("logprobs")?.get("content"))
        .flat_map(|c| c.as_array().unwrap().clone())
        .collect();
    assert_eq!(entries.len() as u64, completion_tokens, "{entries:?}");
    for e in &entries {
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2, "{e}");
        assert_eq!(e["top_logprobs"][0]["token"], e["token"], "{e}");
        assert_eq!(e["top_logprobs"][0]["logprob"], e["logprob"], "{e}");
        let bytes: Vec<u8> = e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), e["token"].as_str().unwrap());
    }

    // Two requests at once: both get the greedy text.
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            let body = completion(model, json!({}));
            std::thread::spawn(move || post(&url, "/v1/completions", &body))
        })
        .collect();
    for h in handles {
        let (status, r) = h.join().unwrap();
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["choices"][0]["text"], greedy_text.as_str(), "concurrent request");
    }

    // The Ollama API on the same plan: raw generate is the greedy completion, /api/chat the greedy chat answer,
    // streamed as NDJSON with the same text; the model listed and shown; errors as {"error"}; the same key.
    let ollama = |path: &str, body: &Value| post(&url, path, body);
    let (code, _, text) = get_text(&url, "/", None);
    assert_eq!((code, text.as_str()), (200, "Ollama is running"));
    let (code, v) = get(&url, "/api/version", Some(KEY));
    assert!(code == 200 && v["version"].is_string(), "{v}");
    let (code, tags) = get(&url, "/api/tags", Some(KEY));
    assert_eq!(code, 200);
    let name = tags["models"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(name, format!("{model}:latest"));
    assert_eq!(tags["models"][0]["details"]["family"], "llama");
    let (code, show) = ollama("/api/show", &json!({"model": name}));
    assert_eq!((code, show["model_info"]["llama.block_count"].as_u64()), (200, Some(30)), "{show}");
    let (_, ps) = get(&url, "/api/ps", Some(KEY));
    assert_eq!(ps["models"][0]["name"], name.as_str());
    let gen = json!({"model": name, "prompt": REFERENCE_PROMPT, "raw": true, "stream": false,
                     "options": {"temperature": 0, "num_predict": 32}});
    let (code, r) = ollama("/api/generate", &gen);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["response"], greedy_text.as_str(), "Ollama's raw generate is the greedy completion");
    assert_eq!((r["done"].as_bool(), r["done_reason"].as_str()), (Some(true), Some("length")));
    assert_eq!((r["prompt_eval_count"].as_u64(), r["eval_count"].as_u64()), (Some(11), Some(32)));
    let (total, eval) = (r["total_duration"].as_u64().unwrap(), r["eval_duration"].as_u64().unwrap());
    assert!(total > eval && eval > 0 && r["created_at"].as_str().unwrap().ends_with('Z'), "{r}");
    let ochat = json!({"model": model, "messages": chat["messages"], "options": {"temperature": 0, "num_predict": 40}});
    let mut resp = agent()
        .post(format!("{url}/api/chat"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send(ochat.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("content-type").unwrap().to_str().unwrap().starts_with("application/x-ndjson"));
    let lines: Vec<Value> = BufReader::new(resp.body_mut().as_reader())
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let streamed: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(streamed, answer, "the streamed Ollama chat is the OpenAI chat's greedy answer");
    let last = lines.last().unwrap();
    assert_eq!((last["done"].as_bool(), last["eval_count"].as_u64()), (Some(true), Some(completion_tokens)), "{last}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false && l["message"]["role"] == "assistant"));
    for (path, body, want) in [
        ("/api/generate", json!({"prompt": "x"}), 400),
        ("/api/generate", json!({"model": "nope", "prompt": "x"}), 404),
        (
            "/api/chat",
            json!({"model": model, "messages": [{"role": "user", "content": "x"}], "options": {"temperature": 9}}),
            400,
        ),
    ] {
        let (code, r) = ollama(path, &body);
        assert_eq!(code, want, "{body}: {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    let (code, _) = get(&url, "/api/tags", None);
    assert_eq!(code, 401, "the Ollama API takes the same key");

    // Errors, in OpenAI's shape.
    let error = |status: u16, text: &str| -> Value {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{v}");
        v
    };
    let (status, text) = post_raw(&url, "/v1/completions", b"{\"model\": ", Some(KEY));
    assert_eq!(status, 400, "{text}");
    assert_eq!(error(status, &text)["error"]["type"], "invalid_request_error");
    let (status, text) = post_raw(&url, "/v1/chat/completions", b"[1, 2]", Some(KEY));
    assert_eq!(status, 400, "{text}");
    error(status, &text);
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"max_tokens": "ten"})));
    assert_eq!(status, 400);
    assert_eq!(r["error"]["param"], "max_tokens");
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"temperature": 5})));
    assert_eq!((status, r["error"]["param"].as_str()), (400, Some("temperature")));
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"n": 17})));
    assert_eq!((status, r["error"]["param"].as_str()), (400, Some("n")));
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"echo": true})));
    assert_eq!((status, r["error"]["param"].as_str()), (400, Some("echo")));
    for (extra, param) in [
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"logit_bias": {"99999999": 1}}), "logit_bias"),
        (json!({"logit_bias": {"12": 200}}), "logit_bias"),
        (json!({"presence_penalty": -3}), "presence_penalty"),
    ] {
        let (status, r) = post(&url, "/v1/completions", &completion(model, extra.clone()));
        assert_eq!((status, r["error"]["param"].as_str()), (400, Some(param)), "{extra}: {r}");
    }
    let mut bad = chat.clone();
    bad["logprobs"] = json!(true);
    bad["top_logprobs"] = json!(21);
    let (status, r) = post(&url, "/v1/chat/completions", &bad);
    assert_eq!((status, r["error"]["param"].as_str()), (400, Some("top_logprobs")), "{r}");
    let (status, r) = post(&url, "/v1/completions", &completion("gpt-4", json!({})));
    assert_eq!(status, 404);
    assert_eq!(r["error"]["code"], "model_not_found");
    let long = "hello ".repeat(300);
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"prompt": long})));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["code"], "context_length_exceeded");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("maximum context length is {CTX} tokens")) && msg.contains("32 in the completion"),
        "{msg}"
    );
    let (status, r) = post(&url, "/v1/completions", &completion(model, json!({"max_tokens": CTX})));
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("context_length_exceeded")));
    for key in [None, Some("sk-wrong")] {
        let (status, text) =
            post_raw(&url, "/v1/completions", completion(model, json!({})).to_string().as_bytes(), key);
        assert_eq!(status, 401, "{key:?}: {text}");
        assert_eq!(error(status, &text)["error"]["type"], "authentication_error");
        let (status, _) = get(&url, "/v1/models", key);
        assert_eq!(status, 401);
        let (status, _) = get(&url, "/api/status", key);
        assert_eq!(status, 401);
    }
    let big = format!("{{\"model\": \"{model}\", \"prompt\": \"{}\"}}", "a".repeat(2 << 20));
    let (status, text) = post_raw(&url, "/v1/completions", big.as_bytes(), Some(KEY));
    assert_eq!(status, 413, "{text}");
    error(status, &text);
    let (status, text) = post_raw(&url, "/v1/nothing", b"{}", Some(KEY));
    assert_eq!(status, 404);
    error(status, &text);

    // A client that goes away mid-stream: its sequence is cancelled and the slot freed.
    let gone_id = {
        let mut resp = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {KEY}"))
            .send(completion(model, json!({"stream": true, "max_tokens": 200})).to_string())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut lines = BufReader::new(resp.body_mut().as_reader()).lines().map_while(Result::ok);
        let first: Value =
            serde_json::from_str(lines.find_map(|l| l.strip_prefix("data: ").map(str::to_string)).unwrap().as_str())
                .unwrap();
        let _ = lines.nth(4); // a few more events
        first["id"].as_str().unwrap().to_string()
        // the response (and its connection) is dropped here
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, status_at) = loop {
        let (_, s) = get(&url, "/api/status", Some(KEY));
        let job = s["jobs"].as_array().unwrap().iter().find(|j| j["id"] == gone_id.as_str()).cloned().unwrap();
        let busy: u64 = s["nodes"].as_array().unwrap().iter().map(|n| n["active_sequences"].as_u64().unwrap()).sum();
        if job["state"] == "cancelled" && busy == 0 {
            assert!(job["completion_tokens"].as_u64().unwrap() < 200, "{job}");
            break (s, started.elapsed());
        }
        assert!(Instant::now() < deadline, "the abandoned sequence still runs: {job}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    // Both slots are free: two more requests run at once and are right.
    let t = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            let body = completion(model, json!({"max_tokens": 8}));
            std::thread::spawn(move || post(&url, "/v1/completions", &body))
        })
        .collect();
    for h in handles {
        let (status, r) = h.join().unwrap();
        assert_eq!(status, 200, "{r}");
        assert!(greedy_text.starts_with(r["choices"][0]["text"].as_str().unwrap()), "{r}");
    }
    eprintln!("two 8-token requests after the disconnect took {:?}", t.elapsed());

    // The status: model, both nodes alive, the 2-stage plan on them, the finished jobs.
    assert_eq!(status["model"]["id"], model);
    assert_eq!(status["model"]["context"], CTX);
    assert_eq!(status["model"]["layers"], 30);
    let nodes = status["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&a.peer_id.as_str()) && ids.contains(&b.peer_id.as_str()), "{ids:?}");
    for n in nodes {
        assert_eq!(n["alive"], true);
        assert_eq!(n["backend"], "wgpu");
        assert_eq!(n["name"].as_str().unwrap().len(), 6);
        assert!(n["memory_bytes"].as_u64().unwrap() > 0 && n["gemv_gbps"].as_f64().unwrap() > 0.0, "{n}");
        assert!(n["tokens_per_s"].as_f64().is_some());
    }
    let plan = &status["plan"];
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{plan}");
    assert_eq!(stages[0]["layers"], json!([0, 15]));
    assert_eq!(stages[1]["layers"], json!([15, 30]));
    assert_eq!((stages[0]["embed"].as_bool(), stages[1]["head"].as_bool()), (Some(true), Some(true)));
    assert_eq!(stages[0]["members"][0]["kv_heads"], Value::Null);
    assert_eq!(plan["sequences"], 2);
    let jobs = status["jobs"].as_array().unwrap();
    let first = jobs.iter().find(|j| j["id"] == first_id.as_str()).expect("the first job is listed");
    assert_eq!(first["state"], "done");
    assert_eq!(first["kind"], "completion");
    assert_eq!(first["finish_reason"], "length");
    assert_eq!((first["prompt_tokens"].as_u64(), first["completion_tokens"].as_u64()), (Some(11), Some(32)));
    assert!(first["first_token_ms"].as_f64().unwrap() > 0.0 && first["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(jobs.iter().any(|j| j["kind"] == "chat" && j["state"] == "done"));
    assert!(status["totals"]["requests"].as_u64().unwrap() >= 9, "{}", status["totals"]);
    assert!(status["totals"]["uptime_s"].as_f64().unwrap() >= status_at.as_secs_f64() - 1.0);

    // /health is open (a plan runs: 200); /metrics takes the key and agrees with the status.
    let (code, _, text) = get_text(&url, "/health", None);
    assert_eq!((code, serde_json::from_str::<Value>(&text).unwrap()), (200, json!({"status": "ok"})));
    let (code, _, _) = get_text(&url, "/metrics", None);
    assert_eq!(code, 401);
    let (_, now) = get(&url, "/api/status", Some(KEY));
    let (code, ct, m) = get_text(&url, "/metrics", Some(KEY));
    assert_eq!(code, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let done = now["jobs"].as_array().unwrap().iter().filter(|j| j["state"] == "done").count() as f64;
    assert!(sample(&m, "edge_requests_total{outcome=\"done\"}") >= done, "{m}");
    assert!(sample(&m, "edge_requests_total{outcome=\"cancelled\"}") >= 1.0, "the abandoned stream: {m}");
    assert_eq!(sample(&m, "edge_generation_tokens_total"), now["totals"]["completion_tokens"].as_f64().unwrap());
    assert!(sample(&m, "edge_prompt_tokens_total") >= 11.0 * done, "{m}");
    // Choices 1 and 2 of an n=3 request fork choice 0's prefill: all but its last prompt position, each.
    assert!(sample(&m, "edge_prompt_tokens_shared_total") >= 2.0 * (n_prompt - 1.0), "{m}");
    assert_eq!((sample(&m, "edge_plan_up"), sample(&m, "edge_running_sequences")), (1.0, 0.0));
    for n in [&a, &b] {
        assert_eq!(sample(&m, &format!("edge_node_up{{node=\"{}\"}}", n.peer_id)), 1.0);
        assert!(sample(&m, &format!("edge_node_rtt_seconds{{node=\"{}\"}}", n.peer_id)) > 0.0);
    }
    let ttft = sample(&m, "edge_time_to_first_token_seconds_count");
    assert!(ttft >= done && sample(&m, "edge_time_to_first_token_seconds_bucket{le=\"+Inf\"}") == ttft, "{m}");
    assert!(sample(&m, "edge_inter_token_latency_seconds_count") >= 31.0, "the first job's 32 tokens: {m}");

    // `edge-coord status`: the same as a table, or as JSON; a wrong key and an empty port are clear errors.
    let (out, err, ok) = status_cli(&url, &["--api-key", KEY]);
    assert!(ok, "{err}");
    for want in [
        model,
        &a.peer_id[a.peer_id.len() - 6..],
        &b.peer_id[b.peer_id.len() - 6..],
        "stage 1: layers 15..30",
        first_id.as_str(),
    ] {
        assert!(out.contains(want), "{want:?} missing in\n{out}");
    }
    let (out, err, ok) = status_cli(&url, &["--api-key", KEY, "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plan"]["stages"].as_array().unwrap().len(), 2);
    let (_, err, ok) = status_cli(&url, &[]);
    assert!(!ok && err.contains("401") && err.contains("--api-key"), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_, err, ok) = status_cli(&format!("http://127.0.0.1:{port}"), &[]);
    assert!(!ok && err.contains("nothing answers"), "{err}");
}

/// The stage member of the current plan among `nodes` (from `/api/status`).
fn plan_nodes(url: &str) -> Vec<String> {
    let (_, s) = get(url, "/api/status", Some(KEY));
    s["plan"]["stages"]
        .as_array()
        .map(|st| {
            st.iter()
                .flat_map(|s| s["members"].as_array().unwrap())
                .map(|m| m["node"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_lost_node_is_replaced_mid_stream_and_too_few_nodes_answer_503() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let key = new_key();
    // Members that can hold the model two by two (112 MB each) but not alone (it needs ~141 MB).
    let small = |peers: &[&str]| {
        Node::start(&key, NodeSpec { peers, backend: Some("wgpu"), memory: Some(112_000_000), ..Default::default() })
    };
    let a = small(&[]);
    let b = small(&[&a.addr]);
    let c = small(&[&a.addr]);
    let mut nodes = vec![a, b, c];
    let server =
        Server::start(&key, &nodes.iter().collect::<Vec<_>>(), &["--ctx", CTX_ARG, "--stages", "2", "--api-key", KEY]);
    let url = server.url.clone();
    let model = model_path().file_stem().unwrap().to_string_lossy().into_owned();
    // With penalties, the resumed sequence must also remember the tokens it generated before the loss.
    let body = completion(&model, json!({"max_tokens": 48, "frequency_penalty": 2, "presence_penalty": 2}));
    let (status, r) = post(&url, "/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    let want = r["choices"][0]["text"].as_str().unwrap().to_string();

    // Stream the same request and kill a stage's node once some text has come.
    let victim = plan_nodes(&url)[1].clone();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut resp = agent()
        .post(format!("{url}/v1/completions"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send(streamed.to_string())
        .unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(resp.body_mut().as_reader()).lines().map_while(Result::ok) {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        events.push(if data == "[DONE]" { Value::from("[DONE]") } else { serde_json::from_str(data).unwrap() });
        if events.len() == 25 {
            let i = nodes.iter().position(|n| n.peer_id == victim).unwrap();
            drop(nodes.remove(i));
        }
    }
    assert!(nodes.len() == 2, "the stream ended before the kill");
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}\n{}", server.log());
    assert_eq!(streamed_text(&events), want, "the text of an uninterrupted run\n{}", server.log());
    assert_eq!(events[events.len() - 2]["choices"][0]["finish_reason"], "length");
    assert!(server.log().contains("re-planning"), "{}", server.log());
    let now = plan_nodes(&url);
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&victim), "{now:?}");

    // One node left cannot hold the model: the API answers 503 (and the status has no plan).
    drop(nodes.remove(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, r) = post(&url, "/v1/completions", &completion(&model, json!({"max_tokens": 4})));
        if status == 503 {
            assert_eq!(r["error"]["code"], "cluster_unavailable", "{r}");
            assert!(
                r["error"]["message"].as_str().unwrap().contains("no set of the remaining nodes can run the model"),
                "{r}"
            );
            break;
        }
        assert_eq!(status, 200, "{r}");
        assert!(Instant::now() < deadline, "still served by one small node\n{}", server.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, s) = get(&url, "/api/status", Some(KEY));
    assert!(s["plan"].is_null(), "{}", s["plan"]);
    let (code, _, text) = get_text(&url, "/health", None);
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("no set of the remaining nodes can run the model"), "{text}");
    // The 503 above failed a request already accepted; one sent now is refused on arrival.
    let (status, _) = post(&url, "/v1/completions", &completion(&model, json!({"max_tokens": 4})));
    assert_eq!(status, 503);
    let (_, _, m) = get_text(&url, "/metrics", Some(KEY));
    assert_eq!(sample(&m, "edge_plan_up"), 0.0);
    assert!(sample(&m, "edge_requests_total{outcome=\"failed\"}") >= 1.0, "{m}");
    assert!(sample(&m, "edge_requests_total{outcome=\"rejected\"}") >= 1.0, "{m}");
}
