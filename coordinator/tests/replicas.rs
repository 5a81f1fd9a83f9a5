//! Replicas of the model (`plan::replicas`): how many, on which nodes, and what they predict. The toy model and
//! nodes are described in `common`.

mod common;

use edge_coord::plan::replicas::{plan_replicas, ReplicaMode, Replicas};
use edge_coord::plan::{plan, NodeProfile, PlanError, PlanRequest};
use edge_coord::ModelDescription;
use proptest::prelude::*;

use common::*;

/// Replicas are disjoint, cover every node, each plan is well formed on the nodes it owns, and the total is the
/// sum of their predictions.
fn check_replicas(model: &ModelDescription, nodes: &[NodeProfile], r: &Replicas) {
    let mut owned: Vec<usize> = r.replicas.iter().flat_map(|x| x.nodes.iter().copied()).collect();
    owned.sort_unstable();
    assert_eq!(owned, (0..nodes.len()).collect::<Vec<_>>(), "{r:?}");
    for x in &r.replicas {
        check_plan(model, nodes, &x.plan);
        for s in &x.plan.stages {
            for m in &s.members {
                assert!(x.nodes.contains(&m.node), "{r:?}");
            }
        }
        let seqs = x.plan.prediction.sequences;
        assert!(seqs + 1 >= r.sequences_each() && seqs <= r.sequences_each() && seqs >= 1, "{r:?}");
    }
    let sum: f64 = r.replicas.iter().map(|x| x.plan.prediction.throughput_tokens_per_s).sum();
    assert!(close(sum, r.throughput_tokens_per_s));
}

#[test]
fn one_sequence_is_one_replica_planned_as_plan_does() {
    let model = toy(10);
    let nodes: Vec<_> = (0..4).map(|i| node(&format!("n{i}"), 100_000_000, 1.0 + i as f64)).collect();
    let r = plan_replicas(&model, &nodes, &req(100, 1), ReplicaMode::Auto).unwrap();
    check_replicas(&model, &nodes, &r);
    assert_eq!(r.replicas.len(), 1);
    assert_eq!(r.replicas[0].plan, plan(&model, &nodes, &req(100, 1)).unwrap());
}

#[test]
fn equal_nodes_that_each_hold_the_model_serve_one_replica_each() {
    // Four 1 GB/s nodes that each hold the toy model, four sequences, no batched kernels. One node alone: 11,730 us
    // a token (85.25 tok/s). Four replicas of one sequence: 4 x 85.25 = 341 tok/s. One plan for four sequences
    // is a pipeline whose busiest stage takes ~3,500 us (at most ~290 tok/s); two replicas of two: 2 x 1e6 / 6190
    // (5 + 5 layers) = 323 tok/s.
    let model = toy(10);
    let nodes: Vec<_> = (0..4).map(|i| node(&format!("n{i}"), 100_000_000, 1.0)).collect();
    let r = plan_replicas(&model, &nodes, &req(100, 4), ReplicaMode::Auto).unwrap();
    check_replicas(&model, &nodes, &r);
    assert_eq!(r.replicas.len(), 4, "{r:?}");
    assert_eq!(r.sequences_each(), 1);
    assert!(close(r.throughput_tokens_per_s, 4e6 / 11_730.0), "{r:?}");
    let one = plan_replicas(&model, &nodes, &req(100, 4), ReplicaMode::Fixed(1)).unwrap();
    assert!(one.throughput_tokens_per_s < 300.0, "{one:?}");
    let two = plan_replicas(&model, &nodes, &req(100, 4), ReplicaMode::Fixed(2)).unwrap();
    check_replicas(&model, &nodes, &two);
    assert!(close(two.throughput_tokens_per_s, 2e6 / 6190.0), "{two:?}");
}

#[test]
fn a_slow_replica_that_would_slow_its_sequences_is_not_added() {
    // A 10 GB/s node and a 0.5 GB/s one, two sequences. Two replicas would raise the total (the fast node's one
    // sequence plus the slow node's ~44 tok/s), but a sequence on the slow node would get a token every ~22.8 ms
    // where one plan gives each of the two a token every ~3.7 ms.
    let model = toy(10);
    let nodes = vec![node("fast", 100_000_000, 10.0), node("slow", 100_000_000, 0.5)];
    let r = plan_replicas(&model, &nodes, &req(100, 2), ReplicaMode::Auto).unwrap();
    check_replicas(&model, &nodes, &r);
    assert_eq!(r.replicas.len(), 1, "{r:?}");
    let two = plan_replicas(&model, &nodes, &req(100, 2), ReplicaMode::Fixed(2)).unwrap();
    assert!(two.throughput_tokens_per_s > r.throughput_tokens_per_s, "{two:?}");
    assert!(two.slowest_token_interval_us() > 5.0 * r.slowest_token_interval_us());
    // The first replica is on the fastest node.
    assert_eq!(two.replicas[0].nodes, vec![0]);
}

#[test]
fn unused_nodes_are_spares_and_bad_counts_are_errors() {
    // Six equal nodes, two replicas of one sequence each: each plan runs on one node; the other four are spares.
    let model = toy(10);
    let nodes: Vec<_> = (0..6).map(|i| node(&format!("n{i}"), 100_000_000, 1.0)).collect();
    let r = plan_replicas(&model, &nodes, &req(100, 2), ReplicaMode::Fixed(2)).unwrap();
    check_replicas(&model, &nodes, &r);
    assert!(r.replicas.iter().all(|x| x.nodes.len() == 3 && x.plan.nodes_used() == 1), "{r:?}");

    let err = plan_replicas(&model, &nodes, &req(100, 2), ReplicaMode::Fixed(7)).unwrap_err();
    assert!(matches!(err, PlanError::BadReplicas { replicas: 7, .. }), "{err}");
    assert!(err.to_string().contains("only 6 nodes"), "{err}");
    // Nodes of 7.7 MB usable hold 6 of the 10 layers: a replica needs two of them, so three replicas do not fit.
    let small: Vec<_> = (0..4).map(|i| node(&format!("s{i}"), 7_700_000, 1.0)).collect();
    let err = plan_replicas(&model, &small, &req(100, 3), ReplicaMode::Fixed(3)).unwrap_err();
    assert!(err.to_string().contains("3 replicas are impossible"), "{err}");
    assert_eq!("auto".parse::<ReplicaMode>(), Ok(ReplicaMode::Auto));
    assert_eq!("3".parse::<ReplicaMode>(), Ok(ReplicaMode::Fixed(3)));
    assert!("0".parse::<ReplicaMode>().is_err() && "many".parse::<ReplicaMode>().is_err());
    // No nodes, no sequences, more replicas than sequences.
    for mode in [ReplicaMode::Auto, ReplicaMode::Fixed(1)] {
        assert!(matches!(plan_replicas(&model, &[], &req(100, 2), mode), Err(PlanError::NoNodes)));
        assert!(matches!(plan_replicas(&model, &nodes, &req(100, 0), mode), Err(PlanError::NoSequences)));
    }
    let err = plan_replicas(&model, &nodes, &req(100, 2), ReplicaMode::Fixed(3)).unwrap_err();
    assert!(err.to_string().contains("only 2 sequences to share"), "{err}");
}

#[test]
fn sequences_that_do_not_divide_go_to_the_first_replicas() {
    // Five sequences on three replicas: 2, 2 and 1, the extra ones on the fastest nodes; the total counts five.
    let model = toy(10);
    let nodes: Vec<_> = (0..3).map(|i| node(&format!("n{i}"), 100_000_000, 1.0 + i as f64)).collect();
    let r = plan_replicas(&model, &nodes, &req(100, 5), ReplicaMode::Fixed(3)).unwrap();
    check_replicas(&model, &nodes, &r);
    let seqs: Vec<(Vec<usize>, usize)> =
        r.replicas.iter().map(|x| (x.nodes.clone(), x.plan.prediction.sequences)).collect();
    assert_eq!(seqs, vec![(vec![2], 2), (vec![1], 2), (vec![0], 1)]);
    assert_eq!(r.sequences_each(), 2);
    // One node, no batched kernels: a token per whole-model step whatever its sequences.
    let alone = |i: usize| plan(&model, &nodes[i..=i], &req(100, 1)).unwrap().prediction.throughput_tokens_per_s;
    assert!(close(r.throughput_tokens_per_s, alone(0) + alone(1) + alone(2)), "{r:?}");
}

fn arb_cluster() -> impl Strategy<Value = (Vec<NodeProfile>, usize, bool)> {
    let one = (0.3f64..4.0, 5_000_000u64..30_000_000, 0.0f64..3000.0, prop_oneof![Just(0.0), 0.5f64..20.0]);
    (prop::collection::vec(one, 1..=12), 1usize..=24, any::<bool>()).prop_map(|(v, sequences, tp)| {
        let nodes = v
            .into_iter()
            .enumerate()
            .map(|(i, (g, usable, lat, row))| {
                let mut n = node(&format!("n{i}"), usable, g);
                n.row_gmacs = row;
                n.link.latency_us = lat;
                n
            })
            .collect();
        (nodes, sequences, tp)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Auto replicas are well formed, predict at least one plan's throughput, and slow no sequence below one
    /// plan's rate at the load (when one plan holds the load).
    #[test]
    fn auto_replicas_never_do_worse_than_one_plan((nodes, sequences, tp) in arb_cluster()) {
        let model = toy(10);
        let mut r = req(100, sequences);
        if tp {
            r.tensor_parallel = edge_coord::plan::TpMode::Auto;
        }
        let one = plan_replicas(&model, &nodes, &r, ReplicaMode::Fixed(1));
        let auto = plan_replicas(&model, &nodes, &r, ReplicaMode::Auto);
        match (one, auto) {
            (Ok(one), Ok(auto)) => {
                check_replicas(&model, &nodes, &auto);
                prop_assert!(auto.throughput_tokens_per_s >= one.throughput_tokens_per_s * (1.0 - 1e-9));
                prop_assert!(auto.slowest_token_interval_us() <= one.slowest_token_interval_us() * (1.0 + 1e-9));
                prop_assert!(auto.replicas.len() <= sequences.min(nodes.len()));
                let direct: PlanRequest = r;
                prop_assert_eq!(&one.replicas[0].plan, &plan(&model, &nodes, &direct).unwrap());
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            // More replicas may hold what one plan's nodes cannot.
            (Err(PlanError::DoesNotFit { .. }), Ok(auto)) => check_replicas(&model, &nodes, &auto),
            (a, b) => prop_assert!(false, "one plan {a:?} against auto {b:?}"),
        }
    }
}

#[test]
fn a_load_one_plan_cannot_hold_is_shared_by_replicas() {
    // Nodes of 12.6 MB usable; 400 sequences, 1 MB of KV cache each over the 10 layers (100 KB a layer). One
    // plan has at most 10 stages, one layer each: a stage would need 1 MB of weights, 0.52 MB of workspace and
    // 40 MB of KV. Four replicas of 100 sequences on 10 nodes each fit (1 + 0.52 + 10 MB, + 0.5 MB of embedding
    // or head at the ends); five would leave 8 nodes to a replica, and a stage of two layers holds 16 MB of KV.
    let model = toy(10);
    let nodes: Vec<_> = (0..40).map(|i| node(&format!("n{i}"), 12_600_000, 1.0)).collect();
    let one = plan_replicas(&model, &nodes, &req(100, 400), ReplicaMode::Fixed(1)).unwrap_err();
    assert!(matches!(one, PlanError::DoesNotFit { .. }), "{one}");
    let r = plan_replicas(&model, &nodes, &req(100, 400), ReplicaMode::Auto).unwrap();
    check_replicas(&model, &nodes, &r);
    assert_eq!((r.replicas.len(), r.sequences_each()), (4, 100), "{r:?}");
    assert!(r.replicas.iter().all(|x| x.plan.stages.len() == 10));
}
