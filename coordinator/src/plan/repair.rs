//! Re-plans that keep what the nodes hold. After a lost node the planner's fresh plan may move every layer (a
//! stage boundary shifts and most members need new tensors shipped: simulator finding 4 measured ~2x the
//! minimum). [`repair`] keeps the previous plan's stages and replaces only the lost members, each by the fastest
//! free node that can hold its stage, so the survivors need nothing shipped; [`keep_or_fresh`] takes it when it
//! predicts at least [`KEEP_LAYOUT`] of the fresh plan's throughput.

use std::collections::{HashMap, HashSet};

use super::cost::{usable_memory, CostModel};
use super::{fastest_first, predict, NodeProfile, Plan, PlanRequest, Stage};
use crate::ModelDescription;

/// A repaired plan is kept when it predicts at least this fraction of a fresh plan's throughput.
pub const KEEP_LAYOUT: f64 = 0.9;

/// `previous` (member indices into `old_nodes`) on `nodes`, matched by node id: every stage keeps its layers
/// and roles, a surviving member its node, and a lost member of a whole-layer stage takes the fastest node of
/// `nodes` that no member uses and that can hold the stage. `None` when a tensor-parallel stage lost a member
/// (its slices were sized for its members' speeds) or no free node can hold a lost stage.
pub fn repair(
    model: &ModelDescription,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    previous: &Plan,
    old_nodes: &[NodeProfile],
) -> Option<Plan> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let now = |m: usize| old_nodes.get(m).and_then(|n| index.get(n.id.as_str()).copied());
    let mut used: HashSet<usize> = previous.member_nodes().filter_map(now).collect();
    let cost = CostModel::new(model, req);
    let order = fastest_first(model, nodes);
    let mut stages: Vec<Stage> = Vec::with_capacity(previous.stages.len());
    for s in &previous.stages {
        let mut st = s.clone();
        for m in &mut st.members {
            m.node = match now(m.node) {
                Some(i) => i,
                None if s.members.len() > 1 => return None,
                None => {
                    let (a, b) = (s.layer_start as usize, s.layer_end as usize);
                    let need = cost.stage_memory(a, b, s.embed, s.head);
                    let &i =
                        order.iter().find(|&&i| !used.contains(&i) && usable_memory(nodes[i].memory_bytes) >= need)?;
                    used.insert(i);
                    m.memory_bytes = need;
                    i
                }
            };
        }
        stages.push(st);
    }
    let prediction = predict(model, nodes, req, &stages);
    for (s, &us) in stages.iter_mut().zip(&prediction.stage_us) {
        s.compute_us = us;
    }
    Some(Plan { stages, prediction })
}

/// `fresh` (a new plan on `nodes`), or `previous` repaired ([`repair`]) when that predicts at least
/// [`KEEP_LAYOUT`] of `fresh`'s throughput; with whether the repair was kept.
pub fn keep_or_fresh(
    model: &ModelDescription,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    fresh: Plan,
    previous: Option<(&Plan, &[NodeProfile])>,
) -> (Plan, bool) {
    let repaired = previous.and_then(|(p, old)| repair(model, nodes, req, p, old));
    match repaired {
        Some(r) if r.prediction.throughput_tokens_per_s >= KEEP_LAYOUT * fresh.prediction.throughput_tokens_per_s => {
            (r, true)
        }
        _ => (fresh, false),
    }
}
