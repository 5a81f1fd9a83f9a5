//! The replicas `edge-coord serve` runs: which nodes each holds (so a replica that re-plans leaves the others'
//! nodes alone), one plan at a time across replicas (so two re-plans never take the same free node), the
//! first deployment of every replica, and nodes that join later becoming a new replica.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

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
}

impl Fleet {
    pub fn new(mode: ReplicaMode) -> Fleet {
        Fleet {
            mode,
            claims: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::new()),
            planning: tokio::sync::Mutex::new(()),
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

    /// Remembers the members seen when planning; returns the ones not seen before.
    pub fn see<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut seen = self.seen.lock().expect("seen lock");
        ids.into_iter().filter(|id| seen.insert(id.to_string())).map(str::to_string).collect()
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
    let fail = |e: PlanFailure| match e {
        PlanFailure::NoPlan(e) | PlanFailure::Deploy(e) => e,
    };
    let none = HashSet::new();
    if target.stages.is_some() || fleet.mode == ReplicaMode::Fixed(1) {
        let p = plan_and_deploy(client, discovery, target, &none, false, progress).await.map_err(fail)?;
        fleet.see(p.members.iter().map(|m| m.peer.peer_id.as_str()));
        fleet.claim(0, nodes_of(&p));
        return Ok(vec![p]);
    }
    let (members, nodes) = discover(client, discovery, &none).await.map_err(fail)?;
    fleet.see(members.iter().map(|m| m.peer.peer_id.as_str()));
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
        let p = deploy_plan(client, target, r.plan, nodes.clone(), members.clone(), progress).await.map_err(fail)?;
        fleet.claim(i, nodes_of(&p));
        planned.push(p);
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
/// plan is deployed and served as a new replica: with `--replicas N` while fewer than N run, with `auto` when it
/// is about as fast per sequence as the slowest replica (within [`MEASURE_SLACK`]). Ends (after the replicas it
/// started) when the router is gone.
pub async fn scout(setup: Setup, router: submit::Weak) {
    let mut started = Vec::new();
    if setup.stages.is_none() {
        let progress = indicatif::MultiProgress::new();
        loop {
            tokio::time::sleep(SCOUT_EVERY).await;
            let Some(handle) = router.upgrade() else { break };
            if let Some((replica, p, planning)) = new_replica(&setup, &handle, &progress).await {
                // Its nodes are claimed as it starts, before another replica may plan.
                started.push(scheduler::start(replica, p, &handle));
                drop(planning);
            }
        }
    }
    futures::future::join_all(started).await;
}

/// A replica on the members no replica holds, when some joined since the last look and they are worth one.
async fn new_replica<'a>(
    setup: &'a Setup,
    router: &submit::Handle,
    progress: &indicatif::MultiProgress,
) -> Option<(Setup, Planned, tokio::sync::MutexGuard<'a, ()>)> {
    // The running replicas' largest share of sequences and slowest time per token of one sequence (us).
    let (sequences, interval) = {
        let b = router.board.lock().expect("board lock");
        // A replica that re-plans or waits for nodes takes the free ones itself.
        let wanted = match setup.fleet.mode {
            ReplicaMode::Auto => true,
            ReplicaMode::Fixed(k) => b.replicas.len() < k,
        };
        if !wanted || b.replicas.iter().any(|r| r.plan.is_none()) {
            return None;
        }
        let plans = b.replicas.iter().filter_map(|r| r.plan.as_ref());
        plans.fold((1, 0.0f64), |(s, t), p| {
            (s.max(p.sequences), t.max(p.sequences as f64 * 1e6 / p.predicted_tokens_per_s.max(1e-9)))
        })
    };
    let client = &setup.joined_client;
    let look = Discovery { wait: SCOUT_LOOK, min_nodes: 0, expected: Vec::new() };
    let found = crate::cluster::discover(client, &look).await.ok()?;
    if setup.fleet.see(found.iter().map(|p| p.peer_id.as_str())).is_empty() {
        return None;
    }
    let planning = setup.fleet.planning.lock().await;
    let taken = setup.fleet.all();
    let (members, nodes) = discover(client, &setup.discovery, &taken).await.ok()?;
    let req = crate::plan::PlanRequest { sequences, ..setup.req };
    let plan = crate::plan::plan(&setup.desc, &nodes, &req).ok()?;
    let p = &plan.prediction;
    let slower = p.sequences as f64 * 1e6 / p.throughput_tokens_per_s.max(1e-9) > interval * (1.0 + MEASURE_SLACK);
    if setup.fleet.mode == ReplicaMode::Auto && slower {
        tracing::info!(
            nodes = nodes.len(),
            "the new members would be a slower replica than the others; kept as spares"
        );
        return None;
    }
    eprintln!("new replica on the members that joined:\n{}", plan.describe(&nodes));
    let target = Target { model: &setup.model, facts: &setup.facts, desc: &setup.desc, req: &req, stages: None };
    match deploy_plan(client, &target, plan, nodes, members, progress).await {
        Ok(p) => Some((Setup { req, ..setup.clone() }, p, planning)),
        Err(PlanFailure::NoPlan(e) | PlanFailure::Deploy(e)) => {
            eprintln!("warning: deploying a new replica failed: {e:#}");
            None
        }
    }
}
