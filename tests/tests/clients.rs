//! `edge-coord serve` driven by the official `openai` and `ollama` Python packages (pinned; `scripts/setup.sh`
//! installs them into `~/.cache/edge-infer/pyclients`), as users' programs call it: two CPU members on 127.0.0.1
//! in a 2-stage plan, with an API key. Both libraries must see the same greedy text for the same request, parse
//! every response and stream, and raise their own error types for a bad value, a wrong key and an unknown model.

use std::process::Command;

use edge_tests::{new_key, Node, NodeSpec, Server, REFERENCE_PROMPT};
use serde_json::Value;

const KEY: &str = "sk-clients-test";

#[test]
fn the_openai_and_ollama_client_libraries_work_against_the_server() {
    let python =
        edge_node::setup::user_dir("EDGE_PYCLIENTS_DIR", "XDG_CACHE_HOME", ".cache", "pyclients").join("bin/python");
    assert!(
        python.exists(),
        "{} missing: run `bash scripts/setup.sh` (it installs the client libraries)",
        python.display()
    );
    let key = new_key();
    let a = Node::start(&key, NodeSpec::default());
    let b = Node::start(&key, NodeSpec { peers: &[&a.addr], ..Default::default() });
    let server = Server::start(&key, &[&a, &b], &["--stages", "2", "--ctx", "256", "--api-key", KEY]);
    let model = edge_node::setup::default_model().file_stem().unwrap().to_string_lossy().into_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients.py");
    let out = Command::new(&python).args([script, &server.url, KEY, &model, REFERENCE_PROMPT]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", server.log());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(r["models"][0], model.as_str());
    let completion = r["completion"].as_str().unwrap();
    assert!(!completion.is_empty());
    assert_eq!(r["completion_usage"], serde_json::json!([11, 16]));
    assert_eq!(r["completion_n"], serde_json::json!([[0, completion], [1, completion]]), "two greedy choices");
    assert_eq!(r["ollama_generate"], completion, "Ollama's raw generate is the same greedy completion");
    assert_eq!(r["ollama_generate_counts"], serde_json::json!([11, 16]));
    let chat = r["chat"].as_str().unwrap();
    assert!(!chat.is_empty());
    assert_eq!(r["chat_streamed"], chat, "the stream is the whole answer");
    assert_eq!(r["ollama_chat_streamed"], chat, "Ollama's chat is the same greedy answer");
    assert_eq!(r["ollama_models"][0], format!("{model}:latest"));
    // Log-probabilities as the library parses them: the greedy tokens spell the answer, each the first of its
    // top 3 (whose log-probabilities fall).
    let entries = r["chat_logprobs"].as_array().unwrap();
    assert!(!entries.is_empty(), "{r}");
    let spelled: String = entries.iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(spelled, r["chat_logprobs_text"].as_str().unwrap());
    assert!(chat.starts_with(&spelled), "the same greedy answer: {spelled:?} vs {chat:?}");
    for e in entries {
        assert_eq!(e[2][0], e[0], "{e}");
        assert_eq!(e[3][0], e[1], "{e}");
        let lps: Vec<f64> = e[3].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(lps.len() == 3 && lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0, "{e}");
    }
    // Structured output: the library's strict schema from a pydantic model, parsed back into the model.
    let city = &r["parsed_city"];
    assert!(city["name"].is_string() && city["country"].is_string() && city["population"].is_i64(), "{r}");
    let ollama_city = &r["ollama_city"];
    assert!(ollama_city["name"].is_string() && ollama_city["population"].is_i64(), "{r}");
    let call = &r["tool_call"];
    assert_eq!((&call[0], &call[1]), (&serde_json::json!("tool_calls"), &serde_json::json!("get_weather")), "{r}");
    assert!(call[2]["city"].is_string(), "{r}");
    let penalized = r["completion_penalized"].as_str().unwrap();
    assert_ne!(penalized, completion, "a frequency penalty of 1.5 changes 16 greedy tokens");
    assert_eq!(r["ollama_generate_penalized"], penalized, "Ollama's frequency_penalty option is the same");
    // Embeddings: unit vectors of the model's width, the same through both libraries (OpenAI's as base64).
    let vectors = |v: &Value| -> Vec<Vec<f64>> { serde_json::from_value(v.clone()).unwrap() };
    let (openai, ollama) = (vectors(&r["embeddings"]), vectors(&r["ollama_embed"]));
    assert_eq!(openai.len(), 2);
    for v in &openai {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(v.len() == 576 && (norm - 1.0).abs() < 1e-4, "{} values of norm {norm}", v.len());
    }
    assert_ne!(openai[0], openai[1]);
    for (a, b) in openai.iter().zip(&ollama) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6), "OpenAI's and Ollama's embeddings differ");
    }
    let single: Vec<f64> = serde_json::from_value(r["ollama_embeddings"].clone()).unwrap();
    assert!(single.iter().zip(&openai[1]).all(|(x, y)| (x - y).abs() < 1e-6), "/api/embeddings is the same");
    let usage = r["embeddings_usage"].as_array().unwrap();
    assert!(usage[0].as_u64().unwrap() > 10 && usage[0] == usage[1], "{usage:?}");
    let short: Vec<f64> = serde_json::from_value(r["embedding_short"].clone()).unwrap();
    let norm = short.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(short.len() == 32 && (norm - 1.0).abs() < 1e-4, "dimensions=32");
    let scale = short[0] / openai[0][0];
    assert!(short.iter().zip(&openai[0]).all(|(s, o)| (s - o * scale).abs() < 1e-5), "the first 32, rescaled");
    assert_eq!(r["bad_top_logprobs"], 400);
    assert_eq!(r["bad_temperature"], 400);
    assert_eq!(r["wrong_key"], 401);
    assert_eq!(r["ollama_unknown_model"], 404);
}
