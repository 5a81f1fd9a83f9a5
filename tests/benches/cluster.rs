//! Distributed decode benchmark (not a test): real `edge-node serve` processes on 127.0.0.1 and `edge-coord run`,
//! printing decode tok/s for 1, 2 and 3 pipeline stages, for 4 concurrent sequences on 3 stages and for 8 on one
//! node and on 3 stages (the stages batch concurrent sequences' steps), each as a ratio against one node measured
//! in the same run. Members run the CPU backend; `EDGE_BENCH_BACKEND=wgpu` starts
//! them on wgpu instead.
//!
//! `cargo bench -p edge-tests --bench cluster` (after a workspace build: it runs the built binaries); the model is
//! SmolLM2, or the GGUF file `$EDGE_MODEL` names (the coordinator reads it too).
//! Targets (issue #4): 3-stage pipeline >= 0.9x one node for one sequence (<= 1 ms added per hop); 4 concurrent
//! sequences on 3 stages >= 2x the one-sequence throughput.

use std::process::Command;

use edge_tests::{bin, new_key, temp_dir, Node, NodeSpec, TempDir, REFERENCE_PROMPT};

struct Run {
    per_sequence_tps: f64,
    aggregate_tps: f64,
    ms_per_token: f64,
    predicted_tps: f64,
    predicted_throughput: f64,
    /// Token time minus the stages' compute, per hop (ms): what the network and queues add.
    hop_ms: f64,
}

fn run(key: &str, nodes: &[&Node], stages: usize, sequences: usize, tokens: usize) -> Run {
    let dir = TempDir(temp_dir("bench-coord"));
    let mut cmd = Command::new(bin("edge-coord"));
    cmd.args(["run", "--json", "--no-mdns", "-p", REFERENCE_PROMPT, "--tensor-parallel", "off"]);
    cmd.args(["--wait", "60", "--min-nodes", &nodes.len().to_string()]);
    cmd.args(["-n", &tokens.to_string(), "--stages", &stages.to_string(), "--sequences", &sequences.to_string()]);
    for n in nodes {
        cmd.args(["--peer", &n.addr]);
    }
    let out = cmd.arg("--data-dir").arg(&dir.0).env("EDGE_CLUSTER_KEY", key).output().expect("run edge-coord");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let outcomes = r["outcomes"].as_array().unwrap();
    let decode_s =
        |o: &serde_json::Value| o["decode"]["secs"].as_f64().unwrap() + o["decode"]["nanos"].as_f64().unwrap() / 1e9;
    let n = |o: &serde_json::Value| o["tokens"].as_array().unwrap().len().saturating_sub(1) as f64;
    let per_sequence_tps = outcomes.iter().map(|o| n(o) / decode_s(o)).sum::<f64>() / outcomes.len() as f64;
    let o = &outcomes[0];
    let stages = o["stages"].as_array().unwrap();
    let compute_ms: f64 = stages
        .iter()
        .map(|s| {
            let steps = s["steps"].as_f64().unwrap() - 1.0;
            (s["compute_us"].as_f64().unwrap() - s["prefill_us"].as_f64().unwrap()) / steps.max(1.0) / 1e3
        })
        .sum();
    let token_ms = decode_s(o) * 1e3 / n(o).max(1.0);
    let hop_ms = if stages.len() > 1 { (token_ms - compute_ms) / stages.len() as f64 } else { 0.0 };
    Run {
        hop_ms,
        per_sequence_tps,
        aggregate_tps: r["aggregate_tps"].as_f64().unwrap(),
        ms_per_token: 1e3 / per_sequence_tps,
        predicted_tps: r["plan"]["prediction"]["tokens_per_s"].as_f64().unwrap_or(0.0),
        predicted_throughput: r["plan"]["prediction"]["throughput_tokens_per_s"].as_f64().unwrap_or(0.0),
    }
}

fn main() {
    // Default threads (every node uses all cores), then one thread per node: on a 2-core machine that is the
    // closest to devices that do not share their compute.
    let backend = std::env::var("EDGE_BENCH_BACKEND").unwrap_or_else(|_| "cpu".into());
    if backend == "wgpu" {
        bench("wgpu", &[], &[], "lavapipe threads: default (all cores per node)");
        bench("wgpu", &[("LP_NUM_THREADS", "1")], &[], "lavapipe threads: 1 per node (LP_NUM_THREADS=1)");
    } else {
        bench(&backend, &[], &[], "threads: default (all cores per node)");
        bench(&backend, &[], &["--threads", "1"], "threads: 1 per node (--threads 1)");
    }
}

fn bench(backend: &str, env: &[(&str, &str)], extra: &[&str], label: &str) {
    let tokens = 64;
    let key = new_key();
    let start = |peers: &[&str]| {
        Node::start(&key, NodeSpec { peers, backend: Some(backend), env, extra, ..Default::default() })
    };
    let a = start(&[]);
    let b = start(&[&a.addr]);
    let c = start(&[&a.addr]);
    let nodes = [&a, &b, &c];
    // Warm every node's cache and pipelines once.
    run(&key, &nodes, 3, 1, 4);
    let one = run(&key, &nodes, 1, 1, tokens);
    let two = run(&key, &nodes, 2, 1, tokens);
    let three = run(&key, &nodes, 3, 1, tokens);
    let four_seq = run(&key, &nodes, 3, 4, tokens);
    let one_eight = run(&key, &nodes, 1, 8, tokens);
    let three_eight = run(&key, &nodes, 3, 8, tokens);
    let model = std::env::var("EDGE_MODEL").map_or("SmolLM2-135M Q4_1".into(), |p| {
        std::path::Path::new(&p).file_name().map_or(p.clone(), |f| f.to_string_lossy().into_owned())
    });
    println!("\ndecode, {model}, {backend}, {tokens} tokens, nodes on 127.0.0.1 (same run); {label}:");
    println!("{:<34} {:>10} {:>10} {:>12} {:>10}", "configuration", "tok/s", "ms/token", "vs 1 node", "predicted");
    let row = |name: &str, r: &Run, tps: f64, predicted: f64| {
        println!(
            "{name:<34} {tps:>10.1} {:>10.2} {:>11.2}x {predicted:>10.1}",
            r.ms_per_token,
            tps / one.per_sequence_tps
        );
    };
    row("1 node, 1 sequence", &one, one.per_sequence_tps, one.predicted_tps);
    row("2-stage pipeline, 1 sequence", &two, two.per_sequence_tps, two.predicted_tps);
    row("3-stage pipeline, 1 sequence", &three, three.per_sequence_tps, three.predicted_tps);
    row("3-stage pipeline, 4 sequences (sum)", &four_seq, four_seq.aggregate_tps, four_seq.predicted_throughput);
    row("1 node, 8 sequences (sum)", &one_eight, one_eight.aggregate_tps, one_eight.predicted_throughput);
    row(
        "3-stage pipeline, 8 sequences (sum)",
        &three_eight,
        three_eight.aggregate_tps,
        three_eight.predicted_throughput,
    );
    println!(
        "per hop, token time minus stage compute: {:.2} ms (2 stages), {:.2} ms (3 stages) (target <= 1 ms)",
        two.hop_ms, three.hop_ms
    );
    println!(
        "3-stage / 1 node: {:.2}x (target >= 0.9x); 4 sequences / 1 sequence on 3 stages: {:.2}x (target >= 2x)",
        three.per_sequence_tps / one.per_sequence_tps,
        four_seq.aggregate_tps / three.per_sequence_tps
    );
}
