//! The scheduler: one task per replica owns its [`Deployment`] and runs the requests the router sends it. Requests arrive over a
//! channel and wait in a bounded queue; up to `sequences` run at once as separate sequences (the plan was made to
//! hold that many). Tokens become text here (a streaming detokenizer per request, then the stop strings), which
//! goes back to the request's handler over its own channel. A handler that goes away (the client disconnected)
//! cancels its sequence. When a stage fails, the scheduler re-plans ([`replan`]) on the members left (without the
//! other replicas' nodes) and resumes every running request from its prompt plus the tokens it has (as
//! `edge-coord run` does); when no plan fits, its running and waiting requests move to the other replicas (or
//! fail when there are none) and it takes no more until the nodes left to it can hold the model again.

mod replan;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_node::backend::LoadedModel;
use edge_node::tokenizer::{TextStream, Tokenizer};
use edge_protocol::stage::{Finish, Fork};
use tokio::sync::mpsc;

use super::board::{member_status, plan_status, Board};
use super::fleet::{nodes_of, Fleet};
use super::logprobs::Entry;
use super::openai::ApiError;
use super::status::{JobState, JobStatus};
use super::stop::StopMatcher;
use super::submit::{Event, Handle, Submission, Weak, Work};
use crate::deploy::Deployment;
use crate::job::{self, Failure, Outcome, Update};
use crate::plan::PlanRequest;
use crate::run::Planned;
use crate::ModelDescription;

/// Requests that may wait for a free sequence.
pub const QUEUE_LIMIT: usize = 64;
/// How often the scheduler looks at clients and timers when nothing happens.
const TICK: Duration = Duration::from_millis(250);
/// How long a finished sequence keeps its slot waiting for the stages' timings (which also mean the stages freed
/// it).
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// While no plan fits, how often to try again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// A request that holds a sequence slot.
pub struct Active {
    pub(super) sub: Submission,
    outcome: Outcome,
    /// Its sequence on the current deployment (None before it is started there).
    seq: Option<u64>,
    text: TextStream<'static>,
    stop: StopMatcher,
    /// The response is complete (or failed, or cancelled): the slot is kept until the stages close it.
    ended_at: Option<Instant>,
    stats: usize,
    first_token: bool,
    /// Prompt positions its sequence forked from another's instead of running them (it shares that prefill).
    shared: usize,
    /// When its last token came (the inter-token histogram).
    last_token: Option<Instant>,
    /// Log-probabilities of the tokens whose text has not been sent yet.
    logprobs: Vec<Entry>,
}

/// The fork a choice starts from: the first stage copies all but the last prompt position from its sibling's
/// sequence when that one is running (else, or for a one-token prompt, the choice runs its whole prompt). On a
/// model with sliding-window layers only while the sibling has no token yet: past that, a local layer's cache
/// may have moved beyond the window the fork needs.
fn fork_of(sub: &Submission, running: &[Active], sliding: bool) -> Option<Fork> {
    let with = sub.shares_prefill_with.as_ref()?;
    let len = sub.job.prompt.len().checked_sub(1).filter(|&l| l > 0 && !sub.job.params.embed)?;
    let parent = running
        .iter()
        .find(|a| &a.sub.id == with && a.ended_at.is_none() && (!sliding || a.outcome.tokens.is_empty()))?
        .seq?;
    Some(Fork { parent, len: len as u32 })
}

/// What a replica's scheduler needs to (re)plan.
#[derive(Clone)]
pub struct Setup {
    pub joined_client: edge_node::net::Client,
    /// How to discover members when re-planning (no minimum: after a loss fewer are expected).
    pub discovery: crate::cluster::Discovery,
    pub model: Arc<LoadedModel>,
    pub facts: Arc<crate::deploy::ModelFacts>,
    pub desc: ModelDescription,
    /// This replica's request (its share of the sequences).
    pub req: PlanRequest,
    pub stages: Option<usize>,
    pub tok: &'static Tokenizer,
    pub fleet: Arc<Fleet>,
}

pub struct Scheduler {
    setup: Setup,
    /// Its index among the replicas.
    replica: usize,
    rx: mpsc::Receiver<Work>,
    router: Weak,
    board: Arc<Mutex<Board>>,
    deployment: Option<Deployment>,
    /// The plan that runs (or ran before a loss) over its nodes: a re-plan keeps its layout when it can.
    previous: Option<(crate::plan::Plan, Vec<crate::plan::NodeProfile>)>,
    n_stages: usize,
    queue: VecDeque<Submission>,
    /// Running requests handed over by a replica that lost its plan: they start before the queue.
    moved: VecDeque<Active>,
    active: Vec<Active>,
    next_seq: u64,
    last_event: Instant,
    failure: Option<Failure>,
    /// Recoveries since the last token (a cluster that keeps failing becomes unavailable).
    recoveries: u32,
    last_attempt: Instant,
    progress: indicatif::MultiProgress,
}

/// Starts a replica's scheduler on its deployed plan, as a new replica of `router`; returns the task.
pub fn start(setup: Setup, planned: Planned, router: &Handle) -> tokio::task::JoinHandle<()> {
    let sequences = setup.req.sequences;
    let (tx, rx) = mpsc::channel(QUEUE_LIMIT + sequences);
    let replica = router.add_replica(tx, QUEUE_LIMIT + sequences);
    let progress = indicatif::MultiProgress::new();
    let mut s = Scheduler {
        setup,
        replica,
        rx,
        router: router.downgrade(),
        board: router.board.clone(),
        deployment: None,
        previous: None,
        n_stages: 0,
        queue: VecDeque::new(),
        moved: VecDeque::new(),
        active: Vec::new(),
        next_seq: rand::random::<u64>() >> 2,
        last_event: Instant::now(),
        failure: None,
        recoveries: 0,
        last_attempt: Instant::now(),
        progress,
    };
    s.install(planned);
    tokio::spawn(s.run())
}

fn finish_reason(f: Option<Finish>) -> &'static str {
    match f {
        Some(Finish::Length) | Some(Finish::Context) => "length",
        _ => "stop",
    }
}

impl Scheduler {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().expect("board lock")
    }

    /// Takes a newly deployed plan.
    fn install(&mut self, p: Planned) {
        let status = plan_status(&p);
        self.setup.fleet.claim(self.replica, nodes_of(&p));
        {
            let mut b = self.board();
            for m in p.members.iter().filter_map(member_status) {
                match b.members.iter_mut().find(|n| n.id == m.id) {
                    Some(n) => *n = m,
                    None => b.members.push(m),
                }
            }
            let r = b.replica(self.replica);
            r.plan = Some(status);
            r.unavailable = None;
        }
        self.n_stages = p.deployment.stages.len();
        self.previous = Some((p.plan, p.nodes));
        self.deployment = Some(p.deployment);
        self.last_event = Instant::now();
    }

    async fn run(mut self) {
        loop {
            if self.failure.is_none() {
                self.admit().await;
            }
            if let Some(f) = self.failure.take() {
                self.recover(f).await;
                continue;
            }
            if self.deployment.is_none() && self.last_attempt.elapsed() >= RETRY_EVERY {
                self.retry().await;
                continue;
            }
            enum Ev {
                Submit(Option<Work>),
                Node(anyhow::Result<Option<(edge_protocol::stage::MemberRef, edge_protocol::stage::NodeMsg)>>),
                Tick,
            }
            let ev = match self.deployment.as_mut() {
                Some(d) => tokio::select! {
                    s = self.rx.recv() => Ev::Submit(s),
                    e = d.event(TICK) => Ev::Node(e),
                },
                None => tokio::select! {
                    s = self.rx.recv() => Ev::Submit(s),
                    _ = tokio::time::sleep(TICK) => Ev::Tick,
                },
            };
            match ev {
                Ev::Submit(None) => break,
                Ev::Submit(Some(Work::New(sub))) => self.enqueue(*sub),
                Ev::Submit(Some(Work::Moved(a))) => self.take_over(*a),
                Ev::Node(Ok(Some(e))) => {
                    self.last_event = Instant::now();
                    self.on_event(e).await;
                }
                Ev::Node(Ok(None)) => {
                    self.failure = Some(Failure { member: None, message: "every session closed".into(), retry: true })
                }
                Ev::Node(Err(_)) | Ev::Tick => {}
            }
            self.housekeeping().await;
        }
        if let Some(d) = self.deployment.take() {
            d.close().await;
        }
    }

    fn enqueue(&mut self, sub: Submission) {
        let record = JobStatus {
            id: sub.id.clone(),
            kind: sub.kind,
            state: JobState::Queued,
            prompt_tokens: sub.job.prompt.len(),
            completion_tokens: 0,
            tokens_per_s: None,
            first_token_ms: None,
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            replica: self.replica,
            finish_reason: None,
            error: None,
        };
        let unavailable = {
            let mut b = self.board();
            b.requests += 1;
            b.metrics.prompt_tokens += sub.job.prompt.len() as u64;
            b.jobs.push_front(record);
            b.jobs.truncate(super::status::MAX_JOBS);
            b.replica(self.replica).unavailable.clone()
        };
        match unavailable {
            // (Sent here just before this replica lost its plan.)
            Some(why) => self.hand_over(vec![self.admitted(sub)], &why),
            None => {
                self.queue.push_back(sub);
                self.publish_load();
            }
        }
    }

    fn new_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A running request handed over by another replica: it resumes here before the queue (or moves on when
    /// this replica lost its plan too).
    fn take_over(&mut self, a: Active) {
        let replica = self.replica;
        self.board().job(&a.sub.id, |j| {
            j.replica = replica;
            j.state = JobState::Queued;
        });
        let unavailable = self.board().replica(replica).unavailable.clone();
        match unavailable {
            Some(why) => self.hand_over(vec![a], &why),
            None => {
                self.moved.push_back(a);
                self.publish_load();
            }
        }
    }

    /// A request as it starts running.
    fn admitted(&self, sub: Submission) -> Active {
        Active {
            stop: StopMatcher::new(sub.stop.clone()),
            sub,
            outcome: Outcome::default(),
            seq: None,
            text: TextStream::new(self.setup.tok),
            ended_at: None,
            stats: 0,
            first_token: false,
            shared: 0,
            last_token: None,
            logprobs: Vec::new(),
        }
    }

    /// Starts handed-over and waiting requests while there are free slots.
    async fn admit(&mut self) {
        let Some(n) = self.deployment.as_ref().map(|_| self.setup.req.sequences) else { return };
        while self.active.len() < n {
            let mut a = match self.moved.pop_front() {
                Some(a) => a,
                None => {
                    let Some(sub) = self.queue.pop_front() else { break };
                    if sub.events.is_closed() {
                        self.board().job(&sub.id, |j| j.state = JobState::Cancelled);
                        continue;
                    }
                    self.admitted(sub)
                }
            };
            self.board().job(&a.sub.id, |j| j.state = JobState::Running);
            let fork = fork_of(&a.sub, &self.active, self.setup.model.config.sliding.is_some());
            if let Err(f) = self.start_seq(&mut a, fork).await {
                self.failure = Some(f);
            }
            self.active.push(a);
            if self.failure.is_some() {
                break;
            }
        }
        self.publish_load();
    }

    /// Puts the running sequences and the queue depth on the board; returns the running count.
    fn publish_load(&self) -> usize {
        let running = self.active.iter().filter(|a| a.ended_at.is_none()).count();
        let queued = self.queue.len() + self.moved.len();
        let mut b = self.board();
        let r = b.replica(self.replica);
        r.running = running;
        r.queued = queued;
        running
    }

    /// Starts (or resumes) `a` on the current deployment, sharing the positions of `fork`.
    async fn start_seq(&mut self, a: &mut Active, fork: Option<Fork>) -> Result<(), Failure> {
        let seq = self.new_seq();
        let Some(d) = self.deployment.as_mut() else { return Ok(()) };
        match a.outcome.restart(&a.sub.job, self.n_stages, Instant::now()) {
            Some(mut j) => {
                j.params.fork = fork;
                a.shared = fork.map_or(0, |f| f.len as usize);
                a.first_token = false;
                d.start(seq, j.prompt, j.params).await.map_err(|e| Failure {
                    member: Some(d.first()),
                    message: format!("{e:#}"),
                    retry: true,
                })?;
                a.seq = Some(seq);
            }
            None => {
                // Its budget or context was used up before a failure: it is complete.
                a.seq = None;
                self.end(a, None);
            }
        }
        Ok(())
    }

    /// Completes `a`'s response (Done with its finish reason, or `error`).
    fn end(&self, a: &mut Active, error: Option<ApiError>) {
        if a.ended_at.is_some() {
            return;
        }
        a.ended_at = Some(Instant::now());
        let completion_tokens = a.outcome.tokens.len();
        let mut b = self.board.lock().expect("board lock");
        match error {
            None => {
                if !a.logprobs.is_empty() {
                    let _ = a.sub.events.send(Event::Text(String::new(), std::mem::take(&mut a.logprobs)));
                }
                if let Some(v) = a.outcome.embedding.take() {
                    // Its prompt went through every stage; nothing else is counted for it.
                    b.count(self.replica, a.sub.job.prompt.len() as u64);
                    let _ = a.sub.events.send(Event::Embedding(v));
                }
                let reason = if a.stop.stopped() { "stop" } else { finish_reason(a.outcome.finish) };
                let _ = a.sub.events.send(Event::Done { finish_reason: reason, completion_tokens });
                let tps = (completion_tokens > 1).then(|| a.outcome.decode_tps());
                b.job(&a.sub.id, |j| {
                    j.state = JobState::Done;
                    j.finish_reason = Some(reason.into());
                    j.completion_tokens = completion_tokens;
                    j.tokens_per_s = tps;
                });
            }
            Some(e) => {
                let msg = e.message.clone();
                let cancelled = a.sub.events.send(Event::Failed(e)).is_err();
                b.job(&a.sub.id, |j| {
                    j.state = if cancelled { JobState::Cancelled } else { JobState::Failed };
                    j.error = (!cancelled).then_some(msg);
                    j.completion_tokens = completion_tokens;
                });
            }
        }
    }

    async fn on_event(&mut self, e: (edge_protocol::stage::MemberRef, edge_protocol::stage::NodeMsg)) {
        let active = &mut self.active;
        let update = job::apply(e, |seq| active.iter_mut().find(|a| a.seq == Some(seq)).map(|a| &mut a.outcome));
        match update {
            Update::Token { seq, token, finished, logprobs } => {
                let Some(i) = self.active.iter().position(|a| a.seq == Some(seq)) else { return };
                let mut a = self.active.swap_remove(i);
                if a.ended_at.is_none() {
                    if let (Some(t), Some(lp)) = (token, &logprobs) {
                        a.logprobs.push(Entry::new(self.setup.tok, t, lp));
                    }
                    self.on_token(&mut a, token, finished).await;
                }
                self.active.push(a);
            }
            Update::Stats { seq, forked } => {
                self.board().metrics.forked_tokens += forked as u64;
                if let Some(a) = self.active.iter_mut().find(|a| a.seq == Some(seq)) {
                    a.stats += 1;
                }
            }
            Update::Failed { seq: Some(seq), failure } => {
                let Some(i) = self.active.iter().position(|a| a.seq == Some(seq)) else {
                    tracing::debug!(seq, %failure, "a failure of a sequence no longer running");
                    return;
                };
                if self.active[i].ended_at.is_some() {
                    return;
                }
                if failure.retry {
                    self.failure = Some(failure);
                } else {
                    let mut a = self.active.swap_remove(i);
                    self.end(&mut a, Some(ApiError::server(failure.message)));
                    self.active.push(a);
                }
            }
            Update::Failed { seq: None, failure } => self.failure = Some(failure),
            Update::Ignored => {}
        }
    }

    async fn on_token(&mut self, a: &mut Active, token: Option<u32>, finished: bool) {
        if let Some(t) = token {
            self.recoveries = 0;
            {
                let mut b = self.board();
                if !a.first_token {
                    a.first_token = true;
                    // The stages just processed the (re)started prompt.
                    let prompt = (a.sub.job.prompt.len() + a.outcome.tokens.len() - 1 - a.shared) as u64;
                    b.count(self.replica, prompt);
                    if a.outcome.tokens.len() == 1 {
                        let ms = a.sub.arrived.elapsed().as_secs_f64() * 1e3;
                        b.job(&a.sub.id, |j| j.first_token_ms = Some(ms));
                        b.metrics.ttft.observe(ms / 1e3);
                    }
                }
                let now = Instant::now();
                if let Some(prev) = a.last_token.replace(now) {
                    b.metrics.itl.observe(now.duration_since(prev).as_secs_f64());
                }
                b.count(self.replica, 1);
                b.completion_tokens += 1;
                let n = a.outcome.tokens.len();
                b.job(&a.sub.id, |j| j.completion_tokens = n);
            }
            let piece = a.text.push(t);
            let (out, stopped) = a.stop.push(&piece);
            if !out.is_empty() {
                let _ = a.sub.events.send(Event::Text(out, std::mem::take(&mut a.logprobs)));
            }
            if stopped {
                if !finished {
                    if let (Some(d), Some(seq)) = (self.deployment.as_mut(), a.seq) {
                        let _ = d.cancel(seq).await;
                    }
                }
                self.end(a, None);
                return;
            }
        }
        if finished {
            let rest = a.text.finish();
            let (mut out, stopped) = a.stop.push(&rest);
            if !stopped {
                out.push_str(&a.stop.finish());
            }
            if !out.is_empty() {
                let _ = a.sub.events.send(Event::Text(out, std::mem::take(&mut a.logprobs)));
            }
            self.end(a, None);
        }
    }

    /// Cancels the sequences of clients that went away, frees closed slots, notices a stalled cluster.
    async fn housekeeping(&mut self) {
        let mut gone = Vec::new();
        for a in &mut self.active {
            if a.ended_at.is_none() && a.sub.events.is_closed() {
                a.ended_at = Some(Instant::now());
                gone.push((a.seq, a.sub.id.clone(), a.outcome.tokens.len()));
            }
        }
        for (seq, id, n) in gone {
            if let (Some(d), Some(seq)) = (self.deployment.as_mut(), seq) {
                let _ = d.cancel(seq).await;
            }
            self.board().job(&id, |j| {
                j.state = JobState::Cancelled;
                j.completion_tokens = n;
            });
        }
        let n_stages = self.n_stages;
        self.active.retain(|a| match a.ended_at {
            None => true,
            Some(t) => a.seq.is_some() && a.stats < n_stages && t.elapsed() < CLOSE_GRACE,
        });
        let mut cancelled = Vec::new();
        self.queue.retain(|s| {
            let keep = !s.events.is_closed();
            if !keep {
                cancelled.push(s.id.clone());
            }
            keep
        });
        self.moved.retain(|a| {
            let keep = !a.sub.events.is_closed();
            if !keep {
                cancelled.push(a.sub.id.clone());
            }
            keep
        });
        for id in cancelled {
            self.board().job(&id, |j| j.state = JobState::Cancelled);
        }
        let running = self.publish_load();
        if running > 0 && self.deployment.is_some() && self.last_event.elapsed() > job::STALL_TIMEOUT {
            self.failure = Some(Failure {
                member: None,
                message: format!("no word from the cluster for {} s", job::STALL_TIMEOUT.as_secs()),
                retry: true,
            });
        }
    }
}
