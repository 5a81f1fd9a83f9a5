//! `edge-node bench`: prefill and decode speed of the CPU backend next to llama.cpp's on the same file, token ids
//! and threads (alternating rounds, medians), the bandwidth of each op against the machine's memory read
//! bandwidth, and optionally the wgpu backend (kernels against a copy kernel, dispatches, submits) and the f32
//! reference — every ratio measured in the same run.

use std::path::Path;
use std::process::Command;

use edge_protocol::ShardSpec;

use crate::backend::Backend;
use crate::commands::human_bytes;
use crate::generate::{generate, GenerateRequest};
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
    /// Tokens to decode.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Rounds of the CPU backend and llama.cpp, alternating (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Threads of the CPU backend and of llama.cpp [default: the physical cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also measure the wgpu backend (kernels and end to end).
    #[arg(long)]
    pub wgpu: bool,
    /// Also measure the f32 reference (slow by design; 16 tokens).
    #[arg(long)]
    pub reference: bool,
    /// Skip llama.cpp even when its Python binding is installed.
    #[arg(long)]
    pub no_llama_cpp: bool,
}

const TEXT: &str = "The history of computing is a story of people who wanted to calculate faster. \
Early machines used gears and levers; later ones used relays, vacuum tubes and finally transistors. \
Each step made computers smaller, cheaper and more reliable, until they fit in a pocket. ";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        crate::cpu::pool::set_threads(n);
    }
    let threads = crate::cpu::pool::global().threads();
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
        "model: {} ({}), prompt {} tokens, decode {} tokens, {threads} threads",
        model_path.display(),
        human_bytes(m.gguf.bytes().len() as u64),
        prompt.len(),
        args.tokens
    );

    // The CPU backend and llama.cpp, alternating, same prompt ids and threads.
    let mut chain = m.shards(Backend::Cpu, &[], &GpuOptions::default())?;
    println!("cpu backend: {}", chain[0].backend_name());
    generate(&mut chain, &request(4), |_| true)?; // page the weights in
    let (mut cpu, mut llama, mut llama_err) = (Vec::new(), Vec::new(), None);
    for _ in 0..args.rounds.max(1) {
        let (_, s) = generate(&mut chain, &request(args.tokens), |_| true)?;
        cpu.push((s.prefill_tps(), s.decode_tps()));
        if !args.no_llama_cpp && llama_err.is_none() {
            match llama_cpp(model_path, &prompt, args.tokens, threads) {
                Ok(r) => llama.push(r),
                Err(e) => llama_err = Some(e),
            }
        }
    }
    drop(chain);
    let cpu = (median(cpu.iter().map(|r| r.0).collect()), median(cpu.iter().map(|r| r.1).collect()));
    let llama = (!llama.is_empty())
        .then(|| (median(llama.iter().map(|r| r.0).collect()), median(llama.iter().map(|r| r.1).collect())));

    profile_cpu(&m, &prompt, args.tokens)?;
    let peer = (!args.no_llama_cpp && llama.is_some()).then_some((model_path.as_path(), threads));
    batched_decode(&m, &prompt, args.tokens.min(32), args.rounds, peer)?;

    let gpu = if args.wgpu { Some(wgpu_section(&m, &request(args.tokens), args.tokens)?) } else { None };
    let reference = if args.reference {
        let mut chain = m.shards(Backend::Reference, &[], &GpuOptions::default())?;
        let (_, s) = generate(&mut chain, &request(16), |_| true)?;
        Some((s.prefill_tps(), s.decode_tps()))
    } else {
        None
    };

    println!("\nend to end (greedy; medians of {} alternating rounds):", args.rounds.max(1));
    println!("  {:<28} {:>14} {:>14}", "backend", "prefill tok/s", "decode tok/s");
    let row = |name: &str, (p, d): (f64, f64)| println!("  {name:<28} {p:>14.1} {d:>14.1}");
    row("cpu (native kernels)", cpu);
    if let Some(l) = llama {
        row(&format!("llama.cpp, {threads} threads"), l);
    }
    if let Some(g) = gpu {
        row("wgpu (WGSL kernels)", g);
    }
    if let Some(r) = reference {
        row("reference (f32)", r);
    }
    match (llama, llama_err) {
        (Some((p, d)), _) => println!(
            "\nratio cpu / llama.cpp: prefill {:.2}x, decode {:.2}x (targets: prefill >= 1.0x, decode >= 1.2x on \
             SmolLM2, >= 1.0x on Qwen2.5-0.5B)",
            cpu.0 / p,
            cpu.1 / d
        ),
        (None, Some(e)) => println!("  llama.cpp: not measured ({e})"),
        (None, None) => println!("  llama.cpp: skipped"),
    }
    Ok(())
}

/// Memory read bandwidth with the pool's threads: each sums its share of a 256 MiB buffer (a STREAM-like read).
pub fn read_bandwidth() -> f64 {
    let pool = crate::cpu::pool::global();
    let words = (256usize << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let parts = pool.threads();
    let read = || {
        let sum = std::sync::atomic::AtomicU64::new(0);
        pool.tasks(
            parts,
            || (),
            |_, i| {
                let part = &buf[i * words / parts..(i + 1) * words / parts];
                let s = part.iter().fold(0u64, |a, &x| a.wrapping_add(x));
                sum.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
            },
        );
        std::hint::black_box(sum.into_inner());
    };
    read();
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        read();
    }
    5.0 * (words * 8) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

/// Prefill and decode on the CPU backend with every op timed: weight bytes, time and bandwidth per kind of op next
/// to the machine's read bandwidth with the same threads.
fn profile_cpu(m: &crate::backend::LoadedModel, prompt: &[u32], tokens: usize) -> anyhow::Result<()> {
    use crate::shard::{HeadOutput, ShardInput, ShardOutput};
    let mut shard = crate::cpu::CpuShard::load(&m.gguf, &m.config, ShardSpec::whole(m.config.n_layers as u32))?;
    // A first sequence warms the pages and the pool; the second's prefill is timed.
    for seq in [1, 2] {
        shard.open_sequence(seq, prompt.len() + tokens + 1)?;
    }
    shard.forward(1, ShardInput::Tokens(prompt), HeadOutput::ArgmaxLast)?;
    shard.set_profiling(true);
    let t0 = std::time::Instant::now();
    let first = shard.forward(2, ShardInput::Tokens(prompt), HeadOutput::ArgmaxLast)?;
    let total = t0.elapsed().as_secs_f64();
    let read = read_bandwidth();
    println!("\ncpu prefill by op ({} tokens, one step), memory read {read:.1} GB/s:", prompt.len());
    print_ops(&shard.profile(), 1, total, read, "ms/prompt");
    let mut next = match first {
        ShardOutput::Tokens(t) => t[0],
        _ => 0,
    };
    shard.set_profiling(true);
    let t0 = std::time::Instant::now();
    for _ in 0..tokens {
        if let ShardOutput::Tokens(t) = shard.forward(2, ShardInput::Tokens(&[next]), HeadOutput::ArgmaxLast)? {
            next = t[0];
        }
    }
    let total = t0.elapsed().as_secs_f64();
    println!("\ncpu decode by op (per token, KV at {} positions), memory read {read:.1} GB/s:", prompt.len());
    print_ops(&shard.profile(), tokens, total, read, "us/token");
    Ok(())
}

/// Batch sizes of the batched-decode table.
const BATCHES: [u64; 5] = [1, 2, 4, 8, 16];

/// Decode throughput of one CPU shard with B sequences batched into every step (continuous batching: one read
/// of the weights serves every sequence), against one sequence; with `peer` (the model file and threads),
/// llama.cpp's own batched decode on the same prompt, rounds alternating, medians.
fn batched_decode(
    m: &crate::backend::LoadedModel,
    prompt: &[u32],
    steps: usize,
    rounds: usize,
    peer: Option<(&Path, usize)>,
) -> anyhow::Result<()> {
    let mut shard = crate::cpu::CpuShard::load(&m.gguf, &m.config, ShardSpec::whole(m.config.n_layers as u32))?;
    let (mut ours, mut theirs, mut peer_err) = (Vec::new(), Vec::new(), None);
    for round in 0..rounds.max(1) {
        ours.push(cpu_batched(&mut shard, prompt, steps, round == 0 && std::env::var("EDGE_BENCH_BATCH_OPS").is_ok())?);
        if let (Some((path, threads)), None) = (peer, &peer_err) {
            match llama_cpp_batched(path, prompt, steps, threads) {
                Ok(t) => theirs.push(t),
                Err(e) => peer_err = Some(e),
            }
        }
    }
    let med = |runs: &[Vec<f64>], i: usize| median(runs.iter().map(|r| r[i]).collect());
    println!(
        "
cpu decode with B sequences batched in every step ({steps} steps, KV at {} positions; medians of {} \
         rounds):",
        prompt.len(),
        ours.len()
    );
    print!("  {:>3} {:>10} {:>12} {:>8}", "B", "ms/step", "tok/s (sum)", "vs B=1");
    if !theirs.is_empty() {
        print!(" {:>16} {:>8} {:>14}", "llama.cpp tok/s", "vs B=1", "cpu/llama.cpp");
    }
    println!();
    for (i, b) in BATCHES.iter().enumerate() {
        let tps = med(&ours, i);
        print!("  {b:>3} {:>10.2} {tps:>12.1} {:>7.2}x", 1e3 * *b as f64 / tps, tps / med(&ours, 0));
        if !theirs.is_empty() {
            let peer = med(&theirs, i);
            print!(" {peer:>16.1} {:>7.2}x {:>13.2}x", peer / med(&theirs, 0), tps / peer);
        }
        println!();
    }
    if let Some(e) = peer_err {
        println!("  llama.cpp batched decode: not measured ({e})");
    }
    Ok(())
}

/// One round of [`batched_decode`] on our side: aggregate tok/s per entry of [`BATCHES`]; with `ops`, each batch
/// size's op table.
fn cpu_batched(shard: &mut crate::cpu::CpuShard, prompt: &[u32], steps: usize, ops: bool) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for b in BATCHES {
        let secs = batched_secs(shard, prompt, steps, b, |s| s.set_profiling(ops))?;
        out.push((b as usize * steps) as f64 / secs);
        if ops {
            println!(
                "
cpu decode, B = {b}, {:.2} ms/step:",
                1e3 * secs / steps as f64
            );
            print_ops(&shard.profile(), steps, secs, 0.0, "us/step");
            shard.set_profiling(false);
        }
    }
    Ok(out)
}

/// Seconds of `steps` batched decode steps of `b` sequences, each after `prompt` (prefilled one by one, then
/// `before_decode`), greedy: the sequences are closed again.
fn batched_secs<S: Shard>(
    shard: &mut S,
    prompt: &[u32],
    steps: usize,
    b: u64,
    before_decode: impl FnOnce(&mut S),
) -> anyhow::Result<f64> {
    use crate::shard::{HeadOutput, NoReduce, ShardInput, ShardOutput, Step};
    let mut next = vec![0u32; b as usize];
    for seq in 0..b {
        shard.open_sequence(seq, prompt.len() + steps + 1)?;
        let out = shard.forward(seq, ShardInput::Tokens(prompt), HeadOutput::ArgmaxLast)?;
        if let ShardOutput::Tokens(t) = out {
            next[seq as usize] = t[0];
        }
    }
    before_decode(shard);
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        let ids: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let batch: Vec<Step> = (0..b)
            .map(|seq| Step { seq, input: ShardInput::Tokens(&ids[seq as usize]), want: HeadOutput::ArgmaxLast })
            .collect();
        for (n, out) in next.iter_mut().zip(shard.forward_batch(&batch, &mut NoReduce)?) {
            if let ShardOutput::Tokens(t) = out {
                *n = t[0];
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for seq in 0..b {
        shard.close_sequence(seq);
    }
    Ok(secs)
}

/// One table row per kind of op: weight bytes, time and read bandwidth per `steps` (a prompt: ms; a token: us;
/// a prompt's matmuls are compute-bound, so no bandwidth), then the ops' share of `total` seconds.
fn print_ops(ops: &[crate::cpu::shard::OpStat], steps: usize, total: f64, read: f64, unit: &str) {
    let per_unit = if steps == 1 { 1e6 } else { 1e3 }; // ns per printed unit
    println!("  {:<22} {:>12} {:>10} {:>9} {:>8}", "op", "weights", unit, "GB/s", "vs read");
    let mut sum = 0.0;
    for op in ops {
        let t = op.nanos as f64 / per_unit / steps as f64;
        sum += op.nanos as f64 / 1e9;
        let bytes = op.weight_bytes / steps as u64;
        let (gbps, ratio) = if bytes > 0 && steps > 1 {
            let g = bytes as f64 / (op.nanos as f64 / steps as f64);
            let ratio = if read > 0.0 { format!("{:.0}%", 100.0 * g / read) } else { "-".into() };
            (format!("{g:.1}"), ratio)
        } else {
            ("-".into(), "-".into())
        };
        println!("  {:<22} {:>12} {:>10.1} {:>9} {:>8}", op.op, human_bytes(bytes), t, gbps, ratio);
    }
    println!(
        "  ops {:.2} ms of {:.2} ms per step (the rest: embedding, the head's norm, sampling, bookkeeping)",
        sum * 1e3 / steps as f64,
        total * 1e3 / steps as f64
    );
}

/// The wgpu backend's kernels (decode shape) against a copy kernel, and its end-to-end speed.
fn wgpu_section(m: &crate::backend::LoadedModel, req: &GenerateRequest, tokens: usize) -> anyhow::Result<(f64, f64)> {
    let ctx = GpuContext::new()?;
    let mut shard = GpuShard::load(
        ctx.clone(),
        &m.gguf,
        &m.config,
        ShardSpec::whole(m.config.n_layers as u32),
        GpuOptions::default(),
    )?;
    println!("\nwgpu adapter: {}", ctx.describe());
    let (per_layer, outside) = shard.dispatch_counts();
    let copy = copy_bandwidth(&ctx, 64 << 20, 20)?;
    let kernels = shard.profile(64, 20)?;
    let prompt = &req.prompt[..req.prompt.len().min(32)];
    batched_secs(&mut shard, prompt, 2, 1, |_| {})?; // JIT-compile first
    let steps = 8;
    println!("wgpu decode with B sequences batched in every step ({steps} steps, KV at {} positions):", prompt.len());
    println!("  {:>3} {:>10} {:>12} {:>8}", "B", "ms/step", "tok/s (sum)", "vs B=1");
    let mut one = 0.0;
    for b in BATCHES {
        let tps = (b as usize * steps) as f64 / batched_secs(&mut shard, prompt, steps, b, |_| {})?;
        one = if b == 1 { tps } else { one };
        println!("  {b:>3} {:>10.2} {tps:>12.1} {:>7.2}x", 1e3 * b as f64 / tps, tps / one);
    }
    let mut chain: Vec<Box<dyn Shard>> = vec![Box::new(shard)];
    generate(&mut chain, &GenerateRequest { max_tokens: 4, ..req.clone() }, |_| true)?; // JIT-compile first
    let submits_before = ctx.submits();
    let (_, gpu) = generate(&mut chain, req, |_| true)?;
    let submits = ctx.submits() - submits_before;
    println!("wgpu kernels (decode shape, one token, KV at 64 positions), copy kernel reads {copy:.2} GB/s:");
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
    println!("  submits per decoded token: {:.2}", submits as f64 / (tokens as f64));
    Ok((gpu.prefill_tps(), gpu.decode_tps()))
}

/// llama.cpp's (prefill, decode) tok/s on the same file, prompt and threads, through scripts/llama_cpp_bench.py.
fn llama_cpp(model: &Path, prompt: &[u32], tokens: usize, threads: usize) -> anyhow::Result<(f64, f64)> {
    let v = peer_script(model, prompt, tokens, threads, &[])?;
    let get = |k: &str| v[k].as_f64().ok_or_else(|| anyhow::anyhow!("no {k} in {v}"));
    Ok((get("prefill_tps")?, get("decode_tps")?))
}

/// llama.cpp's batched decode (aggregate tok/s per entry of [`BATCHES`]) on the same file, prompt and threads,
/// through `scripts/llama_cpp_bench.py --batch`.
fn llama_cpp_batched(model: &Path, prompt: &[u32], steps: usize, threads: usize) -> anyhow::Result<Vec<f64>> {
    let sizes: Vec<String> = BATCHES.iter().map(u64::to_string).collect();
    let v = peer_script(model, prompt, steps, threads, &["--batch", &sizes.join(",")])?;
    sizes.iter().map(|b| v["batched_tps"][b].as_f64().ok_or_else(|| anyhow::anyhow!("no batch {b} in {v}"))).collect()
}

/// Runs scripts/llama_cpp_bench.py on the file, prompt ids, tokens and threads (plus `extra` arguments) and
/// returns the JSON line it prints.
fn peer_script(
    model: &Path,
    prompt: &[u32],
    tokens: usize,
    threads: usize,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let installed = Command::new("python3").args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        anyhow::bail!("llama-cpp-python is not installed; `bash scripts/setup.sh --with-llama-cpp`");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama_cpp_bench.py");
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let out = Command::new("python3")
        .arg(&script)
        .args(["--model", &model.display().to_string(), "--ids", &ids.join(","), "--tokens", &tokens.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(extra)
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(out.stdout.trim_ascii())?)
}
