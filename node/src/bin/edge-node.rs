//! `edge-node`: runs on every device of the cluster. This binary only parses arguments and calls the library.

use clap::{Parser, Subcommand};

/// A member of an edge inference cluster: loads shards of GGUF models and runs them with WGSL compute shaders.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt on this machine (streams tokens, prints tok/s).
    Generate(edge_node::commands::GenerateArgs),
    /// Measure prefill/decode speed and kernel bandwidth on both backends (and llama.cpp when installed).
    Bench(edge_node::bench::BenchArgs),
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
        Command::Info(a) => edge_node::commands::info(a),
        Command::Init(a) => edge_node::serve::init(a),
        Command::Serve(a) => edge_node::serve::serve(a),
    })
}
