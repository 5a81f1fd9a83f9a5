//! `edge-coord serve`: an OpenAI-compatible HTTP API backed by the cluster. At startup it joins the cluster, plans
//! the model's replicas (`--replicas`, [`crate::plan::replicas`]) for `--sequences` concurrent sequences and
//! deploys each (the same code as `edge-coord run`), then serves:
//!
//! - `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (OpenAI's shapes, streaming as SSE),
//!   `POST /v1/embeddings`, and Ollama's API ([`ollama`], [`embeddings`]),
//! - `GET /api/status` (nodes, plan, recent jobs: [`status`]), read by the dashboard and `edge-coord status`,
//! - the dashboard page (`dashboard`).
//!
//! Requests are routed by a [`submit::Handle`] to the replica that will finish them soonest and run on its
//! [`scheduler`] (one per replica, [`fleet`]), which keeps the [`board`] (what `/api/status` and `/metrics` read)
//! up to date. With `--api-key` (or `EDGE_API_KEY`) every `/v1` and `/api` route needs
//! `Authorization: Bearer KEY`.
//!
//! - [`openai`]: request parsing and validation, error bodies, response and chunk shapes, SSE framing.
//! - [`sampling`]: the sampling fields of a request (temperature to logit bias and log-probabilities).
//! - [`embeddings`]: `/v1/embeddings` and Ollama's `/api/embed`.
//! - [`format`](mod@format): structured output (`response_format`) as a grammar.
//! - [`logprobs`]: token log-probabilities in the API's shapes.
//! - [`stop`]: stop strings over streamed text.
//! - [`routes`]: the HTTP handlers.
//! - [`respond`]: whole responses and SSE streams of a request's choices.
//! - [`client`]: `edge-coord status`.

pub mod board;
pub mod client;
pub mod dashboard;
pub mod embeddings;
pub mod fleet;
pub mod format;
pub mod logprobs;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod respond;
pub mod routes;
pub mod sampling;
pub mod scheduler;
pub mod status;
pub mod stop;
pub mod submit;
pub mod tools;

use std::sync::Arc;

use anyhow::Context;
use edge_node::commands::ModelArgs;
use edge_node::tokenizer::Tokenizer;

use crate::cluster::{self, JoinArgs};
use crate::plan::{self, replicas::ReplicaMode, PlanRequest};
use crate::run::Target;
use crate::ModelDescription;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to serve HTTP on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Require `Authorization: Bearer KEY` on the API (`/v1/...`, `/api/...`).
    #[arg(long, env = "EDGE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Concurrent sequences the cluster holds, shared by the replicas (more requests wait in a queue of 64 per
    /// replica, then get 429).
    #[arg(long, default_value_t = 4)]
    pub sequences: usize,
    /// Copies of the model on disjoint nodes: `auto` (as many as raise the predicted throughput for
    /// `--sequences` without slowing any sequence down; nodes that join later may add one) or N.
    #[arg(long, default_value = "auto")]
    pub replicas: ReplicaMode,
    /// Context of each sequence in tokens (prompt + completion) [default: the model's, at most 4096].
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Tensor parallelism: `auto` (the planner decides), `off`, or K (the whole model as one stage over K nodes).
    #[arg(long, default_value = "auto")]
    pub tensor_parallel: plan::TpMode,
    /// Force an even pipeline of this many stages instead of the planner's choice.
    #[arg(long)]
    pub stages: Option<usize>,
    /// Chunked prefill: most prompt tokens per step. A long prompt enters in chunks, each batched with the
    /// running sequences' next tokens, so they wait about one chunk's time (0: whole prompts in one step).
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: u32,
    #[command(flatten)]
    pub join: JoinArgs,
}

/// The default `--prefill-chunk`: long enough that the GEMM runs at full speed, short enough that a running
/// sequence's next token waits well under a second on a small CPU.
pub const DEFAULT_PREFILL_CHUNK: u32 = 256;

/// What every handler needs.
pub struct AppState {
    pub model_id: String,
    /// When the server started (the model's `created`), unix seconds.
    pub created: u64,
    pub tok: &'static Tokenizer,
    pub context: usize,
    /// The model's width: an embedding's length.
    pub dim: usize,
    /// End-of-generation tokens.
    pub eog: Vec<u32>,
    /// blake3 of the API key (compared in constant time).
    pub api_key: Option<blake3::Hash>,
    pub scheduler: submit::Handle,
    pub client: edge_node::net::Client,
    /// Most prompt tokens per step (see [`ServeArgs::prefill_chunk`]).
    pub prefill_chunk: u32,
    /// The vocabulary indexed for grammars, built at the first request that has one (to check that it compiles
    /// before it is queued; the stage that samples compiles it again).
    pub grammars: std::sync::OnceLock<Result<edge_node::grammar::Grammars, String>>,
}

impl AppState {
    /// Whether a request's `model` names the served model: its id (the file name without `.gguf`) or, for a model
    /// `scripts/setup.sh` fetches, the short name `--model` takes (`gemma3:270m`), either with Ollama's default
    /// tag `:latest` or without.
    pub fn is_model(&self, name: &str) -> bool {
        let name = name.strip_suffix(":latest").unwrap_or(name);
        name == self.model_id
            || edge_node::setup::KNOWN_MODELS
                .iter()
                .any(|k| k.name == name && k.file.strip_suffix(".gguf") == Some(self.model_id.as_str()))
    }

    /// Whether `g` compiles for this model (blocking: the first call indexes the vocabulary).
    pub fn check_grammar(&self, g: &edge_protocol::stage::Grammar, param: &str) -> Result<(), openai::ApiError> {
        let grammars = self
            .grammars
            .get_or_init(|| edge_node::grammar::Grammars::new(&self.tok.vocabulary()).map_err(|e| format!("{e:#}")));
        format::check(grammars, g, param)
    }
}

pub type App = Arc<AppState>;

/// The model's name in the API: the GGUF file name without `.gguf`.
pub fn model_id(path: &std::path::Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
}

pub fn main(args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=64).contains(&args.sequences), "--sequences must be between 1 and 64");
    if let Some(k) = &args.api_key {
        anyhow::ensure!(!k.trim().is_empty(), "--api-key is empty");
    }
    let path = edge_node::setup::resolve_model(args.model.model.as_deref())?;
    let m = edge_node::backend::LoadedModel::open(&path).with_context(|| format!("loading {}", path.display()))?;
    let model_id = model_id(&path);
    let tok: &'static Tokenizer = Box::leak(Box::new(Tokenizer::from_gguf(&m.gguf)?));
    let context = args.ctx.unwrap_or(m.config.context.min(4096));
    anyhow::ensure!(
        (2..=m.config.context).contains(&context),
        "--ctx must be between 2 and the model's context length {}",
        m.config.context
    );
    let eog: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&t| tok.is_eog(t)).collect();
    let desc = ModelDescription::from_gguf(&m.gguf, &m.config)?;
    if let (Some(k), ReplicaMode::Fixed(n)) = (args.stages, args.replicas) {
        anyhow::ensure!(n == 1, "--stages {k} forces one pipeline: it cannot be combined with --replicas {n}");
    }
    let facts = Arc::new(crate::deploy::ModelFacts::of(&m, tok));
    let m = Arc::new(m);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let joined = cluster::join(&args.join).await?;
        let result = async {
            let discovery = cluster::Joined::discovery(&args.join)?;
            // Bind first: a busy port fails before anything is shipped.
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            let req = PlanRequest { context, sequences: args.sequences, tensor_parallel: args.tensor_parallel };
            let progress = indicatif::MultiProgress::new();
            let target =
                Target { model: &m, facts: &facts, desc: &desc, req: &req, stages: args.stages, previous: None };
            let fleet = Arc::new(fleet::Fleet::new(args.replicas));
            let planned = fleet::deploy_all(&joined.client, &discovery, &target, &fleet, &progress).await?;
            let info =
                status::ModelInfo { id: model_id.clone(), arch: desc.arch.clone(), layers: desc.n_layers, context };
            let setup = scheduler::Setup {
                joined_client: joined.client.clone(),
                discovery: discovery.relaxed(),
                model: m.clone(),
                facts: facts.clone(),
                desc: desc.clone(),
                req,
                stages: args.stages,
                tok,
                fleet: fleet.clone(),
            };
            let handle = submit::Handle::new(board::Board::new(info));
            let replicas = planned.len();
            for p in planned {
                let setup = scheduler::Setup { req: fleet::replica_request(&p, &req), ..setup.clone() };
                let task = scheduler::start(setup, p, &handle);
                fleet.tasks.lock().expect("tasks lock").push(task);
            }
            let scout = tokio::spawn(fleet::scout(setup, handle.downgrade()));
            let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let app = Arc::new(AppState {
                model_id: model_id.clone(),
                created,
                tok,
                context,
                dim: desc.dim,
                eog,
                api_key: args.api_key.as_deref().map(|k| blake3::hash(k.trim().as_bytes())),
                scheduler: handle,
                client: joined.client.clone(),
                prefill_chunk: args.prefill_chunk,
                grammars: Default::default(),
            });
            let addr = listener.local_addr()?;
            eprintln!(
                "serving http://{addr} (model {model_id}, {} sequences of {context} tokens on {replicas} replica{}{})",
                args.sequences,
                if replicas == 1 { "" } else { "s" },
                if args.api_key.is_some() { ", API key required" } else { "" }
            );
            axum::serve(listener, routes::router(app)).with_graceful_shutdown(shutdown()).await?;
            // The router (and with it every handle) is gone: each scheduler closes its plan and ends. (A replica
            // the scout is deploying now is dropped; its nodes end its sessions.)
            scout.abort();
            let tasks = std::mem::take(&mut *fleet.tasks.lock().expect("tasks lock"));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), futures::future::join_all(tasks)).await;
            anyhow::Ok(())
        }
        .await;
        joined.leave().await;
        result
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down");
}
