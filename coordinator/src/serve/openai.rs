//! OpenAI's wire format, as far as this server speaks it: request parsing and validation (field by field, so an
//! error names the parameter), the error body, the response and streaming-chunk shapes and the SSE framing.
//! No I/O here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edge_node::chat_tools::{FunctionCall, ToolCall};
use edge_node::tokenizer::ChatMessage;
use edge_protocol::stage::Grammar;
use serde_json::{json, Map, Value};

use super::sampling::Sampling;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Most choices (`n`) of one request.
pub const MAX_CHOICES: usize = 16;
/// Default `max_tokens` of `/v1/completions` (OpenAI's).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// An error as OpenAI sends it: a status and `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn unsupported(param: &str, what: &str) -> ApiError {
        ApiError::invalid(param, format!("{what} is not supported by this server")).with_code("unsupported_parameter")
    }

    pub fn bad_json(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "We could not parse the JSON body of your request ({detail}). The body must be a JSON object; see \
                 the OpenAI API reference."
            ),
        )
        .with_code("invalid_json")
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
        .with_code("model_not_found")
    }

    /// `prompt` tokens plus `completion` tokens do not fit the `context`.
    pub fn context_exceeded(context: usize, prompt: usize, completion: usize, what: &str) -> ApiError {
        ApiError {
            param: Some(if what == "messages" { "messages".into() } else { "prompt".into() }),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested {} tokens \
                     ({prompt} in the {what}, {completion} in the completion). Please reduce the length of the \
                     {what} or completion.",
                    prompt + completion
                ),
            )
        }
        .with_code("context_length_exceeded")
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message).with_code("invalid_api_key")
    }

    pub fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
        )
        .with_code("request_too_large")
    }

    pub fn queue_full(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("The server is busy: {limit} requests are already running or waiting. Retry later."),
        )
        .with_code("queue_full")
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code("cluster_unavailable")
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What both endpoints share, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub model: String,
    /// `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    /// The grammar the output must follow (`response_format`, or a required tool call).
    pub grammar: Option<Grammar>,
    /// The tools the model may call (chat).
    pub tools: Option<super::tools::Tools>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate, each a sequence of its own.
    pub n: usize,
}

/// The input to tokenize.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Prompt(String),
    Messages(Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub input: Input,
    pub options: Options,
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A field, `None` when absent or null.
pub(super) fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

pub(super) fn wrong_type(name: &str, want: &str, v: &Value) -> ApiError {
    ApiError::invalid(name, format!("Invalid type for '{name}': expected {want}, but got {}.", type_name(v)))
        .with_code("invalid_type")
}

pub(super) fn number(o: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong_type(name, "a number", v)),
    }
}

pub(super) fn integer(o: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| wrong_type(name, "an integer", v)),
    }
}

pub(super) fn boolean(o: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong_type(name, "a boolean", v)),
    }
}

/// `max_tokens`-like: an integer of at least 1.
fn token_count(o: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match integer(o, name)? {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => {
            Err(ApiError::invalid(name, format!("'{name}' must be at least 1, got {n}.")).with_code("invalid_value"))
        }
    }
}

pub(super) fn out_of_range(name: &str, message: String) -> ApiError {
    ApiError::invalid(name, message).with_code("invalid_value")
}

/// A request body's object and its `model` (required, a string).
pub fn object_and_model(body: &Value) -> Result<(&serde_json::Map<String, Value>, String), ApiError> {
    let Some(o) = body.as_object() else {
        return Err(ApiError::bad_json(format!("expected a JSON object, got {}", type_name(body))));
    };
    let model = match field(o, "model") {
        None => {
            return Err(ApiError::invalid("model", "You must provide a model parameter.")
                .with_code("missing_required_parameter"))
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(wrong_type("model", "a string", v)),
    };
    Ok((o, model))
}

/// Parses a request body of `endpoint`.
pub fn parse(endpoint: Endpoint, body: &Value) -> Result<Parsed, ApiError> {
    let (o, model) = object_and_model(body)?;
    let input = match endpoint {
        Endpoint::Completions => Input::Prompt(prompt(o)?),
        Endpoint::Chat => Input::Messages(messages(o)?),
    };
    let max_tokens = match endpoint {
        Endpoint::Completions => token_count(o, "max_tokens")?,
        Endpoint::Chat => match token_count(o, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => token_count(o, "max_tokens")?,
        },
    };
    let sampling = super::sampling::parse(endpoint, o)?;
    let grammar = super::format::parse(o)?;
    let stop = match field(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP_STRINGS {
                return Err(out_of_range(
                    "stop",
                    format!("'stop' may hold at most {MAX_STOP_STRINGS} strings, got {}.", a.len()),
                ));
            }
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| wrong_type("stop", "a string or an array of strings", s))
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    if stop.iter().any(|s| s.is_empty() || s.len() > 1024) {
        return Err(out_of_range("stop", "stop strings must be 1 to 1024 bytes long.".into()));
    }
    let stream = boolean(o, "stream")?.unwrap_or(false);
    let include_usage = match field(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => boolean(so, "include_usage")
            .map_err(|mut e| {
                e.param = Some("stream_options.include_usage".into());
                e
            })?
            .unwrap_or(false),
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    if include_usage && !stream {
        return Err(ApiError::invalid("stream_options", "'stream_options' is only allowed when 'stream' is true."));
    }
    let n = match integer(o, "n")? {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
        Some(n) => return Err(out_of_range("n", format!("'n' must be between 1 and {MAX_CHOICES}, got {n}."))),
    };
    match integer(o, "best_of")? {
        None | Some(1) => {}
        Some(_) => return Err(ApiError::unsupported("best_of", "'best_of' other than 1")),
    }
    if boolean(o, "echo")? == Some(true) {
        return Err(ApiError::unsupported("echo", "'echo'"));
    }
    if field(o, "functions").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::unsupported("functions", "'functions' (use 'tools')"));
    }
    let tools = match endpoint {
        Endpoint::Chat => super::tools::parse(o)?,
        Endpoint::Completions if field(o, "tools").is_some() => {
            return Err(ApiError::unsupported("tools", "'tools' in a legacy completion"))
        }
        Endpoint::Completions => None,
    };
    let grammar = match (grammar, tools.as_ref().map(|t| t.grammar()).transpose()?.flatten()) {
        (Some(_), Some(_)) => {
            let msg = "A required tool call and a 'response_format' cannot be asked for together.";
            return Err(ApiError::invalid("tool_choice", msg));
        }
        (g, t) => g.or(t),
    };
    if field(o, "suffix").is_some_and(|s| s.as_str() != Some("")) {
        return Err(ApiError::unsupported("suffix", "'suffix'"));
    }
    let options = Options { model, max_tokens, sampling, grammar, tools, stop, stream, include_usage, n };
    Ok(Parsed { input, options })
}

fn prompt(o: &Map<String, Value>) -> Result<String, ApiError> {
    match field(o, "prompt") {
        None => Err(ApiError::invalid("prompt", "You must provide a prompt.").with_code("missing_required_parameter")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or_default().to_string()),
        Some(Value::Array(_)) => {
            Err(ApiError::unsupported("prompt", "A 'prompt' other than one string (batches, token arrays)"))
        }
        Some(v) => Err(wrong_type("prompt", "a string", v)),
    }
}

fn messages(o: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match field(o, "messages") {
        None => {
            return Err(
                ApiError::invalid("messages", "You must provide 'messages'.").with_code("missing_required_parameter")
            )
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    if list.is_empty() {
        return Err(
            ApiError::invalid("messages", "'messages' must hold at least one message.").with_code("empty_array")
        );
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = |f: &str| format!("messages[{i}]{f}");
            let m = m.as_object().ok_or_else(|| wrong_type(&param(""), "an object", m))?;
            let role = match m.get("role") {
                Some(Value::String(r)) => r.as_str(),
                Some(v) => return Err(wrong_type(&param(".role"), "a string", v)),
                None => return Err(ApiError::invalid(&param(".role"), "Each message needs a 'role'.")),
            };
            let role = match role {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid(
                        &param(".role"),
                        format!("Unsupported role {other:?}: expected system, developer, user, assistant or tool."),
                    ))
                }
            };
            let tool_calls = match m.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) if role == "assistant" => tool_calls(v, &param(".tool_calls"))?,
                Some(_) => {
                    return Err(ApiError::invalid(&param(".tool_calls"), "Only assistant messages make tool calls."))
                }
            };
            let tool_call_id = m.get("tool_call_id").and_then(Value::as_str).map(str::to_string);
            if role == "tool" && tool_call_id.is_none() {
                return Err(ApiError::invalid(&param(".tool_call_id"), "A tool message needs 'tool_call_id'."));
            }
            let content = match m.get("content") {
                None | Some(Value::Null) if role == "assistant" => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::unsupported(
                                    &param(&format!(".content[{j}]")),
                                    "Content other than text parts",
                                ))
                            }
                        }
                    }
                    text
                }
                Some(v) => return Err(wrong_type(&param(".content"), "a string or an array of text parts", v)),
                None => return Err(ApiError::invalid(&param(".content"), "Each message needs 'content'.")),
            };
            Ok(ChatMessage { tool_calls, tool_call_id, ..ChatMessage::new(role, content) })
        })
        .collect()
}

/// An assistant message's `tool_calls` (their `arguments` are JSON text; templates get the object).
fn tool_calls(v: &Value, param: &str) -> Result<Vec<ToolCall>, ApiError> {
    let Some(list) = v.as_array() else { return Err(wrong_type(param, "an array", v)) };
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c.get("function");
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
            let args = f.and_then(|f| f.get("arguments"));
            let arguments = match args {
                Some(Value::String(s)) => serde_json::from_str(s).ok(),
                Some(o @ Value::Object(_)) => Some(o.clone()),
                None | Some(Value::Null) => Some(json!({})),
                Some(_) => None,
            };
            match (name, arguments) {
                (Some(name), Some(arguments)) => Ok(ToolCall {
                    id: c.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                    kind: "function".into(),
                    function: FunctionCall { name: name.to_string(), arguments },
                }),
                _ => Err(ApiError::invalid(
                    &format!("{param}[{i}]"),
                    "A tool call needs function.name and function.arguments (a JSON object, as text).",
                )),
            }
        })
        .collect()
}

/// The completion budget of a request with `prompt` tokens: `max_tokens` (or the endpoint's default: 16 for
/// completions, the rest of the context for chat), checked against the context.
pub fn budget(endpoint: Endpoint, prompt: usize, max_tokens: Option<usize>, context: usize) -> Result<usize, ApiError> {
    let what = match endpoint {
        Endpoint::Completions => "prompt",
        Endpoint::Chat => "messages",
    };
    let want = match (endpoint, max_tokens) {
        (_, Some(n)) => n,
        (Endpoint::Completions, None) => DEFAULT_COMPLETION_TOKENS,
        (Endpoint::Chat, None) => context.saturating_sub(prompt).max(1),
    };
    if prompt + want > context {
        return Err(ApiError::context_exceeded(context, prompt, want, what));
    }
    Ok(want)
}

/// Usage numbers of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// What every response and chunk of one request shares.
#[derive(Debug, Clone)]
pub struct Head {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Head {
    pub fn new(endpoint: Endpoint, model: &str) -> Head {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        let id = format!("{prefix}-{}", edge_node::stage::store::hex(&rand::random::<[u8; 12]>()));
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Head { endpoint, id, created, model: model.to_string() }
    }

    /// The whole (non-streamed) response.
    pub fn response(&self, text: &str, finish_reason: &str, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": null})
            }
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint { Endpoint::Completions => "text_completion", Endpoint::Chat => "chat.completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.json(),
        })
    }

    /// A streamed chunk: `text` (chat: with the assistant role on the first chunk) and, on the last, the finish reason.
    pub fn chunk(&self, text: Option<&str>, role: bool, finish_reason: Option<&str>) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Completions => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish_reason, "logprobs": null}),
            ),
            Endpoint::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}),
                )
            }
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// Sets the log-probabilities of a response's or chunk's choice.
    pub fn set_logprobs(v: &mut Value, logprobs: Value) {
        v["choices"][0]["logprobs"] = logprobs;
    }

    /// The usage chunk after the last one (`stream_options.include_usage`): no choices.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [], "usage": usage.json()})
    }
}

/// One server-sent event carrying `data` (JSON has no newlines, so one `data:` line).
pub fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// The end of a stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use edge_protocol::stage::SamplingParams;

    fn ok(endpoint: Endpoint, body: Value) -> Parsed {
        parse(endpoint, &body).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    fn err(endpoint: Endpoint, body: Value) -> ApiError {
        parse(endpoint, &body).expect_err(&body.to_string())
    }

    #[test]
    fn a_minimal_completion_gets_openai_defaults() {
        let p = ok(Endpoint::Completions, json!({"model": "m", "prompt": "hi"}));
        assert_eq!(p.input, Input::Prompt("hi".into()));
        let o = p.options;
        assert_eq!((o.model.as_str(), o.max_tokens, o.stream, o.include_usage), ("m", None, false, false));
        let p = o.sampling.params;
        assert_eq!((p.temperature, p.top_p, p.top_k), (1.0, 1.0, 0));
        assert!(o.stop.is_empty());
    }

    #[test]
    fn every_option_is_read() {
        let p = ok(
            Endpoint::Completions,
            json!({"model": "m", "prompt": ["x"], "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3,
                   "seed": 7, "stop": ["a", "b"], "stream": true, "stream_options": {"include_usage": true}, "n": 1,
                   "echo": false, "logprobs": null, "user": "ignored", "presence_penalty": 0}),
        );
        let o = p.options;
        assert_eq!(o.max_tokens, Some(5));
        assert_eq!(o.sampling.params, SamplingParams { temperature: 0.0, top_k: 3, top_p: 0.5, seed: 7 });
        assert_eq!(o.stop, ["a", "b"]);
        assert!(o.stream && o.include_usage);
        assert_eq!(ok(Endpoint::Completions, json!({"model": "m", "prompt": "", "stop": "x"})).options.stop, ["x"]);
    }

    #[test]
    fn chat_messages_and_token_limits() {
        let p = ok(
            Endpoint::Chat,
            json!({"model": "m", "max_tokens": 9, "max_completion_tokens": 3, "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null},
            ]}),
        );
        assert_eq!(p.options.max_tokens, Some(3), "max_completion_tokens wins");
        assert_eq!(
            p.input,
            Input::Messages(vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "ab"),
                ChatMessage::new("assistant", "")
            ])
        );
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        let c = Endpoint::Completions;
        let cases = [
            (json!([1]), None),
            (json!({"prompt": "x"}), Some("model")),
            (json!({"model": 3, "prompt": "x"}), Some("model")),
            (json!({"model": "m"}), Some("prompt")),
            (json!({"model": "m", "prompt": 5}), Some("prompt")),
            (json!({"model": "m", "prompt": ["a", "b"]}), Some("prompt")),
            (json!({"model": "m", "prompt": "x", "max_tokens": "9"}), Some("max_tokens")),
            (json!({"model": "m", "prompt": "x", "max_tokens": 0}), Some("max_tokens")),
            (json!({"model": "m", "prompt": "x", "max_tokens": 1.5}), Some("max_tokens")),
            (json!({"model": "m", "prompt": "x", "temperature": -1}), Some("temperature")),
            (json!({"model": "m", "prompt": "x", "temperature": 2.5}), Some("temperature")),
            (json!({"model": "m", "prompt": "x", "top_p": 0}), Some("top_p")),
            (json!({"model": "m", "prompt": "x", "top_p": 1.1}), Some("top_p")),
            (json!({"model": "m", "prompt": "x", "seed": "s"}), Some("seed")),
            (json!({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), Some("stop")),
            (json!({"model": "m", "prompt": "x", "stop": [""]}), Some("stop")),
            (json!({"model": "m", "prompt": "x", "stop": [1]}), Some("stop")),
            (json!({"model": "m", "prompt": "x", "stream": "yes"}), Some("stream")),
            (json!({"model": "m", "prompt": "x", "stream_options": {"include_usage": true}}), Some("stream_options")),
            (json!({"model": "m", "prompt": "x", "n": 17}), Some("n")),
            (json!({"model": "m", "prompt": "x", "n": 0}), Some("n")),
            (json!({"model": "m", "prompt": "x", "echo": true}), Some("echo")),
            (json!({"model": "m", "prompt": "x", "logprobs": 30}), Some("logprobs")),
            (json!({"model": "m", "prompt": "x", "best_of": 2}), Some("best_of")),
            (json!({"model": "m", "prompt": "x", "frequency_penalty": 3}), Some("frequency_penalty")),
        ];
        for (body, param) in cases {
            let e = err(c, body.clone());
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.kind, "invalid_request_error");
            assert_eq!(e.param.as_deref(), param, "{body}: {e:?}");
        }
        let chat = Endpoint::Chat;
        for (body, param) in [
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": "hi"}), "messages"),
            (json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
            (json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id"),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f",
                       "arguments": "{not json"}}]}]}),
                "messages[0].tool_calls[0]",
            ),
            (json!({"model": "m", "messages": [{"content": "x"}]}), "messages[0].role"),
            (json!({"model": "m", "messages": [{"role": "user"}]}), "messages[0].content"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}), "tools[0]"),
            (json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "functions": [{}]}), "functions"),
        ] {
            assert_eq!(err(chat, body.clone()).param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn the_budget_is_checked_against_the_context() {
        assert_eq!(budget(Endpoint::Completions, 10, None, 100), Ok(16));
        assert_eq!(budget(Endpoint::Chat, 10, None, 100), Ok(90));
        assert_eq!(budget(Endpoint::Chat, 10, Some(90), 100), Ok(90));
        let e = budget(Endpoint::Completions, 90, Some(20), 100).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, Some("context_length_exceeded")));
        assert!(e.message.contains("maximum context length is 100 tokens"), "{}", e.message);
        assert!(e.message.contains("110 tokens (90 in the prompt, 20 in the completion)"), "{}", e.message);
        let e = budget(Endpoint::Chat, 100, None, 100).unwrap_err();
        assert!(e.message.contains("(100 in the messages, 1 in the completion)"), "{}", e.message);
    }

    #[test]
    fn errors_have_openais_shape() {
        let v = ApiError::model_not_found("x").body();
        assert_eq!(
            v,
            json!({"error": {"message": "The model `x` does not exist or you do not have access to it.",
                   "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        );
        let v = ApiError::unauthorized("no").body();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["param"], Value::Null);
    }

    #[test]
    fn responses_and_chunks_have_openais_shape() {
        let h = Head::new(Endpoint::Chat, "m");
        assert!(h.id.starts_with("chatcmpl-") && h.id.len() == 9 + 24, "{}", h.id);
        let usage = Usage { prompt_tokens: 3, completion_tokens: 2 };
        let r = h.response("hi", "stop", usage);
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(r["choices"][0]["message"], json!({"role": "assistant", "content": "hi"}));
        assert_eq!(r["usage"], json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}));
        assert_eq!(h.chunk(Some(""), true, None)["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        let last = h.chunk(None, false, Some("length"));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["object"], "chat.completion.chunk");
        let u = h.usage_chunk(usage);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 5);

        let h = Head::new(Endpoint::Completions, "m");
        assert!(h.id.starts_with("cmpl-"));
        let r = h.response("x", "length", usage);
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0], json!({"index": 0, "text": "x", "finish_reason": "length", "logprobs": null}));
        let c = h.chunk(Some("y"), false, None);
        assert_eq!(c["choices"][0], json!({"index": 0, "text": "y", "finish_reason": null, "logprobs": null}));
    }

    #[test]
    fn sse_events_are_single_data_lines() {
        let v = json!({"a": "line\nbreak"});
        assert_eq!(sse(&v), "data: {\"a\":\"line\\nbreak\"}\n\n");
        assert_eq!(SSE_DONE, "data: [DONE]\n\n");
    }
}
