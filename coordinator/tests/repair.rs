//! Re-plans that keep the layout (`plan::repair`): the lost members replaced, the survivors in place, and the
//! choice between a repair and a fresh plan. The toy model and nodes are described in `common`.

mod common;

use edge_coord::plan::repair::{keep_or_fresh, repair, KEEP_LAYOUT};
use edge_coord::plan::{plan, predict, NodeProfile, Plan, PlanRequest, TpMode};
use edge_coord::ModelDescription;

use common::*;

/// The node ids of a plan's stages with their layers.
fn by_id(nodes: &[NodeProfile], p: &Plan) -> Vec<(String, u32, u32)> {
    layout(p).into_iter().map(|(n, a, b)| (nodes[n].id.clone(), a, b)).collect()
}

/// Nodes that hold 3 layers with the embedding or the head, or 4 without: the toy model needs 3 stages.
fn small(id: &str, gemv_gbps: f64) -> NodeProfile {
    node(id, 5_200_000, gemv_gbps)
}

/// The toy model planned on three small nodes `a`, `b`, `c` (3 stages) for one sequence.
fn three_stages() -> (ModelDescription, PlanRequest, Vec<NodeProfile>, Plan) {
    let (model, r) = (toy(10), req(100, 1));
    let old: Vec<_> = ["a", "b", "c"].iter().map(|id| small(id, 1.0)).collect();
    let before = plan(&model, &old, &r).unwrap();
    assert_eq!(before.stages.len(), 3, "{before:?}");
    (model, r, old, before)
}

#[test]
fn a_lost_stage_moves_to_the_fastest_free_node_that_holds_it_and_the_others_stay() {
    let (model, r, old, before) = three_stages();
    let lost = old[layout(&before)[1].0].id.clone();
    // The nodes now (another order), without the lost one, with two spares: a tiny one and a slow one.
    let mut now: Vec<_> = old.iter().filter(|n| n.id != lost).cloned().rev().collect();
    now.push(node("tiny", 1_000_000, 9.0));
    now.push(small("slow", 0.5));
    now.push(small("spare", 0.8));
    let fixed = repair(&model, &now, &r, &before, &old).unwrap();
    check_plan(&model, &now, &fixed);
    let want: Vec<_> = by_id(&old, &before)
        .into_iter()
        .map(|(id, a, b)| (if id == lost { "spare".to_string() } else { id }, a, b))
        .collect();
    assert_eq!(by_id(&now, &fixed), want);
    // The prediction and the stages' times are the cost model's for the new layout.
    assert_eq!(fixed.prediction, predict(&model, &now, &r, &fixed.stages));
    for (s, us) in fixed.stages.iter().zip(&fixed.prediction.stage_us) {
        assert_eq!(s.compute_us, *us);
    }
    // Nothing lost: the same layout, on the nodes' new indices.
    let same = repair(&model, &now, &r, &fixed, &now).unwrap();
    assert_eq!(same.stages, fixed.stages);
}

#[test]
fn no_repair_without_a_free_node_that_holds_the_stage_or_for_a_tensor_parallel_stage() {
    let (model, r, old, before) = three_stages();
    let mut now: Vec<_> = old[1..].to_vec();
    now.push(node("tiny", 1_000_000, 9.0));
    assert_eq!(repair(&model, &now, &r, &before, &old), None);

    // A two-way tensor-parallel stage that lost a member: its slices were sized for the old members.
    let big: Vec<_> = ["x", "y"].iter().map(|id| node(id, 100_000_000, 1.0)).collect();
    let tp = PlanRequest { tensor_parallel: TpMode::Force(2), ..r };
    let before = plan(&model, &big, &tp).unwrap();
    assert_eq!(before.stages[0].members.len(), 2, "{before:?}");
    let now = vec![big[0].clone(), node("z", 100_000_000, 1.0)];
    assert_eq!(repair(&model, &now, &tp, &before, &big), None);
}

#[test]
fn the_repair_is_kept_when_it_predicts_nearly_as_well_as_a_fresh_plan() {
    let (model, r, old, before) = three_stages();
    let lost = old[layout(&before)[0].0].id.clone();
    let survivors: Vec<_> = old.iter().filter(|n| n.id != lost).cloned().collect();

    // An equal spare: the repair is as good as a fresh plan, so the layout stays.
    let mut now = survivors.clone();
    now.push(small("d", 1.0));
    let fresh = plan(&model, &now, &r).unwrap();
    let (p, kept) = keep_or_fresh(&model, &now, &r, fresh.clone(), Some((&before, &old)));
    assert!(kept);
    assert!(p.prediction.throughput_tokens_per_s >= KEEP_LAYOUT * fresh.prediction.throughput_tokens_per_s);
    assert_eq!(by_id(&now, &p).iter().filter(|s| s.0 != "d").count(), 2);

    // A spare ten times as fast with room for the whole model: a fresh plan runs there, far faster.
    let mut now = survivors;
    now.push(node("fast", 100_000_000, 10.0));
    let fresh = plan(&model, &now, &r).unwrap();
    let repaired = repair(&model, &now, &r, &before, &old).unwrap();
    assert!(repaired.prediction.throughput_tokens_per_s < KEEP_LAYOUT * fresh.prediction.throughput_tokens_per_s);
    let (p, kept) = keep_or_fresh(&model, &now, &r, fresh.clone(), Some((&before, &old)));
    assert!(!kept);
    assert_eq!(p, fresh);
    // No previous plan: the fresh one.
    assert_eq!(keep_or_fresh(&model, &now, &r, fresh.clone(), None), (fresh, false));
}
