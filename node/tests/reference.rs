//! The CPU reference against known-good values: SmolLM2's from ../shared/ENVIRONMENT.md (numpy, HF transformers
//! and llama.cpp agree on them) and Qwen2.5-Coder-0.5B's from an independent numpy forward pass
//! (scripts/qwen2_reference.py, weights dequantized by the `gguf` package, ids from llama.cpp's tokenizer).

mod common;

use edge_node::reference::ReferenceShard;
use edge_node::shard::{HeadOutput, Shard, ShardInput, ShardOutput};
use edge_protocol::ShardSpec;

#[test]
fn cpu_reference_reproduces_known_argmax_sequence() {
    let (g, cfg) = common::smollm2();
    assert_eq!(
        (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab),
        (30, 576, 9, 3, 1536, 49152)
    );
    let mut shard = ReferenceShard::load(&g, &cfg, ShardSpec::whole(30)).unwrap();
    shard.open_sequence(1, 64).unwrap();
    let out = shard.forward(1, ShardInput::Tokens(&common::REFERENCE_IDS), HeadOutput::ArgmaxAll).unwrap();
    assert_eq!(out, ShardOutput::Tokens(common::REFERENCE_ARGMAX.to_vec()));
}

#[test]
fn wgpu_backend_reproduces_known_argmax_sequence() {
    let (g, cfg) = common::smollm2();
    let ctx = edge_node::gpu::GpuContext::new().unwrap();
    let mut shard = edge_node::gpu::GpuShard::load(ctx, &g, &cfg, ShardSpec::whole(30), Default::default()).unwrap();
    shard.open_sequence(1, 64).unwrap();
    let out = shard.forward(1, ShardInput::Tokens(&common::REFERENCE_IDS), HeadOutput::ArgmaxAll).unwrap();
    assert_eq!(out, ShardOutput::Tokens(common::REFERENCE_ARGMAX.to_vec()));
}

/// Qwen2 (qkv bias, neox RoPE, separate head, Q5_0/Q8_0/Q4_K/Q6_K): the tokenizer gives llama.cpp's ids, the CPU
/// reference's argmax at every position equals numpy's, and its logits agree with numpy's top logits.
#[test]
fn cpu_reference_agrees_with_numpy_on_qwen2() {
    let (g, cfg) = common::qwen05();
    let r = common::qwen2_reference();
    assert_eq!(r.model_sha256, edge_node::setup::QWEN_05B.sha256);
    assert_eq!((cfg.arch.as_str(), cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads), ("qwen2", 24, 896, 14, 2));
    assert!(cfg.qkv_bias && !cfg.tied_embeddings);
    let tok = edge_node::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode(&r.prompt).unwrap(), r.ids, "tokenizer vs llama.cpp");

    let mut shard = ReferenceShard::load(&g, &cfg, ShardSpec::whole(24)).unwrap();
    shard.open_sequence(1, 64).unwrap();
    let out = shard.forward(1, ShardInput::Tokens(&r.ids), HeadOutput::ArgmaxAll).unwrap();
    assert_eq!(out, ShardOutput::Tokens(r.argmax.clone()));

    // Logits of the last position: the numpy top 5, within float32 summation-order noise.
    shard.truncate(1, 0).unwrap();
    let ShardOutput::Logits(logits) = shard.forward(1, ShardInput::Tokens(&r.ids), HeadOutput::LogitsLast).unwrap()
    else {
        panic!("logits expected")
    };
    common::check_top_logits(&logits, r.top.last().unwrap());
}

#[test]
fn wgpu_backend_agrees_with_numpy_on_qwen2() {
    let (g, cfg) = common::qwen05();
    let r = common::qwen2_reference();
    let ctx = edge_node::gpu::GpuContext::new().unwrap();
    let mut shard = edge_node::gpu::GpuShard::load(ctx, &g, &cfg, ShardSpec::whole(24), Default::default()).unwrap();
    shard.open_sequence(1, 64).unwrap();
    let out = shard.forward(1, ShardInput::Tokens(&r.ids), HeadOutput::ArgmaxAll).unwrap();
    assert_eq!(out, ShardOutput::Tokens(r.argmax));
}
