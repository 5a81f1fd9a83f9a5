//! `Shard::fork` (the `n` choices of one request share their prompt's prefill): on every backend a sequence
//! forked from another's first positions continues exactly as the other did, neither disturbs the other
//! afterwards, and bad forks are refused without changing anything.

mod common;

use common::tiny::*;
use edge_node::cpu::CpuShard;
use edge_node::quant::GgmlType;
use edge_node::reference::ReferenceShard;
use edge_node::shard::{HeadOutput, Shard, ShardError, ShardInput};
use edge_protocol::ShardSpec;

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: {x} vs {y}");
    }
}

/// Prefill 12 tokens on sequence 1, fork its first 11 positions into sequence 2 (of a smaller capacity), run the
/// last prompt token there: both give the same logits; then both decode the same token, again equal, and the
/// parent still equals a sequence that never had a fork.
fn check(shard: &mut dyn Shard, tol: f32, what: &str) {
    let vocab = shard.config().vocab;
    let ids = prompt(vocab, 12, 7);
    let logits_of = |s: &mut dyn Shard, seq, t: &[u32]| {
        logits(s.forward(seq, ShardInput::Tokens(t), HeadOutput::LogitsLast).unwrap())
    };
    shard.open_sequence(1, 64).unwrap();
    let parent = logits_of(shard, 1, &ids);
    shard.open_sequence(2, 20).unwrap();
    shard.fork(1, 2, 11).unwrap();
    assert_eq!(shard.sequence_len(2).unwrap(), 11);
    let child = logits_of(shard, 2, &ids[11..]);
    close(&child, &parent, tol, what);
    let next = [3u32];
    let child_next = logits_of(shard, 2, &next);
    let parent_next = logits_of(shard, 1, &next);
    close(&child_next, &parent_next, tol, what);
    shard.open_sequence(3, 64).unwrap();
    logits_of(shard, 3, &ids);
    let plain = logits_of(shard, 3, &next);
    close(&parent_next, &plain, tol, what);

    // Refused: into a sequence that holds positions, more than the parent holds, more than the fork can hold,
    // itself, unknown sequences. Nothing changes.
    let bad = |r: Result<(), ShardError>| assert!(r.is_err(), "{what}: a bad fork was taken");
    bad(shard.fork(1, 2, 5));
    shard.open_sequence(4, 8).unwrap();
    bad(shard.fork(1, 4, 14));
    bad(shard.fork(1, 4, 9));
    bad(shard.fork(1, 4, 0));
    bad(shard.fork(1, 1, 4));
    assert!(matches!(shard.fork(77, 4, 4), Err(ShardError::UnknownSequence(77))));
    assert!(matches!(shard.fork(1, 77, 4), Err(ShardError::UnknownSequence(77))));
    assert_eq!(shard.sequence_len(4).unwrap(), 0);
    assert_eq!(shard.sequence_len(1).unwrap(), 13);
    for s in 1..=4 {
        shard.close_sequence(s);
    }
}

#[test]
fn a_fork_continues_as_its_parent_on_every_backend() {
    let (g, cfg) = Tiny::llama(|l, _| if l == Some(1) { GgmlType::Q4_1 } else { GgmlType::Q4_0 }).load();
    let whole = ShardSpec::whole(cfg.n_layers as u32);
    check(&mut ReferenceShard::load(&g, &cfg, whole).unwrap(), 1e-5, "reference");
    // The CPU backend gives a row the same bits in any step, so a fork's are its parent's.
    check(&mut CpuShard::load(&g, &cfg, whole).unwrap(), 0.0, "cpu");
    let ctx = edge_node::gpu::GpuContext::new().unwrap();
    check(&mut edge_node::gpu::GpuShard::load(ctx, &g, &cfg, whole, Default::default()).unwrap(), 1e-3, "wgpu");
}

#[test]
fn a_stage_without_the_head_forks_its_layers() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q8_0).load();
    let body = ShardSpec { layer_start: 0, layer_end: 2, embed: true, head: false };
    let ids = prompt(cfg.vocab, 9, 2);
    let mut shard = CpuShard::load(&g, &cfg, body).unwrap();
    shard.open_sequence(1, 32).unwrap();
    let h = hidden(shard.forward(1, ShardInput::Tokens(&ids), HeadOutput::ArgmaxLast).unwrap());
    shard.open_sequence(2, 32).unwrap();
    shard.fork(1, 2, 8).unwrap();
    let last = hidden(shard.forward(2, ShardInput::Tokens(&ids[8..]), HeadOutput::ArgmaxLast).unwrap());
    assert_eq!(last, h[8 * cfg.dim..], "the last position's hidden state, bit for bit");
}
