//! `edge-node perplexity FILE`: a model's perplexity on a text, computed as llama.cpp's `llama-perplexity` does:
//! the text's tokens are cut into chunks of `--ctx` tokens, each chunk runs from an empty context (its first token
//! replaced by BOS when the model adds one), and the negative log-likelihood of every token in the second half of
//! a chunk, given the tokens before it, is averaged over all chunks: PPL = exp(mean NLL).
//!
//! Only the chunk's first half runs as one prompt; the second half goes one token at a time with the last
//! position's logits, so every backend (and a pipeline of shards) can compute it.

use std::path::PathBuf;

use crate::backend::Backend;
use crate::commands::ModelArgs;
use crate::generate::run_chain;
use crate::gpu::GpuOptions;
use crate::shard::{HeadOutput, ShardOutput};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text (UTF-8).
    pub file: PathBuf,
    /// Tokens per chunk (llama.cpp's `-c`).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Compute backend (auto: wgpu on a real GPU, else the native CPU kernels).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Threads of the CPU backend [default: the physical cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Mean negative log-likelihood and the number of tokens scored, over chunks of `ctx` tokens of `tokens`.
pub fn perplexity(
    chain: &mut [Box<dyn crate::shard::Shard>],
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    mut progress: impl FnMut(usize, usize, f64),
) -> anyhow::Result<(f64, usize)> {
    anyhow::ensure!(ctx >= 4, "--ctx must be at least 4");
    let chunks = tokens.len() / ctx;
    anyhow::ensure!(chunks >= 1, "the text is {} tokens, fewer than one chunk of {ctx}", tokens.len());
    let first = ctx / 2;
    let (mut nll, mut count) = (0f64, 0usize);
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let seq = c as u64 + 1;
        for s in chain.iter_mut() {
            s.open_sequence(seq, ctx)?;
        }
        let mut step = |input: &[u32]| -> anyhow::Result<Vec<f32>> {
            match run_chain(chain, seq, input, HeadOutput::LogitsLast)? {
                ShardOutput::Logits(l) => Ok(l),
                other => anyhow::bail!("the last shard returned {other:?} instead of logits"),
            }
        };
        // Logits at position j predict token j + 1; scored for j in first..ctx - 1.
        let mut logits = step(&chunk[..=first])?;
        for j in first..ctx - 1 {
            nll += nll_of(&logits, chunk[j + 1]);
            count += 1;
            if j + 1 < ctx - 1 {
                logits = step(&chunk[j + 1..j + 2])?;
            }
        }
        for s in chain.iter_mut() {
            s.close_sequence(seq);
        }
        progress(c + 1, chunks, (nll / count as f64).exp());
    }
    Ok((nll / count as f64, count))
}

/// -log softmax(logits)[target], in f64.
fn nll_of(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    sum.ln() + max - logits[target as usize] as f64
}

pub fn run(args: &PerplexityArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        crate::cpu::pool::set_threads(n);
    }
    let m = args.model.open()?;
    let tok = Tokenizer::from_gguf(&m.gguf)?;
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| anyhow::anyhow!("reading {}: {e}", args.file.display()))?;
    let tokens = tok.encode(&text)?;
    let bos = tokens.first().copied().filter(|&t| Some(t) == tok.bos());
    let mut chain = m.shards(args.backend, &[], &GpuOptions::default())?;
    eprintln!(
        "{} tokens, {} chunks of {}, on {}",
        tokens.len(),
        tokens.len() / args.ctx.max(1),
        args.ctx,
        chain[0].backend_name()
    );
    let t0 = std::time::Instant::now();
    let (nll, count) = perplexity(&mut chain, &tokens, args.ctx, bos, |c, n, ppl| {
        eprintln!("[{c}/{n}] {ppl:.4}");
    })?;
    eprintln!("{count} tokens scored in {:.1} s", t0.elapsed().as_secs_f64());
    println!("Final estimate: PPL = {:.4}", nll.exp());
    Ok(())
}
