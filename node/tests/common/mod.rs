//! Shared by the node's integration tests: the real model and its known-good values.
#![allow(dead_code)]

pub mod tiny;

use edge_node::gguf::Gguf;
use edge_node::model::ModelConfig;

/// "Once upon a time, there was a little robot named" (llama.cpp's tokenizer, ENVIRONMENT.md).
pub const REFERENCE_PROMPT: &str = "Once upon a time, there was a little robot named";
pub const REFERENCE_IDS: [u32; 11] = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 3365];
/// Argmax of the logits at each prompt position (numpy f32 reference, HF transformers and llama.cpp agree).
pub const REFERENCE_ARGMAX: [u32; 11] = [29, 260, 655, 28, 260, 436, 253, 1165, 8180, 3365, 659];

/// The real SmolLM2 model. Fails (never skips) when it is missing: run `bash scripts/setup.sh`.
pub fn smollm2() -> (Gguf, ModelConfig) {
    let path =
        std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model);
    edge_node::setup::check_model(&path).unwrap_or_else(|e| panic!("{e}"));
    let g = Gguf::open(&path).unwrap();
    let cfg = ModelConfig::from_gguf(&g).unwrap();
    (g, cfg)
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2: qkv bias, neox RoPE, separate head; Q5_0/Q8_0/Q4_K/Q6_K). Fails
/// (never skips) when it is missing: run `bash scripts/setup.sh`.
pub fn qwen05() -> (Gguf, ModelConfig) {
    let path = edge_node::setup::known_model(&edge_node::setup::QWEN_05B);
    edge_node::setup::check_model(&path).unwrap_or_else(|e| panic!("{e}"));
    let g = Gguf::open(&path).unwrap();
    let cfg = ModelConfig::from_gguf(&g).unwrap();
    (g, cfg)
}

/// Gemma-3-270M Q4_K_M (gemma3: SentencePiece, sliding window, QK-norm, one KV head). Fails (never skips) when it
/// is missing: run `bash scripts/setup.sh`.
pub fn gemma3() -> (Gguf, ModelConfig) {
    let path = edge_node::setup::known_model(&edge_node::setup::GEMMA3_270M);
    edge_node::setup::check_model(&path).unwrap_or_else(|e| panic!("{e}"));
    let g = Gguf::open(&path).unwrap();
    let cfg = ModelConfig::from_gguf(&g).unwrap();
    (g, cfg)
}

/// One prompt of scripts/gemma3_reference.py: llama.cpp's ids, numpy's argmax at every position and its top
/// logits at the last one.
#[derive(serde::Deserialize)]
pub struct Gemma3Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub argmax: Vec<u32>,
    pub top_last: Vec<(u32, f32)>,
}

/// The numpy reference of scripts/gemma3_reference.py on Gemma-3-270M: a short prompt with its greedy
/// continuation, and a long one (node/tests/fixtures/teacher_text.txt) past the sliding window.
#[derive(serde::Deserialize)]
pub struct Gemma3Reference {
    pub model_sha256: String,
    pub short: Gemma3Prompt,
    pub greedy: Vec<u32>,
    pub long: Gemma3Prompt,
    pub llama_cpp: Gemma3LlamaCpp,
}

/// llama.cpp's own outputs on the same file (llama-cpp-python): its greedy continuation of the short prompt and
/// its argmax at every position of the long one.
#[derive(serde::Deserialize)]
pub struct Gemma3LlamaCpp {
    pub greedy: Vec<u32>,
    pub long_argmax: Vec<u32>,
}

pub fn gemma3_reference() -> Gemma3Reference {
    serde_json::from_str(include_str!("../fixtures/gemma3_reference.json")).unwrap()
}

/// The numpy reference of scripts/qwen2_reference.py on Qwen2.5-Coder-0.5B: prompt, llama.cpp's token ids, the
/// argmax and top logits at every position.
#[derive(serde::Deserialize)]
pub struct Qwen2Reference {
    pub model_sha256: String,
    pub prompt: String,
    pub ids: Vec<u32>,
    pub argmax: Vec<u32>,
    /// Per position: (token, logit) of the 5 largest logits.
    pub top: Vec<Vec<(u32, f32)>>,
}

pub fn qwen2_reference() -> Qwen2Reference {
    serde_json::from_str(include_str!("../fixtures/qwen2_reference.json")).unwrap()
}

/// The stage images of `spec` for each slice, rebuilt as models (what a node loads).
pub fn member_models(
    g: &Gguf,
    cfg: &ModelConfig,
    spec: edge_protocol::ShardSpec,
    slices: &[edge_protocol::LayerSlice],
) -> Vec<(Gguf, ModelConfig)> {
    slices
        .iter()
        .map(|s| {
            let img = edge_node::model::stage::stage_image(g, cfg, spec, Some(*s)).unwrap();
            let m = edge_node::gguf::parse_bytes(&img.writer().to_bytes().unwrap()).unwrap();
            let c = ModelConfig::from_gguf(&m).unwrap();
            assert!(c.partial_layers);
            (m, c)
        })
        .collect()
}

/// Every `(text, llama.cpp's ids, parse special tokens)` case encodes to those ids; all differences in one panic.
pub fn check_ids<'a>(t: &edge_node::tokenizer::Tokenizer, cases: impl Iterator<Item = (&'a str, &'a [u32], bool)>) {
    let mut failures = Vec::new();
    for (text, ids, special) in cases {
        let got = if special { t.encode_with_special(text) } else { t.encode(text) }.unwrap();
        if got != ids {
            failures.push(format!("{text:?} (special: {special}):\n  llama.cpp {ids:?}\n  ours      {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} strings tokenized differently:\n{}", failures.len(), failures.join("\n"));
}

/// Each `(token, numpy's logit)` of `top` is matched by `logits` within float32 summation-order noise.
pub fn check_top_logits(logits: &[f32], top: &[(u32, f32)]) {
    for &(t, want) in top {
        let got = logits[t as usize];
        assert!((got - want).abs() < 2e-2, "token {t}: logit {got} vs numpy {want}");
    }
}
