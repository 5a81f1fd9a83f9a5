//! `edge-coord`: the coordinator CLI. This binary only parses arguments and calls the libraries.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_coord::cluster::JoinArgs;

const AFTER_HELP: &str = "\
Examples:
  edge-coord peers --peer /ip4/192.168.1.7/tcp/4001            the cluster: members, speed, links
  edge-coord plan -m qwen2.5-coder:1.5b --sequences 4            how the model would be split, and how fast
  edge-coord run -m qwen2.5-coder:0.5b --chat -p \"Write a quicksort in Rust\"
  edge-coord serve -m qwen2.5-coder:0.5b --listen 0.0.0.0:8080 --api-key SECRET
                                                                  OpenAI API + dashboard at http://HOST:8080/
  edge-coord status --url http://127.0.0.1:8080                   nodes, plan and recent jobs of a server

Every command that talks to the cluster takes the cluster key (--cluster-key, $EDGE_CLUSTER_KEY or
DATA_DIR/cluster.key) and finds members by mDNS, --peer addresses or DATA_DIR/config.toml's bootstrap list.
Models: a GGUF path or a short name (smollm2:135m, qwen2.5-coder:0.5b, qwen2.5-coder:1.5b).
Environment: RUST_LOG (log filter, e.g. info or edge_coord=debug; logs go to stderr), EDGE_DATA_DIR,
EDGE_CLUSTER_KEY, EDGE_MODEL, EDGE_MODELS_DIR, EDGE_API_KEY.";

/// Coordinator of an edge inference cluster: plans how a model is split over the nodes and runs jobs on them.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the cluster: every member reachable from the given peers, with its capabilities and measured links.
    Peers {
        #[command(flatten)]
        discover: JoinArgs,
        /// Skip the bandwidth probe (1 MiB each way per member).
        #[arg(long)]
        no_measure: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a new cluster key and print it (64 hex digits); --save stores it in the data directory.
    ClusterKey {
        /// Also store it as DATA_DIR/cluster.key.
        #[arg(long)]
        save: bool,
        #[arg(long, env = "EDGE_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Show what the planner sees of a model: bytes per layer, KV cache and activation sizes, FLOPs per token.
    Inspect {
        /// GGUF model file [default: the model fetched by scripts/setup.sh]
        #[arg(long, short = 'm', env = "EDGE_MODEL")]
        model: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Plan the model over the cluster, ship each node its stage (only what its cache lacks), generate, stream the
    /// text, and print measured speed next to the plan's prediction.
    Run(Box<edge_coord::run::RunArgs>),
    /// Serve an OpenAI-compatible API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`), the status
    /// (`/api/status`) and the dashboard (`/`) over HTTP, backed by a plan deployed once on the cluster.
    Serve(Box<edge_coord::serve::ServeArgs>),
    /// Show what a running `edge-coord serve` is doing: its nodes, plan and recent jobs.
    Status(edge_coord::serve::client::StatusArgs),
    /// Plan how a model is split over the cluster (pipeline stages, tensor-parallel groups) and print the
    /// predicted token latency and throughput. The cluster is discovered like `peers` does, or read from --nodes.
    Plan {
        /// GGUF model file [default: the model fetched by scripts/setup.sh]
        #[arg(long, short = 'm', env = "EDGE_MODEL")]
        model: Option<PathBuf>,
        /// Positions each sequence may hold (capped at the model's context).
        #[arg(long, default_value_t = 2048)]
        context: usize,
        /// Concurrent sequences: 1 plans for latency, more for throughput.
        #[arg(long, default_value_t = 1)]
        sequences: usize,
        /// Tensor parallelism: auto, off, or K (the whole model as one stage over the K fastest nodes).
        #[arg(long, default_value = "auto")]
        tensor_parallel: edge_coord::plan::TpMode,
        /// Independent copies of the model on disjoint nodes, sharing the --sequences: auto (as many as raise the
        /// predicted throughput without slowing any sequence) or N.
        #[arg(long, default_value = "auto")]
        replicas: edge_coord::plan::replicas::ReplicaMode,
        /// Plan offline for the nodes in this JSON file (an array of node profiles) instead of discovering them.
        #[arg(long, conflicts_with_all = ["peer", "local_node"])]
        nodes: Option<PathBuf>,
        #[command(flatten)]
        discover: JoinArgs,
        /// Print JSON (the nodes and the plan) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    edge_node::commands::init_tracing();
    edge_node::commands::exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ClusterKey { save, data_dir } => {
            use edge_node::net::keys;
            let key = keys::new_cluster_key();
            println!("{}", keys::cluster_key_hex(&key));
            if save {
                let path = keys::save_cluster_key(&key, &edge_coord::cluster::coord_dir(&data_dir))?;
                eprintln!("saved in {}", path.display());
            }
            Ok(())
        }
        Command::Run(args) => edge_coord::run::main(&args),
        Command::Serve(args) => edge_coord::serve::main(&args),
        Command::Status(args) => edge_coord::serve::client::main(&args),
        Command::Peers { discover, no_measure, json } => {
            let members = discover_members(discover, !no_measure)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&members)?);
            } else {
                print_members(&members)?;
            }
            Ok(())
        }
        Command::Plan { model, context, sequences, tensor_parallel, replicas, nodes, discover, json } => {
            let path = edge_node::setup::resolve_model(model.as_deref())?;
            let m = edge_node::backend::LoadedModel::open(&path)?;
            let d = edge_coord::ModelDescription::from_gguf(&m.gguf, &m.config)?;
            let profiles: Vec<edge_coord::plan::NodeProfile> = match nodes {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading the node profiles in {}", file.display()))?;
                    serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a JSON array of node profiles (id, memory_bytes, gemv_gbps, dispatch_us, optional row_gmacs, optional native_weights (true for a cpu-backend member), link: {{latency_us, bandwidth_mbps}})", file.display())
                    })?
                }
                None => {
                    let members = discover_members(discover, true)?;
                    anyhow::ensure!(
                        !members.is_empty(),
                        "no members answered (check --peer addresses and the cluster key), or use --nodes FILE"
                    );
                    members.iter().filter_map(edge_coord::plan::NodeProfile::from_member).collect()
                }
            };
            if context > d.context {
                eprintln!("context {context} capped at the model's {}", d.context);
            }
            let req = edge_coord::plan::PlanRequest { context: context.min(d.context), sequences, tensor_parallel };
            let r = edge_coord::plan::replicas::plan_replicas(&d, &profiles, &req, replicas)?;
            if json {
                // "plan": the first replica's, the only one unless there are several.
                let v = serde_json::json!({
                    "request": req, "nodes": profiles, "plan": r.replicas[0].plan, "replicas": r,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "plan for {} ({} layers) on {} nodes, context {}, {} sequence{}, tensor parallel {}",
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned()),
                    d.n_layers,
                    profiles.len(),
                    req.context,
                    req.sequences,
                    if req.sequences == 1 { "" } else { "s" },
                    req.tensor_parallel
                );
                if let [one] = &r.replicas[..] {
                    print!("{}", one.plan.describe(&profiles));
                } else {
                    let plural = |n: usize| if n == 1 { "" } else { "s" };
                    println!(
                        "{} replicas sharing the {} sequences: {:.1} tok/s together",
                        r.replicas.len(),
                        req.sequences,
                        r.throughput_tokens_per_s
                    );
                    for (i, rep) in r.replicas.iter().enumerate() {
                        let (nodes, used, seqs) =
                            (rep.nodes.len(), rep.plan.nodes_used(), rep.plan.prediction.sequences);
                        println!(
                            "\nreplica {}: {nodes} node{} ({used} in its plan), {seqs} sequence{}",
                            i + 1,
                            plural(nodes),
                            plural(seqs)
                        );
                        print!("{}", rep.plan.describe(&profiles));
                    }
                }
            }
            Ok(())
        }
        Command::Inspect { model, json } => {
            let path = edge_node::setup::resolve_model(model.as_deref())?;
            let m = edge_node::backend::LoadedModel::open(&path)?;
            let d = edge_coord::ModelDescription::from_gguf(&m.gguf, &m.config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let h = edge_node::commands::human_bytes;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "model            {} ({} layers, context {})", d.arch, d.n_layers, d.context)?;
            let tied = if d.tied_embeddings { " (tied to the embedding)" } else { "" };
            writeln!(
                out,
                "weights          {} total: embedding {}, head {}{tied}",
                h(d.total_weight_bytes()),
                h(d.embed_bytes),
                h(d.head_bytes)
            )?;
            let (lo, hi) = (
                d.layer_weight_bytes.iter().min().copied().unwrap_or(0),
                d.layer_weight_bytes.iter().max().copied().unwrap_or(0),
            );
            writeln!(out, "per layer        {} .. {}", h(lo), h(hi))?;
            writeln!(out, "kv cache         {} per token per layer", h(d.kv_bytes_per_token_per_layer))?;
            writeln!(
                out,
                "hidden state     {} per token (what a pipeline hop carries)",
                h(d.activation_bytes_per_token)
            )?;
            writeln!(
                out,
                "compute          {:.1} MFLOP per token per layer",
                d.flops_per_token_per_layer as f64 / 1e6
            )?;
            Ok(())
        }
    }
}

/// Joins the cluster (plus a local member with --local-node) and returns the members, with their links
/// measured when `measure`.
fn discover_members(d: JoinArgs, measure: bool) -> anyhow::Result<Vec<edge_coord::cluster::Member>> {
    let discovery = edge_coord::cluster::Joined::discovery(&d)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let joined = edge_coord::cluster::join(&d).await?;
        let members = edge_coord::cluster::members(&joined.client, &discovery, measure).await;
        joined.leave().await;
        members
    })
}

fn print_members(members: &[edge_coord::cluster::Member]) -> std::io::Result<()> {
    if members.is_empty() {
        eprintln!("no members answered (check --peer addresses and the cluster key)");
        return Ok(());
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let h = edge_node::commands::human_bytes;
    writeln!(
        out,
        "{:<14} {:<28} {:<36} {:>10} {:>9} {:>9} {:>11} {:>9}",
        "PEER", "ADDRESS", "ADAPTER", "MEMORY", "GEMV GB/s", "RTT ms", "LINK MB/s", "SEEN ms"
    )?;
    for member in members {
        let m = &member.peer;
        let c = m.capabilities.as_ref();
        let short = m.peer_id.get(m.peer_id.len().saturating_sub(12)..).unwrap_or(&m.peer_id);
        let adapter = c.map_or("-".to_string(), |c| format!("{} [{}]", c.adapter, c.backend));
        writeln!(
            out,
            "..{:<12} {:<28} {:<36.36} {:>10} {:>9} {:>9} {:>11} {:>9}",
            short,
            m.addrs.first().map_or("-", |a| a.split("/p2p/").next().unwrap_or(a)),
            adapter,
            c.map_or("-".into(), |c| h(c.memory_bytes)),
            c.map_or("-".into(), |c| format!("{:.2}", c.gemv_gbps)),
            m.rtt_us.map_or("-".into(), |r| format!("{:.2}", r as f64 / 1e3)),
            member.bandwidth_mbps.map_or("-".into(), |b| format!("{b:.0}")),
            m.last_seen_ms
        )?;
    }
    Ok(())
}
