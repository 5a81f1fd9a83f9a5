//! The search for the best plan (see the module documentation of [`super`]): a dynamic program over units
//! (nodes, or one tensor-parallel group) and the number of layers covered, with a flag for each of the first
//! (embedding) and last (head) stage, under a cap on every stage's occupancy; a binary search over the caps for
//! throughput.

use std::collections::HashMap;

use super::cost::{usable_memory, CostModel, TpGroup};
use super::{finish, NodeProfile, Plan, PlanRequest, Stage, StageMember};

/// Stage roles: a stage in between, the first (embedding), the last (head).
const MID: usize = 0;
const FIRST: usize = 1;
const LAST: usize = 2;
/// DP flags: the first / last stage is placed.
const HAS_FIRST: usize = 1;
const HAS_LAST: usize = 2;
const SKIP: u32 = u32::MAX;

/// What runs a stage: one node, or a tensor-parallel group.
#[derive(Debug, Clone)]
pub enum UnitKind {
    Node(usize),
    Group(TpGroup),
}

/// A unit's costs by role: a stage of `m` layers is busy `alpha x m + beta[role]` (its time plus the time its own
/// link carries the hops in and out), adds `hop` more (those hops' latencies) to a token's latency, and fits when
/// `m <= maxlen[role]`.
#[derive(Debug, Clone)]
pub struct Unit {
    pub kind: UnitKind,
    alpha: f64,
    beta: [f64; 3],
    hop: f64,
    maxlen: [usize; 3],
    /// The whole model as one stage: its time, if it fits.
    whole_us: Option<f64>,
}

impl Unit {
    fn occupancy(&self, role: usize, m: usize) -> f64 {
        self.alpha * m as f64 + self.beta[role]
    }

    /// Most layers a stage of this role may take under `cap`.
    fn cap_len(&self, role: usize, cap: f64, l: usize) -> usize {
        let limit = self.maxlen[role];
        if cap == f64::INFINITY || limit == 0 {
            return limit;
        }
        if self.alpha <= 0.0 {
            return if self.beta[role] <= cap { limit } else { 0 };
        }
        let mut m = ((cap - self.beta[role]) / self.alpha).floor().clamp(0.0, l as f64) as usize;
        while m < limit && self.occupancy(role, m + 1) <= cap {
            m += 1;
        }
        while m > 0 && self.occupancy(role, m) > cap {
            m -= 1;
        }
        m.min(limit)
    }
}

/// For each length `m`, the largest weight bytes of `m` consecutive layers a middle stage may hold (middle stages
/// lie within layers `1..L-1`).
fn mid_windows(cost: &CostModel) -> Vec<u64> {
    let l = cost.n_layers();
    let mut w = vec![0u64; l + 1];
    for (m, slot) in w.iter_mut().enumerate().skip(1) {
        if m + 2 > l {
            *slot = u64::MAX;
            continue;
        }
        *slot = (1..=l - 1 - m).map(|a| cost.layer_bytes(a, a + m)).max().unwrap_or(0);
    }
    w
}

/// The weight bytes a stage of `role` and `m` layers holds at most, with its embed/head flags.
fn role_bytes(cost: &CostModel, windows: &[u64], role: usize, m: usize) -> (u64, bool, bool) {
    let l = cost.n_layers();
    match role {
        MID => (windows[m], false, false),
        FIRST => (cost.layer_bytes(0, m), true, false),
        _ => (cost.layer_bytes(l - m, l), false, true),
    }
}

/// Largest `m` for each role such that `fits(weight bytes, m, embed, head)`; memory grows with `m`.
fn max_lengths(cost: &CostModel, windows: &[u64], fits: impl Fn(u64, usize, bool, bool) -> bool) -> [usize; 3] {
    let l = cost.n_layers();
    let mut out = [0; 3];
    for (role, slot) in out.iter_mut().enumerate() {
        let top = if role == MID { l.saturating_sub(2) } else { l.saturating_sub(1) };
        for m in 1..=top {
            let (bytes, e, h) = role_bytes(cost, windows, role, m);
            if !fits(bytes, m, e, h) {
                break;
            }
            *slot = m;
        }
    }
    out
}

fn node_unit(cost: &CostModel, nodes: &[NodeProfile], windows: &[u64], i: usize) -> Unit {
    let n = &nodes[i];
    let l = cost.n_layers();
    let usable = usable_memory(n.memory_bytes);
    let fits = |bytes: u64, m: usize, e: bool, h: bool| {
        let extra = if e { cost.model.embed_bytes } else { 0 } + if h { cost.model.head_bytes } else { 0 };
        bytes.saturating_add(extra).saturating_add(cost.kv_cache_bytes_max(m)).saturating_add(cost.workspace_bytes(h))
            <= usable
    };
    let mid = cost.step_overhead_us(n) + 2.0 * cost.link_busy_us(n);
    Unit {
        kind: UnitKind::Node(i),
        alpha: cost.node_layer_us(n, cost.mean_layer_bytes()),
        beta: [mid, mid + cost.embed_us(n), mid + cost.head_us(n)],
        hop: 2.0 * n.link.latency_us,
        maxlen: max_lengths(cost, windows, fits),
        whole_us: (cost.stage_memory(0, l, true, true) <= usable).then(|| cost.node_stage_us(n, 0, l, true, true)),
    }
}

fn group_unit(cost: &CostModel, nodes: &[NodeProfile], windows: &[u64], g: TpGroup) -> Unit {
    let l = cost.n_layers();
    let fits = |bytes: u64, m: usize, e: bool, h: bool| {
        (0..g.shares.len()).all(|i| {
            g.member_memory(cost, i, bytes, cost.kv_cache_bytes_max(m), e, h)
                <= usable_memory(nodes[g.shares[i].node].memory_bytes)
        })
    };
    let maxlen = max_lengths(cost, windows, fits);
    let whole_fits = fits(cost.layer_bytes(0, l), l, true, true);
    let fixed = g.step_overhead_us() + 2.0 * g.link_busy_us;
    let (mid, first) = (fixed + g.broadcast_us(cost, nodes, false), fixed + g.broadcast_us(cost, nodes, true));
    Unit {
        alpha: g.layer_us(cost, nodes, cost.mean_layer_bytes()),
        beta: [mid, first + g.embed_us(nodes), mid + g.head_us(cost, nodes)],
        hop: 2.0 * g.link_latency_us,
        maxlen,
        whole_us: whole_fits.then(|| g.stage_us(cost, nodes, 0, l, true, true)),
        kind: UnitKind::Group(g),
    }
}

/// A pipeline found by the DP: `(unit, first layer, end layer)` in pipeline order, with its modeled latency (the
/// occupancies plus the hops' latencies) and bottleneck (the largest occupancy).
#[derive(Debug, Clone)]
pub struct Choice {
    pub stages: Vec<(usize, usize, usize)>,
    pub latency: f64,
    pub bottleneck: f64,
}

impl Choice {
    fn value(&self, sequences: f64) -> f64 {
        (self.latency / sequences).max(self.bottleneck)
    }
}

/// The DP's tables, reused across caps.
pub struct Dp<'u> {
    units: &'u [Unit],
    l: usize,
    cost: Vec<f64>,
    stages: Vec<u32>,
    next_cost: Vec<f64>,
    next_stages: Vec<u32>,
    /// Per unit, flags and layer count: `SKIP` or `role << 30 | start`.
    choice: Vec<u32>,
    window: Vec<u32>,
}

impl<'u> Dp<'u> {
    pub fn new(units: &'u [Unit], l: usize) -> Dp<'u> {
        let w = 4 * (l + 1);
        Dp {
            units,
            l,
            cost: vec![0.0; w],
            stages: vec![0; w],
            next_cost: vec![0.0; w],
            next_stages: vec![0; w],
            choice: vec![SKIP; units.len() * w],
            window: vec![0; l + 1],
        }
    }

    /// The least-latency pipeline of at least two stages whose occupancies are all at most `cap`.
    pub fn run(&mut self, cap: f64) -> Option<Choice> {
        let (l, w) = (self.l, self.l + 1);
        if l < 2 {
            return None;
        }
        self.cost.fill(f64::INFINITY);
        self.stages.fill(0);
        self.cost[0] = 0.0;
        for (u, unit) in self.units.iter().enumerate() {
            self.next_cost.copy_from_slice(&self.cost);
            self.next_stages.copy_from_slice(&self.stages);
            let choice = &mut self.choice[u * 4 * w..(u + 1) * 4 * w];
            choice.fill(SKIP);
            // Flag states no pipeline has reached yet are skipped.
            let live: [bool; 4] = std::array::from_fn(|f| self.cost[f * w..(f + 1) * w].iter().any(|c| c.is_finite()));
            // On ties a later unit keeps the later role: lower node indices come first in the pipeline.
            for role in [LAST, MID, FIRST] {
                let m_max = unit.cap_len(role, cap, l);
                if m_max == 0 {
                    continue;
                }
                let (alpha, beta) = (unit.alpha, unit.beta[role] + unit.hop);
                for (from, &reached) in live.iter().enumerate() {
                    let to = match role {
                        MID => from,
                        FIRST if from & HAS_FIRST == 0 => from | HAS_FIRST,
                        LAST if from & HAS_LAST == 0 => from | HAS_LAST,
                        _ => continue,
                    };
                    if !reached {
                        continue;
                    }
                    let (old_c, old_s) = (&self.cost[from * w..(from + 1) * w], &self.stages[from * w..(from + 1) * w]);
                    // Sliding-window minimum of (cost - alpha x start, stages) over the starts in reach, as a
                    // monotone queue in `window[head..tail]` (each start enters once).
                    let key = |j: usize| (old_c[j] - alpha * j as f64, old_s[j]);
                    let win = &mut self.window;
                    let (mut head, mut tail) = (0usize, 0usize);
                    for end in 1..=l {
                        let j = end - 1;
                        if old_c[j].is_finite() {
                            let kj = key(j);
                            while tail > head && key(win[tail - 1] as usize) >= kj {
                                tail -= 1;
                            }
                            win[tail] = j as u32;
                            tail += 1;
                        }
                        while tail > head && win[head] as usize + m_max < end {
                            head += 1;
                        }
                        if tail == head {
                            continue;
                        }
                        let start = win[head] as usize;
                        let (kc, ks) = key(start);
                        let cand = (kc + alpha * end as f64 + beta, ks + 1);
                        let slot = to * w + end;
                        if cand < (self.next_cost[slot], self.next_stages[slot]) {
                            self.next_cost[slot] = cand.0;
                            self.next_stages[slot] = cand.1;
                            choice[slot] = (role as u32) << 30 | start as u32;
                        }
                    }
                }
            }
            std::mem::swap(&mut self.cost, &mut self.next_cost);
            std::mem::swap(&mut self.stages, &mut self.next_stages);
        }
        let end = (HAS_FIRST | HAS_LAST) * w + l;
        if !self.cost[end].is_finite() {
            return None;
        }
        // Walk back: each unit's choice for the state left by the units after it.
        let (mut flags, mut at) = (HAS_FIRST | HAS_LAST, l);
        let mut picked = Vec::new();
        for u in (0..self.units.len()).rev() {
            let c = self.choice[u * 4 * w + flags * w + at];
            if c == SKIP {
                continue;
            }
            let (role, start) = ((c >> 30) as usize, (c & ((1 << 30) - 1)) as usize);
            picked.push((u, role, at - start));
            flags &= match role {
                FIRST => !HAS_FIRST,
                LAST => !HAS_LAST,
                _ => !0,
            };
            at = start;
        }
        debug_assert!(at == 0 && flags == 0, "DP walk-back ended at {at} layers, flags {flags}");
        picked.reverse();
        let mut ordered: Vec<(usize, usize, usize)> = picked.iter().filter(|p| p.1 == FIRST).copied().collect();
        ordered.extend(picked.iter().filter(|p| p.1 == MID));
        ordered.extend(picked.iter().filter(|p| p.1 == LAST));
        let mut start = 0;
        let (mut latency, mut bottleneck) = (0.0, 0.0f64);
        let mut stages = Vec::with_capacity(ordered.len());
        for (u, role, m) in ordered {
            let occ = self.units[u].occupancy(role, m);
            latency += occ + self.units[u].hop;
            bottleneck = bottleneck.max(occ);
            stages.push((u, start, start + m));
            start += m;
        }
        Some(Choice { stages, latency, bottleneck })
    }
}

/// The best pipeline of two or more stages over `units` for `groups` groups of sequences in flight (one: latency;
/// more: throughput), under the DP's model at the units' batch.
pub fn best_pipeline(units: &[Unit], l: usize, groups: usize) -> Option<Choice> {
    let mut dp = Dp::new(units, l);
    let p0 = dp.run(f64::INFINITY)?;
    let s = groups.max(1) as f64;
    if groups <= 1 || p0.latency / s >= p0.bottleneck {
        return Some(p0);
    }
    // The optimum's bottleneck is at most p0's: its value is at most p0's, which is p0's bottleneck.
    let mut caps: Vec<f64> = units
        .iter()
        .flat_map(|u| (0..3).flat_map(move |r| (1..=u.maxlen[r]).map(move |m| u.occupancy(r, m))))
        .filter(|&c| c <= p0.bottleneck)
        .collect();
    caps.sort_by(f64::total_cmp);
    caps.dedup();
    let mut runs: HashMap<usize, Option<Choice>> = HashMap::new();
    let mut at = |j: usize, dp: &mut Dp| runs.entry(j).or_insert_with(|| dp.run(caps[j])).clone();
    // Smallest cap at which latency / sequences <= cap; the last cap (p0's bottleneck) qualifies.
    let (mut lo, mut hi) = (0, caps.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if at(mid, &mut dp).is_some_and(|c| c.latency / s <= caps[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let mut best = p0;
    let mut consider = |c: Option<Choice>| {
        if let Some(c) = c {
            let key = |c: &Choice| (c.value(s), c.latency, c.stages.len());
            if key(&c) < key(&best) {
                best = c;
            }
        }
    };
    consider(at(lo, &mut dp));
    if lo > 0 {
        consider(at(lo - 1, &mut dp));
    }
    Some(best)
}

/// Plan comparison: throughput (latency for one sequence), then latency, then fewer nodes, then less memory.
pub fn better(a: &Plan, b: &Plan) -> bool {
    let key = |p: &Plan| {
        let v = 1e6 / p.prediction.throughput_tokens_per_s;
        (v, p.prediction.token_latency_us, p.nodes_used(), p.memory_bytes())
    };
    let (ka, kb) = (key(a), key(b));
    ka.partial_cmp(&kb) == Some(std::cmp::Ordering::Less)
}

/// The stage of a tensor-parallel group over layers `[a, b)` (prediction not filled in).
pub fn group_stage(cost: &CostModel, g: &TpGroup, a: usize, b: usize) -> Stage {
    let l = cost.n_layers();
    let (embed, head) = (a == 0, b == l);
    let members = g
        .shares
        .iter()
        .enumerate()
        .map(|(i, s)| StageMember {
            node: s.node,
            kv_heads: s.kv_heads,
            ffn: s.ffn,
            q_heads: s.q_heads,
            memory_bytes: g.member_memory(cost, i, cost.layer_bytes(a, b), cost.kv_cache_bytes(a, b), embed, head),
        })
        .collect();
    Stage { layer_start: a as u32, layer_end: b as u32, embed, head, members, compute_us: 0.0 }
}

fn unit_stage(cost: &CostModel, unit: &Unit, a: usize, b: usize) -> Stage {
    let l = cost.n_layers();
    let m = cost.model;
    match &unit.kind {
        UnitKind::Node(i) => Stage {
            layer_start: a as u32,
            layer_end: b as u32,
            embed: a == 0,
            head: b == l,
            members: vec![StageMember {
                node: *i,
                kv_heads: (0, m.n_kv_heads as u32),
                ffn: (0, m.ffn_dim as u32),
                q_heads: None,
                memory_bytes: cost.stage_memory(a, b, a == 0, b == l),
            }],
            compute_us: 0.0,
        },
        UnitKind::Group(g) => group_stage(cost, g, a, b),
    }
}

/// Bit pattern of a node's profile (nodes with equal keys are interchangeable).
fn profile_key(n: &NodeProfile) -> ProfileKey {
    (
        n.memory_bytes,
        n.gemv_gbps.to_bits(),
        n.dispatch_us.to_bits(),
        n.row_gmacs.to_bits(),
        n.link.latency_us.to_bits(),
        n.link.bandwidth_mbps.to_bits(),
        n.native_weights,
    )
}

/// Memory, the bit patterns of every measured rate of a node, and whether it reads the file's blocks.
type ProfileKey = (u64, u64, u64, u64, u64, u64, bool);

/// The units of a search: `group` first (if any), then the nodes of `candidates` in index order, at most
/// `n_layers` of each profile (the lowest indices), without those that can hold nothing and those
/// [`drop_dominated`] drops.
pub fn units(cost: &CostModel, nodes: &[NodeProfile], group: Option<TpGroup>, candidates: &[usize]) -> Vec<Unit> {
    let windows = mid_windows(cost);
    let l = cost.n_layers();
    let mut out: Vec<Unit> = group.map(|g| group_unit(cost, nodes, &windows, g)).into_iter().collect();
    let mut seen: HashMap<ProfileKey, usize> = HashMap::new();
    let mut memo: HashMap<ProfileKey, Unit> = HashMap::new();
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable();
    for i in sorted {
        let key = profile_key(&nodes[i]);
        let count = seen.entry(key).or_insert(0);
        if *count >= l {
            continue;
        }
        *count += 1;
        let mut unit = memo.entry(key).or_insert_with(|| node_unit(cost, nodes, &windows, i)).clone();
        unit.kind = UnitKind::Node(i);
        out.push(unit);
    }
    out.retain(|u| u.whole_us.is_some() || u.maxlen.iter().any(|&m| m > 0));
    drop_dominated(&mut out, l);
    out
}

/// Whether unit `a` is at least as good as `b` in every respect the search sees: time per layer, each role's
/// fixed time, each role's most layers, and the whole model on its own.
fn at_least_as_good(a: &Unit, b: &Unit) -> bool {
    a.alpha <= b.alpha
        && a.hop <= b.hop
        && (0..3).all(|r| a.beta[r] <= b.beta[r] && a.maxlen[r] >= b.maxlen[r])
        && match (a.whole_us, b.whole_us) {
            (_, None) => true,
            (Some(x), Some(y)) => x <= y,
            (None, Some(_)) => false,
        }
}

/// Drops every node unit that `n_layers` others dominate (at least as good everywhere; among equals, the lower
/// index dominates). A pipeline has at most `n_layers` stages, so a plan using such a unit leaves one of its
/// dominators free, and swapping them costs nothing; each swap moves to a unit with fewer dominators, so some
/// best plan uses none of the dropped units. With many nodes and few layers this leaves the fast ones.
fn drop_dominated(units: &mut Vec<Unit>, l: usize) {
    let nodes: Vec<usize> = (0..units.len()).filter(|&u| matches!(units[u].kind, UnitKind::Node(_))).collect();
    if nodes.len() <= l {
        return;
    }
    let dominates = |a: usize, b: usize| {
        let (ua, ub) = (&units[a], &units[b]);
        at_least_as_good(ua, ub) && (a < b || !at_least_as_good(ub, ua))
    };
    let dropped: Vec<bool> = (0..units.len())
        .map(|b| {
            matches!(units[b].kind, UnitKind::Node(_))
                && nodes.iter().filter(|&&a| a != b && dominates(a, b)).take(l).count() >= l
        })
        .collect();
    let mut i = 0;
    units.retain(|_| {
        i += 1;
        !dropped[i - 1]
    });
}

/// The best plan using `group` (if any) and the nodes in `candidates`: the best single stage against the best
/// pipeline, with `micro_batches` groups of `cost.batch` sequences in flight (the plans' predictions are then
/// made for `req`, every batch size considered).
pub fn search(
    cost: &CostModel,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    micro_batches: usize,
    group: Option<TpGroup>,
    candidates: &[usize],
) -> Option<Plan> {
    let units = units(cost, nodes, group, candidates);
    let l = cost.n_layers();
    let mut best: Option<Plan> = None;
    let mut offer = |p: Plan| {
        if best.as_ref().is_none_or(|b| better(&p, b)) {
            best = Some(p);
        }
    };
    // The fastest single stage (ties: the first unit).
    let mut single: Option<(f64, usize)> = None;
    for (u, unit) in units.iter().enumerate() {
        if let Some(t) = unit.whole_us {
            if single.is_none_or(|(bt, _)| t < bt) {
                single = Some((t, u));
            }
        }
    }
    if let Some((_, u)) = single {
        offer(finish(cost.model, nodes, req, vec![unit_stage(cost, &units[u], 0, l)]));
    }
    if let Some(c) = best_pipeline(&units, l, micro_batches) {
        let stages = c.stages.iter().map(|&(u, a, b)| unit_stage(cost, &units[u], a, b)).collect();
        offer(finish(cost.model, nodes, req, stages));
    }
    best
}
