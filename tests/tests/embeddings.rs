//! Embeddings against the real server: two CPU members in a 2-stage plan. `/v1/embeddings` answers every input
//! shape with unit vectors equal to one local CPU shard's pooled final-normed hidden states (the cluster computes
//! the same rows), in input order for a batch larger than what runs at once, as floats or base64, shortened by
//! `dimensions`; similar sentences are closer than unrelated ones; Ollama's `/api/embed` and `/api/embeddings`
//! give the same vectors. Bad input is an OpenAI-shaped 400 (or 404 for the model) and the server keeps serving.

use base64::Engine;
use edge_node::shard::{HeadOutput, Shard, ShardInput, ShardOutput};
use edge_tests::{http, new_key, Node, NodeSpec, Server};
use serde_json::{json, Value};

fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    http::post_json(url, path, body, None)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One CPU shard of the whole model, pooling as the last stage does: the embedding of each prompt.
struct Local {
    shard: edge_node::cpu::CpuShard,
    tok: edge_node::tokenizer::Tokenizer,
}

impl Local {
    fn new() -> Local {
        let m = edge_node::backend::LoadedModel::open(&edge_node::setup::default_model()).unwrap();
        let spec = edge_protocol::ShardSpec::whole(m.config.n_layers as u32);
        let shard = edge_node::cpu::CpuShard::load(&m.gguf, &m.config, spec).unwrap();
        Local { shard, tok: edge_node::tokenizer::Tokenizer::from_gguf(&m.gguf).unwrap() }
    }

    fn embed(&mut self, text: &str) -> Vec<f32> {
        let ids = self.tok.encode(text).unwrap();
        self.shard.open_sequence(1, ids.len()).unwrap();
        let out = self.shard.forward(1, ShardInput::Tokens(&ids), HeadOutput::HiddenSum).unwrap();
        self.shard.close_sequence(1);
        let ShardOutput::HiddenSum(mut v) = out else { panic!("a hidden sum expected") };
        let norm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

#[test]
fn embeddings_are_the_pooled_hidden_states_of_the_cluster() {
    let key = new_key();
    let a = Node::start(&key, NodeSpec::default());
    let b = Node::start(&key, NodeSpec { peers: &[&a.addr], ..Default::default() });
    let server = Server::start(&key, &[&a, &b], &["--stages", "2", "--ctx", "64", "--sequences", "4"]);
    let url = server.url.as_str();
    let model = edge_node::setup::default_model().file_stem().unwrap().to_string_lossy().into_owned();
    let mut local = Local::new();
    let texts =
        ["The cat sat on the mat.", "A cat was sitting on a small rug.", "Quarterly revenue grew by twelve percent."];

    // A list: one unit vector per input, in order, each what one local shard computes.
    let (status, r) = post(url, "/v1/embeddings", &json!({"model": model, "input": texts}));
    assert_eq!(status, 200, "{r}\n{}", server.log());
    assert_eq!((r["object"].as_str(), r["model"].as_str()), (Some("list"), Some(model.as_str())));
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let mut vectors = Vec::new();
    let mut tokens = 0;
    for (i, (d, text)) in data.iter().zip(texts).enumerate() {
        assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(i as u64)));
        let v = floats(&d["embedding"]);
        let want = local.embed(text);
        assert_eq!(v.len(), 576);
        assert!((dot(&v, &v).sqrt() - 1.0).abs() < 1e-5);
        let diff = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "input {i}: the cluster and one local CPU shard differ by {diff}");
        tokens += local.tok.encode(text).unwrap().len();
        vectors.push(v);
    }
    assert_eq!(r["usage"], json!({"prompt_tokens": tokens, "total_tokens": tokens}));
    let (near, far) = (dot(&vectors[0], &vectors[1]), dot(&vectors[0], &vectors[2]));
    assert!(near > far, "two sentences about a cat ({near}) are closer than one about revenue ({far})");

    // The same through token ids, base64 and `dimensions`.
    let ids = local.tok.encode(texts[0]).unwrap();
    let (status, r) =
        post(url, "/v1/embeddings", &json!({"model": model, "input": [ids, ids], "encoding_format": "base64"}));
    assert_eq!(status, 200, "{r}");
    for d in r["data"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(d["embedding"].as_str().unwrap()).unwrap();
        let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(v, vectors[0], "token ids and base64 give the text's vector");
    }
    let (status, r) = post(url, "/v1/embeddings", &json!({"model": model, "input": texts[2], "dimensions": 8}));
    assert_eq!(status, 200, "{r}");
    let short = floats(&r["data"][0]["embedding"]);
    let norm = dot(&vectors[2][..8], &vectors[2][..8]).sqrt();
    assert!(short.iter().zip(&vectors[2]).all(|(s, v)| (s - v / norm).abs() < 1e-6), "{short:?}");

    // More inputs than run at once (8): all come back, in order; equal inputs get equal vectors.
    let many: Vec<&str> = (0..20).map(|i| texts[i % 3]).collect();
    let (status, r) = post(url, "/v1/embeddings", &json!({"model": model, "input": many}));
    assert_eq!(status, 200, "{r}");
    for (i, d) in r["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(floats(&d["embedding"]), vectors[i % 3], "input {i}");
    }

    // Ollama: the same vectors.
    let (status, r) = post(url, "/api/embed", &json!({"model": model, "input": texts}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["prompt_eval_count"], tokens);
    for (e, v) in r["embeddings"].as_array().unwrap().iter().zip(&vectors) {
        assert_eq!(&floats(e), v);
    }
    let (status, r) = post(url, "/api/embeddings", &json!({"model": format!("{model}:latest"), "prompt": texts[1]}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(floats(&r["embedding"]), vectors[1]);
    let (status, r) = post(url, "/api/embed", &json!({"model": model, "input": ""}));
    assert_eq!((status, &r["embeddings"]), (200, &json!([])), "Ollama answers an empty input with no vectors");

    // Bad input: OpenAI-shaped 400s naming the parameter (404 for the model), and the server keeps serving.
    let long: Vec<u32> = vec![ids[0]; 65];
    for (body, param, code) in [
        (json!({"model": model, "input": ""}), "input", "invalid_value"),
        (json!({"model": model, "input": []}), "input", "invalid_value"),
        (json!({"model": model}), "input", "missing_required_parameter"),
        (json!({"model": model, "input": {"text": "a"}}), "input", "invalid_type"),
        (json!({"model": model, "input": [[1, 2], [99999999]]}), "input", "invalid_value"),
        (json!({"model": model, "input": long}), "input", "context_length_exceeded"),
        (json!({"model": model, "input": "a", "encoding_format": "hex"}), "encoding_format", "invalid_value"),
        (json!({"model": model, "input": "a", "dimensions": 577}), "dimensions", "invalid_value"),
    ] {
        let (status, r) = post(url, "/v1/embeddings", &body);
        assert_eq!(status, 400, "{body}: {r}");
        assert_eq!((r["error"]["param"].as_str(), r["error"]["code"].as_str()), (Some(param), Some(code)), "{r}");
    }
    let (status, r) = post(url, "/v1/embeddings", &json!({"model": "nope", "input": "a"}));
    assert_eq!((status, r["error"]["code"].as_str()), (404, Some("model_not_found")));
    let (status, r) = post(url, "/api/embed", &json!({"model": model, "input": long_text(), "truncate": false}));
    assert_eq!(status, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("maximum context length"), "{r}");
    let (status, r) = post(url, "/api/embed", &json!({"model": model, "input": long_text()}));
    assert_eq!((status, r["prompt_eval_count"].as_u64()), (200, Some(64)), "Ollama truncates by default: {r}");
    let (status, r) = post(url, "/v1/embeddings", &json!({"model": model, "input": texts[1]}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(floats(&r["data"][0]["embedding"]), vectors[1]);
    // The dashboard lists them as embeddings.
    let status = http::get_json(url, "/api/status", None);
    assert!(status["jobs"].as_array().unwrap().iter().any(|j| j["kind"] == "embedding"), "{status}");
}

fn long_text() -> String {
    "word ".repeat(200)
}
