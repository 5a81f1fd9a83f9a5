//! Gemma-3-270M (gemma3: SentencePiece vocabulary, sliding-window attention, QK-norm, one key/value head) across
//! real processes on 127.0.0.1: three `edge-node serve` members on the cpu backend. A 3-stage pipeline and a
//! 2-way tensor-parallel stage (query heads split inside the one key/value head) give the greedy tokens of one
//! CPU shard in this process, and `edge-coord serve` chats with it: one BOS, Gemma's turns, the same text. Two
//! more members on the wgpu backend (lavapipe here) give the same tokens as a 2-way tensor-parallel stage and as
//! the second stage of a pipeline behind a cpu member.

use std::process::Command;

use edge_node::backend::Backend;
use edge_node::generate::{generate, GenerateRequest};
use edge_node::tokenizer::{ChatMessage, Tokenizer};
use edge_tests::http::{get_text, post_json};
use edge_tests::{bin, new_key, temp_dir, Node, NodeSpec, Server, TempDir};
use serde_json::json;

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. In the morning, the fox";
/// llama.cpp's greedy continuation of PROMPT on the same file (node/tests/fixtures/gemma3_reference.json).
const LLAMA_CPP_GREEDY: [u32; 12] = [563, 2036, 528, 506, 3155, 236764, 532, 506, 4799, 563, 2036, 528];

fn cpu_node(key: &str, peers: &[&str]) -> Node {
    Node::start(key, NodeSpec { peers, backend: Some("cpu"), ..Default::default() })
}

/// `edge-coord run --json` with gemma3 on `peers`: the first sequence's tokens.
fn run(key: &str, peers: &[&Node], model: &str, shape: &[&str]) -> Vec<u32> {
    let dir = TempDir(temp_dir("coord"));
    let mut cmd = Command::new(bin("edge-coord"));
    cmd.args(["run", "--json", "--no-mdns", "-m", model, "-p", PROMPT, "-n", "12"]);
    cmd.args(["--wait", "60", "--min-nodes", &peers.len().to_string()]);
    for p in peers {
        cmd.args(["--peer", &p.addr]);
    }
    cmd.args(shape).arg("--data-dir").arg(&dir.0).env("EDGE_CLUSTER_KEY", key);
    let out = cmd.output().expect("run edge-coord");
    assert!(out.status.success(), "{shape:?}: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = report["outcomes"][0]["tokens"].as_array().unwrap();
    tokens.iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

#[test]
fn gemma3_runs_as_a_pipeline_a_tensor_parallel_stage_and_behind_the_api() {
    let m = edge_tests::known(&edge_node::setup::GEMMA3_270M);
    let tok = Tokenizer::from_gguf(&m.gguf).unwrap();
    let one_node = |ids: Vec<u32>, n: usize| {
        let req =
            GenerateRequest { prompt: ids, max_tokens: n, context: 256, sampling: Default::default(), stop: vec![] };
        let mut chain = m.shards(Backend::Cpu, &[], &Default::default()).unwrap();
        generate(&mut chain, &req, |_| true).unwrap().0
    };
    let one = one_node(tok.encode(PROMPT).unwrap(), 12);
    assert_eq!(one, LLAMA_CPP_GREEDY, "one CPU shard vs llama.cpp");

    let key = new_key();
    let a = cpu_node(&key, &[]);
    let b = cpu_node(&key, &[&a.addr]);
    let c = cpu_node(&key, &[&a.addr]);
    let model = m.path.to_str().unwrap();
    assert_eq!(run(&key, &[&a, &b, &c], model, &["--stages", "3"]), one, "3-stage pipeline");
    assert_eq!(run(&key, &[&a, &b], model, &["--tensor-parallel", "2"]), one, "2-way tensor parallel");
    {
        let wgpu_node =
            |peers: &[&str]| Node::start(&key, NodeSpec { peers, backend: Some("wgpu"), ..Default::default() });
        let (w1, w2) = (wgpu_node(&[&a.addr]), wgpu_node(&[&a.addr]));
        assert_eq!(run(&key, &[&w1, &w2], model, &["--tensor-parallel", "2"]), one, "wgpu 2-way tensor parallel");
        assert_eq!(run(&key, &[&c, &w1], model, &["--stages", "2"]), one, "cpu then wgpu pipeline");
    }

    // Chat through the API: the prompt is Gemma's turns with one BOS id, and the reply is one node's greedy text.
    let server = Server::start(&key, &[&a, &b, &c], &["-m", model, "--ctx", "256"]);
    let messages = [ChatMessage::new("system", "Answer in one sentence."), ChatMessage::new("user", "What is a fox?")];
    let ids = tok.encode_with_special(&tok.chat_prompt(&messages)).unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == 2).count(), 1, "one BOS");
    assert!(tok.chat_prompt(&messages).ends_with("<start_of_turn>model\n"));
    let want = tok.decode(&one_node(ids.clone(), 16));
    // Two choices: the second forks the first's prompt positions (before its first token, as a sliding-window
    // model must) and gives the same greedy text.
    let body = json!({"model": "gemma3:270m", "max_tokens": 16, "temperature": 0, "n": 2, "messages": [
        {"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "What is a fox?"}]});
    let (status, r) = post_json(&server.url, "/v1/chat/completions", &body, None);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], ids.len(), "{r}");
    assert_eq!(r["choices"].as_array().unwrap().len(), 2, "{r}");
    for c in r["choices"].as_array().unwrap() {
        assert_eq!(c["message"]["content"].as_str().unwrap(), want.trim_end_matches("<end_of_turn>"), "{r}");
    }
    let (code, _, metrics) = get_text(&server.url, "/metrics", None);
    let shared = metrics.lines().find_map(|l| l.strip_prefix("edge_prompt_tokens_shared_total "));
    assert_eq!((code, shared), (200, Some(format!("{}", ids.len() - 1).as_str())), "{metrics}");
}
