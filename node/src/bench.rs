//! `edge-node bench`: prefill and decode speed of both backends on a real model, per-kernel bandwidth against a
//! copy kernel on the same adapter, dispatches per layer and submits per token, and llama.cpp's speed on the
//! same file and token ids when its Python binding is installed — every ratio measured in the same run.

use std::path::Path;
use std::process::Command;

use edge_protocol::ShardSpec;

use crate::backend::Backend;
use crate::commands::human_bytes;
use crate::generate::{generate, GenerateRequest, GenerateStats};
use crate::gpu::profile::copy_bandwidth;
use crate::gpu::{GpuContext, GpuOptions, GpuShard};
use crate::sampler::SamplingParams;
use crate::shard::Shard;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: crate::commands::ModelArgs,
    /// Prompt length in tokens (prefill).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode on the wgpu backend and llama.cpp.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Tokens to decode on the CPU reference (it is slow by design).
    #[arg(long, default_value_t = 16)]
    pub cpu_tokens: usize,
    /// Skip the CPU reference.
    #[arg(long)]
    pub no_cpu: bool,
    /// Skip llama.cpp even when its Python binding is installed.
    #[arg(long)]
    pub no_llama_cpp: bool,
}

const TEXT: &str = "The history of computing is a story of people who wanted to calculate faster. \
Early machines used gears and levers; later ones used relays, vacuum tubes and finally transistors. \
Each step made computers smaller, cheaper and more reliable, until they fit in a pocket. ";

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let m = args.model.open()?;
    let model_path = &m.path;
    let tok = Tokenizer::from_gguf(&m.gguf)?;
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(tok.encode(TEXT)?);
    }
    prompt.truncate(args.prompt_tokens);
    anyhow::ensure!(!prompt.is_empty() && args.tokens >= 2, "need a prompt and at least 2 tokens to decode");
    let request = |n: usize| GenerateRequest {
        prompt: prompt.clone(),
        max_tokens: n,
        context: prompt.len() + n + 1,
        sampling: SamplingParams::default(),
        stop: vec![],
    };

    println!(
        "model: {} ({}), prompt {} tokens, decode {} tokens",
        model_path.display(),
        human_bytes(m.gguf.bytes().len() as u64),
        prompt.len(),
        args.tokens
    );

    // wgpu: kernels first (the shard is needed concretely), then end-to-end speed.
    let ctx = GpuContext::new()?;
    let mut shard = GpuShard::load(
        ctx.clone(),
        &m.gguf,
        &m.config,
        ShardSpec::whole(m.config.n_layers as u32),
        GpuOptions::default(),
    )?;
    println!("adapter: {}", ctx.describe());
    let (per_layer, outside) = shard.dispatch_counts();
    let copy = copy_bandwidth(&ctx, 64 << 20, 20)?;
    let kernels = shard.profile(64, 20)?;
    let mut chain: Vec<Box<dyn Shard>> = vec![Box::new(shard)];
    generate(&mut chain, &request(4), |_| true)?; // JIT-compile every pipeline before timing
    let submits_before = ctx.submits();
    let (_, gpu) = generate(&mut chain, &request(args.tokens), |_| true)?;
    let submits = ctx.submits() - submits_before;
    drop(chain);

    println!("\nkernels (decode shape, one token, KV at 64 positions), copy kernel reads {copy:.2} GB/s:");
    println!(
        "  {:<22} {:>10} {:>12} {:>10} {:>9} {:>8}",
        "kernel", "dispatches", "weights", "us/token", "GB/s", "vs copy"
    );
    for k in &kernels {
        let (gbps, ratio) = if k.weight_bytes > 0 {
            (format!("{:.2}", k.gbps()), format!("{:.0}%", 100.0 * k.gbps() / copy))
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "  {:<22} {:>10} {:>12} {:>10.0} {:>9} {:>8}",
            k.kernel,
            k.dispatches,
            human_bytes(k.weight_bytes),
            k.micros,
            gbps,
            ratio
        );
    }
    let total_us: f64 = kernels.iter().map(|k| k.micros).sum();
    println!(
        "  sum of kernels {:.1} ms/token; dispatches: {per_layer} per layer + {outside} outside the layers",
        total_us / 1e3
    );
    println!("  submits per decoded token: {:.2}", submits as f64 / (args.tokens as f64));

    let cpu = if args.no_cpu {
        None
    } else {
        let mut chain = m.shards(Backend::Reference, &[], &GpuOptions::default())?;
        Some(generate(&mut chain, &request(args.cpu_tokens.max(2)), |_| true)?.1)
    };
    let llama = if args.no_llama_cpp { None } else { llama_cpp(model_path, &prompt, args.tokens) };

    println!("\nend to end (greedy):");
    println!("  {:<28} {:>14} {:>14}", "backend", "prefill tok/s", "decode tok/s");
    let row =
        |name: &str, s: &GenerateStats| println!("  {:<28} {:>14.1} {:>14.1}", name, s.prefill_tps(), s.decode_tps());
    row("wgpu (WGSL kernels)", &gpu);
    if let Some(c) = &cpu {
        row("cpu reference", c);
    }
    match &llama {
        Some(Ok((p, d))) => {
            println!("  {:<28} {:>14.1} {:>14.1}", "llama.cpp, 2 threads", p, d);
            println!(
                "\nratio wgpu / llama.cpp: prefill {:.2}x, decode {:.2}x (target: decode >= 0.5x)",
                gpu.prefill_tps() / p,
                gpu.decode_tps() / d
            );
        }
        Some(Err(e)) => println!("  llama.cpp: not measured ({e})"),
        None => println!("  llama.cpp: skipped"),
    }
    if let Some(c) = &cpu {
        println!(
            "ratio wgpu / cpu reference: prefill {:.2}x, decode {:.2}x",
            gpu.prefill_tps() / c.prefill_tps(),
            gpu.decode_tps() / c.decode_tps()
        );
    }
    Ok(())
}

/// llama.cpp's (prefill, decode) tok/s on the same file and prompt, through scripts/llama_cpp_bench.py;
/// `None` when the binding is not installed.
fn llama_cpp(model: &Path, prompt: &[u32], tokens: usize) -> Option<anyhow::Result<(f64, f64)>> {
    let installed = Command::new("python3").args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        return Some(Err(anyhow::anyhow!(
            "llama-cpp-python is not installed; `bash scripts/setup.sh --with-llama-cpp`"
        )));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama_cpp_bench.py");
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let run = || -> anyhow::Result<(f64, f64)> {
        let out = Command::new("python3")
            .arg(&script)
            .args(["--model", &model.display().to_string(), "--ids", &ids.join(","), "--tokens", &tokens.to_string()])
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())?;
        let get = |k: &str| v[k].as_f64().ok_or_else(|| anyhow::anyhow!("no {k} in {v}"));
        Ok((get("prefill_tps")?, get("decode_tps")?))
    };
    Some(run())
}
