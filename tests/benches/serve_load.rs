//! Load generator through `edge-coord serve` (a benchmark, not a test): one `edge-node serve` member on the CPU
//! backend and the server on 127.0.0.1, driven over HTTP by concurrent streaming clients as a real deployment is.
//!
//! - For 1, 4 and 16 concurrent clients (each sends `EDGE_LOAD_REQUESTS` greedy completions of
//!   `EDGE_LOAD_TOKENS` tokens one after another, streamed): aggregate tok/s (and its ratio to one client),
//!   p50/p95 time to first token and p50/p95 inter-token latency (the gaps between streamed chunks).
//! - Time to first token of a short request sent while a ~2,000-token prompt prefills, against the time of one
//!   prefill chunk (that prompt's prefill time alone / its chunk count), with chunked prefill (`--prefill-chunk
//!   256`) and without (`--prefill-chunk 0`, the whole prompt in one step). Three alternating rounds, medians.
//!
//! `cargo bench -p edge-tests --bench serve_load` (after a workspace build: it runs the built binaries).
//! `EDGE_MODEL` picks the model (default SmolLM2); `EDGE_LOAD_CLIENTS=1,4,16` the client counts.
//! Targets (issue #14): the short request's first token within 2 chunk times of a long prefill.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use edge_tests::{new_key, Node, NodeSpec, Server};
use serde_json::{json, Value};

const CHUNK: usize = 256;
/// Story openings the clients cycle through (different prompts, the same length class).
const PROMPTS: [&str; 4] = [
    "Once upon a time, there was a little robot named",
    "The old lighthouse keeper looked out at the sea and",
    "In a small village at the edge of the forest, a girl",
    "Every morning the baker opened his shop before sunrise and",
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// One streamed completion as the client saw it.
struct Timing {
    /// Request sent to first text chunk.
    ttft: Duration,
    /// Gaps between consecutive text chunks.
    gaps: Vec<Duration>,
    /// Completion tokens (the usage the server reports).
    tokens: usize,
    prompt_tokens: usize,
}

/// The server: its URL and the model's id.
#[derive(Clone, Copy)]
struct Api<'a> {
    url: &'a str,
    model: &'a str,
}

/// The id `/v1/models` lists.
fn model_id(url: &str) -> String {
    let mut resp = agent().get(format!("{url}/v1/models")).call().expect("the server answers");
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    v["data"][0]["id"].as_str().expect("a model").to_string()
}

/// Sends a streaming greedy completion and times its chunks.
fn stream(agent: &ureq::Agent, api: Api, prompt: &str, max_tokens: usize) -> Timing {
    let url = api.url;
    let body = json!({
        "model": api.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let mut resp = agent
        .post(format!("{url}/v1/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("the server answers");
    let status = resp.status().as_u16();
    assert_eq!(status, 200, "{}", resp.body_mut().read_to_string().unwrap_or_default());
    let (mut first, mut last, mut gaps) = (None, None::<Instant>, Vec::new());
    let (mut tokens, mut prompt_tokens) = (0, 0);
    for line in BufReader::new(resp.body_mut().as_reader()).lines().map_while(Result::ok) {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let e: Value = serde_json::from_str(data).expect("a JSON event");
        let now = Instant::now();
        if e["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
            first.get_or_insert(now);
            if let Some(prev) = last {
                gaps.push(now - prev);
            }
            last = Some(now);
        }
        if let Some(u) = e.get("usage").filter(|u| u.is_object()) {
            tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        }
    }
    Timing { ttft: first.unwrap_or_else(Instant::now) - start, gaps, tokens, prompt_tokens }
}

/// The `q`-quantile (0..1) of `v`, in milliseconds.
fn quantile_ms(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Level {
    clients: usize,
    tps: f64,
    ttft: (f64, f64),
    itl: (f64, f64),
}

/// `clients` concurrent clients, each sending `requests` streamed completions in turn.
fn level(api: Api, clients: usize, requests: usize, tokens: usize) -> Level {
    let start = Instant::now();
    let timings: Vec<Timing> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent = agent();
                    (0..requests)
                        .map(|r| stream(&agent, api, PROMPTS[(c + r) % PROMPTS.len()], tokens))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let generated: usize = timings.iter().map(|t| t.tokens).sum();
    let mut ttfts: Vec<Duration> = timings.iter().map(|t| t.ttft).collect();
    let mut gaps: Vec<Duration> = timings.iter().flat_map(|t| t.gaps.iter().copied()).collect();
    Level {
        clients,
        tps: generated as f64 / wall,
        ttft: (quantile_ms(&mut ttfts, 0.5), quantile_ms(&mut ttfts, 0.95)),
        itl: (quantile_ms(&mut gaps, 0.5), quantile_ms(&mut gaps, 0.95)),
    }
}

/// A prompt of about `n` tokens (a paragraph repeated).
fn long_prompt(n: usize) -> String {
    let para = "The river ran through the valley for many miles, past farms and mills and the old stone bridge \
                where the children of the town would gather in summer to fish and to tell each other stories. ";
    // About 36 tokens per repetition with SmolLM2's and Qwen2.5's vocabularies.
    para.repeat(n / 36 + 1)
}

/// One round of the long-prompt case: (chunk time, TTFT of a short request alone, TTFT of the same request sent
/// while the long prompt prefills), in ms, and the long prompt's tokens.
fn interference(api: Api, long: &str) -> ((f64, f64, f64), usize) {
    let client = agent();
    let alone = stream(&client, api, long, 1);
    let chunks = alone.prompt_tokens.div_ceil(CHUNK).max(1);
    let chunk_ms = alone.ttft.as_secs_f64() * 1e3 / chunks as f64;
    let short_alone = stream(&client, api, PROMPTS[0], 4).ttft.as_secs_f64() * 1e3;
    let during = std::thread::scope(|s| {
        let bg = s.spawn(|| stream(&agent(), api, long, 1));
        // Into the long prefill: past its first chunk, well before its end.
        std::thread::sleep(Duration::from_secs_f64(chunk_ms * 1.5 / 1e3));
        let t = stream(&client, api, PROMPTS[0], 4).ttft.as_secs_f64() * 1e3;
        bg.join().unwrap();
        t
    });
    ((chunk_ms, short_alone, during), alone.prompt_tokens)
}

fn main() {
    let clients: Vec<usize> = std::env::var("EDGE_LOAD_CLIENTS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let requests = env_or("EDGE_LOAD_REQUESTS", 4);
    let tokens = env_or("EDGE_LOAD_TOKENS", 64);
    let most = clients.iter().copied().max().unwrap_or(1).max(1);
    let key = new_key();
    // Room for every sequence's KV cache at a 2,560-token context.
    let node = Node::start(&key, NodeSpec { memory: Some(16_000_000_000), ..Default::default() });
    let long = long_prompt(2000);
    let ctx = "2560";
    let sequences = most.to_string();

    println!("edge-coord serve, one CPU member, {requests} requests x {tokens} tokens per client (streamed, greedy)");
    println!(
        "{:>8} {:>10} {:>9} {:>11} {:>11} {:>10} {:>10}",
        "clients", "tok/s", "vs 1", "TTFT p50", "TTFT p95", "ITL p50", "ITL p95"
    );
    let server = Server::start(&key, &[&node], &["--sequences", &sequences, "--ctx", ctx, "--prefill-chunk", "256"]);
    let model = model_id(&server.url);
    let api = Api { url: &server.url, model: &model };
    stream(&agent(), api, PROMPTS[0], 8); // warm-up
    let mut base = None;
    for &c in &clients {
        let l = level(api, c, requests, tokens);
        let one = *base.get_or_insert(l.tps);
        println!(
            "{:>8} {:>10.1} {:>8.2}x {:>9.0}ms {:>9.0}ms {:>8.1}ms {:>8.1}ms",
            l.clients,
            l.tps,
            l.tps / one,
            l.ttft.0,
            l.ttft.1,
            l.itl.0,
            l.itl.1
        );
    }
    drop(server);

    // The long prompt: chunked and whole, alternating servers, three rounds.
    let mut prompt_tokens = 0;
    // Per prefill mode, one (chunk ms, TTFT alone ms, TTFT during ms) per round.
    type Rounds = Vec<(f64, f64, f64)>;
    let mut rows: [(&str, Rounds); 2] = [("chunked (256)", Vec::new()), ("whole prompt", Vec::new())];
    for _ in 0..3 {
        for (i, chunk) in ["256", "0"].iter().enumerate() {
            let server = Server::start(&key, &[&node], &["--sequences", "4", "--ctx", ctx, "--prefill-chunk", chunk]);
            let api = Api { url: &server.url, model: &model };
            stream(&agent(), api, PROMPTS[0], 8); // warm-up
            let (r, n) = interference(api, &long);
            rows[i].1.push(r);
            prompt_tokens = n;
        }
    }
    println!("\na short request (4 tokens) sent while a {prompt_tokens}-token prompt prefills (3 rounds, medians):");
    println!(
        "{:>14} {:>12} {:>16} {:>16} {:>14}",
        "prefill", "chunk ms", "TTFT alone ms", "TTFT during ms", "in chunks"
    );
    for (name, r) in &rows {
        let chunk = median(r.iter().map(|x| x.0).collect());
        let alone = median(r.iter().map(|x| x.1).collect());
        let during = median(r.iter().map(|x| x.2).collect());
        println!("{name:>14} {chunk:>12.0} {alone:>16.0} {during:>16.0} {:>13.2}x", during / chunk);
    }
    println!(
        "(chunk ms: the long prompt's prefill time alone / its 256-token chunks; target: TTFT during <= 2 chunks)"
    );
}
