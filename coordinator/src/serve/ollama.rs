//! The Ollama API (what Open WebUI, Zed, AnythingLLM and the `ollama` client libraries speak), on the same
//! scheduler as the OpenAI routes and behind the same API key: `/api/version`, `/api/tags`, `/api/show`, `/api/ps`,
//! `/api/generate` and `/api/chat` (NDJSON streams by default, `"stream": false` for one object; durations in
//! nanoseconds; `options`: `num_predict`, `temperature`, `top_k`, `top_p`, `seed`, `stop`, `presence_penalty`,
//! `frequency_penalty`; `format`: "json" or a JSON schema, as OpenAI's `response_format`; chat `tools`, whose
//! calls come back in `message.tool_calls`). A request is translated into the OpenAI request it means and checked by the same parser,
//! so both APIs refuse the same things. Ollama's defaults apply (temperature 0.8, top_k 40, top_p 0.9, no token
//! limit but the context). `GET /` answers "Ollama is running" to clients that do not ask for HTML (browsers get
//! the dashboard).

use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_node::chat_tools::FunctionCall;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::openai::{self, ApiError, Endpoint};
use super::routes::{submit, ApiJson};
use super::submit::Event;
use super::App;

/// The routes (merged under the API key check).
pub fn router() -> Router<App> {
    Router::new()
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
}

/// Ollama's error shape: `{"error": "..."}` with the status the OpenAI side chose.
pub(super) fn error(e: ApiError) -> Response {
    (e.status, Json(json!({"error": e.message}))).into_response()
}

/// RFC 3339 in UTC with nanoseconds, as Ollama writes `created_at`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:09}Z", d.subsec_nanos())
}

/// The names a request may use for the model (see [`super::AppState::is_model`]).
pub(super) fn model_name(app: &App, name: &str) -> Result<(), ApiError> {
    if app.is_model(name) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("model '{name}' not found")))
    }
}

fn details(app: &App) -> Value {
    let arch = app.scheduler.board.lock().expect("board lock").model.arch.clone();
    json!({"parent_model": "", "format": "gguf", "family": arch, "families": [arch], "parameter_size": "",
           "quantization_level": ""})
}

async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

fn model_entry(app: &App) -> Value {
    let name = format!("{}:latest", app.model_id);
    json!({"name": name, "model": name, "modified_at": rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(app.created)),
           "size": 0, "digest": "", "details": details(app)})
}

async fn tags(State(app): State<App>) -> Json<Value> {
    Json(json!({"models": [model_entry(&app)]}))
}

/// The model while a plan runs it.
async fn ps(State(app): State<App>) -> Json<Value> {
    let running = app.scheduler.board.lock().expect("board lock").plan().is_some();
    let models: Vec<Value> = if running {
        let mut m = model_entry(&app);
        m["expires_at"] = json!("2262-04-11T23:47:16.854775807Z");
        m["size_vram"] = json!(0);
        vec![m]
    } else {
        Vec::new()
    };
    Json(json!({"models": models}))
}

async fn show(State(app): State<App>, body: Result<ApiJson, ApiError>) -> Response {
    let Ok(ApiJson(body)) = body else { return error(body.err().expect("an error")) };
    let name = body.get("model").or_else(|| body.get("name")).and_then(Value::as_str).unwrap_or_default();
    if let Err(e) = model_name(&app, name) {
        return error(e);
    }
    let m = app.scheduler.board.lock().expect("board lock").model.clone();
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(m.arch));
    info.insert(format!("{}.block_count", m.arch), json!(m.layers));
    info.insert(format!("{}.context_length", m.arch), json!(m.context));
    Json(json!({"license": "", "modelfile": "", "parameters": "", "template": "", "details": details(&app),
                "model_info": info, "capabilities": ["completion"]}))
    .into_response()
}

/// An Ollama body as the OpenAI request it means: (endpoint, body, stream).
fn translate(body: &Value, chat: bool) -> Result<(Endpoint, Value, bool), ApiError> {
    let Some(o) = body.as_object() else { return Err(ApiError::bad_json("expected a JSON object")) };
    let model =
        o.get("model").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("model", "model is required"))?;
    let model = model.strip_suffix(":latest").unwrap_or(model);
    // What this server cannot do yet is refused, never silently ignored.
    for k in ["images", "suffix", "context", "template", "think"].into_iter().chain((!chat).then_some("tools")) {
        if o.get(k).is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!("") && v != &json!(false)) {
            return Err(ApiError::invalid(k, format!("'{k}' is not supported by this server yet")));
        }
    }
    if let Some(Value::Array(ms)) = o.get("messages") {
        if ms.iter().any(|m| m.get("images").is_some_and(|v| !v.is_null() && v != &json!([]))) {
            return Err(ApiError::invalid("messages", "images are not supported by this server yet"));
        }
    }
    let stream = match o.get("stream") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "stream must be a boolean")),
    };
    let empty = Map::new();
    let opts = match o.get("options") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid("options", "options must be an object")),
    };
    let mut req = json!({"model": model, "temperature": 0.8, "top_k": 40, "top_p": 0.9});
    for k in ["temperature", "top_k", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"] {
        if let Some(v) = opts.get(k).filter(|v| !v.is_null()) {
            req[k] = v.clone();
        }
    }
    // `format`: "json" (any JSON object) or a JSON schema, constrained as OpenAI's response_format.
    match o.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f.is_empty() => {}
        Some(Value::String(f)) if f == "json" => req["response_format"] = json!({"type": "json_object"}),
        Some(s @ Value::Object(_)) => {
            req["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "format", "schema": s}})
        }
        Some(_) => return Err(ApiError::invalid("format", "format must be \"json\" or a JSON schema object")),
    }
    match opts.get("num_predict") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_i64() {
            Some(n) if n > 0 => req["max_tokens"] = json!(n),
            Some(_) => {} // -1 (and -2): until the context is full
            None => return Err(ApiError::invalid("options.num_predict", "num_predict must be an integer")),
        },
    }
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(k, format!("{k} must be a string"))),
        }
    };
    let endpoint = if chat {
        let mut messages = o.get("messages").cloned().unwrap_or(json!([]));
        // Ollama's tool results name the tool, not the call: the call id is the tool's name.
        for m in messages.as_array_mut().into_iter().flatten() {
            if m["role"] == "tool" && m.get("tool_call_id").is_none() {
                m["tool_call_id"] = m.get("tool_name").cloned().unwrap_or(json!(""));
            }
        }
        req["messages"] = messages;
        if let Some(tools) = o.get("tools").filter(|t| !t.is_null()) {
            req["tools"] = tools.clone();
        }
        Endpoint::Chat
    } else if o.get("raw").and_then(Value::as_bool) == Some(true) {
        req["prompt"] = json!(text("prompt")?.unwrap_or_default());
        Endpoint::Completions
    } else {
        // The prompt goes through the model's chat template, as Ollama's template does.
        let mut messages = Vec::new();
        if let Some(system) = text("system")? {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": text("prompt")?.unwrap_or_default()}));
        req["messages"] = json!(messages);
        Endpoint::Chat
    };
    Ok((endpoint, req, stream))
}

async fn generate(State(app): State<App>, body: Result<ApiJson, ApiError>) -> Response {
    respond(app, body, false).await
}

async fn chat(State(app): State<App>, body: Result<ApiJson, ApiError>) -> Response {
    respond(app, body, true).await
}

/// What each line (or the one object) carries besides the text and timings.
struct Line {
    model: String,
    chat: bool,
    start: Instant,
    first: Option<Instant>,
    prompt_tokens: usize,
}

impl Line {
    fn text(&self, t: &str, done: bool) -> Value {
        let mut v = json!({"model": self.model, "created_at": rfc3339(SystemTime::now()), "done": done});
        if self.chat {
            v["message"] = json!({"role": "assistant", "content": t});
        } else {
            v["response"] = json!(t);
        }
        v
    }

    /// A line carrying the model's calls (Ollama's shape: arguments as an object).
    fn calls(&self, calls: &[FunctionCall], done: bool) -> Value {
        let mut v = self.text("", done);
        let calls: Vec<Value> =
            calls.iter().map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}})).collect();
        v["message"]["tool_calls"] = calls.into();
        v
    }

    fn done(&self, t: &str, reason: &str, eval_count: usize) -> Value {
        // Ollama ends a turn that called tools with "stop" too.
        let reason = if reason == "tool_calls" { "stop" } else { reason };
        let now = Instant::now();
        let first = self.first.unwrap_or(now);
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        let mut v = self.text(t, true);
        let o = v.as_object_mut().expect("an object");
        o.insert("done_reason".into(), json!(reason));
        o.insert("total_duration".into(), json!(ns(now - self.start)));
        o.insert("load_duration".into(), json!(0));
        o.insert("prompt_eval_count".into(), json!(self.prompt_tokens));
        o.insert("prompt_eval_duration".into(), json!(ns(first - self.start)));
        o.insert("eval_count".into(), json!(eval_count));
        o.insert("eval_duration".into(), json!(ns(now - first)));
        v
    }
}

async fn respond(app: App, body: Result<ApiJson, ApiError>, chat: bool) -> Response {
    let start = Instant::now();
    let Ok(ApiJson(body)) = body else { return error(body.err().expect("an error")) };
    let (endpoint, req, stream) = match translate(&body, chat) {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    if let Err(e) = model_name(&app, req["model"].as_str().unwrap_or_default()) {
        return error(e);
    }
    let mut line = Line { model: format!("{}:latest", app.model_id), chat, start, first: None, prompt_tokens: 0 };
    // Nothing to say: Ollama answers at once that the model is loaded.
    let nothing = if chat { req["messages"].as_array().is_some_and(Vec::is_empty) } else { req["prompt"] == "" };
    if nothing {
        return Json(line.done("", "load", 0)).into_response();
    }
    let parsed = match openai::parse(endpoint, &req) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let mut a = match submit(&app, endpoint, Endpoint::Chat, parsed).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    line.prompt_tokens = a.prompt_tokens;
    let rx = a.rx.remove(0); // one choice: Ollama has no `n`
    if stream {
        ndjson(line, rx)
    } else {
        whole(line, rx).await
    }
}

async fn whole(mut line: Line, mut rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    let mut calls = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t, _) => {
                line.first.get_or_insert_with(Instant::now);
                text.push_str(&t);
            }
            Event::Done { finish_reason, completion_tokens } => {
                let mut v = line.done(&text, finish_reason, completion_tokens);
                if !calls.is_empty() {
                    v["message"]["tool_calls"] = line.calls(&calls, true)["message"]["tool_calls"].take();
                }
                return Json(v).into_response();
            }
            Event::Failed(e) => return error(e),
            Event::Call(c) => calls.push(c),
            Event::Embedding(_) => {} // only embedding requests get one
        }
    }
    error(ApiError::server("the scheduler stopped"))
}

/// One JSON object per line: each piece of text, then the last with `done: true` and the timings (an error as
/// `{"error": ...}`). Dropping it (the client went away) cancels the sequence.
fn ndjson(line: Line, rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let body = futures::stream::unfold((line, rx, false), |(mut line, mut rx, ended)| async move {
        if ended {
            return None;
        }
        // (Only embedding requests get an embedding.)
        let ev = loop {
            match rx.recv().await {
                Some(Event::Embedding(_)) => continue,
                ev => break ev,
            }
        };
        let (v, end) = match ev {
            Some(Event::Text(t, _)) => {
                line.first.get_or_insert_with(Instant::now);
                (line.text(&t, false), false)
            }
            Some(Event::Done { finish_reason, completion_tokens }) => {
                (line.done("", finish_reason, completion_tokens), true)
            }
            Some(Event::Failed(e)) => (json!({"error": e.message}), true),
            Some(Event::Call(c)) => (line.calls(&[c], false), false),
            Some(Event::Embedding(_)) | None => (json!({"error": "the scheduler stopped"}), true),
        };
        Some((Ok::<_, Infallible>(Bytes::from(v.to_string() + "\n")), (line, rx, end)))
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error(ApiError::server(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_691_177_365, 499_127_000);
        assert_eq!(rfc3339(t), "2023-08-04T19:29:25.499127000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn an_ollama_request_becomes_the_openai_request_it_means() {
        let body = json!({"model": "m:latest", "prompt": "hi", "system": "be brief",
                          "options": {"num_predict": 5, "temperature": 0, "seed": 3, "stop": ["\n"]}});
        let (endpoint, req, stream) = translate(&body, false).unwrap();
        assert_eq!((endpoint, stream), (Endpoint::Chat, true));
        assert_eq!(req["model"], "m");
        assert_eq!(
            req["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        );
        assert_eq!(
            (req["max_tokens"].clone(), req["temperature"].clone(), req["top_k"].clone()),
            (json!(5), json!(0), json!(40))
        );
        let (endpoint, req, stream) = translate(
            &json!({"model": "m", "prompt": "x", "raw": true, "stream": false, "options": {"num_predict": -1}}),
            false,
        )
        .unwrap();
        assert_eq!((endpoint, stream, req["prompt"].clone()), (Endpoint::Completions, false, json!("x")));
        assert!(req.get("max_tokens").is_none());
        // Chat tools pass through; a tool's result is tied to its call by the tool's name.
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let body = json!({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            {"role": "tool", "content": "42", "tool_name": "f"}]});
        let (_, req, _) = translate(&body, true).unwrap();
        assert_eq!((&req["tools"], &req["messages"][2]["tool_call_id"]), (&tools, &json!("f")));
        assert!(openai::parse(Endpoint::Chat, &req).unwrap().options.tools.is_some());
        let generate = json!({"model": "m", "prompt": "x", "tools": tools});
        assert_eq!(translate(&generate, false).unwrap_err().param.as_deref(), Some("tools"));
        let line = Line { model: "m".into(), chat: true, start: Instant::now(), first: None, prompt_tokens: 1 };
        let call = FunctionCall { name: "f".into(), arguments: json!({"a": 1}) };
        assert_eq!(
            line.calls(&[call], false)["message"]["tool_calls"],
            json!([{"function": {"name": "f", "arguments": {"a": 1}}}])
        );
        // format: "json", or a schema.
        let (_, req, _) = translate(&json!({"model": "m", "prompt": "x", "format": "json"}), false).unwrap();
        assert_eq!(req["response_format"], json!({"type": "json_object"}));
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let (_, req, _) = translate(&json!({"model": "m", "prompt": "x", "format": schema}), false).unwrap();
        assert_eq!(req["response_format"]["json_schema"]["schema"], schema);
        for bad in [
            json!({"prompt": "x"}),
            json!({"model": "m", "stream": 1}),
            json!({"model": "m", "options": 3}),
            json!({"model": "m", "options": {"num_predict": "many"}}),
            json!([1]),
            json!({"model": "m", "prompt": "x", "format": "yaml"}),
            json!({"model": "m", "prompt": "x", "format": 3}),
            json!({"model": "m", "prompt": "x", "images": ["aGk="]}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}),
        ] {
            assert_eq!(translate(&bad, false).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
