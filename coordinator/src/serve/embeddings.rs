//! Embeddings: OpenAI's `POST /v1/embeddings`, Ollama's `POST /api/embed` and its older `POST /api/embeddings`.
//!
//! Each input is a sequence of its own on the cluster, an `embed` job ([`JobParams::embed`]): its prompt runs
//! through every stage like a completion's prefill, and the last stage answers with the mean of the prompt's
//! final-normed hidden states at unit length (what llama.cpp's server gives with `--pooling mean`). A request's
//! inputs run [`IN_FLIGHT`] at a time, so a batch of hundreds neither fills the queue nor waits for it to drain.
//! `dimensions` shortens each vector to its first components and scales it back to unit length (as OpenAI and
//! Ollama do).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use edge_protocol::stage::JobParams;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::ollama::{error, model_name};
use super::openai::{field, integer, wrong_type, ApiError};
use super::routes::ApiJson;
use super::status::JobKind;
use super::submit::Event;
use super::App;
use crate::job::Job;

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;
/// Inputs of one request queued at once.
pub const IN_FLIGHT: usize = 8;

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/embeddings", post(openai))
        .route("/api/embed", post(ollama_embed))
        .route("/api/embeddings", post(ollama_embeddings))
}

/// One input: text to tokenize, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Tokens(Vec<u32>),
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message).with_code("invalid_value")
}

/// OpenAI's `input`: a string, an array of strings, an array of token ids, or an array of arrays of token ids.
/// Nothing may be empty.
pub fn openai_inputs(v: Option<&Value>) -> Result<Vec<Input>, ApiError> {
    let want = "a string, an array of strings, an array of token ids or an array of arrays of token ids";
    let empty = || invalid("input", "'input' must not be empty.");
    let tokens = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        let ids: Option<Vec<u32>> = a.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect();
        match ids {
            Some(ids) if !ids.is_empty() => Ok(ids),
            Some(_) => Err(empty()),
            None => Err(invalid("input", "Token ids in 'input' must be integers from 0.")),
        }
    };
    let inputs = match v {
        None => {
            return Err(ApiError::invalid("input", "You must provide an input parameter.")
                .with_code("missing_required_parameter"))
        }
        Some(Value::String(s)) => vec![Input::Text(s.clone())],
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_number) => vec![Input::Tokens(tokens(a)?)],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(Input::Text(s.clone())),
                Value::Array(t) => tokens(t).map(Input::Tokens),
                other => Err(wrong_type("input", want, other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("input", want, other)),
    };
    if inputs.is_empty() || inputs.iter().any(|i| i == &Input::Text(String::new())) {
        return Err(empty());
    }
    if inputs.len() > MAX_INPUTS {
        return Err(invalid(
            "input",
            format!("'input' holds {} items; at most {MAX_INPUTS} are allowed.", inputs.len()),
        ));
    }
    Ok(inputs)
}

/// `dimensions`: at least 1 and at most the model's width (None: the whole vector).
fn dimensions(o: &Map<String, Value>, dim: usize) -> Result<Option<usize>, ApiError> {
    match integer(o, "dimensions")? {
        None => Ok(None),
        Some(d) if d >= 1 && d as usize <= dim => Ok(Some(d as usize)),
        Some(d) => {
            Err(invalid("dimensions", format!("'dimensions' must be between 1 and {dim} for this model, got {d}.")))
        }
    }
}

/// Shortens a unit vector to its first `d` components, at unit length again.
pub fn shorten(mut v: Vec<f32>, d: Option<usize>) -> Vec<f32> {
    if let Some(d) = d.filter(|&d| d < v.len()) {
        v.truncate(d);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v
}

/// Tokenizes the inputs and checks each against the vocabulary and the context. Ollama's `truncate` cuts a long
/// input to the context instead of refusing it.
async fn prompts(app: &App, inputs: Vec<Input>, truncate: bool) -> Result<Vec<Vec<u32>>, ApiError> {
    let tok = app.tok;
    let encoded = tokio::task::spawn_blocking(move || {
        inputs
            .into_iter()
            .map(|i| match i {
                Input::Text(t) => tok.encode(&t).map_err(|e| format!("{e}")),
                Input::Tokens(t) => Ok(t),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::server(format!("tokenizing failed: {e}")))?;
    let vocab = tok.vocab_size();
    let mut out = Vec::with_capacity(encoded.len());
    for (i, ids) in encoded.into_iter().enumerate() {
        let mut ids = ids.map_err(|e| invalid("input", format!("Input {i} could not be tokenized: {e}")))?;
        if let Some(t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(invalid("input", format!("Input {i} holds token {t}, outside the vocabulary of {vocab}.")));
        }
        if ids.is_empty() {
            ids.extend(tok.bos());
        }
        if ids.len() > app.context && truncate {
            ids.truncate(app.context);
        } else if ids.len() > app.context {
            let msg = format!(
                "This model's maximum context length is {} tokens, however input {i} has {} tokens. Please reduce \
                 the length of the input.",
                app.context,
                ids.len()
            );
            return Err(ApiError::invalid("input", msg).with_code("context_length_exceeded"));
        }
        if ids.is_empty() {
            return Err(invalid("input", format!("Input {i} has no tokens.")));
        }
        out.push(ids);
    }
    Ok(out)
}

/// The vector of one embedding job.
async fn wait(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Vec<f32>, ApiError> {
    let mut got = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Embedding(v) => got = Some(v),
            Event::Done { .. } => return got.ok_or_else(|| ApiError::server("the cluster returned no embedding")),
            Event::Failed(e) => return Err(e),
            Event::Text(..) | Event::Call(_) => {}
        }
    }
    Err(ApiError::server("the scheduler stopped"))
}

/// Runs every prompt as an embedding job on the cluster, [`IN_FLIGHT`] at a time; the vectors in input order.
pub async fn embed(app: &App, prompts: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ApiError> {
    let id = format!("embd-{}", edge_node::stage::store::hex(&rand::random::<[u8; 12]>()));
    futures::stream::iter(prompts.into_iter().enumerate())
        .map(|(i, prompt)| {
            let id = if i == 0 { id.clone() } else { format!("{id}-{i}") };
            let params =
                JobParams { embed: true, prefill_chunk: app.prefill_chunk, ..JobParams::new(prompt.len() as u32, 1) };
            let submitted = app.scheduler.submit(id, JobKind::Embedding, Job { prompt, params }, vec![]);
            async move { wait(submitted?).await }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}

async fn openai(State(app): State<App>, ApiJson(body): ApiJson) -> Response {
    openai_response(app, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn openai_response(app: App, body: Value) -> Result<Response, ApiError> {
    let (o, model) = super::openai::object_and_model(&body)?;
    let base64 = match field(o, "encoding_format").map(|v| (v, v.as_str())) {
        None | Some((_, Some("float"))) => false,
        Some((_, Some("base64"))) => true,
        Some((v, _)) => {
            return Err(invalid("encoding_format", format!("'encoding_format' must be 'float' or 'base64', got {v}.")))
        }
    };
    let d = dimensions(o, app.dim)?;
    let inputs = openai_inputs(field(o, "input"))?;
    if !app.is_model(&model) {
        return Err(ApiError::model_not_found(&model));
    }
    let prompts = prompts(&app, inputs, false).await?;
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let vectors = embed(&app, prompts).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let v = shorten(v, d);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": app.model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}

/// Ollama's `input` (a string or an array of strings; empty strings are left out, as Ollama does) and
/// `truncate` (default true).
fn ollama_request(app: &App, body: &Value, text: &str) -> Result<(Vec<Input>, bool, Option<usize>), ApiError> {
    let Some(o) = body.as_object() else { return Err(ApiError::bad_json("expected a JSON object")) };
    model_name(app, o.get("model").and_then(Value::as_str).unwrap_or_default())?;
    let inputs = match field(o, text) {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| wrong_type(text, "a string or an array of strings", v))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(wrong_type(text, "a string or an array of strings", v)),
    };
    let inputs: Vec<Input> = inputs.into_iter().filter(|s| !s.is_empty()).map(Input::Text).collect();
    if inputs.len() > MAX_INPUTS {
        return Err(invalid(text, format!("at most {MAX_INPUTS} inputs are allowed, got {}", inputs.len())));
    }
    let truncate = super::openai::boolean(o, "truncate")?.unwrap_or(true);
    Ok((inputs, truncate, dimensions(o, app.dim)?))
}

async fn ollama_embed(State(app): State<App>, body: Result<ApiJson, ApiError>) -> Response {
    let started = std::time::Instant::now();
    let result = async {
        let ApiJson(body) = body?;
        let (inputs, truncate, d) = ollama_request(&app, &body, "input")?;
        let prompts = prompts(&app, inputs, truncate).await?;
        let count: usize = prompts.iter().map(Vec::len).sum();
        let vectors: Vec<Vec<f32>> = embed(&app, prompts).await?.into_iter().map(|v| shorten(v, d)).collect();
        Ok::<_, ApiError>(json!({
            "model": body["model"],
            "embeddings": vectors,
            "total_duration": started.elapsed().as_nanos() as u64,
            "load_duration": 0,
            "prompt_eval_count": count,
        }))
    }
    .await;
    result.map(|v| Json(v).into_response()).unwrap_or_else(error)
}

/// The older endpoint: one `prompt`, answered `{"embedding": [...]}` (empty for an empty prompt).
async fn ollama_embeddings(State(app): State<App>, body: Result<ApiJson, ApiError>) -> Response {
    let result = async {
        let ApiJson(body) = body?;
        let (inputs, truncate, _) = ollama_request(&app, &body, "prompt")?;
        let prompts = prompts(&app, inputs, truncate).await?;
        let vector = embed(&app, prompts).await?.pop().unwrap_or_default();
        Ok::<_, ApiError>(json!({"embedding": vector}))
    }
    .await;
    result.map(|v| Json(v).into_response()).unwrap_or_else(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(v: Value) -> Result<Vec<Input>, String> {
        openai_inputs(Some(&v)).map_err(|e| e.message)
    }

    #[test]
    fn every_shape_of_openais_input_is_read() {
        assert_eq!(inputs(json!("hi")).unwrap(), [Input::Text("hi".into())]);
        assert_eq!(inputs(json!(["a", "b"])).unwrap(), [Input::Text("a".into()), Input::Text("b".into())]);
        assert_eq!(inputs(json!([1, 2, 3])).unwrap(), [Input::Tokens(vec![1, 2, 3])]);
        assert_eq!(inputs(json!([[1], [2, 3]])).unwrap(), [Input::Tokens(vec![1]), Input::Tokens(vec![2, 3])]);
        assert_eq!(inputs(json!(["a", [4]])).unwrap(), [Input::Text("a".into()), Input::Tokens(vec![4])]);
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        for (v, why) in [
            (json!(""), "empty"),
            (json!([]), "empty"),
            (json!(["a", ""]), "empty"),
            (json!([[]]), "empty"),
            (json!([1, -2]), "integers from 0"),
            (json!([1, 1.5]), "integers from 0"),
            (json!([[1], [4294967296u64]]), "integers from 0"),
            (json!({"text": "a"}), "expected a string"),
            (json!([true]), "expected a string"),
            (json!(vec!["a"; MAX_INPUTS + 1]), "at most 2048"),
        ] {
            let e = inputs(v.clone()).unwrap_err();
            assert!(e.contains(why), "{v}: {e}");
        }
        let e = openai_inputs(None).unwrap_err();
        assert_eq!(e.code, Some("missing_required_parameter"));
    }

    #[test]
    fn a_shortened_vector_has_unit_length() {
        let v = vec![0.6, 0.0, 0.8];
        assert_eq!(shorten(v.clone(), None), v);
        assert_eq!(shorten(v.clone(), Some(3)), v);
        assert_eq!(shorten(v.clone(), Some(1)), [1.0]);
        let o = json!({"dimensions": 0});
        assert!(dimensions(o.as_object().unwrap(), 3).is_err());
        let o = json!({"dimensions": 4});
        assert!(dimensions(o.as_object().unwrap(), 3).unwrap_err().message.contains("between 1 and 3"));
        let o = json!({"dimensions": 2});
        assert_eq!(dimensions(o.as_object().unwrap(), 3).unwrap(), Some(2));
    }
}
