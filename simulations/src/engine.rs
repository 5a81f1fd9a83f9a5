//! The discrete-event engine: a binary heap of timestamped events, and the runtime's protocol played on it.
//!
//! A request arrives at the coordinator, queues for one of its replica's sequence slots, and its prompt is sent
//! to the first stage's leader, which cuts it into chunks (as `node/src/stage/worker.rs` does: as many tokens as
//! fit half a stage frame). Every stage serves its FIFO queue one step at a time, or, on nodes that batch, the
//! waiting steps of up to 32 requests as one step (stopping at a second step of a request); a finished step's hidden
//! state goes to the next stage over the links ([`crate::net`]); the last stage samples after the last chunk and
//! sends the token to the coordinator and to the first stage (a one-stage plan to itself), which runs the next
//! decode step; after `max_tokens` tokens the sequence ends and frees its slot. Failures and re-plans are in
//! [`crate::recovery`], shared hosts in [`crate::host`].

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use edge_coord::plan::NodeProfile;
use edge_node::stage::worker::MAX_BATCH;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Arrivals, SimConfig};
use crate::deploy::{Replica, TensorKey};
use crate::host::{HostJob, HostState};
use crate::net::{AtSwitch, Net};
use crate::stats::{Histogram, TraceEvent};
use crate::{net, SimError};

/// Largest stage frame (`edge_protocol::stage::MAX_STAGE_FRAME`, 8 MiB): a prompt is cut into chunks of
/// `MAX_STAGE_FRAME / 2 / (dim x 4)` tokens (at most 4096).
pub const MAX_STAGE_FRAME: usize = 8 << 20;
/// Bytes of a token id on the wire (the planner counts the stage input of the first stage the same way).
pub const TOKEN_BYTES: u64 = 4;

/// Tokens per prefill chunk for a model of width `dim`.
pub fn chunk_tokens(dim: usize) -> usize {
    (MAX_STAGE_FRAME / 2 / (dim * 4)).clamp(1, 4096)
}

/// One step of one sequence on one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub req: u32,
    pub tokens: u32,
    /// Position of the first token.
    pub pos: u32,
    /// The last stage samples a token after this step.
    pub sample: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Msg {
    /// Coordinator -> first stage: the prompt (with the tokens generated so far when replaying).
    Start {
        req: u32,
    },
    Step {
        stage: u32,
        step: Step,
    },
    /// Last stage -> coordinator.
    Token {
        req: u32,
        index: u32,
        last: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub rep: u32,
    pub epoch: u32,
    pub from: u32,
    pub to: u32,
    pub bytes: u64,
    pub msg: Msg,
}

#[derive(Debug, Clone, Copy)]
pub enum Ev {
    Arrival {
        user: Option<u32>,
    },
    /// The message's first packet reached the switch: on to the receiver's link.
    Switch(Transfer, AtSwitch),
    Deliver(Transfer),
    StageDone {
        rep: u32,
        epoch: u32,
        stage: u32,
    },
    HostTick {
        host: u32,
        version: u64,
    },
    Fail {
        node: u32,
    },
    Rejoin {
        node: u32,
    },
    Detect {
        rep: u32,
        epoch: u32,
    },
    Ready {
        rep: u32,
        epoch: u32,
    },
}

struct Entry {
    t: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Earliest first (the heap is a max-heap), ties in scheduling order.
    fn cmp(&self, o: &Entry) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Completed,
    /// Accepted (queued or running), then lost: its replica found no plan after a failure.
    Failed,
    /// No replica had a plan when it arrived.
    Rejected,
}

/// A request's state.
#[derive(Debug, Clone)]
pub struct Req {
    pub arrival: f64,
    pub user: Option<u32>,
    pub prompt: u32,
    pub max_tokens: u32,
    pub replica: Option<u32>,
    /// Tokens sampled by the last stage in the current plan (reset to `delivered` on a replay).
    pub generated: u32,
    /// Tokens the coordinator received.
    pub delivered: u32,
    pub first_token: Option<f64>,
    pub last_token: f64,
    pub ended: bool,
}

/// Counters and samples.
#[derive(Debug, Default)]
pub struct Counters {
    pub tokens: u64,
    pub requests: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
    pub ttft: Vec<f64>,
    pub intervals: Histogram,
    pub seq_tps: Vec<f64>,
    pub node_failures: u64,
    pub replans: u64,
    pub failed_replans: u64,
    pub shipped_bytes: u64,
    pub timeline: Vec<u64>,
    pub failure_times: Vec<f64>,
    pub order_violations: u64,
    pub events: u64,
    pub trace: Vec<TraceEvent>,
}

/// The whole simulation state.
pub struct Sim<'c> {
    pub cfg: &'c SimConfig,
    /// The planner's view of every node.
    pub profiles: Vec<NodeProfile>,
    /// Links and compute (sampled as the protocol runs).
    pub rng: StdRng,
    /// Request arrivals and lengths (their own stream: the arrival pattern depends on the seed alone).
    pub work_rng: StdRng,
    pub churn_rng: StdRng,
    pub now: f64,
    heap: BinaryHeap<Entry>,
    seq: u64,
    pub net: Net,
    pub hosts: Vec<HostState>,
    pub up: Vec<bool>,
    /// Tensors each node holds in its cache (kept across failures).
    pub caches: Vec<HashSet<TensorKey>>,
    pub replicas: Vec<Replica>,
    /// Replica of each node.
    pub replica_of: Vec<u32>,
    pub reqs: Vec<Req>,
    pub c: Counters,
    /// Endpoint index of the coordinator.
    pub coord: u32,
    pub horizon: f64,
}

impl<'c> Sim<'c> {
    pub fn new(cfg: &'c SimConfig) -> Result<Sim<'c>, SimError> {
        let n = cfg.cluster.nodes.len();
        if n == 0 {
            return Err(SimError::Config("the cluster has no nodes".into()));
        }
        let mut links: Vec<_> = cfg.cluster.nodes.iter().map(|n| n.link).collect();
        links.push(cfg.cluster.coordinator);
        let hosts = cfg
            .cluster
            .hosts
            .iter()
            .map(|h| HostState { cores: h.cores, jobs: Vec::new(), last: 0.0, version: 0 })
            .collect();
        Ok(Sim {
            cfg,
            profiles: cfg.cluster.node_profiles(),
            rng: StdRng::seed_from_u64(cfg.seed),
            work_rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed_0fa7_71a1),
            churn_rng: StdRng::seed_from_u64(cfg.seed ^ 0xc4a7_e5e5),
            now: 0.0,
            heap: BinaryHeap::new(),
            seq: 0,
            net: Net::new(links),
            hosts,
            up: vec![true; n],
            caches: vec![HashSet::new(); n],
            replicas: Vec::new(),
            replica_of: vec![0; n],
            reqs: Vec::new(),
            c: Counters::default(),
            coord: n as u32,
            horizon: cfg.seconds.map_or(f64::INFINITY, |s| s * 1e6),
        })
    }

    pub fn schedule(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Entry { t: at.max(self.now), seq: self.seq, ev });
    }

    /// Runs every event up to the horizon.
    pub fn run(&mut self) {
        match self.cfg.workload.arrivals {
            Arrivals::Closed { users, .. } => {
                // Users start at random times within the first second (or half the warm-up), not all at once.
                let spread = (self.cfg.warmup_s / 2.0).max(1.0) * 1e6;
                for u in 0..users {
                    let at = self.work_rng.random::<f64>() * spread;
                    self.schedule(at, Ev::Arrival { user: Some(u as u32) });
                }
            }
            Arrivals::Poisson { rate } => {
                let at = net::exp_sample(&mut self.work_rng, 1e6 / rate);
                self.schedule(at, Ev::Arrival { user: None });
            }
            Arrivals::Batch { count } => {
                for _ in 0..count {
                    self.schedule(0.0, Ev::Arrival { user: None });
                }
            }
        }
        while let Some(Entry { t, ev, .. }) = self.heap.pop() {
            if t > self.horizon {
                break;
            }
            self.now = t;
            self.c.events += 1;
            self.dispatch(ev);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival { user } => self.arrival(user),
            Ev::Switch(tr, at) => {
                let t = self.net.down(at, tr.to as usize, tr.bytes, &mut self.rng);
                self.schedule(t, Ev::Deliver(tr));
            }
            Ev::Deliver(tr) => self.deliver(tr),
            Ev::StageDone { rep, epoch, stage } => {
                if self.replicas[rep as usize].epoch == epoch {
                    self.stage_done(rep, stage);
                }
            }
            Ev::HostTick { host, version } => self.host_tick(host as usize, version),
            Ev::Fail { node } => self.fail(node as usize),
            Ev::Rejoin { node } => self.rejoin(node as usize),
            Ev::Detect { rep, epoch } => {
                if self.replicas[rep as usize].epoch == epoch {
                    self.replan(rep as usize);
                }
            }
            Ev::Ready { rep, epoch } => {
                if self.replicas[rep as usize].epoch == epoch {
                    self.ready(rep as usize);
                }
            }
        }
    }

    // ---- requests ----

    fn arrival(&mut self, user: Option<u32>) {
        let w = self.cfg.workload;
        if let Arrivals::Poisson { rate } = w.arrivals {
            let next = self.now + net::exp_sample(&mut self.work_rng, 1e6 / rate);
            self.schedule(next, Ev::Arrival { user: None });
        }
        let mut length = |mean: usize| {
            let s = w.length_spread.clamp(0.0, 1.0);
            let f = if s > 0.0 { 1.0 - s + 2.0 * s * self.work_rng.random::<f64>() } else { 1.0 };
            ((mean as f64 * f).round() as u32).max(1)
        };
        let (prompt, max_tokens) = (length(w.prompt_tokens), length(w.output_tokens));
        let id = self.reqs.len() as u32;
        self.reqs.push(Req {
            arrival: self.now,
            user,
            prompt,
            max_tokens,
            replica: None,
            generated: 0,
            delivered: 0,
            first_token: None,
            last_token: 0.0,
            ended: false,
        });
        self.c.requests += 1;
        if self.cfg.trace {
            self.c.trace.push(TraceEvent::Arrival { req: id, t: self.now });
        }
        match self.route() {
            Some(r) => {
                self.reqs[id as usize].replica = Some(r as u32);
                self.replicas[r].queue.push_back(id);
                self.admit(r);
            }
            None => self.end_request(id, End::Rejected),
        }
    }

    /// The live replica with the fewest sequences running or queued (the first on ties).
    fn route(&self) -> Option<usize> {
        (0..self.replicas.len())
            .filter(|&r| !self.replicas[r].is_down())
            .min_by_key(|&r| self.replicas[r].in_flight.len() + self.replicas[r].queue.len())
    }

    /// Starts queued requests while the replica is up and has free sequence slots.
    pub fn admit(&mut self, r: usize) {
        loop {
            let rep = &mut self.replicas[r];
            let Some(d) = rep.plan.as_ref() else { return };
            if rep.in_flight.len() >= rep.sequences {
                return;
            }
            let Some(id) = rep.queue.pop_front() else { return };
            rep.in_flight.push(id);
            let (epoch, first) = (rep.epoch, d.stages[0].cost.leader() as u32);
            let tokens = self.reqs[id as usize].prompt as u64;
            self.send(r as u32, epoch, self.coord, first, TOKEN_BYTES * tokens, Msg::Start { req: id });
        }
    }

    /// A request completed, failed or was rejected: counted, its user thinks and comes back.
    pub fn end_request(&mut self, id: u32, end: End) {
        let ok = end == End::Completed;
        let req = &mut self.reqs[id as usize];
        if req.ended {
            return;
        }
        req.ended = true;
        if ok {
            self.c.completed += 1;
            if req.delivered >= 2 {
                if let Some(first) = req.first_token {
                    let span = (req.last_token - first).max(1e-9);
                    self.c.seq_tps.push((req.delivered - 1) as f64 * 1e6 / span);
                }
            }
        } else if end == End::Failed {
            self.c.failed += 1;
        } else {
            self.c.rejected += 1;
        }
        let user = req.user;
        if let Some(r) = req.replica {
            let rep = &mut self.replicas[r as usize];
            rep.in_flight.retain(|&x| x != id);
            rep.queue.retain(|&x| x != id);
        }
        if let (Some(u), Arrivals::Closed { think_s, .. }) = (user, self.cfg.workload.arrivals) {
            let think = net::exp_sample(&mut self.work_rng, think_s * 1e6);
            let think = if ok { think } else { think.max(1e6) };
            if self.now + think <= self.horizon {
                self.schedule(self.now + think, Ev::Arrival { user: Some(u) });
            }
        }
        if let Some(r) = self.reqs[id as usize].replica {
            self.admit(r as usize);
        }
    }

    // ---- messages ----

    pub fn send(&mut self, rep: u32, epoch: u32, from: u32, to: u32, bytes: u64, msg: Msg) {
        let tr = Transfer { rep, epoch, from, to, bytes, msg };
        if from == to {
            self.schedule(self.now, Ev::Deliver(tr));
        } else {
            let at = self.net.up(self.now, from as usize, bytes, &mut self.rng);
            self.schedule(at.first, Ev::Switch(tr, at));
        }
    }

    fn deliver(&mut self, tr: Transfer) {
        let r = tr.rep as usize;
        if self.replicas[r].epoch != tr.epoch {
            return; // sent under a plan that failed since
        }
        match tr.msg {
            Msg::Start { req } => {
                let q = &self.reqs[req as usize];
                if q.ended {
                    return;
                }
                let total = (q.prompt + q.delivered) as usize;
                let chunk = chunk_tokens(self.cfg.model.dim);
                let n = total.div_ceil(chunk);
                for i in 0..n {
                    let pos = i * chunk;
                    let tokens = chunk.min(total - pos);
                    let step = Step { req, tokens: tokens as u32, pos: pos as u32, sample: i + 1 == n };
                    self.enqueue(r, 0, step);
                }
            }
            Msg::Step { stage, step } => self.enqueue(r, stage as usize, step),
            Msg::Token { req, index, last } => self.token(req, index, last),
        }
    }

    fn token(&mut self, id: u32, index: u32, last: bool) {
        let now = self.now;
        let req = &mut self.reqs[id as usize];
        if req.ended {
            return;
        }
        if index != req.delivered {
            self.c.order_violations += 1;
        }
        req.delivered += 1;
        let measured = now >= self.cfg.warmup_s * 1e6;
        match req.first_token {
            None => {
                req.first_token = Some(now);
                if req.arrival >= self.cfg.warmup_s * 1e6 {
                    self.c.ttft.push(now - req.arrival);
                }
            }
            Some(_) if measured => self.c.intervals.add(now - req.last_token),
            Some(_) => {}
        }
        req.last_token = now;
        self.c.tokens += measured as u64;
        let bin = (now / (self.cfg.bin_s * 1e6)) as usize;
        if self.c.timeline.len() <= bin {
            self.c.timeline.resize(bin + 1, 0);
        }
        self.c.timeline[bin] += 1;
        if self.cfg.trace {
            self.c.trace.push(TraceEvent::Token { req: id, index, t: now });
        }
        if last {
            self.end_request(id, End::Completed);
        }
    }

    // ---- stages ----

    fn enqueue(&mut self, r: usize, stage: usize, step: Step) {
        let Some(d) = self.replicas[r].plan.as_mut() else { return };
        d.stages[stage].queue.push_back(step);
        self.try_start(r, stage);
    }

    /// Starts the stage's next step if it is idle: on a stage that batches, every waiting step of a request not
    /// yet in the batch (one chunk or token per request, in queue order), as the runtime's stage worker does.
    fn try_start(&mut self, r: usize, stage: usize) {
        let epoch = self.replicas[r].epoch;
        let Some(d) = self.replicas[r].plan.as_mut() else { return };
        let s = &mut d.stages[stage];
        if s.busy.is_some() {
            return;
        }
        let Some(first) = s.queue.pop_front() else { return };
        let mut batch = vec![first];
        if s.cost.batches() {
            // As the runtime's worker: up to its batch, stopping at a second step of a request in the batch.
            while batch.len() < MAX_BATCH {
                match s.queue.front() {
                    Some(next) if batch.iter().all(|b| b.req != next.req) => batch.extend(s.queue.pop_front()),
                    _ => break,
                }
            }
        }
        let us = if s.cost.batches() {
            let rows: Vec<(usize, usize)> = batch.iter().map(|b| (b.tokens as usize, b.pos as usize)).collect();
            s.cost.batch_us(&rows, &mut self.rng)
        } else {
            s.cost.step_us(first.tokens as usize, first.pos as usize, &mut self.rng)
        };
        s.busy = Some((batch, self.now));
        let leader = s.cost.leader();
        let host = (!s.cost.is_tensor_parallel()).then(|| self.cfg.cluster.nodes[leader].host).flatten();
        match host {
            Some(h) => {
                let dev = &self.cfg.cluster.nodes[leader].device;
                let speed = dev.speedup(dev.threads);
                let job = HostJob { rep: r as u32, epoch, stage: stage as u32, work: us * speed, speed };
                self.host_add(h, job);
            }
            None => self.schedule(self.now + us, Ev::StageDone { rep: r as u32, epoch, stage: stage as u32 }),
        }
    }

    pub(crate) fn stage_done(&mut self, rep: u32, stage: u32) {
        let r = rep as usize;
        let epoch = self.replicas[r].epoch;
        let Some(d) = self.replicas[r].plan.as_mut() else { return };
        let n_stages = d.stages.len();
        let s = &mut d.stages[stage as usize];
        let Some((batch, start)) = s.busy.take() else { return };
        let me = s.cost.leader() as u32;
        let first = d.stages[0].cost.leader() as u32;
        let next = d.stages.get(stage as usize + 1).map(|n| n.cost.leader() as u32);
        for step in batch {
            if self.cfg.trace {
                let (req, tokens, end) = (step.req, step.tokens, self.now);
                self.c.trace.push(TraceEvent::Step { replica: rep, epoch, stage, req, tokens, start, end });
            }
            if let Some(next) = next {
                let bytes = self.cfg.model.activation_bytes_per_token * step.tokens as u64;
                self.send(rep, epoch, me, next, bytes, Msg::Step { stage: stage + 1, step });
            } else if step.sample && !self.reqs[step.req as usize].ended {
                let req = &mut self.reqs[step.req as usize];
                req.generated += 1;
                let index = req.generated - 1;
                let last = req.generated >= req.max_tokens;
                let pos = req.prompt + req.generated - 1;
                self.send(rep, epoch, me, self.coord, TOKEN_BYTES, Msg::Token { req: step.req, index, last });
                if !last {
                    let next = Step { req: step.req, tokens: 1, pos, sample: true };
                    let msg = Msg::Step { stage: 0, step: next };
                    if n_stages == 1 {
                        // Queued only: the stage starts once every step of this batch has been handled.
                        if let Some(d) = self.replicas[r].plan.as_mut() {
                            d.stages[0].queue.push_back(next);
                        }
                    } else {
                        self.send(rep, epoch, me, first, TOKEN_BYTES, msg);
                    }
                }
            }
        }
        self.try_start(r, stage as usize);
    }
}
