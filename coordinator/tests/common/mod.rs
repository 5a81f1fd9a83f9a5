//! Helpers of the planner tests. Most cases use a toy model whose costs are easy to work out by hand (see
//! `toy`): 10 layers of 1,000,000 bytes, embedding and head of 500,000 bytes, 1000 bytes of KV per token per layer,
//! a 1000-byte hidden state, and nodes of 1 GB/s GEMV, 10 us dispatches and links of 100 us / 100 MB/s. At
//! context 100:
//! - one layer on a 1 GB/s node: (1,000,000 + 1000 x 100/2) / 1e3 + 6 x 10 = 1110 us;
//! - embedding: 1 dispatch = 10 us; head: 500,000 / 1e3 + 2 x 10 = 520 us; every stage: + 100 us (step);
//! - a node's link term: 100 + 1000 / 100 = 110 us, of which 10 keep its link busy; a hop between two such
//!   nodes: 220 us;
//! - workspace: 256 x (2 x 64 + (64 + 2 x 32) + 64 + 64 + 128) x 4 = 524,288 bytes, + 32 x 256 x 4 = 32,768 on
//!   the head stage; KV cache: 1000 x 100 x sequences bytes per layer.
#![allow(dead_code)]

use edge_coord::plan::cost::{memory_for_usable, usable_memory};
use edge_coord::plan::{LinkProfile, NodeProfile, Plan, PlanRequest, TpMode};
use edge_coord::ModelDescription;

pub fn toy(layers: usize) -> ModelDescription {
    ModelDescription {
        arch: "llama".into(),
        n_layers: layers,
        dim: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_dim: 128,
        vocab: 256,
        ffn_block: 32,
        layer_weight_bytes: vec![1_000_000; layers],
        embed_bytes: 500_000,
        head_bytes: 500_000,
        tied_embeddings: false,
        native_layer_bytes: 0,
        native_head_bytes: 0,
        kv_bytes_per_token_per_layer: 1000,
        layer_windows: vec![],
        activation_bytes_per_token: 1000,
        flops_per_token_per_layer: 0,
        context: 1000,
    }
}

/// A node with `usable` bytes the planner may use.
pub fn node(id: &str, usable: u64, gemv_gbps: f64) -> NodeProfile {
    NodeProfile {
        id: id.into(),
        memory_bytes: memory_for_usable(usable),
        gemv_gbps,
        dispatch_us: 10.0,
        row_gmacs: 0.0,
        native_weights: false,
        link: LinkProfile { latency_us: 100.0, bandwidth_mbps: 100.0 },
        host: None,
    }
}

pub fn req(context: usize, sequences: usize) -> PlanRequest {
    PlanRequest { context, sequences, tensor_parallel: TpMode::Off }
}

/// `(node, start, end)` of each stage of a plan of whole layers.
pub fn layout(p: &Plan) -> Vec<(usize, u32, u32)> {
    p.stages
        .iter()
        .map(|s| {
            assert_eq!(s.members.len(), 1, "{p:?}");
            (s.members[0].node, s.layer_start, s.layer_end)
        })
        .collect()
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Checks that a plan is well formed: stages cover the layers in order, embed first, head last, every member's
/// memory within its node's usable memory, no node used twice.
pub fn check_plan(model: &ModelDescription, nodes: &[NodeProfile], p: &Plan) {
    let mut at = 0;
    let mut used = Vec::new();
    for (i, s) in p.stages.iter().enumerate() {
        assert_eq!(s.layer_start, at, "{p:?}");
        assert!(s.layer_end > s.layer_start, "{p:?}");
        assert_eq!(s.embed, i == 0);
        assert_eq!(s.head, i + 1 == p.stages.len());
        at = s.layer_end;
        for m in &s.members {
            assert!(m.memory_bytes <= usable_memory(nodes[m.node].memory_bytes), "{m:?} on {:?}", nodes[m.node]);
            assert!(!used.contains(&m.node), "node {} used twice: {p:?}", m.node);
            used.push(m.node);
        }
    }
    assert_eq!(at as usize, model.n_layers);
}
