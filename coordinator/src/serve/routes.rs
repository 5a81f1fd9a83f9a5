//! The HTTP side: routes, the API-key check, the JSON body extractor (OpenAI-shaped errors instead of axum's
//! plain-text rejections, 1 MiB limit), the generation handlers (parse, tokenize, queue a sequence per choice;
//! [`super::respond`] answers) and the status.

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_node::net::peers::PeerSnapshot;
use edge_protocol::stage::JobParams;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::board::Board;
use super::metrics::Live;
use super::openai::{self, ApiError, Endpoint, Head, Input, MAX_BODY_BYTES};
use super::respond;
use super::status::{JobKind, Status, Totals};
use super::submit::Event;
use super::tools;
use super::{dashboard, App};
use crate::job::Job;

/// Every route of the server.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .merge(super::embeddings::router())
        .route("/api/status", get(status))
        .route("/metrics", get(metrics))
        .merge(super::ollama::router())
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    // Open without the key, as load balancers and orchestrators probe it.
    let health = Router::new().route("/health", get(health));
    api.merge(health)
        .merge(dashboard::router::<App>())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// With an API key set: `Authorization: Bearer KEY`, compared in constant time (as blake3 hashes).
async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(want) = &app.api_key {
        let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            None => {
                return ApiError::unauthorized(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header \
                     using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
                .into_response()
            }
            // blake3::Hash compares in constant time.
            Some(key) if blake3::hash(key.trim().as_bytes()) != *want => {
                return ApiError::unauthorized("Incorrect API key provided.").into_response()
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Unknown request URL: {method} {}.", uri.path()),
    )
    .with_code("unknown_url")
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("Method {method} is not allowed on {}.", uri.path()),
    )
    .with_code("method_not_allowed")
}

/// A JSON body, or an OpenAI-shaped error (400 for bad JSON, 413 over [`MAX_BODY_BYTES`]). An oversized body is
/// still read (and dropped) up to [`DRAIN_BYTES`], so that a client still sending it gets the 413 instead of a
/// connection reset.
pub struct ApiJson(pub Value);

/// How much of an oversized body is read before answering 413 anyway.
pub const DRAIN_BYTES: usize = 16 << 20;

impl<S: Send + Sync> FromRequest<S> for ApiJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        use futures::StreamExt;
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > DRAIN_BYTES as u64) {
            return Err(ApiError::too_large());
        }
        let mut body = req.into_body().into_data_stream();
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_json(format!("the body could not be read: {e}")))?;
            total += chunk.len();
            if total <= MAX_BODY_BYTES {
                buf.extend_from_slice(&chunk);
            } else if total > DRAIN_BYTES {
                break;
            }
        }
        if total > MAX_BODY_BYTES {
            return Err(ApiError::too_large());
        }
        serde_json::from_slice(&buf).map(ApiJson).map_err(ApiError::bad_json)
    }
}

fn model_object(app: &App) -> Value {
    json!({"id": app.model_id, "object": "model", "created": app.created, "owned_by": "edge-infer"})
}

async fn models(State(app): State<App>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&app)]}))
}

async fn model(State(app): State<App>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    if app.is_model(&id) {
        Json(model_object(&app)).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

async fn completions(State(app): State<App>, ApiJson(body): ApiJson) -> Response {
    generate(app, Endpoint::Completions, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat(State(app): State<App>, ApiJson(body): ApiJson) -> Response {
    generate(app, Endpoint::Chat, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn generate(app: App, endpoint: Endpoint, body: Value) -> Result<Response, ApiError> {
    let parsed = openai::parse(endpoint, &body)?;
    let a = submit(&app, endpoint, endpoint, parsed).await?;
    let logprobs = a.options.sampling.logprobs.is_some();
    if a.options.stream {
        Ok(respond::stream(a.head, a.rx, a.prompt_tokens, a.options.include_usage, logprobs))
    } else {
        respond::whole(a.head, a.rx, a.prompt_tokens, logprobs).await
    }
}

/// A request the scheduler took: the events of each of its choices, its prompt's length, its response head and
/// options.
pub(super) struct Accepted {
    pub rx: Vec<mpsc::UnboundedReceiver<Event>>,
    pub prompt_tokens: usize,
    pub head: Head,
    pub options: openai::Options,
}

/// Tokenizes a parsed request, checks its budget (`budget_as` says whose default applies to a missing
/// `max_tokens`) and queues a sequence for each of its `n` choices (choice i samples with seed + i).
pub(super) async fn submit(
    app: &App,
    endpoint: Endpoint,
    budget_as: Endpoint,
    parsed: openai::Parsed,
) -> Result<Accepted, ApiError> {
    let o = parsed.options;
    if !app.is_model(&o.model) {
        return Err(ApiError::model_not_found(&o.model));
    }
    let tok = app.tok;
    let vocab = tok.vocab_size();
    if let Some((id, _)) = o.sampling.logit_bias.iter().find(|b| b.0 as usize >= vocab) {
        let msg = format!("'logit_bias' names token {id}, outside the vocabulary of {vocab} tokens.");
        return Err(ApiError::invalid("logit_bias", msg).with_code("invalid_value"));
    }
    if let Some(g) = o.grammar.clone() {
        let app = app.clone();
        let param =
            if o.tools.as_ref().is_some_and(|t| t.choice != tools::Choice::Auto) { "tools" } else { "response_format" };
        tokio::task::spawn_blocking(move || app.check_grammar(&g, param))
            .await
            .map_err(|e| ApiError::server(format!("checking the grammar failed: {e}")))??;
    }
    let tool_list = o.tools.as_ref().map(|t| t.list.clone());
    let encoded = tokio::task::spawn_blocking(move || match parsed.input {
        Input::Prompt(p) => tok.encode(&p),
        Input::Messages(m) => tok.encode_with_special(&tok.chat_prompt_with_tools(&m, tool_list.as_ref())),
    })
    .await
    .map_err(|e| ApiError::server(format!("tokenizing failed: {e}")))?;
    let param = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    let mut ids = encoded.map_err(|e| ApiError::invalid(param, format!("The {param} could not be tokenized: {e}")))?;
    if ids.is_empty() {
        match tok.bos() {
            Some(b) => ids.push(b),
            None => return Err(ApiError::invalid(param, "The prompt is empty.")),
        }
    }
    let max_tokens = openai::budget(budget_as, ids.len(), o.max_tokens, app.context)?;
    let prompt_tokens = ids.len();
    let params = JobParams {
        sampling: o.sampling.params,
        stop: app.eog.clone(),
        prefill_chunk: app.prefill_chunk,
        logit_bias: o.sampling.logit_bias.clone(),
        penalties: o.sampling.penalties,
        logprobs: o.sampling.logprobs,
        grammar: o.grammar.clone(),
        ..JobParams::new((prompt_tokens + max_tokens) as u32, max_tokens as u32)
    };
    let head = Head::new(endpoint, &app.model_id);
    let kind = if endpoint == Endpoint::Chat { JobKind::Chat } else { JobKind::Completion };
    let mut rx = Vec::with_capacity(o.n);
    for i in 0..o.n {
        let mut params = params.clone();
        params.sampling.seed = params.sampling.seed.wrapping_add(i as u64);
        let job = Job { prompt: ids.clone(), params };
        // Each choice is a job of its own on the dashboard.
        let id = if i == 0 { head.id.clone() } else { format!("{}-{i}", head.id) };
        // Choices after the first fork its prefill.
        let first = (i > 0).then(|| head.id.clone());
        let events = app.scheduler.submit_choice(id, kind, job, o.stop.clone(), first)?;
        rx.push(if o.tools.is_some() { tools::split_calls(events) } else { events });
    }
    Ok(Accepted { rx, prompt_tokens, head, options: o })
}

/// 200 `{"status": "ok"}` while a plan runs, else 503 with the reason.
async fn health(State(app): State<App>) -> Response {
    let b = app.scheduler.board.lock().expect("board lock");
    match (b.plan(), b.unavailable()) {
        (Some(_), _) => Json(json!({"status": "ok"})).into_response(),
        (None, why) => {
            let reason = why.clone().unwrap_or_else(|| "no plan runs yet".into());
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": reason}))).into_response()
        }
    }
}

/// Each board member as the coordinator sees it now: connected or not, and its round trip.
fn live(b: &Board, peers: &[PeerSnapshot]) -> Vec<Live> {
    b.members
        .iter()
        .map(|n| {
            let p = peers.iter().find(|p| p.peer_id == n.id);
            Live { id: n.id.clone(), alive: p.is_some(), rtt_s: p.and_then(|p| p.rtt_us).map(|r| r as f64 / 1e6) }
        })
        .collect()
}

/// The Prometheus exposition ([`super::metrics`]).
async fn metrics(State(app): State<App>) -> Response {
    let peers = app.client.peers().await.unwrap_or_default();
    let b = app.scheduler.board.lock().expect("board lock");
    let live = live(&b, &peers);
    let text = super::metrics::render(&b, &live);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn status(State(app): State<App>) -> Json<Status> {
    let peers = app.client.peers().await.unwrap_or_default();
    let b = app.scheduler.board.lock().expect("board lock");
    let nodes = b
        .members
        .iter()
        .zip(live(&b, &peers))
        .map(|(n, live)| {
            let mut n = n.clone();
            n.alive = live.alive;
            n.rtt_ms = live.rtt_s.map(|r| r * 1e3).or(n.rtt_ms.filter(|_| n.alive));
            n.active_sequences = b.replica_of(&n.id).map_or(0, |r| b.replicas[r].running);
            n.tokens_per_s = b.rate(&n.id);
            n
        })
        .collect();
    Json(Status {
        model: b.model.clone(),
        nodes,
        plan: b.plan().cloned(),
        replicas: b.replicas.clone(),
        jobs: b.jobs.iter().cloned().collect(),
        totals: Totals {
            requests: b.requests,
            completion_tokens: b.completion_tokens,
            uptime_s: b.started.elapsed().as_secs_f64(),
        },
    })
}
