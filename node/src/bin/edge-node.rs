//! `edge-node`: runs on every device of the cluster. This binary only parses arguments and calls the library.

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  edge-node generate -p \"Once upon a time\"                  run the default model (SmolLM2) on this machine
  edge-node generate -m qwen2.5-coder:0.5b --chat -p \"Write a haiku about Rust\"
  edge-node init                                             create this node's identity and a cluster key
  edge-node serve --peer /ip4/192.168.1.7/tcp/4001           join a cluster (mDNS finds LAN peers by itself)
  edge-node bench -m qwen2.5-coder:0.5b                      the CPU backend's speed next to llama.cpp's
  edge-node perplexity wiki.txt --ctx 512                    perplexity on a text, as llama.cpp computes it

Models: a GGUF path, or a short name of a model scripts/setup.sh fetches (smollm2:135m, qwen2.5-coder:0.5b,
qwen2.5-coder:1.5b), kept in $EDGE_MODELS_DIR (default ~/.cache/edge-infer/models).
Config: DATA_DIR/config.toml (listen, bootstrap, mdns, allow, backend, threads, memory, max_plans); flags override it.
Environment: RUST_LOG (log filter, e.g. info or edge_node=debug; logs go to stderr), EDGE_DATA_DIR,
EDGE_CLUSTER_KEY, EDGE_MODEL, EDGE_MODELS_DIR.";

/// A member of an edge inference cluster: loads shards of GGUF models and runs them on the CPU's cores (SIMD
/// kernels) or a GPU (WGSL compute shaders).
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt on this machine (streams tokens, prints tok/s).
    Generate(edge_node::commands::GenerateArgs),
    /// Measure prefill/decode speed of the CPU backend next to llama.cpp's (when installed), and per-op bandwidth.
    Bench(edge_node::bench::BenchArgs),
    /// Perplexity of the model on a text file (chunks of --ctx tokens, as llama.cpp's llama-perplexity).
    Perplexity(edge_node::perplexity::PerplexityArgs),
    /// Describe a model file.
    Info(edge_node::commands::InfoArgs),
    /// Create this node's identity and a cluster key (or store a given one), and print them.
    Init(edge_node::serve::InitArgs),
    /// Join the cluster: discover peers, advertise this device's capabilities, serve until Ctrl-C.
    Serve(edge_node::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    edge_node::commands::init_tracing();
    let cli = Cli::parse();
    edge_node::commands::exit_code(match &cli.command {
        Command::Generate(a) => edge_node::commands::generate(a),
        Command::Bench(a) => edge_node::bench::run(a),
        Command::Perplexity(a) => edge_node::perplexity::run(a),
        Command::Info(a) => edge_node::commands::info(a),
        Command::Init(a) => edge_node::serve::init(a),
        Command::Serve(a) => edge_node::serve::serve(a),
    })
}
