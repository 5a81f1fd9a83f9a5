//! The planner on hand-checked cases, against a brute-force search, at cluster scale, and through the CLI. The
//! toy model and nodes of most cases are described in `common`.

mod common;

use std::process::Command;
use std::time::Instant;

use edge_coord::model_desc::ModelShape;
use edge_coord::plan::cost::{memory_for_usable, usable_memory, CostModel, TpGroup};
use edge_coord::plan::{
    plan, predict, LinkProfile, NodeProfile, Plan, PlanError, PlanRequest, Stage, StageMember, TpMode,
};
use edge_coord::ModelDescription;
use edge_node::quant::GgmlType;
use proptest::prelude::*;

use common::*;

#[test]
fn one_fast_node_that_fits_runs_alone() {
    // Whole model on the 2 GB/s node: 10 x (1,050,000 / 2e3 + 60) + 10 + (500,000 / 2e3 + 20) + 100 = 6230 us.
    // Split with the 1 GB/s node the best is 7 + 3 layers: (7 x 585 + 10 + 100) + (3 x 1110 + 520 + 100) + 2 x 220
    // = 8595 us: slower, so the slow node is left out.
    let model = toy(10);
    let nodes = [node("slow", 100_000_000, 1.0), node("fast", 100_000_000, 2.0)];
    let p = plan(&model, &nodes, &req(100, 1)).unwrap();
    assert_eq!(layout(&p), vec![(1, 0, 10)]);
    assert!(close(p.prediction.token_latency_us, 6230.0), "{:?}", p.prediction);
    assert!(p.prediction.hop_us.is_empty());
    assert!(close(p.prediction.tokens_per_s, 1e6 / 6230.0));
}

#[test]
fn a_slow_node_is_left_out_of_a_split() {
    // Neither fast node holds the model (at most 6 layers, see `two_equal_nodes_split_evenly`); the slow one could,
    // at 0.05 GB/s: 10 x (1,050,000 / 50 + 60) + ... > 200 ms. The two fast ones: 12,270 us (see below).
    let model = toy(10);
    let nodes = [node("a", 7_700_000, 1.0), node("slow", 1_000_000_000, 0.05), node("b", 7_700_000, 1.0)];
    let p = plan(&model, &nodes, &req(100, 1)).unwrap();
    check_plan(&model, &nodes, &p);
    let used: Vec<usize> = layout(&p).iter().map(|s| s.0).collect();
    assert_eq!(used, vec![0, 2], "{p:?}");
    assert!(close(p.prediction.token_latency_us, 12_270.0), "{:?}", p.prediction);
}

#[test]
fn two_equal_nodes_split_evenly() {
    // Memory: 7,700,000 usable holds 6 layers and not 7 in either end stage:
    //   first 6: 6,000,000 + 500,000 (embed) + 6 x 100,000 (KV) + 524,288 = 7,624,288 <= 7,700,000
    //   last 6:  6,000,000 + 500,000 (head) + 600,000 + 524,288 + 32,768 = 7,657,056 <= 7,700,000
    //   first 7: 7,000,000 + 500,000 + 700,000 + 524,288 = 8,724,288 > 7,700,000; the whole model even more.
    // Latency does not depend on the split between equal nodes:
    //   (a x 1110 + 10 + 100) + (b x 1110 + 520 + 100) + 2 hops x 220 = 11,100 + 730 + 440 = 12,270 us.
    let model = toy(10);
    let nodes = [node("a", 7_700_000, 1.0), node("b", 7_700_000, 1.0)];
    let p = plan(&model, &nodes, &req(100, 1)).unwrap();
    check_plan(&model, &nodes, &p);
    let l = layout(&p);
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].0, 0, "the lower index takes the first stage");
    assert!((4..=6).contains(&(l[0].2 - l[0].1)) && (4..=6).contains(&(l[1].2 - l[1].1)), "{l:?}");
    assert!(close(p.prediction.token_latency_us, 12_270.0), "{:?}", p.prediction);
    assert_eq!(p.prediction.hop_us, vec![220.0, 220.0]);

    // Two sequences: the split balances the occupancies (stage + 2 x 10 us that its own link carries a hidden
    // state; the links' latencies add to a token's time, not to a stage's busy time):
    //   5 + 5: 5 x 1110 + 110 + 20 = 5680 and 5 x 1110 + 620 + 20 = 6190 -> bottleneck 6190
    //   6 + 4: 6790 and 5080 -> 6790;  4 + 6: 4570 and 7300 -> 7300.
    // Throughput = min(2 x 1e6 / 12,270 = 163.0, 1e6 / 6190 = 161.6) = 161.6 tok/s.
    let p = plan(&model, &nodes, &req(100, 2)).unwrap();
    assert_eq!(layout(&p), vec![(0, 0, 5), (1, 5, 10)]);
    assert!(close(p.prediction.bottleneck_us, 6190.0), "{:?}", p.prediction);
    assert!(close(p.prediction.throughput_tokens_per_s, 1e6 / 6190.0), "{:?}", p.prediction);
    assert!(close(p.prediction.token_latency_us, 12_270.0));
    assert_eq!(p.prediction.stage_us, vec![5660.0, 6170.0]);
}

#[test]
fn the_faster_node_gets_more_layers() {
    // 2 GB/s (a) and 1 GB/s (b), four sequences (throughput). Per layer: a 1,050,000 / 2e3 + 60 = 585 us, b 1110.
    // Occupancies with a first: a 585 x + 10 + 100 + 20, b 1110 y + 520 + 100 + 20:
    //   7 + 3: 4225 / 3970 -> 4225;  6 + 4: 3640 / 5080;  8 + 2: 4810 / 2860.
    // With b first (a carries the head, 500,000 / 2e3 + 20 = 270 us): 3 + 7 -> a 4485, 4 + 6 -> b 4570: worse.
    // The single stage on a (6230 us, see above) gives 160.5 tok/s; the split 1e6 / 4225 = 236.7 (the latency,
    // 4205 + 3950 + 4 x 110 = 8595 us, allows 4 x 1e6 / 8595 = 465).
    let model = toy(10);
    let nodes = [node("b", 100_000_000, 1.0), node("a", 100_000_000, 2.0)];
    let p = plan(&model, &nodes, &req(100, 4)).unwrap();
    check_plan(&model, &nodes, &p);
    assert_eq!(layout(&p), vec![(1, 0, 7), (0, 7, 10)]);
    assert!(close(p.prediction.bottleneck_us, 4225.0), "{:?}", p.prediction);
    assert!(close(p.prediction.throughput_tokens_per_s, 1e6 / 4225.0));
    assert!(close(p.prediction.token_latency_us, 8595.0));
}

#[test]
fn sequences_prefer_more_stages_when_it_raises_throughput() {
    // One node holds everything: alone, 10 x 1110 + 10 + 520 + 100 = 11,730 us, 85.3 tok/s whatever the load.
    // With a second equal node and 8 sequences, 5 + 5 layers: bottleneck 6190 us -> 161.6 tok/s (latency 12,270 us,
    // 8 x 1e6 / 12,270 = 652 tok/s is not the limit). For one sequence the single stage stays best.
    let model = toy(10);
    let nodes = [node("a", 100_000_000, 1.0), node("b", 100_000_000, 1.0)];
    let one = plan(&model, &nodes, &req(100, 1)).unwrap();
    assert_eq!(layout(&one), vec![(0, 0, 10)]);
    assert!(close(one.prediction.token_latency_us, 11_730.0));
    let many = plan(&model, &nodes, &req(100, 8)).unwrap();
    assert_eq!(layout(&many), vec![(0, 0, 5), (1, 5, 10)]);
    assert!(close(many.prediction.throughput_tokens_per_s, 1e6 / 6190.0), "{:?}", many.prediction);
    let single_for_eight = predict(&model, &nodes, &req(100, 8), &one.stages);
    assert!(close(single_for_eight.throughput_tokens_per_s, 1e6 / 11_730.0));
    assert!(many.prediction.throughput_tokens_per_s > single_for_eight.throughput_tokens_per_s);
}

/// The toy model with 1,000,000 multiply-adds per token per layer, on nodes whose batched rows run at `row_gmacs`.
fn batched_case(row_gmacs: f64, nodes: usize) -> (ModelDescription, Vec<NodeProfile>) {
    let mut model = toy(10);
    model.flops_per_token_per_layer = 2_000_000;
    let nodes = (0..nodes).map(|i| NodeProfile { row_gmacs, ..node(&format!("n{i}"), 100_000_000, 1.0) }).collect();
    (model, nodes)
}

#[test]
fn a_node_with_batched_kernels_runs_its_sequences_as_one_batch() {
    // Each row after the first adds, per layer, its multiply-adds at 10 G MAC/s (1,000,000 / 1e4 = 100 us) and
    // its own KV read (50 us); the head 64 x 256 / 1e4 = 1.6384 us. Eight sequences in one step of 8 rows:
    // 11,730 + 7 x (10 x 150 + 1.6384) = 22,241.4688 us for 8 tokens.
    let (model, nodes) = batched_case(10.0, 1);
    let p = plan(&model, &nodes, &req(100, 8)).unwrap();
    assert_eq!(layout(&p), vec![(0, 0, 10)]);
    assert!(close(p.prediction.token_latency_us, 11_730.0), "{:?}", p.prediction);
    assert_eq!((p.prediction.batch, p.prediction.micro_batches), (8, 1));
    assert!(close(p.prediction.batch_latency_us, 22_241.468_8), "{:?}", p.prediction);
    assert!(close(p.prediction.throughput_tokens_per_s, 8e6 / 22_241.468_8), "{:?}", p.prediction);
    // Without batched kernels a batch costs each row a whole step: one token per 11,730 us, batch 1.
    let (model, nodes) = batched_case(0.0, 1);
    let p = plan(&model, &nodes, &req(100, 8)).unwrap();
    assert_eq!((p.prediction.batch, p.prediction.micro_batches), (1, 8));
    assert!(close(p.prediction.throughput_tokens_per_s, 1e6 / 11_730.0), "{:?}", p.prediction);
}

#[test]
fn a_batched_pipeline_keeps_both_stages_busy_with_two_micro_batches() {
    // Two such nodes, 8 sequences in 2 groups of 4, 5 + 5 layers. Links: a batch's hidden states follow each
    // other after one latency, 100 + 4 x 10 = 140 us a node, of which 40 keep the link busy. First stage:
    // 5 x 1110 + 10 + 100 + 3 x 5 x 150 = 7910 us, occupancy 7910 + 2 x 40 = 7990; last: 5 x 1110 + 520 + 100 +
    // 3 x (750 + 1.6384) = 8424.9152, occupancy 8504.9152, the bottleneck. Latency 7910 + 8424.9152 + 4 x 140 =
    // 16,894.9152 < 2 x 8504.9152: 8e6 / 17,009.8304 tok/s (one batch of 8 on both: 346.9; on one node: 359.7;
    // unbatched: 161.6).
    let (model, nodes) = batched_case(10.0, 2);
    let p = plan(&model, &nodes, &req(100, 8)).unwrap();
    assert_eq!(layout(&p), vec![(0, 0, 5), (1, 5, 10)]);
    assert_eq!((p.prediction.batch, p.prediction.micro_batches), (4, 2));
    assert!(close(p.prediction.batch_bottleneck_us, 8504.9152), "{:?}", p.prediction);
    assert!(close(p.prediction.throughput_tokens_per_s, 8e6 / 17_009.830_4), "{:?}", p.prediction);
    let single = predict(&model, &nodes, &req(100, 8), &plan(&model, &nodes[..1], &req(100, 8)).unwrap().stages);
    assert!(close(single.throughput_tokens_per_s, 8e6 / 22_241.468_8));
}

/// The same two stages on one machine take turns on its cores: a round lasts both stages' busy times added up, so
/// two groups of four gain nothing over one batch of all eight (244.9 against 346.9 tok/s).
#[test]
fn stages_sharing_a_host_move_their_sequences_as_one_group() {
    let (model, mut nodes) = batched_case(10.0, 2);
    let stages = plan(&model, &nodes, &req(100, 8)).unwrap().stages;
    for n in &mut nodes {
        n.host = edge_coord::plan::host_of("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW");
    }
    assert_eq!(nodes[0].host.as_deref(), Some("/ip4/127.0.0.1"));
    let p = predict(&model, &nodes, &req(100, 8), &stages);
    assert_eq!((p.batch, p.micro_batches), (8, 1), "{p:?}");
    assert!(close(p.throughput_tokens_per_s, 8e6 / p.batch_latency_us), "{p:?}");
    assert!((p.throughput_tokens_per_s - 346.9).abs() < 0.1, "{p:?}");
    // On hosts of their own: two groups of four, as above.
    nodes[1].host = edge_coord::plan::host_of("/ip4/10.0.0.2/udp/4001/quic-v1");
    assert_eq!((predict(&model, &nodes, &req(100, 8), &stages).batch), 4);
    assert_eq!(edge_coord::plan::host_of("/p2p/12D3KooW"), None);
}

#[test]
fn batch_sizes_are_powers_of_two_and_all_sequences_up_to_the_workers_batch() {
    use edge_coord::plan::{batches, MAX_BATCH};
    assert_eq!(MAX_BATCH, 32);
    assert_eq!(batches(1), vec![(1, 1)]);
    assert_eq!(batches(8), vec![(1, 8), (2, 4), (4, 2), (8, 1)]);
    assert_eq!(batches(5), vec![(1, 5), (2, 3), (4, 2), (5, 1)]);
    for s in 1..=100 {
        let b = batches(s);
        assert!(b.iter().all(|&(size, groups)| size * groups >= s && size * (groups - 1) < s), "{s}: {b:?}");
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(b.len(), (s.min(32) as f64).log2().ceil() as usize + 1, "{s}: {b:?}");
        assert_eq!(b.last().unwrap().0, s.min(32));
    }
}

#[test]
fn memory_limits_are_respected() {
    // The 4 GB/s node has room for exactly 3 layers with the head (3,000,000 + 500,000 + 300,000 + 524,288 +
    // 32,768 = 4,357,056) and 3 with the embedding (4,324,288; 4 would need 5,424,288). Latency wants as many
    // layers as possible on it: it gets exactly 3.
    let model = toy(10);
    let nodes = [node("big", 100_000_000, 1.0), node("fast", 4_357_056, 4.0)];
    let p = plan(&model, &nodes, &req(100, 1)).unwrap();
    check_plan(&model, &nodes, &p);
    let fast: Vec<_> = layout(&p).into_iter().filter(|s| s.0 == 1).collect();
    assert_eq!(fast.len(), 1, "{p:?}");
    assert_eq!(fast[0].2 - fast[0].1, 3, "{p:?}");
    // One byte less than 3 layers with the embedding need: at most 2 layers at either end.
    let nodes = [node("big", 100_000_000, 1.0), node("fast", 4_324_287, 4.0)];
    let p = plan(&model, &nodes, &req(100, 1)).unwrap();
    check_plan(&model, &nodes, &p);
    let fast: Vec<_> = layout(&p).into_iter().filter(|s| s.0 == 1).collect();
    assert!(fast.iter().all(|s| s.2 - s.1 <= 2), "{p:?}");
}

#[test]
fn a_cluster_too_small_is_an_error_with_the_numbers() {
    // Needed: 10,000,000 + 500,000 + 500,000 + 10 x 100,000 (KV) + 524,288 + 32,768 = 12,557,056 bytes;
    // available: 2 x 3,000,000 usable.
    let model = toy(10);
    let nodes = [node("a", 3_000_000, 1.0), node("b", 3_000_000, 1.0)];
    let err = plan(&model, &nodes, &req(100, 1)).unwrap_err();
    let PlanError::DoesNotFit { needed_bytes, available_bytes, nodes: n, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*needed_bytes, *available_bytes, *n), (12_557_056, 6_000_000, 2));
    let msg = err.to_string();
    assert!(msg.contains("does not fit in the cluster's memory") && msg.contains("12.0 MiB"), "{msg}");
    assert!(msg.contains("5.7 MiB") && msg.contains("100 positions x 1 sequences"), "{msg}");

    // Enough memory in total, but every node is too small for one layer and a workspace.
    let nodes: Vec<_> = (0..10).map(|i| node(&format!("n{i}"), 1_500_000, 1.0)).collect();
    let msg = plan(&model, &nodes, &req(100, 1)).unwrap_err().to_string();
    assert!(msg.contains("no split into stages fits"), "{msg}");
}

#[test]
fn bad_requests_are_errors() {
    let model = toy(10);
    let nodes = [node("a", 100_000_000, 1.0)];
    assert_eq!(plan(&model, &[], &req(100, 1)).unwrap_err(), PlanError::NoNodes);
    assert_eq!(plan(&model, &nodes, &req(100, 0)).unwrap_err(), PlanError::NoSequences);
    assert_eq!(plan(&model, &nodes, &req(0, 1)).unwrap_err(), PlanError::BadContext { context: 0, max: 1000 });
    assert_eq!(plan(&model, &nodes, &req(1001, 1)).unwrap_err(), PlanError::BadContext { context: 1001, max: 1000 });
    let mut bad = nodes[0].clone();
    bad.gemv_gbps = 0.0;
    assert!(matches!(plan(&model, &[bad], &req(100, 1)), Err(PlanError::BadNode { .. })));
    assert_eq!("auto".parse::<TpMode>(), Ok(TpMode::Auto));
    assert_eq!("off".parse::<TpMode>(), Ok(TpMode::Off));
    assert_eq!("3".parse::<TpMode>(), Ok(TpMode::Force(3)));
    assert!("two".parse::<TpMode>().is_err());
}

// ---- brute force ----

/// Every ordered choice of distinct nodes and every split of the layers among them: the best value
/// (`max(latency / sequences, bottleneck)`, i.e. 1 / throughput; the latency for one sequence), or None.
fn brute_force(model: &ModelDescription, nodes: &[NodeProfile], r: &PlanRequest) -> Option<(f64, Plan)> {
    brute_force_with(model, nodes, r, None)
}

/// [`brute_force`] where `group` (if any) is one more unit that runs a stage tensor-parallel, its members not
/// available as single nodes.
fn brute_force_with(
    model: &ModelDescription,
    nodes: &[NodeProfile],
    r: &PlanRequest,
    group: Option<&TpGroup>,
) -> Option<(f64, Plan)> {
    let cost = CostModel::new(model, r);
    let l = model.n_layers;
    let in_group = |n: usize| group.is_some_and(|g| g.shares.iter().any(|s| s.node == n));
    let units = nodes.len() + group.is_some() as usize;
    let mut best: Option<(f64, Plan)> = None;
    let mut seq = Vec::new();
    fn orders(n: usize, max_len: usize, seq: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
        if !seq.is_empty() {
            f(seq);
        }
        if seq.len() == max_len {
            return;
        }
        for i in 0..n {
            if !seq.contains(&i) {
                seq.push(i);
                orders(n, max_len, seq, f);
                seq.pop();
            }
        }
    }
    fn splits(l: usize, parts: usize, cur: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
        let used: usize = cur.iter().sum();
        if cur.len() + 1 == parts {
            if l > used {
                cur.push(l - used);
                f(cur);
                cur.pop();
            }
            return;
        }
        for m in 1..l.saturating_sub(used) {
            cur.push(m);
            splits(l, parts, cur, f);
            cur.pop();
        }
    }
    orders(units, l, &mut seq, &mut |order| {
        splits(l, order.len(), &mut Vec::new(), &mut |lens| {
            let mut stages = Vec::new();
            let mut a = 0;
            for (&n, &m) in order.iter().zip(lens) {
                let (embed, head) = (a == 0, a + m == l);
                if n == nodes.len() {
                    let g = group.unwrap();
                    let mut members = Vec::new();
                    for (i, sh) in g.shares.iter().enumerate() {
                        let memory_bytes = g.member_memory(
                            &cost,
                            i,
                            cost.layer_bytes(a, a + m),
                            cost.kv_cache_bytes(a, a + m),
                            embed,
                            head,
                        );
                        if memory_bytes > usable_memory(nodes[sh.node].memory_bytes) {
                            return;
                        }
                        members.push(StageMember {
                            node: sh.node,
                            kv_heads: sh.kv_heads,
                            ffn: sh.ffn,
                            q_heads: sh.q_heads,
                            memory_bytes,
                        });
                    }
                    let (layer_start, layer_end) = (a as u32, (a + m) as u32);
                    stages.push(Stage { layer_start, layer_end, embed, head, members, compute_us: 0.0 });
                    a += m;
                    continue;
                }
                if in_group(n) {
                    return;
                }
                let memory_bytes = cost.stage_memory(a, a + m, embed, head);
                if memory_bytes > usable_memory(nodes[n].memory_bytes) {
                    return;
                }
                stages.push(Stage {
                    layer_start: a as u32,
                    layer_end: (a + m) as u32,
                    embed,
                    head,
                    members: vec![StageMember {
                        node: n,
                        kv_heads: (0, model.n_kv_heads as u32),
                        ffn: (0, model.ffn_dim as u32),
                        q_heads: None,
                        memory_bytes,
                    }],
                    compute_us: 0.0,
                });
                a += m;
            }
            let p = predict(model, nodes, r, &stages);
            let v = 1e6 / p.throughput_tokens_per_s;
            if best.as_ref().is_none_or(|b| v < b.0) {
                best = Some((v, Plan { stages, prediction: p }));
            }
        })
    });
    best
}

fn arb_node() -> impl Strategy<Value = NodeProfile> {
    let rate = prop_oneof![Just(0.0), 0.05f64..50.0]; // no batched kernels, or a batched row rate
    (0.2f64..1.3, 0.5f64..8.0, 0.0f64..50.0, 0.0f64..2000.0, 1.0f64..1000.0, rate, any::<bool>()).prop_map(
        |(mem, g, d, lat, bw, row, native)| NodeProfile {
            id: String::new(),
            memory_bytes: (mem * 1e7) as u64, // scaled to the model below
            gemv_gbps: g,
            dispatch_us: d,
            row_gmacs: row,
            native_weights: native,
            link: LinkProfile { latency_us: lat, bandwidth_mbps: bw },
            host: None,
        },
    )
}

fn arb_case(uniform: bool) -> impl Strategy<Value = (ModelDescription, Vec<NodeProfile>, PlanRequest)> {
    arb_case_of(uniform, 2..=8, prop::collection::vec(arb_node(), 1..=4))
}

/// Nodes and copies of them that are slower, hold less and sit behind slower links (factor 1: an equal copy).
fn arb_nodes_with_worse_copies() -> impl Strategy<Value = Vec<NodeProfile>> {
    (prop::collection::vec(arb_node(), 1..=3), prop::collection::vec((0usize..3, 1.0f64..2.0, any::<bool>()), 2..=4))
        .prop_map(|(mut nodes, copies)| {
            let n = nodes.len();
            for (i, f, equal) in copies {
                let mut c = nodes[i % n].clone();
                let f = if equal { 1.0 } else { f };
                c.gemv_gbps /= f;
                c.memory_bytes = (c.memory_bytes as f64 / f) as u64;
                c.dispatch_us *= f;
                c.row_gmacs /= f;
                c.link.latency_us *= f;
                c.link.bandwidth_mbps /= f;
                nodes.push(c);
            }
            nodes
        })
}

fn arb_case_of(
    uniform: bool,
    layers: std::ops::RangeInclusive<usize>,
    nodes: impl Strategy<Value = Vec<NodeProfile>>,
) -> impl Strategy<Value = (ModelDescription, Vec<NodeProfile>, PlanRequest)> {
    (
        layers,
        prop::collection::vec(100_000u64..3_000_000, 8),
        0u64..3_000_000,
        0u64..3_000_000,
        0u64..3000,
        1u64..100_000,
        nodes,
        1usize..=1000,
        1usize..=8,
        0u64..4_000_000,
        prop_oneof![Just(1.0), 0.5f64..1.0], // what a cpu node reads of the counted weights
    )
        .prop_map(move |(l, sizes, embed, head, kv, act, mut nodes, context, sequences, flops, native)| {
            let mut m = toy(l);
            m.flops_per_token_per_layer = flops;
            m.layer_weight_bytes = if uniform { vec![sizes[0]; l] } else { sizes[..l].to_vec() };
            m.native_layer_bytes = (m.layer_weight_bytes.iter().sum::<u64>() as f64 * native) as u64;
            m.native_head_bytes = (head as f64 * (1.0 + native) / 2.0) as u64;
            (m.embed_bytes, m.head_bytes, m.kv_bytes_per_token_per_layer, m.activation_bytes_per_token) =
                (embed, head, kv, act);
            // Node memory: 0.2..1.3 x what the whole model needs on one node.
            let cost = CostModel::new(&m, &req(context, sequences));
            let whole = cost.stage_memory(0, l, true, true) as f64;
            for (i, n) in nodes.iter_mut().enumerate() {
                n.id = format!("n{i}");
                n.memory_bytes = memory_for_usable((n.memory_bytes as f64 / 1e7 * whole) as u64);
            }
            (m, nodes, req(context, sequences))
        })
}

/// The plan's value is the brute force's best (the plan, if any), and both agree on when nothing fits.
fn equals_brute_force(
    model: &ModelDescription,
    nodes: &[NodeProfile],
    r: &PlanRequest,
) -> Result<Option<Plan>, TestCaseError> {
    match (plan(model, nodes, r), brute_force(model, nodes, r)) {
        (Ok(p), Some((v, best))) => {
            check_plan(model, nodes, &p);
            let pv = 1e6 / p.prediction.throughput_tokens_per_s;
            prop_assert!(close(pv, v), "planner {pv} vs brute force {v}\nplanner {:?}\nbest {:?}", p, best);
            Ok(Some(p))
        }
        (Err(PlanError::DoesNotFit { .. }), None) => Ok(None),
        (got, want) => Err(TestCaseError::fail(format!("planner {got:?} vs brute force {want:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With layers of equal size the search is exact: the plan's value equals the brute force's best, for one
    /// sequence (latency) and for several (throughput), and both agree on when nothing fits.
    #[test]
    fn the_search_equals_brute_force((model, nodes, r) in arb_case(true)) {
        if let Some(p) = equals_brute_force(&model, &nodes, &r)? {
            prop_assert_eq!(predict(&model, &nodes, &r, &p.stages), p.prediction.clone());
        }
    }

    /// More nodes than layers, many of them worse copies of others (which the search drops when enough others
    /// dominate them): still the brute force's best.
    #[test]
    fn dropping_dominated_nodes_keeps_the_best_plan(
        (model, nodes, r) in arb_case_of(true, 2..=3, arb_nodes_with_worse_copies())
    ) {
        equals_brute_force(&model, &nodes, &r)?;
    }

    /// With layers of different sizes plans still fit, and are found whenever one exists.
    #[test]
    fn plans_fit_with_mixed_layer_sizes((model, nodes, r) in arb_case(false)) {
        let got = plan(&model, &nodes, &r);
        let want = brute_force(&model, &nodes, &r);
        match (&got, &want) {
            (Ok(p), Some((v, _))) => {
                check_plan(&model, &nodes, p);
                prop_assert!(1e6 / p.prediction.throughput_tokens_per_s >= v * (1.0 - 1e-9));
            }
            (Err(PlanError::DoesNotFit { .. }), None) => {}
            // The DP sizes middle stages for the largest window of layers: it may miss a plan that fits only
            // because its middle stages hold small layers.
            (Err(PlanError::DoesNotFit { .. }), Some(_)) => {}
            _ => prop_assert!(false, "planner {got:?} vs brute force {want:?}"),
        }
    }
}

/// The k fastest nodes (reading `model`'s weights, then memory, then index), in index order: the planner's TP
/// candidates.
fn fastest(model: &ModelDescription, nodes: &[NodeProfile], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| {
        (nodes[b].weight_gbps(model), nodes[b].memory_bytes, b)
            .partial_cmp(&(nodes[a].weight_gbps(model), nodes[a].memory_bytes, a))
            .unwrap()
    });
    order.truncate(k);
    order.sort_unstable();
    order
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `TpMode::Auto` is exact too over its search space: whole-layer plans, and plans in which a group of the k
    /// fastest nodes runs one stage tensor-parallel (k = 2..=min(n_kv_heads, nodes)).
    #[test]
    fn auto_equals_brute_force_with_groups((mut model, nodes, mut r) in arb_case(true), fast_links in any::<bool>()) {
        (model.n_heads, model.n_kv_heads) = (8, 4);
        r.tensor_parallel = TpMode::Auto;
        let mut nodes = nodes;
        if fast_links {
            // Fast links and slow nodes: where tensor parallelism pays.
            for n in &mut nodes {
                n.gemv_gbps /= 20.0;
                n.link = LinkProfile { latency_us: n.link.latency_us / 1000.0, bandwidth_mbps: n.link.bandwidth_mbps * 1000.0 };
            }
        }
        let cost = CostModel::new(&model, &r);
        let mut want = brute_force(&model, &nodes, &r);
        for k in 2..=nodes.len().min(model.n_kv_heads) {
            let shares = TpGroup::split(&cost, &nodes, &fastest(&model, &nodes, k)).unwrap();
            let g = TpGroup::new(&cost, &nodes, shares);
            if let Some(c) = brute_force_with(&model, &nodes, &r, Some(&g)) {
                if want.as_ref().is_none_or(|w| c.0 < w.0) {
                    want = Some(c);
                }
            }
        }
        match (plan(&model, &nodes, &r), want) {
            (Ok(p), Some((v, best))) => {
                check_plan(&model, &nodes, &p);
                let pv = 1e6 / p.prediction.throughput_tokens_per_s;
                prop_assert!(close(pv, v), "planner {pv} vs brute force {v}\nplanner {:?}\nbest {:?}", p, best);
                prop_assert_eq!(predict(&model, &nodes, &r, &p.stages), p.prediction.clone());
            }
            (Err(PlanError::DoesNotFit { .. }), None) => {}
            (got, want) => prop_assert!(false, "planner {got:?} vs brute force {want:?}"),
        }
    }
}

// ---- tensor parallel ----

fn smollm2() -> ModelDescription {
    ModelDescription::synthetic(ModelShape::SMOLLM2_135M, GgmlType::Q4_1)
}

fn tp_node(id: &str, memory: u64, gemv_gbps: f64, latency_us: f64, bandwidth_mbps: f64) -> NodeProfile {
    NodeProfile {
        id: id.into(),
        memory_bytes: memory,
        gemv_gbps,
        dispatch_us: 1.0,
        row_gmacs: 0.0,
        native_weights: false,
        link: LinkProfile { latency_us, bandwidth_mbps },
        host: None,
    }
}

/// A model with one key/value head (gemma3-270m's shape) splits its query heads: every member holds the key/value
/// head whole (the whole KV cache), the query heads and FFN blocks are dealt out, and at most 4 members (its
/// query heads) take part.
#[test]
fn one_kv_head_splits_query_heads() {
    let shape = ModelShape::GEMMA3_270M;
    let model = ModelDescription::synthetic(shape, GgmlType::Q8_0);
    let nodes: Vec<NodeProfile> = (0..5).map(|i| tp_node(&format!("n{i}"), 4 << 30, 2.0, 100.0, 100.0)).collect();
    for k in [2, 4] {
        let r = PlanRequest { context: 2048, sequences: 1, tensor_parallel: TpMode::Force(k) };
        let p = plan(&model, &nodes, &r).unwrap();
        check_plan(&model, &nodes, &p);
        let m = &p.stages[0].members;
        assert_eq!(m.len(), k);
        let mut next = 0;
        for member in m {
            let q = member.q_heads.expect("query heads split");
            assert_eq!((member.kv_heads, q.0), ((0, 1), next), "{m:?}");
            next = q.1;
            let slice = member.slice(&model).unwrap();
            slice.validate(4, 1, 2048, model.ffn_block as u32).unwrap();
            // The whole KV cache on every member: more than the layers' KV of a 1/k share.
            let kv = 2048 * model.kv_bytes_per_token_per_layer * 18;
            assert!(member.memory_bytes > kv, "{member:?}");
        }
        assert_eq!(next, 4);
    }
    let r = PlanRequest { context: 2048, sequences: 1, tensor_parallel: TpMode::Force(5) };
    let e = plan(&model, &nodes, &r).unwrap_err().to_string();
    assert!(e.contains("4 query heads"), "{e}");
}

/// gemma3's local layers hold their window and one chunk (`511 + 256` positions) per sequence, its global layers
/// (every sixth) the whole context: read from the real file, counted in the stage memory, and what lets 4
/// sequences of 32k context fit a 2 GiB node (the full cache would need 4.8 GB).
#[test]
fn sliding_window_layers_bound_the_kv_cache_in_the_plan() {
    let path = edge_node::setup::known_model(&edge_node::setup::GEMMA3_270M);
    edge_node::setup::check_model(&path).unwrap_or_else(|e| panic!("{e}"));
    let g = edge_node::gguf::Gguf::open(&path).unwrap();
    let cfg = edge_node::model::ModelConfig::from_gguf(&g).unwrap();
    let model = ModelDescription::from_gguf(&g, &cfg).unwrap();
    let global: Vec<usize> = (0..18).filter(|&l| model.layer_windows[l].is_none()).collect();
    assert_eq!(global, [5, 11, 17]);
    assert!(model.layer_windows.iter().flatten().all(|&w| w == 512));

    let r = PlanRequest { context: 32_768, sequences: 4, tensor_parallel: TpMode::Off };
    let cost = CostModel::new(&model, &r);
    let per_pos = model.kv_bytes_per_token_per_layer; // 2 x 256 x 4 bytes
    assert_eq!(cost.kv_cache_bytes(0, 18), per_pos * 4 * (3 * 32_768 + 15 * (511 + 256)));
    assert_eq!(cost.kv_cache_bytes(0, 5), per_pos * 4 * 5 * 767, "local layers only");
    assert_eq!(cost.kv_cache_bytes_max(6), per_pos * 4 * (32_768 + 5 * 767), "any six layers hold one global");
    let short = CostModel::new(&model, &PlanRequest { context: 300, ..r });
    assert_eq!(short.kv_cache_bytes(0, 18), per_pos * 4 * 18 * 300, "a short context bounds every layer");

    let node = [tp_node("a", 2 << 30, 2.0, 100.0, 100.0)];
    let p = plan(&model, &node, &r).unwrap();
    check_plan(&model, &node, &p);
    assert!(p.stages[0].members[0].memory_bytes < 2 << 30);
    let full = ModelDescription { layer_windows: Vec::new(), ..model.clone() };
    let e = plan(&full, &node, &r).unwrap_err().to_string();
    assert!(e.contains("KV cache"), "{e}");
}

#[test]
fn forced_tensor_parallel_splits_whole_heads_and_ffn_blocks() {
    let model = smollm2();
    let nodes = [tp_node("a", 1 << 30, 2.0, 100.0, 100.0), tp_node("b", 1 << 30, 2.0, 100.0, 100.0)];
    let r = PlanRequest { context: 2048, sequences: 1, tensor_parallel: TpMode::Force(2) };
    let p = plan(&model, &nodes, &r).unwrap();
    assert_eq!(p.stages.len(), 1);
    let s = &p.stages[0];
    assert!(s.embed && s.head && s.is_tensor_parallel());
    assert_eq!((s.layer_start, s.layer_end), (0, 30));
    assert_eq!(s.spec(), edge_protocol::ShardSpec::whole(30));
    let m = &s.members;
    assert_eq!(m.len(), 2);
    // 3 kv heads over 2 equal nodes: 2 + 1, whole groups (3 query heads each).
    assert_eq!((m[0].node, m[0].kv_heads, m[1].node, m[1].kv_heads), (0, (0, 2), 1, (2, 3)));
    // FFN columns in blocks of 32, contiguous, covering 0..1536; the member with one head takes more columns.
    assert_eq!((m[0].ffn.0, m[0].ffn.1, m[1].ffn.0, m[1].ffn.1 as usize), (0, m[1].ffn.0, m[0].ffn.1, 1536));
    assert!(m.iter().all(|x| x.ffn.0 % 32 == 0 && x.ffn.1 % 32 == 0 && x.ffn.1 > x.ffn.0));
    assert!(m[1].ffn.1 - m[1].ffn.0 > m[0].ffn.1 - m[0].ffn.0, "{m:?}");
    let slice = m[0].slice(&model).unwrap();
    assert_eq!((slice.kv_heads, slice.ffn), (m[0].kv_heads, m[0].ffn));
    // Embedding and head are on both: each holds more than half the weights.
    assert!(m.iter().all(|x| x.memory_bytes > model.embed_bytes + model.head_bytes));
    // The prediction has no hops; the stage time includes 2 all-reduces and 2 syncs per layer:
    // all-reduce = 2 x 100 + 576 x 4 x 1 / 100 = 223.04 us.
    assert!(p.prediction.hop_us.is_empty());
    assert!(s.compute_us > 30.0 * 2.0 * (223.04 + 150.0), "{}", s.compute_us);
}

#[test]
fn forced_tensor_parallel_errors() {
    let model = smollm2();
    let big = |id: &str| tp_node(id, 1 << 30, 2.0, 100.0, 100.0);
    let nodes: Vec<_> = (0..4).map(|i| big(&format!("n{i}"))).collect();
    let force = |k| PlanRequest { context: 2048, sequences: 1, tensor_parallel: TpMode::Force(k) };
    let msg = plan(&model, &nodes, &force(4)).unwrap_err().to_string();
    assert!(msg.contains("only 3 key/value heads"), "{msg}");
    let msg = plan(&model, &nodes[..2], &force(3)).unwrap_err().to_string();
    assert!(msg.contains("only 2 nodes"), "{msg}");
    assert!(matches!(plan(&model, &nodes, &force(1)), Err(PlanError::BadTensorParallel { k: 1, .. })));
    let small: Vec<_> = (0..2).map(|i| tp_node(&format!("s{i}"), 100 << 20, 2.0, 100.0, 100.0)).collect();
    let msg = plan(&model, &small, &force(2)).unwrap_err().to_string();
    assert!(msg.contains("needs") && msg.contains("usable"), "{msg}");
}

/// Two slow (compute-bound) nodes that cannot hold SmolLM2 alone (about 125 MB at context 256 with a Q4_1
/// embedding), each with room for about half of every layer plus a copy of the embedding and head (about 90 MB).
/// Usable: 108 MB each.
fn tp_case(latency_us: f64, bandwidth_mbps: f64) -> (ModelDescription, Vec<NodeProfile>, PlanRequest) {
    let model = smollm2();
    let nodes = (0..2).map(|i| tp_node(&format!("n{i}"), 120_000_000, 0.5, latency_us, bandwidth_mbps)).collect();
    (model, nodes, PlanRequest { context: 256, sequences: 1, tensor_parallel: TpMode::Auto })
}

#[test]
fn auto_picks_tensor_parallel_on_fast_links_and_slow_nodes() {
    // Per layer at 0.5 GB/s a node spends 2,216,448 / 500 = 4433 us on weights; halving it saves ~2200 us, far more
    // than 2 all-reduces (2 x 1 + 2304 / 100,000 us) and 2 syncs (150 us) cost.
    let (model, nodes, r) = tp_case(1.0, 100_000.0);
    let auto = plan(&model, &nodes, &r).unwrap();
    check_plan(&model, &nodes, &auto);
    assert!(auto.stages.iter().any(|s| s.is_tensor_parallel()), "{auto:?}");
    let off = plan(&model, &nodes, &PlanRequest { tensor_parallel: TpMode::Off, ..r }).unwrap();
    assert!(off.stages.iter().all(|s| !s.is_tensor_parallel()));
    assert!(auto.prediction.token_latency_us < 0.8 * off.prediction.token_latency_us, "{auto:?}\n{off:?}");
}

#[test]
fn auto_keeps_whole_layers_on_slow_links() {
    // Each all-reduce costs 2 x 5000 + 2304 / 10 = 10,230 us, twice per layer: far more than half a layer.
    let (model, nodes, r) = tp_case(5000.0, 10.0);
    let auto = plan(&model, &nodes, &r).unwrap();
    check_plan(&model, &nodes, &auto);
    assert!(auto.stages.iter().all(|s| !s.is_tensor_parallel()), "{auto:?}");
    assert_eq!(auto.stages.len(), 2);
}

// ---- scale ----

/// 1,024 nodes of four profiles (phones to desktops) with various links.
fn big_cluster(memory_scale: u64) -> Vec<NodeProfile> {
    let profiles = [
        (1u64, 1.0, 40.0, 2000.0, 20.0, 0.0),
        (2, 2.5, 30.0, 1000.0, 50.0, 5.0),
        (4, 6.0, 20.0, 300.0, 120.0, 0.0),
        (16, 20.0, 10.0, 100.0, 1000.0, 100.0),
    ];
    (0..1024)
        .map(|i| {
            let (mem, g, d, lat, bw, row) = profiles[i * 7 % 4];
            NodeProfile {
                id: format!("node-{i:04}"),
                memory_bytes: mem * memory_scale,
                gemv_gbps: g,
                dispatch_us: d,
                row_gmacs: row,
                native_weights: false,
                link: LinkProfile { latency_us: lat, bandwidth_mbps: bw },
                host: None,
            }
        })
        .collect()
}

fn timed_plan(model: &ModelDescription, nodes: &[NodeProfile], r: &PlanRequest) -> Plan {
    let t = Instant::now();
    let p = plan(model, nodes, r).unwrap();
    let dt = t.elapsed();
    eprintln!(
        "{} layers, {} nodes, {} sequences, tp {}: {} stages on {} nodes, {:.1} tok/s, planned in {:.1} ms",
        model.n_layers,
        nodes.len(),
        r.sequences,
        r.tensor_parallel,
        p.stages.len(),
        p.nodes_used(),
        p.prediction.throughput_tokens_per_s,
        dt.as_secs_f64() * 1e3
    );
    assert!(dt.as_secs_f64() < 5.0, "planning took {dt:?}");
    check_plan(model, nodes, &p);
    p
}

#[test]
fn a_thousand_nodes_plan_quickly() {
    let small = smollm2();
    let nodes = big_cluster(16 << 20);
    for sequences in [1, 16] {
        for tp in [TpMode::Off, TpMode::Auto] {
            timed_plan(&small, &nodes, &PlanRequest { context: 2048, sequences, tensor_parallel: tp });
        }
    }
    // A 70B-class shape: 80 layers of ~0.45 GB (Q4_0), ~38 GB in all.
    let shape = ModelShape {
        n_layers: 80,
        dim: 8192,
        n_heads: 64,
        n_kv_heads: 8,
        head_dim: 128,
        ffn_dim: 28672,
        vocab: 128256,
        context: 8192,
    };
    let large = ModelDescription::synthetic(shape, GgmlType::Q4_0);
    let nodes = big_cluster(1 << 30);
    for sequences in [1, 16] {
        for tp in [TpMode::Off, TpMode::Auto] {
            let p = timed_plan(&large, &nodes, &PlanRequest { context: 4096, sequences, tensor_parallel: tp });
            assert!(p.nodes_used() > 1, "38 GB do not fit one node");
        }
    }
    // Every node different.
    let mut nodes = big_cluster(1 << 30);
    for (i, n) in nodes.iter_mut().enumerate() {
        n.gemv_gbps *= 1.0 + i as f64 / 1024.0;
        n.memory_bytes += i as u64 * (1 << 20);
    }
    timed_plan(&large, &nodes, &PlanRequest { context: 4096, sequences: 16, tensor_parallel: TpMode::Auto });
}

// ---- the real model and the CLI ----

fn model_path() -> String {
    let path = std::env::var("EDGE_MODEL").unwrap_or_else(|_| edge_node::setup::default_model().display().to_string());
    edge_node::setup::check_model(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
    path
}

#[test]
fn the_description_of_smollm2_has_the_split_shapes() {
    let m = edge_node::backend::LoadedModel::open(std::path::Path::new(&model_path())).unwrap();
    let d = ModelDescription::from_gguf(&m.gguf, &m.config).unwrap();
    assert_eq!((d.dim, d.n_heads, d.n_kv_heads, d.head_dim, d.ffn_dim, d.vocab), (576, 9, 3, 64, 1536, 49152));
    assert_eq!(d.ffn_block, 32); // Q4_1
                                 // The synthetic shape has the same layers (its embedding is Q4_1 where the file's is Q8_0).
    let s = smollm2();
    assert_eq!(d.layer_weight_bytes, s.layer_weight_bytes);
    assert_eq!(
        (d.kv_bytes_per_token_per_layer, d.activation_bytes_per_token, d.flops_per_token_per_layer),
        (s.kv_bytes_per_token_per_layer, s.activation_bytes_per_token, s.flops_per_token_per_layer)
    );
}

/// A node of the cpu backend reads the weights as the file stores them and an f16 cache: a Q4_K_M file's K-quants
/// a wgpu node holds widened (the description's counts), SmolLM2's Q4_1 and Q8_0 as they are.
#[test]
fn a_cpu_node_reads_the_files_bytes() {
    let describe = |path: &std::path::Path| {
        edge_node::setup::check_model(path).unwrap_or_else(|e| panic!("{e}"));
        let m = edge_node::backend::LoadedModel::open(path).unwrap();
        let file = std::fs::metadata(path).unwrap().len();
        (ModelDescription::from_gguf(&m.gguf, &m.config).unwrap(), file)
    };
    let (smol, file) = describe(std::path::Path::new(&model_path()));
    let native = smol.native_layer_bytes + smol.native_head_bytes;
    assert!(native > file / 2 && native < file, "{native} of {file}");
    let (layers, head) = (smol.native_layer_ratio(), smol.native_head_ratio());
    assert!(layers == 1.0 && head > 0.9 && head < 1.0, "Q4_1 as stored, Q8_0 near: {layers} {head}");
    let (gemma, file) = describe(&edge_node::setup::known_model(&edge_node::setup::GEMMA3_270M));
    let native = gemma.native_layer_bytes + gemma.native_head_bytes;
    assert!(native > file / 2 && native < file, "{native} of {file}");
    let (layers, head) = (gemma.native_layer_ratio(), gemma.native_head_ratio());
    assert!(layers > 0.5 && layers < 0.9 && head > 0.9 && head < 1.0, "K-quants widened on wgpu: {layers} {head}");

    // Reads: the layers' and the head's weights at their ratios, the cache at half; the same node without the
    // flag reads the counts.
    let mut model = toy(4);
    (model.native_layer_bytes, model.native_head_bytes) = (2_000_000, 500_000);
    let r = req(1000, 1);
    let cost = CostModel::new(&model, &r);
    let gpu = node("gpu", 100_000_000, 2.0);
    let cpu = NodeProfile { native_weights: true, ..gpu.clone() };
    assert_eq!(cost.read_us(&gpu, 1e6, 1e4), (1e6 + 1e4) / 2e3);
    assert_eq!(cost.read_us(&cpu, 1e6, 1e4), (0.5e6 + 0.5e4) / 2e3);
    let latency = |n: &NodeProfile| plan(&model, std::slice::from_ref(n), &r).unwrap().prediction.token_latency_us;
    let (g, c) = (latency(&gpu), latency(&cpu));
    assert_eq!(cost.head_one_us(&cpu), cost.head_one_us(&gpu), "the toy's head as the file stores it");
    assert!(c < g && (g - c) > 0.45 * 4e6 / 2e3, "cpu {c} us, wgpu {g} us");
}

fn write_nodes(name: &str, nodes: &[NodeProfile]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("edge-plan-{}-{name}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(nodes).unwrap()).unwrap();
    path
}

fn edge_coord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edge-coord")).args(args).output().unwrap()
}

#[test]
fn cli_plans_from_a_nodes_file() {
    // SmolLM2 at context 2048 needs about 230 MB on one node (94 MB of it KV cache); two nodes of 150 MB must
    // split it.
    let model = model_path();
    let nodes: Vec<_> = ["alpha", "beta"].iter().map(|id| tp_node(id, 150_000_000, 2.0, 200.0, 100.0)).collect();
    let file = write_nodes("split", &nodes);
    let out = edge_coord(&["plan", "--nodes", file.to_str().unwrap(), "--model", &model]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let embed = lines.iter().find(|l| l.contains("+embed")).unwrap_or_else(|| panic!("{stdout}"));
    let head = lines.iter().find(|l| l.contains("+head")).unwrap_or_else(|| panic!("{stdout}"));
    assert_ne!(embed, head, "{stdout}");
    assert!(embed.starts_with("0 ") && embed.contains(" 0..") && embed.contains("alpha"), "{stdout}");
    assert!(head.starts_with("1 ") && head.contains("..30 +head") && head.contains("beta"), "{stdout}");
    assert!(stdout.contains("hops (ms)") && stdout.contains("token latency") && stdout.contains("tok/s"));

    let args = ["--json", "--context", "1024", "--sequences", "2"];
    let out = edge_coord(&[&["plan", "--nodes", file.to_str().unwrap(), "--model", &model][..], &args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p: Plan = serde_json::from_value(v["plan"].clone()).unwrap();
    assert_eq!(p.stages.len(), 2);
    assert_eq!(
        (p.stages[0].layer_start, p.stages[0].layer_end, p.stages[1].layer_end),
        (0, p.stages[1].layer_start, 30)
    );
    assert_eq!(p.prediction.sequences, 2);
    assert_eq!(v["request"]["context"], 1024);
    let _ = std::fs::remove_file(file);
}

#[test]
fn cli_reports_a_cluster_too_small() {
    let model = model_path();
    let nodes: Vec<_> = ["alpha", "beta"].iter().map(|id| tp_node(id, 50_000_000, 2.0, 200.0, 100.0)).collect();
    let file = write_nodes("small", &nodes);
    let out = edge_coord(&["plan", "--nodes", file.to_str().unwrap(), "--model", &model]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not fit in the cluster's memory") && stderr.contains("needs"), "{stderr}");
    assert!(stderr.contains("the 2 nodes offer 85.8 MiB"), "{stderr}");
    let out = edge_coord(&["plan", "--nodes", "/nonexistent/nodes.json", "--model", &model]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/nodes.json"));
    let _ = std::fs::remove_file(file);
}

#[test]
fn cli_shows_replicas() {
    // Four nodes that each hold SmolLM2 with four sequences' KV (context 512), no batched kernels: four replicas
    // of one sequence each out-run one plan for four.
    let model = model_path();
    let nodes: Vec<_> = ["a", "b", "c", "d"].iter().map(|id| tp_node(id, 1_000_000_000, 2.0, 200.0, 100.0)).collect();
    let file = write_nodes("replicas", &nodes);
    let base = ["plan", "--nodes", file.to_str().unwrap(), "--model", &model, "--context", "512", "--sequences", "4"];
    let out = edge_coord(&base);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 replicas sharing the 4 sequences"), "{stdout}");
    assert!(stdout.contains("replica 4: 1 node (1 in its plan), 1 sequence\n"), "{stdout}");

    let out = edge_coord(&[&base[..], &["--replicas", "2", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r: edge_coord::plan::replicas::Replicas = serde_json::from_value(v["replicas"].clone()).unwrap();
    assert_eq!((r.replicas.len(), r.sequences_each()), (2, 2));
    assert_eq!(v["plan"], serde_json::to_value(&r.replicas[0].plan).unwrap());

    for (bad, says) in [("0", "at least 1"), ("5", "only 4 nodes")] {
        // (The count is checked before the sequences: 5 replicas of 4 sequences would be refused for both.)
        let out = edge_coord(&[&base[..], &["--replicas", bad]].concat());
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_file(file);
}
