//! Distributed generation with real processes on 127.0.0.1: `edge-node serve` members (wgpu on lavapipe) and
//! `edge-coord run`. Greedy tokens from every pipeline shape and from a tensor-parallel stage must equal the
//! single-node tokens (the CPU reference's golden continuation); a second run of the same plan ships nothing.

use std::process::Command;

use edge_tests::{bin, new_key, temp_dir, Node, NodeSpec, TempDir, GREEDY_32, REFERENCE_PROMPT};

/// `edge-coord run --json` against `peers`: the report, or the error text.
fn run(key: &str, peers: &[&Node], extra: &[&str]) -> Result<serde_json::Value, String> {
    let dir = TempDir(temp_dir("coord"));
    let mut cmd = Command::new(bin("edge-coord"));
    cmd.args(["run", "--json", "--no-mdns", "--wait", "1.5", "-p", REFERENCE_PROMPT, "-n", "32"]);
    for p in peers {
        cmd.args(["--peer", &p.addr]);
    }
    cmd.args(extra).arg("--data-dir").arg(&dir.0).env("EDGE_CLUSTER_KEY", key);
    let out = cmd.output().expect("run edge-coord");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {:?}", out.stdout)))
}

fn tokens(report: &serde_json::Value, i: usize) -> Vec<u32> {
    report["outcomes"][i]["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

fn sent_bytes(report: &serde_json::Value) -> u64 {
    report["loads"].as_array().unwrap().iter().map(|l| l["sent_bytes"].as_u64().unwrap()).sum()
}

fn gpu_node(key: &str, peers: &[&str]) -> Node {
    Node::start(key, NodeSpec { peers, backend: Some("wgpu"), ..Default::default() })
}

#[test]
fn pipelines_of_one_two_and_three_stages_generate_the_single_node_tokens() {
    let key = new_key();
    let a = gpu_node(&key, &[]);
    let b = gpu_node(&key, &[&a.addr]);
    let c = gpu_node(&key, &[&a.addr]);
    let nodes = [&a, &b, &c];
    for stages in ["1", "2", "3"] {
        let report = run(&key, &nodes, &["--stages", stages]).unwrap_or_else(|e| panic!("{stages} stages: {e}"));
        assert_eq!(report["plan"]["stages"].as_array().unwrap().len().to_string(), stages);
        assert_eq!(tokens(&report, 0), GREEDY_32, "{stages} stages");
        assert_eq!(report["outcomes"][0]["finish"], "Length");
    }
    // Same plan again: every node has its tensors cached, nothing is sent.
    let again = run(&key, &nodes, &["--stages", "3"]).unwrap();
    assert_eq!(sent_bytes(&again), 0, "{:#?}", again["loads"]);
    assert_eq!(tokens(&again, 0), GREEDY_32);
}

#[test]
fn a_tensor_parallel_stage_and_concurrent_sequences_generate_the_single_node_tokens() {
    let key = new_key();
    let a = gpu_node(&key, &[]);
    let b = gpu_node(&key, &[&a.addr]);
    let c = gpu_node(&key, &[&a.addr]);
    let nodes = [&a, &b, &c];
    for k in ["2", "3"] {
        let report = run(&key, &nodes, &["--tensor-parallel", k]).unwrap_or_else(|e| panic!("{k}-way: {e}"));
        let stages = report["plan"]["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 1, "one stage");
        assert_eq!(stages[0]["members"].as_array().unwrap().len().to_string(), k, "split over {k} nodes");
        assert_eq!(tokens(&report, 0), GREEDY_32, "{k}-way tensor parallel");
    }
    // Four sequences at once through a three-stage pipeline: every one gets the greedy tokens.
    let report = run(&key, &nodes, &["--stages", "3", "--sequences", "4"]).unwrap();
    for i in 0..4 {
        assert_eq!(tokens(&report, i), GREEDY_32, "sequence {i}");
    }
    // A prompt longer than the context is refused before anything is shipped.
    let err = run(&key, &nodes, &["--ctx", "8"]).unwrap_err();
    assert!(err.contains("the prompt is 11 tokens but the context holds 8"), "{err}");
    // More tensor-parallel members than the model has key/value heads: a planning error, not a crash.
    let err = run(&key, &nodes, &["--tensor-parallel", "4"]).unwrap_err();
    assert!(err.contains("tensor"), "{err}");
}
