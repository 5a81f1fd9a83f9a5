//! The replicas `edge-coord serve` runs: which nodes each holds (so a replica that re-plans leaves the others'
//! nodes alone), one plan at a time across replicas (so two re-plans never take the same free node), the
//! first deployment of every replica, and nodes that join later becoming a new replica.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::board::Board;
use super::scheduler::{self, Setup};
use super::submit;
use crate::cluster::Discovery;
use crate::plan::replicas::{plan_replicas, ReplicaMode};
use crate::run::{deploy_plan, discover, plan_and_deploy, PlanFailure, Planned, Target};

/// What the replicas share.
pub struct Fleet {
    /// `--replicas`.
    pub mode: ReplicaMode,
    /// Peer ids of each replica's plan, by replica index (empty while it has none).
    claims: Mutex<Vec<HashSet<String>>>,
    /// Every peer id seen when planning (a member not in it joined later).
    seen: Mutex<HashSet<String>>,
    /// Held while a replica plans and deploys.
    pub planning: tokio::sync::Mutex<()>,
    /// The replicas' scheduler tasks (joined at shutdown, when they have closed their plans).
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Fleet {
    pub fn new(mode: ReplicaMode) -> Fleet {
        Fleet {
            mode,
            claims: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::new()),
            planning: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Replica `replica` now runs on `nodes` (empty: it holds none).
    pub fn claim(&self, replica: usize, nodes: HashSet<String>) {
        let mut claims = self.claims.lock().expect("claims lock");
        if claims.len() <= replica {
            claims.resize_with(replica + 1, HashSet::new);
        }
        claims[replica] = nodes;
    }

    /// The nodes the other replicas run on.
    pub fn others(&self, replica: usize) -> HashSet<String> {
        let claims = self.claims.lock().expect("claims lock");
        claims.iter().enumerate().filter(|&(i, _)| i != replica).flat_map(|(_, c)| c.iter().cloned()).collect()
    }

    /// The nodes every replica runs on.
    pub fn all(&self) -> HashSet<String> {
        self.claims.lock().expect("claims lock").iter().flatten().cloned().collect()
    }

    /// The members among `ids` not seen when planning.
    pub fn unseen<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let seen = self.seen.lock().expect("seen lock");
        ids.into_iter().filter(|id| !seen.contains(*id)).map(str::to_string).collect()
    }

    /// Remembers members seen when planning.
    pub fn mark_seen(&self, ids: &[String]) {
        self.seen.lock().expect("seen lock").extend(ids.iter().cloned());
    }
}

/// The peer ids a deployed plan runs on.
pub fn nodes_of(p: &Planned) -> HashSet<String> {
    p.deployment.stages.iter().flat_map(|s| &s.members).map(|(peer, _)| peer.to_string()).collect()
}

/// Plans the replicas `fleet.mode` asks for on the members found and deploys each (`--stages` forces one even
/// pipeline, so one replica). Each replica's plan holds its share of `target.req.sequences`.
pub async fn deploy_all(
    client: &edge_node::net::Client,
    discovery: &crate::cluster::Discovery,
    target: &Target<'_>,
    fleet: &Fleet,
    progress: &indicatif::MultiProgress,
) -> anyhow::Result<Vec<Planned>> {
    let none = HashSet::new();
    if target.stages.is_some() || fleet.mode == ReplicaMode::Fixed(1) {
        let p = plan_and_deploy(client, discovery, target, &none, false, progress).await.map_err(PlanFailure::error)?;
        fleet.mark_seen(&p.members.iter().map(|m| m.peer.peer_id.clone()).collect::<Vec<_>>());
        fleet.claim(0, nodes_of(&p));
        return Ok(vec![p]);
    }
    let (members, nodes) = discover(client, discovery, &none).await.map_err(PlanFailure::error)?;
    fleet.mark_seen(&members.iter().map(|m| m.peer.peer_id.clone()).collect::<Vec<_>>());
    let mode = match fleet.mode {
        // Fewer nodes than replicas: as many as there are nodes now, more as nodes join ([`scout`]).
        ReplicaMode::Fixed(k) if k > nodes.len() => {
            eprintln!("{} node(s) for {k} replicas: starting {0}, more as nodes join", nodes.len());
            ReplicaMode::Fixed(nodes.len())
        }
        mode => mode,
    };
    let replicas = plan_replicas(target.desc, &nodes, target.req, mode)?;
    let n = replicas.replicas.len();
    let mut planned = Vec::with_capacity(n);
    for (i, r) in replicas.replicas.into_iter().enumerate() {
        if n > 1 {
            eprintln!("replica {} of {n}:", i + 1);
        }
        eprintln!("{}", r.plan.describe(&nodes));
        match deploy_plan(client, target, r.plan, nodes.clone(), members.clone(), progress).await {
            Ok(p) => {
                fleet.claim(i, nodes_of(&p));
                planned.push(p);
            }
            Err(e) => {
                for p in planned {
                    p.deployment.close().await;
                }
                return Err(e.error());
            }
        }
    }
    Ok(planned)
}

/// The request each replica's plan is made for: its own share of the sequences.
pub fn replica_request(p: &Planned, req: &crate::plan::PlanRequest) -> crate::plan::PlanRequest {
    crate::plan::PlanRequest { sequences: p.plan.prediction.sequences, ..*req }
}

/// How often nodes that joined later are looked for.
pub const SCOUT_EVERY: Duration = Duration::from_secs(10);
/// How long each look lasts (one round of asking the members for their peers and dialing the new ones).
const SCOUT_LOOK: Duration = Duration::from_secs(1);
/// With `--replicas auto`, how much slower per sequence than the slowest running replica a new one may be: the
/// self-benchmarks of identical nodes differ by a few percent.
const MEASURE_SLACK: f64 = 0.10;

/// Every [`SCOUT_EVERY`], looks for members that joined since the last plan. When the members no replica holds
/// (the new ones and the spares) can run a plan of the model for as many sequences as the largest replica, that
/// plan is deployed and served as a new replica (its task joins [`Fleet::tasks`]): with `--replicas N` while
/// fewer than N run, with `auto` when it is about as fast per sequence as the slowest replica (within
/// [`MEASURE_SLACK`]). New members that cannot make a replica (no plan fits them, or too slow) stay spares
/// until more join; a look that fails to discover or deploy is tried again. Ends when the router is gone (or is
/// aborted at shutdown).
pub async fn scout(setup: Setup, router: submit::Weak) {
    if setup.stages.is_some() {
        return;
    }
    let progress = indicatif::MultiProgress::new();
    loop {
        tokio::time::sleep(SCOUT_EVERY).await;
        if router.upgrade().is_none() {
            break;
        }
        if let Some((replica, p, planning)) = new_replica(&setup, &router, &progress).await {
            let Some(handle) = router.upgrade() else { break };
            // Its nodes are claimed as it starts, before another replica may plan.
            let task = scheduler::start(replica, p, &handle);
            setup.fleet.tasks.lock().expect("tasks lock").push(task);
            drop(planning);
        }
    }
}

/// The running replicas' largest share of sequences and slowest time per token of one sequence (us), when a
/// new replica is wanted now: not while one re-plans or waits for nodes (it takes the free ones itself).
fn wanted(mode: ReplicaMode, b: &Board) -> Option<(usize, f64)> {
    if matches!(mode, ReplicaMode::Fixed(k) if b.replicas.len() >= k) || b.replicas.iter().any(|r| r.plan.is_none()) {
        return None;
    }
    let plans = b.replicas.iter().filter_map(|r| r.plan.as_ref());
    Some(plans.fold((1, 0.0f64), |(s, t), p| {
        (s.max(p.sequences), t.max(p.sequences as f64 * 1e6 / p.predicted_tokens_per_s.max(1e-9)))
    }))
}

/// A replica on the members no replica holds, when some joined since the last look and they are worth one; with
/// the planning lock, held until the replica has started.
async fn new_replica<'a>(
    setup: &'a Setup,
    router: &submit::Weak,
    progress: &indicatif::MultiProgress,
) -> Option<(Setup, Planned, tokio::sync::MutexGuard<'a, ()>)> {
    let fleet = &setup.fleet;
    wanted(fleet.mode, &router.board.lock().expect("board lock"))?;
    let client = &setup.joined_client;
    let look = Discovery { wait: SCOUT_LOOK, min_nodes: 0, expected: Vec::new() };
    let found = crate::cluster::discover(client, &look).await.ok()?;
    let new = fleet.unseen(found.iter().map(|p| p.peer_id.as_str()));
    if new.is_empty() {
        return None;
    }
    let planning = fleet.planning.lock().await;
    // (Again: a replica may have lost its plan, and its nodes, meanwhile.)
    let (sequences, interval) = wanted(fleet.mode, &router.board.lock().expect("board lock"))?;
    let (members, nodes) = match discover(client, &setup.discovery, &fleet.all()).await {
        Ok(found) => found,
        Err(e) => {
            let e = e.error();
            eprintln!("warning: {} member(s) joined but were not found again ({e:#}); looking again", new.len());
            return None;
        }
    };
    let req = crate::plan::PlanRequest { sequences, ..setup.req };
    let plan = match crate::plan::plan(&setup.desc, &nodes, &req) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{} member(s) joined; no replica fits the free members ({e}): kept as spares", new.len());
            fleet.mark_seen(&new);
            return None;
        }
    };
    let p = &plan.prediction;
    let slower = p.sequences as f64 * 1e6 / p.throughput_tokens_per_s.max(1e-9) > interval * (1.0 + MEASURE_SLACK);
    if fleet.mode == ReplicaMode::Auto && slower {
        eprintln!("{} member(s) joined; a replica on them would be slower than the others: kept as spares", new.len());
        fleet.mark_seen(&new);
        return None;
    }
    eprintln!("new replica on the members that joined:\n{}", plan.describe(&nodes));
    let target =
        Target { model: &setup.model, facts: &setup.facts, desc: &setup.desc, req: &req, stages: None, previous: None };
    match deploy_plan(client, &target, plan, nodes, members, progress).await {
        Ok(p) => {
            fleet.mark_seen(&new);
            Some((Setup { req, ..setup.clone() }, p, planning))
        }
        Err(e) => {
            let e = e.error();
            eprintln!("warning: deploying a new replica failed ({e:#}); trying again in {} s", SCOUT_EVERY.as_secs());
            None
        }
    }
}
