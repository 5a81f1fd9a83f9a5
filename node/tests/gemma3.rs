//! Gemma 3 (270M, Q4_K_M) against an independent numpy forward pass (scripts/gemma3_reference.py: weights
//! dequantized by the `gguf` package, llama.cpp's token ids, llama.cpp's gemma3 graph written out in f32).

mod common;

use edge_node::reference::ReferenceShard;
use edge_node::shard::{HeadOutput, Shard, ShardInput, ShardOutput};
use edge_protocol::ShardSpec;

fn logits_last(shard: &mut dyn Shard, ids: &[u32]) -> Vec<f32> {
    match shard.forward(1, ShardInput::Tokens(ids), HeadOutput::LogitsLast).unwrap() {
        ShardOutput::Logits(l) => l,
        other => panic!("logits expected, got {other:?}"),
    }
}

/// The reference backend: the config read from the file, numpy's argmax at every position of the short prompt,
/// its top logits at the last one, and its greedy continuation.
#[test]
fn reference_agrees_with_numpy_on_gemma3() {
    let (g, cfg) = common::gemma3();
    let r = common::gemma3_reference();
    assert_eq!(r.model_sha256, edge_node::setup::GEMMA3_270M.sha256);
    assert_eq!(
        (cfg.arch.as_str(), cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim),
        ("gemma3", 18, 640, 4, 1, 256, 2048)
    );
    assert!(cfg.tied_embeddings && cfg.qk_norm && cfg.post_norms && !cfg.qkv_bias);
    let local: Vec<usize> = (0..18).filter(|&l| cfg.window(l).is_none()).collect();
    assert_eq!(local, [5, 11, 17], "global layers");
    assert_eq!((cfg.window(0), cfg.rope_theta_of(0), cfg.rope_theta_of(5)), (Some(512), 10_000.0, 1e6));

    let mut shard = ReferenceShard::load(&g, &cfg, ShardSpec::whole(18)).unwrap();
    shard.open_sequence(1, 64).unwrap();
    let out = shard.forward(1, ShardInput::Tokens(&r.short.ids), HeadOutput::ArgmaxAll).unwrap();
    assert_eq!(out, ShardOutput::Tokens(r.short.argmax.clone()));

    shard.truncate(1, 0).unwrap();
    let logits = logits_last(&mut shard, &r.short.ids);
    for &(t, want) in &r.short.top_last {
        let got = logits[t as usize];
        assert!((got - want).abs() < 2e-2, "token {t}: logit {got} vs numpy {want}");
    }

    let mut next = r.short.argmax.last().copied().unwrap();
    let mut greedy = vec![next];
    while greedy.len() < r.greedy.len() {
        let ShardOutput::Tokens(t) = shard.forward(1, ShardInput::Tokens(&[next]), HeadOutput::ArgmaxLast).unwrap()
        else {
            panic!("tokens expected")
        };
        next = t[0];
        greedy.push(next);
    }
    assert_eq!(greedy, r.greedy, "greedy continuation");
}
