//! `edge-coord`: the coordinator CLI. This binary only parses arguments and calls the libraries.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Coordinator of an edge inference cluster: plans how a model is split over the nodes and runs jobs on them.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the cluster: every member reachable from the given peers, with its capabilities and measured links.
    Peers {
        #[command(flatten)]
        cluster: edge_node::serve::ClusterArgs,
        /// A member to start from, e.g. /ip4/192.168.1.7/tcp/4001 (repeatable; adds to the bootstrap list in
        /// DATA_DIR/config.toml).
        #[arg(long)]
        peer: Vec<libp2p::Multiaddr>,
        /// How long to discover, in seconds.
        #[arg(long, default_value_t = 3.0)]
        wait: f64,
        /// Do not discover members with mDNS.
        #[arg(long)]
        no_mdns: bool,
        /// Skip the bandwidth probe (1 MiB each way per member).
        #[arg(long)]
        no_measure: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also run a member in this process (a one-machine cluster), on 127.0.0.1.
        #[arg(long)]
        local_node: bool,
        /// Backend of the local member.
        #[arg(long, value_enum, default_value_t = edge_node::backend::Backend::Wgpu, requires = "local_node")]
        backend: edge_node::backend::Backend,
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
}

fn main() -> std::process::ExitCode {
    edge_node::commands::init_tracing();
    edge_node::commands::exit_code(run(Cli::parse()))
}

/// The coordinator's data directory: the one given, else the node's default with `coord` in place of `node`.
fn coord_dir(given: &Option<std::path::PathBuf>) -> std::path::PathBuf {
    given.clone().unwrap_or_else(|| edge_node::serve::default_data_dir().with_file_name("coord"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ClusterKey { save, data_dir } => {
            use edge_node::net::keys;
            let key = keys::new_cluster_key();
            println!("{}", keys::cluster_key_hex(&key));
            if save {
                let path = keys::save_cluster_key(&key, &coord_dir(&data_dir))?;
                eprintln!("saved in {}", path.display());
            }
            Ok(())
        }
        Command::Peers { cluster, peer, wait, no_mdns, no_measure, json, local_node, backend } => {
            anyhow::ensure!((0.0..=600.0).contains(&wait), "--wait must be between 0 and 600 seconds");
            let dir = coord_dir(&cluster.data_dir);
            let identity = edge_node::net::keys::load_or_create_identity(&dir)?;
            let cluster_key = edge_node::net::keys::load_cluster_key(cluster.cluster_key.as_deref(), &dir)?;
            let file = edge_node::net::config::FileConfig::load(&dir)?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let members = rt.block_on(async move {
                let local = if local_node {
                    let opts = edge_node::serve::MemberOptions {
                        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                        bootstrap: Vec::new(),
                        mdns: false,
                        allow: Vec::new(),
                        backend,
                        memory: None,
                    };
                    Some(edge_node::serve::start_member(&dir.join("local-node"), cluster_key, opts).await?)
                } else {
                    None
                };
                let peer: Vec<libp2p::Multiaddr> =
                    peer.into_iter().chain(local.iter().flat_map(|m| m.dial_addrs())).collect();
                let cfg = edge_node::net::NetConfig {
                    identity,
                    cluster_key,
                    listen: vec!["/ip4/0.0.0.0/tcp/0".parse()?],
                    bootstrap: file.bootstrap.into_iter().chain(peer).collect(),
                    mdns: !no_mdns && file.mdns.unwrap_or(true),
                    allow: (!file.allow.is_empty()).then(|| file.allow.into_iter().collect()),
                    capabilities: None,
                };
                let (client, event_loop) = edge_node::net::new(cfg)?;
                let (stop, stop_rx) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(event_loop.run(stop_rx));
                let members =
                    edge_coord::cluster::members(&client, std::time::Duration::from_secs_f64(wait), !no_measure).await;
                let _ = stop.send(true);
                let _ = task.await;
                if let Some(m) = local {
                    m.stop().await;
                }
                anyhow::Ok(members)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&members)?);
            } else {
                print_members(&members)?;
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
