//! The CPU reference against the known-good SmolLM2 values (../shared/ENVIRONMENT.md: numpy, HF transformers
//! and llama.cpp agree on them).

mod common;

use edge_node::cpu::CpuShard;
use edge_node::shard::{HeadOutput, Shard, ShardInput, ShardOutput};
use edge_protocol::ShardSpec;

#[test]
fn cpu_reference_reproduces_known_argmax_sequence() {
    let (g, cfg) = common::smollm2();
    assert_eq!(
        (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab),
        (30, 576, 9, 3, 1536, 49152)
    );
    let mut shard = CpuShard::load(&g, &cfg, ShardSpec::whole(30)).unwrap();
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
