//! The `edge-node` subcommands that work on one machine: `generate` and `info` (`bench` lives in [`crate::bench`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::backend::{Backend, LoadedModel};
use crate::generate::{generate as run_generation, GenerateRequest};
use crate::gpu::GpuOptions;
use crate::sampler::SamplingParams;
use crate::tokenizer::{ChatMessage, TextStream, Tokenizer};

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// GGUF model file [default: SmolLM2-135M-Instruct Q4_1 in the model cache, fetched by scripts/setup.sh]
    #[arg(long, short = 'm', env = "EDGE_MODEL")]
    pub model: Option<PathBuf>,
}

impl ModelArgs {
    pub fn open(&self) -> anyhow::Result<LoadedModel> {
        let path = crate::setup::resolve_model(self.model.as_deref())?;
        LoadedModel::open(&path).with_context(|| format!("loading {}", path.display()))
    }
}

/// What to generate: the prompt, how long, how to sample. Shared by `edge-node generate` and `edge-coord run`.
#[derive(Debug, Clone, clap::Args)]
pub struct PromptArgs {
    /// The prompt text.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (from the GGUF; if it has none, Gemma's turns for a Gemma
    /// vocabulary, else ChatML) as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128, allow_negative_numbers = true)]
    pub tokens: usize,
    /// Context size in tokens (prompt + generated) [default: the model's, at most 4096].
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Top-k filter (0 disables it).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (nucleus) filter in (0, 1].
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the token ids after the text (for scripts and tests).
    #[arg(long)]
    pub print_ids: bool,
}

/// A prompt made ready to run: token ids, context, sampling and the end-of-generation tokens.
pub struct PreparedPrompt {
    pub ids: Vec<u32>,
    pub context: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<u32>,
}

impl PromptArgs {
    /// Tokenizes (with the chat template for --chat) and checks every parameter against the model.
    pub fn prepare(&self, tok: &Tokenizer, cfg: &crate::model::ModelConfig) -> anyhow::Result<PreparedPrompt> {
        let ids = if self.chat {
            let mut msgs = Vec::new();
            if let Some(s) = &self.system {
                msgs.push(ChatMessage::new("system", s.clone()));
            }
            msgs.push(ChatMessage::new("user", self.prompt.clone()));
            tok.encode_with_special(&tok.chat_prompt(&msgs))?
        } else {
            tok.encode(&self.prompt)?
        };
        let context = self.ctx.unwrap_or(cfg.context.min(4096));
        if context == 0 || context > cfg.context {
            anyhow::bail!("--ctx must be between 1 and the model's context length {}", cfg.context);
        }
        let sampling =
            SamplingParams { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed };
        sampling.validate().map_err(|e| anyhow::anyhow!(e))?;
        let stop: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&t| tok.is_eog(t)).collect();
        Ok(PreparedPrompt { ids, context, sampling, stop })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Compute backend (auto: wgpu on a real GPU, else the native CPU kernels).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Threads of the CPU backend [default: the physical cores this process may use].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run the model as an in-process pipeline cut before these layers, e.g. `10,20` (for testing shards).
    #[arg(long, value_delimiter = ',')]
    pub split: Vec<u32>,
}

/// `edge-node generate`: streams text to stdout, timings to stderr.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let m = args.model.open()?;
    let tok = Tokenizer::from_gguf(&m.gguf)?;
    let PreparedPrompt { ids: prompt, context, sampling, stop } = args.prompt.prepare(&tok, &m.config)?;
    if let Some(n) = args.threads {
        crate::cpu::pool::set_threads(n);
    }
    let mut chain = m.shards(args.backend, &args.split, &GpuOptions::default())?;
    eprintln!(
        "model {} ({} layers, {}), {} shard(s) on {}, prompt {} tokens",
        m.config.arch,
        m.config.n_layers,
        human_bytes(m.gguf.bytes().len() as u64),
        chain.len(),
        chain[0].backend_name(),
        prompt.len()
    );
    let req = GenerateRequest { prompt, max_tokens: args.prompt.tokens, context, sampling, stop };
    let mut stream = TextStream::new(&tok);
    let mut stdout = std::io::stdout().lock();
    if !args.prompt.chat {
        write!(stdout, "{}", args.prompt.prompt)?;
    }
    let (ids, stats) = run_generation(&mut chain, &req, |t| {
        let text = stream.push(t);
        write!(stdout, "{text}").and_then(|_| stdout.flush()).is_ok()
    })?;
    writeln!(stdout, "{}", stream.finish())?;
    if args.prompt.print_ids {
        writeln!(stdout, "ids: {ids:?}")?;
    }
    eprintln!(
        "prefill: {} tokens at {:.1} tok/s | decode: {} tokens at {:.1} tok/s{}",
        stats.prompt_tokens,
        stats.prefill_tps(),
        stats.generated,
        stats.decode_tps(),
        if stats.stopped { " | stopped at end of generation" } else { "" }
    );
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `edge-node info`: what a model file holds.
pub fn info(args: &InfoArgs) -> anyhow::Result<()> {
    let m = args.model.open()?;
    let mut out = std::io::stdout().lock();
    let c = &m.config;
    writeln!(out, "architecture   {}", c.arch)?;
    writeln!(out, "layers         {}", c.n_layers)?;
    writeln!(out, "dim / ffn      {} / {}", c.dim, c.ffn_dim)?;
    writeln!(out, "heads / kv     {} / {} (head dim {})", c.n_heads, c.n_kv_heads, c.head_dim)?;
    writeln!(out, "vocab          {}", c.vocab)?;
    writeln!(out, "context        {}", c.context)?;
    writeln!(out, "rope           {:?}, theta {}", c.rope, c.rope_theta)?;
    writeln!(out, "tied head      {}", c.tied_embeddings)?;
    let mut types = std::collections::BTreeMap::<String, (usize, u64)>::new();
    for t in &m.gguf.tensors {
        let e = types.entry(format!("{:?}", t.ty)).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    for (ty, (n, bytes)) in types {
        writeln!(out, "tensors {ty:<6} {n:>4} tensors, {}", human_bytes(bytes))?;
    }
    Ok(())
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings only); colored only on a terminal (and never with
/// `NO_COLOR`). Both binaries call it first.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .init();
}

/// The process exit status for a command's result; a failure prints its whole cause chain. Output cut short by
/// its reader (`edge-node info | head`: a broken pipe) is a normal end, not an error.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    let broken_pipe = |e: &anyhow::Error| {
        e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
