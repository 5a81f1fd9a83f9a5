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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let path = edge_node::setup::resolve_model(model.as_deref())?;
            let m = edge_node::backend::LoadedModel::open(&path)?;
            let d = edge_coord::ModelDescription::from_gguf(&m.gguf, &m.config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let h = edge_node::commands::human_bytes;
            println!("model            {} ({} layers, context {})", d.arch, d.n_layers, d.context);
            let tied = if d.tied_embeddings { " (tied to the embedding)" } else { "" };
            println!(
                "weights          {} total: embedding {}, head {}{tied}",
                h(d.total_weight_bytes()),
                h(d.embed_bytes),
                h(d.head_bytes)
            );
            let (lo, hi) = (
                d.layer_weight_bytes.iter().min().copied().unwrap_or(0),
                d.layer_weight_bytes.iter().max().copied().unwrap_or(0),
            );
            println!("per layer        {} .. {}", h(lo), h(hi));
            println!("kv cache         {} per token per layer", h(d.kv_bytes_per_token_per_layer));
            println!("hidden state     {} per token (what a pipeline hop carries)", h(d.activation_bytes_per_token));
            println!("compute          {:.1} MFLOP per token per layer", d.flops_per_token_per_layer as f64 / 1e6);
            Ok(())
        }
    }
}
