//! The thread that owns a loaded stage: it takes steps in arrival order from one queue, runs them on the shard,
//! steps of different sequences that wait together as one batch when the backend batches (continuous batching),
//! and sends the results on (hidden states to the next stage; sampled tokens to the coordinator and around the
//! ring to the first stage). A tensor-parallel member's leader (member 0) forwards every step to the other
//! members first, so all members run the same steps in the same order, and exchanges partial sums with them
//! inside [`Shard::forward_reduce`] / [`Shard::forward_batch`]. In a group whose members all batch, the leader
//! follows the steps it forwarded with [`PipeMsg::Run`] (which of them it runs now, together); the others hold
//! their steps until it comes, so every member runs the very same batches. Down a pipeline a batch stays whole: its
//! steps go on announced as one group ([`PipeMsg::Group`]), which the next stage waits for and runs together; the
//! first stage forms the groups, of at most the planned batch ([`Outbox::batch`]), a new sequence joining the
//! group out in the ring when it has room ([`super::ring`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_protocol::stage::{
    Finish, Fork, JobParams, MemberRef, NodeMsg, PipeMsg, StepInput, Vocabulary, MAX_STAGE_FRAME,
};

use super::ring::InFlight;
use crate::grammar::Grammars;
use crate::sampler::Sampler;
use crate::shard::{HeadOutput, Reducer, Shard, ShardError, ShardInput, ShardOutput, Step};

/// How long a tensor-parallel member waits for the others' partial sums before failing the step.
pub const REDUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most sequences' steps in one batch.
pub const MAX_BATCH: usize = 32;

/// How long a stage waits for the rest of a group the previous stage announced ([`PipeMsg::Group`]) before it
/// runs what has come (the sender sends the whole group at once: only a sender that died midway leaves it short).
const GROUP_WAIT: Duration = Duration::from_secs(2);

/// A step whose sequence is open and whose head output is decided: ready for the shard.
struct Ready {
    seq: u64,
    job: Option<JobParams>,
    input: StepInput,
    sample: bool,
    want: HeadOutput,
    prefill: bool,
}

impl Ready {
    fn shard_input(&self) -> ShardInput<'_> {
        match &self.input {
            StepInput::Tokens(t) => ShardInput::Tokens(t),
            StepInput::Hidden(h) => ShardInput::Hidden(h),
        }
    }

    fn rows(&self, dim: usize) -> usize {
        match &self.input {
            StepInput::Tokens(t) => t.len(),
            StepInput::Hidden(h) => h.len() / dim.max(1),
        }
    }
}

/// Where a stage's results go; set by the session when the plan is wired.
pub struct Outbox {
    pub coordinator: tokio::sync::mpsc::UnboundedSender<NodeMsg>,
    /// The next stage's leader (None: the ring comes back to this very member: a one-stage plan).
    pub next: Option<tokio::sync::mpsc::Sender<PipeMsg>>,
    /// The other members of a tensor-parallel stage, by member index (None at this member's own index).
    pub group: Vec<Option<tokio::sync::mpsc::Sender<PipeMsg>>>,
    /// Every member of the group batches: the leader says which steps run together ([`PipeMsg::Run`]).
    pub group_batches: bool,
    /// The most sequences that move through the pipeline as one group, as planned (0: no limit): batches hold
    /// at most this many steps, and the first stage forms the groups.
    pub batch: usize,
}

pub enum Work {
    /// A message from a pipe (or from this worker to itself around a one-stage ring).
    Pipe { from: MemberRef, msg: PipeMsg },
    /// From the coordinator (first stage's leader): start a sequence.
    Start { seq: u64, prompt: Vec<u32>, params: JobParams },
    /// From the coordinator: stop a sequence early.
    Cancel { seq: u64 },
    /// The plan is wired: where results go from now on.
    Wired(Outbox),
    /// The session ended: free everything.
    Shutdown,
}

#[derive(Default)]
struct SeqState {
    job: Option<JobParams>,
    sampler: Option<Sampler>,
    generated: u32,
    steps: u32,
    compute: Duration,
    prefill: Duration,
    cancelled: bool,
    /// An embedding job's sum of final-normed hidden states so far.
    pooled: Option<Vec<f32>>,
}

pub struct Worker {
    shard: Box<dyn Shard + Send>,
    me: MemberRef,
    rx: Receiver<Work>,
    queue: VecDeque<Work>,
    /// Partial sums received from each group member, oldest first.
    partials: Vec<VecDeque<Vec<f32>>>,
    out: Option<Outbox>,
    seqs: HashMap<u64, SeqState>,
    /// The first stage's prompts still to enter, by sequence: the next chunk is queued when the previous one has
    /// run, behind the other sequences' waiting steps (chunked prefill).
    prompts: HashMap<u64, Prompt>,
    /// The model's vocabulary (a stage with the head), and once a job has a grammar, the vocabulary indexed.
    vocab: Option<Vocabulary>,
    grammars: Option<Arc<Grammars>>,
    /// The first stage's sequences from their `Start` until they close.
    live: HashSet<u64>,
    /// Starts of forks waiting for their parent to run the shared positions here, by parent.
    forks: HashMap<u64, Vec<Waiting>>,
    /// Forks begun (their first step queued) that have not copied their parent's positions yet, by parent: a
    /// parent that ends meanwhile (a one-stage plan closes it right after its last token) closes once they have.
    unopened: HashMap<u64, usize>,
    /// Parents whose close waits for their `unopened` forks.
    closing: HashSet<u64>,
    /// A member of a batched group: the steps forwarded by the leader, waiting for its [`PipeMsg::Run`].
    parked: Vec<Ready>,
    /// While a batch's results go out: what it sends the next stage, sent as one group when it has finished.
    held: Option<Vec<PipeMsg>>,
    /// The first stage of a pipeline: the sequences whose steps are out in the ring.
    ring: InFlight,
}

/// A fork's `Start`, held until its parent has the positions it shares.
struct Waiting {
    seq: u64,
    prompt: Vec<u32>,
    params: JobParams,
}

/// The rest of a prompt and its chunk size.
struct Prompt {
    rest: VecDeque<u32>,
    chunk: usize,
}

impl Prompt {
    /// The next chunk's step.
    fn next_step(&mut self, seq: u64, job: Option<JobParams>, from: MemberRef) -> Work {
        let chunk: Vec<u32> = self.rest.drain(..self.chunk.min(self.rest.len())).collect();
        let msg = PipeMsg::Step { seq, job, input: StepInput::Tokens(chunk), sample: self.rest.is_empty() };
        Work::Pipe { from, msg }
    }
}

impl Worker {
    pub fn new(shard: Box<dyn Shard + Send>, me: MemberRef, rx: Receiver<Work>) -> Worker {
        Worker {
            shard,
            me,
            rx,
            queue: VecDeque::new(),
            partials: Vec::new(),
            out: None,
            seqs: HashMap::new(),
            prompts: HashMap::new(),
            vocab: None,
            grammars: None,
            live: HashSet::new(),
            forks: HashMap::new(),
            unopened: HashMap::new(),
            closing: HashSet::new(),
            parked: Vec::new(),
            held: None,
            ring: InFlight::default(),
        }
    }

    /// Lets the stage sample under jobs' grammars.
    pub fn with_vocabulary(mut self, vocab: Option<Vocabulary>) -> Worker {
        self.vocab = vocab;
        self
    }

    fn leader(&self) -> bool {
        self.me.member == 0
    }

    /// Runs until the session ends.
    pub fn run(mut self) {
        loop {
            let work = match self.queue.pop_front() {
                Some(w) => w,
                None => match self.rx.recv() {
                    Ok(w) => w,
                    Err(_) => break,
                },
            };
            match work {
                Work::Shutdown => break,
                Work::Wired(out) => {
                    self.partials = vec![VecDeque::new(); out.group.len()];
                    self.out = Some(out);
                }
                Work::Start { seq, prompt, params } => self.start(seq, prompt, params),
                Work::Cancel { seq } => {
                    self.ring.forget(seq);
                    if let Some(s) = self.seqs.get_mut(&seq) {
                        s.cancelled = true;
                    }
                    // A fork that has not started yet just never starts.
                    self.forks.values_mut().for_each(|w| w.retain(|w| w.seq != seq));
                    self.forks.retain(|_, w| !w.is_empty());
                }
                Work::Pipe { msg: PipeMsg::Partial { data, .. }, from } => {
                    if let Some(q) = self.partials.get_mut(from.member as usize) {
                        q.push_back(data);
                    }
                }
                Work::Pipe { msg: PipeMsg::Close { seq }, .. } => self.close(seq),
                Work::Pipe { msg: PipeMsg::Run { seqs }, .. } => self.run_parked(&seqs),
                Work::Pipe { msg: PipeMsg::Group { count }, from } => self.gather(from, count as usize),
                Work::Pipe { msg: PipeMsg::Step { seq, job, input, sample }, from } => {
                    if self.follows() {
                        self.park(seq, job, input, sample);
                    } else if self.batching() {
                        self.step_batch(from, seq, job, input, sample);
                    } else if let Err(e) = self.step(seq, job, input, sample) {
                        self.fail(seq, e);
                    }
                }
            }
        }
        tracing::debug!(stage = self.me.stage, member = self.me.member, "stage worker stopped");
    }

    fn report(&self, msg: NodeMsg) {
        if let Some(out) = &self.out {
            let _ = out.coordinator.send(msg);
        }
    }

    /// Sends to the next stage (or to this worker itself around a one-stage ring); while a batch's results go
    /// out, holds it for the batch's group.
    fn send_next(&mut self, msg: PipeMsg) {
        match self.out.as_ref().and_then(|o| o.next.clone()) {
            Some(_) if self.held.is_some() => self.held.as_mut().expect("checked").push(msg),
            Some(tx) => {
                if tx.blocking_send(msg).is_err() {
                    tracing::warn!("the pipe to the next stage is closed");
                }
            }
            None => self.queue.push_back(Work::Pipe { from: self.me, msg }),
        }
    }

    fn fail(&mut self, seq: u64, e: ShardError) {
        if matches!(self.queue.front(), Some(Work::Shutdown)) {
            // The stage is being stopped (a group reduce gave up its step for the shutdown): nothing failed.
            tracing::debug!(seq, cause = %e, "step stopped with the stage");
        } else {
            tracing::warn!(seq, cause = %e, "step failed");
            self.report(NodeMsg::Error { seq: Some(seq), message: e.to_string() });
        }
        // The other members of a group free it too (they may hold its step, forwarded before it failed here).
        self.to_group(&PipeMsg::Close { seq });
        self.shard.close_sequence(seq);
        self.ring.forget(seq);
        self.seqs.remove(&seq);
        self.prompts.remove(&seq);
        self.parked.retain(|r| r.seq != seq);
        self.gone(seq);
    }

    /// The first stage's leader turns a prompt into steps of at most the job's `prefill_chunk` tokens (and what
    /// fits a frame): the first is queued now, each next one when the previous has run ([`Prompt`]).
    ///
    /// A fork ([`JobParams::fork`]) starts once its parent holds the shared positions here: its first step (the
    /// prompt after them) goes to the front of the queue, ahead of anything that could close the parent, and
    /// reaches every later stage behind the parent's steps that wrote those positions. A fork whose parent is
    /// gone (or never came) runs its whole prompt instead.
    fn start(&mut self, seq: u64, prompt: Vec<u32>, mut params: JobParams) {
        if let Some(f) = params.fork {
            match self.fork_ready(f, prompt.len()) {
                Some(true) => return self.begin(seq, prompt, params, true),
                Some(false) => {
                    self.forks.entry(f.parent).or_default().push(Waiting { seq, prompt, params });
                    return;
                }
                None => params.fork = None,
            }
        }
        self.begin(seq, prompt, params, false)
    }

    /// Whether a fork can start now (Some(true)), after its parent has run further here (Some(false)), or only
    /// as a sequence of its own (None: the parent is gone, or nothing of the prompt is left after the fork).
    fn fork_ready(&self, f: Fork, prompt: usize) -> Option<bool> {
        let len = f.len as usize;
        if len >= prompt {
            return None;
        }
        if self.shard.sequence_len(f.parent).is_ok_and(|n| n >= len) {
            return Some(true);
        }
        self.live.contains(&f.parent).then_some(false)
    }

    /// Queues a sequence's first step (the prompt after its fork's positions), the rest in chunks behind it.
    fn begin(&mut self, seq: u64, prompt: Vec<u32>, params: JobParams, front: bool) {
        let dim = self.shard.config().dim;
        let mut chunk = (MAX_STAGE_FRAME / 2 / (dim * 4)).clamp(1, 4096);
        if params.prefill_chunk > 0 {
            chunk = chunk.min(params.prefill_chunk as usize);
        }
        let shared = params.fork.map_or(0, |f| f.len as usize);
        if let Some(f) = params.fork {
            *self.unopened.entry(f.parent).or_default() += 1;
        }
        let mut p = Prompt { rest: prompt.into_iter().skip(shared).collect(), chunk };
        let first = p.next_step(seq, Some(params), self.me);
        match front {
            true => self.queue.push_front(first),
            false => self.queue.push_back(first),
        }
        self.live.insert(seq);
        if !p.rest.is_empty() {
            self.prompts.insert(seq, p);
        }
    }

    /// Starts the forks of `parent` that can start now (or, with the parent gone, as sequences of their own).
    fn release_forks(&mut self, parent: u64) {
        let Some(waiting) = self.forks.remove(&parent) else { return };
        let (mut ready, mut wait, mut alone) = (Vec::new(), Vec::new(), Vec::new());
        for w in waiting {
            match w.params.fork.and_then(|f| self.fork_ready(f, w.prompt.len())) {
                Some(true) => ready.push(w),
                Some(false) => wait.push(w),
                None => alone.push(w),
            }
        }
        if !wait.is_empty() {
            self.forks.insert(parent, wait);
        }
        // Each ready one goes to the front of the queue: backwards, so they run in the order they came.
        for w in ready.into_iter().rev() {
            self.begin(w.seq, w.prompt, w.params, true);
        }
        for mut w in alone {
            w.params.fork = None;
            self.begin(w.seq, w.prompt, w.params, false);
        }
    }

    /// A fork of `parent` has copied its positions (or failed to): the parent's close no longer waits for it.
    fn fork_opened(&mut self, parent: u64) {
        let Some(n) = self.unopened.get_mut(&parent) else { return };
        *n -= 1;
        if *n == 0 {
            self.unopened.remove(&parent);
            if self.closing.remove(&parent) {
                self.close(parent);
            }
        }
    }

    /// A sequence closed or failed here: its waiting forks cannot share its positions any more.
    fn gone(&mut self, seq: u64) {
        self.live.remove(&seq);
        self.release_forks(seq);
    }

    fn close(&mut self, seq: u64) {
        if self.unopened.contains_key(&seq) {
            self.closing.insert(seq);
            return;
        }
        self.prompts.remove(&seq);
        self.parked.retain(|r| r.seq != seq);
        self.to_group(&PipeMsg::Close { seq });
        self.shard.close_sequence(seq);
        self.ring.forget(seq);
        self.gone(seq);
        if let Some(s) = self.seqs.remove(&seq) {
            if self.leader() {
                self.report(NodeMsg::SeqStats {
                    seq,
                    steps: s.steps,
                    compute_us: s.compute.as_micros() as u64,
                    prefill_us: s.prefill.as_micros() as u64,
                    forked: s.job.and_then(|j| j.fork).map_or(0, |f| f.len),
                });
            }
        }
        if self.leader() && !self.shard.spec().head {
            self.send_next(PipeMsg::Close { seq });
        }
    }

    /// The leader forwards what it runs to the other members of its stage.
    fn to_group(&self, msg: &PipeMsg) {
        if !self.leader() {
            return;
        }
        if let Some(out) = &self.out {
            for tx in out.group.iter().flatten() {
                let _ = tx.blocking_send(msg.clone());
            }
        }
    }

    fn batching(&self) -> bool {
        self.shard.batches() && self.out.as_ref().is_none_or(|o| o.group.len() <= 1 || o.group_batches)
    }

    /// A tensor-parallel group whose members all batch.
    fn batched_group(&self) -> bool {
        self.out.as_ref().is_some_and(|o| o.group.len() > 1 && o.group_batches)
    }

    /// A member (not the leader) of a batched group: it runs what the leader's [`PipeMsg::Run`] says.
    fn follows(&self) -> bool {
        !self.leader() && self.batched_group()
    }

    /// The leader of a batched group tells the others which of the steps it forwarded it runs now.
    fn announce(&self, ready: &[Ready]) {
        if self.batched_group() {
            self.to_group(&PipeMsg::Run { seqs: ready.iter().map(|r| r.seq).collect() });
        }
    }

    /// A member of a batched group holds a forwarded step (opened, its head output decided) for the leader's run.
    fn park(&mut self, seq: u64, job: Option<JobParams>, input: StepInput, sample: bool) {
        match self.prepare(seq, job, input, sample) {
            Ok(Some(r)) => self.parked.push(r),
            Ok(None) => {}
            Err(e) => self.fail(seq, e),
        }
    }

    /// A member of a batched group runs the held steps of `seqs` as the leader does: together when there are
    /// several. A batch that fails before anything moved (a bad step) stays held: the leader runs each alone next.
    fn run_parked(&mut self, seqs: &[u64]) {
        let mut ready = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match self.parked.iter().position(|r| r.seq == *seq) {
                Some(i) => ready.push(self.parked.remove(i)),
                None => tracing::warn!(seq, "the leader ran a step this member does not hold"),
            }
        }
        if ready.len() <= 1 {
            for r in ready {
                let seq = r.seq;
                if let Err(e) = self.run_one(r) {
                    self.fail(seq, e);
                }
            }
            return;
        }
        match self.run_batch(&ready) {
            Ok((outs, elapsed)) => self.finish_batch(ready, outs, elapsed),
            Err(ShardError::Group(e)) => {
                for r in ready {
                    self.fail(r.seq, ShardError::Group(e.clone()));
                }
            }
            Err(_) => self.parked.splice(0..0, ready).for_each(drop),
        }
    }

    /// Runs prepared steps of different sequences as one batch (summing partials with the group, if any).
    fn run_batch(&mut self, ready: &[Ready]) -> Result<(Vec<ShardOutput>, Duration), ShardError> {
        let batch: Vec<Step> =
            ready.iter().map(|r| Step { seq: r.seq, input: r.shard_input(), want: r.want }).collect();
        let t = Instant::now();
        let mut reduce = GroupReduce {
            me: self.me.member as usize,
            seq: ready[0].seq,
            group: self.out.as_ref().map(|o| &o.group[..]).unwrap_or(&[]),
            rx: &self.rx,
            queue: &mut self.queue,
            partials: &mut self.partials,
        };
        let outs = self.shard.forward_batch(&batch, &mut reduce)?;
        Ok((outs, t.elapsed()))
    }

    /// Books a batch's time (each sequence its share, by rows) and sends every result on, the steps for the next
    /// stage as one announced group.
    fn finish_batch(&mut self, ready: Vec<Ready>, outs: Vec<ShardOutput>, elapsed: Duration) {
        self.held = Some(Vec::new());
        let dim = self.shard.config().dim;
        let rows: usize = ready.iter().map(|r| r.rows(dim)).sum();
        for (r, out) in ready.into_iter().zip(outs) {
            let (seq, share) = (r.seq, elapsed.mul_f64(r.rows(dim) as f64 / rows.max(1) as f64));
            if let Err(e) = self.finish(r, share, out) {
                self.fail(seq, e);
            }
        }
        self.send_group();
    }

    /// Sends what a batch held for the next stage: the announcement of its steps ([`PipeMsg::Group`]) when there
    /// are several, the steps right behind it, then anything else (closes of the sequences that ended).
    fn send_group(&mut self) {
        let (steps, rest): (Vec<PipeMsg>, Vec<PipeMsg>) =
            self.held.take().unwrap_or_default().into_iter().partition(|m| matches!(m, PipeMsg::Step { .. }));
        if steps.len() > 1 {
            self.send_next(PipeMsg::Group { count: steps.len() as u32 });
        }
        steps.into_iter().chain(rest).for_each(|m| self.send_next(m));
    }

    /// The first stage of a pipeline, about to run a prompt's last chunk (after which its sequence decodes) while
    /// a group of sequences with room for it is out in the ring: waits for that group to come back (about a round
    /// at most, [`InFlight::wait`]) so the new sequence runs, and from then on decodes, with it
    /// ([`super::ring`]). When the sequences out fill the planned groups, it starts a group of its own.
    fn join_the_ring(&mut self) {
        let Some(out) = self.out.as_ref() else { return };
        let room = out.batch == 0 || self.ring.out() < out.batch;
        let first = self.leader() && self.shard.spec().embed && out.next.is_some() && room;
        let from_ring = |w: &Work| matches!(w, Work::Pipe { from, msg: PipeMsg::Step { .. } | PipeMsg::Group { .. } } if from.stage != 0);
        if !first || self.queue.iter().any(from_ring) {
            return;
        }
        let Some(wait) = self.ring.wait(Instant::now()) else { return };
        let deadline = Instant::now() + wait;
        while let Some(w) = self.arrival_until(deadline) {
            match w {
                w if from_ring(&w) => return self.queue.push_back(w),
                // A sequence of the group ended: the wait ends when all of them have.
                Work::Pipe { msg: PipeMsg::Close { seq }, from } => {
                    self.ring.forget(seq);
                    self.queue.push_back(Work::Pipe { msg: PipeMsg::Close { seq }, from });
                    if self.ring.wait(Instant::now()).is_none() {
                        return;
                    }
                }
                w => self.queue.push_back(w),
            }
        }
    }

    /// The next work to arrive before `deadline` other than a `Start`, each of which is taken at once (as
    /// [`Worker::take_arrivals`] does); None at the deadline, or at a `Shutdown` (queued first).
    fn arrival_until(&mut self, deadline: Instant) -> Option<Work> {
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Work::Start { seq, prompt, params }) => self.start(seq, prompt, params),
                Ok(Work::Shutdown) => {
                    self.queue.push_front(Work::Shutdown);
                    return None;
                }
                Ok(w) => return Some(w),
                Err(_) => return None,
            }
        }
    }

    /// The previous stage announced a group of `count` steps: wait until all of them are queued here, so the next
    /// batch takes them together (the steps of a batch reach this stage one message at a time; started at the
    /// first, a batch would hold only what had come by then, and the pipeline's batches would split ever smaller).
    fn gather(&mut self, from: MemberRef, count: usize) {
        if !self.batching() {
            return;
        }
        let deadline = Instant::now() + GROUP_WAIT;
        let ours = |w: &Work| matches!(w, Work::Pipe { from: f, msg: PipeMsg::Step { .. } } if *f == from);
        while self.queue.iter().filter(|w| ours(w)).count() < count {
            match self.arrival_until(deadline) {
                Some(w) => self.queue.push_back(w),
                None if matches!(self.queue.front(), Some(Work::Shutdown)) => return,
                None => return tracing::debug!(count, "a group announced by the previous stage came short"),
            }
        }
    }

    /// Moves what has arrived into the queue. A new sequence's `Start` is taken at once (it only queues its
    /// first step, behind the steps already waiting), so that step can join the next batch instead of waiting
    /// for a batch to end at the `Start` message.
    fn take_arrivals(&mut self) {
        while let Ok(w) = self.rx.try_recv() {
            match w {
                Work::Start { seq, prompt, params } => self.start(seq, prompt, params),
                w => self.queue.push_back(w),
            }
        }
    }

    /// Runs this step together with the steps of other sequences waiting right behind it (at most one per
    /// sequence, up to the first message that is neither a step nor a group's announcement, whose steps it waits
    /// for, so nothing is reordered within a sequence; a fork's first step waits for the next batch when its
    /// parent is in this one, whose step may write the positions it copies). A prompt's last chunk on the first
    /// stage of a pipeline waits for the group out in the ring first ([`Worker::join_the_ring`]). When the batch
    /// fails (one bad step fails all of it, before any sequence moves), each step runs alone, so only the bad one
    /// fails.
    fn step_batch(&mut self, from: MemberRef, seq: u64, job: Option<JobParams>, input: StepInput, sample: bool) {
        self.take_arrivals();
        if sample && from == self.me {
            self.join_the_ring();
        }
        let mut steps = vec![(seq, job, input, sample)];
        let most = self.out.as_ref().map_or(0, |o| o.batch);
        let most = if most == 0 { MAX_BATCH } else { most.min(MAX_BATCH) };
        while steps.len() < most {
            match self.queue.front() {
                Some(Work::Pipe { msg: PipeMsg::Group { .. }, .. }) => {
                    if let Some(Work::Pipe { msg: PipeMsg::Group { count }, from }) = self.queue.pop_front() {
                        self.gather(from, count as usize);
                    }
                }
                Some(Work::Pipe { msg: PipeMsg::Step { seq, job, .. }, .. })
                    if steps.iter().all(|s| s.0 != *seq && Some(s.0) != job.as_ref().and_then(parent)) =>
                {
                    if let Some(Work::Pipe { msg: PipeMsg::Step { seq, job, input, sample }, .. }) =
                        self.queue.pop_front()
                    {
                        steps.push((seq, job, input, sample));
                    }
                }
                _ => break,
            }
        }
        let mut ready = Vec::with_capacity(steps.len());
        for (seq, job, input, sample) in steps {
            match self.prepare(seq, job, input, sample) {
                Ok(Some(r)) => ready.push(r),
                Ok(None) => {}
                Err(e) => self.fail(seq, e),
            }
        }
        tracing::trace!(stage = self.me.stage, steps = ready.len(), "batch");
        if ready.len() > 1 {
            self.announce(&ready);
            match self.run_batch(&ready) {
                Ok((outs, elapsed)) => return self.finish_batch(ready, outs, elapsed),
                // A group that failed fails each step alone too: end them now.
                Err(ShardError::Group(e)) => {
                    for r in ready {
                        self.fail(r.seq, ShardError::Group(e.clone()));
                    }
                    return;
                }
                Err(_) => {}
            }
        }
        for r in ready {
            let seq = r.seq;
            self.announce(std::slice::from_ref(&r));
            if let Err(e) = self.run_one(r) {
                self.fail(seq, e);
            }
        }
    }

    fn step(&mut self, seq: u64, job: Option<JobParams>, input: StepInput, sample: bool) -> Result<(), ShardError> {
        match self.prepare(seq, job, input, sample)? {
            Some(r) => self.run_one(r),
            None => Ok(()),
        }
    }

    /// Opens the sequence at its first step and decides what the head returns; None when the step is not to run
    /// (a cancelled sequence, closed instead).
    fn prepare(
        &mut self,
        seq: u64,
        job: Option<JobParams>,
        input: StepInput,
        sample: bool,
    ) -> Result<Option<Ready>, ShardError> {
        let spec = self.shard.spec();
        if spec.embed && self.seqs.get(&seq).is_some_and(|s| s.cancelled) {
            // A cancelled sequence stops at the first stage: close it down the pipeline instead.
            self.close(seq);
            return Ok(None);
        }
        self.to_group(&PipeMsg::Step { seq, job: job.clone(), input: input.clone(), sample });
        self.ring.returned(seq, Instant::now());
        if let Some(job) = &job {
            let opened = self.shard.open_sequence(seq, job.capacity as usize);
            if let Some(f) = job.fork {
                // (A failure here fails the step, which closes the sequence again.)
                let forked = opened.and_then(|()| self.shard.fork(f.parent, seq, f.len as usize));
                self.fork_opened(f.parent);
                forked?;
                tracing::debug!(seq, parent = f.parent, positions = f.len, "forked");
            } else {
                opened?;
            }
            // A greedy job without bias, penalties, log-probabilities or grammar lets the head return just the
            // argmax.
            let sampler = match spec.head && job.needs_logits() {
                true => Some(self.sampler(job)?),
                false => None,
            };
            self.seqs.insert(seq, SeqState { job: Some(job.clone()), sampler, ..Default::default() });
        }
        let state = self.seqs.get(&seq).ok_or(ShardError::UnknownSequence(seq))?;
        let greedy = state.sampler.is_none();
        let prefill = state.steps == 0 || !sample;
        let want = if state.job.as_ref().is_some_and(|j| j.embed) {
            HeadOutput::HiddenSum
        } else if greedy {
            HeadOutput::ArgmaxLast
        } else {
            HeadOutput::LogitsLast
        };
        Ok(Some(Ready { seq, job, input, sample, want, prefill }))
    }

    /// The sampler of a new sequence on the head stage, under the job's grammar if it has one.
    fn sampler(&mut self, job: &JobParams) -> Result<Sampler, ShardError> {
        let mut s = Sampler::for_job(job);
        if let Some(g) = &job.grammar {
            if self.grammars.is_none() {
                let vocab = self.vocab.as_ref().ok_or_else(|| {
                    ShardError::BadInput(
                        "this stage was loaded without a vocabulary: it cannot follow a grammar".into(),
                    )
                })?;
                let shared = crate::grammar::shared(vocab).map_err(|e| ShardError::BadInput(format!("{e:#}")))?;
                self.grammars = Some(shared);
            }
            let grammars = self.grammars.as_ref().expect("set above");
            let c = grammars.compile(g).map_err(|e| ShardError::BadInput(format!("the grammar: {e:#}")))?;
            s.constrain(c, &job.history);
        }
        Ok(s)
    }

    /// Runs one prepared step alone (a tensor-parallel member sums partials with its group inside).
    fn run_one(&mut self, r: Ready) -> Result<(), ShardError> {
        let t = Instant::now();
        let out = {
            let mut reduce = GroupReduce {
                me: self.me.member as usize,
                seq: r.seq,
                group: self.out.as_ref().map(|o| &o.group[..]).unwrap_or(&[]),
                rx: &self.rx,
                queue: &mut self.queue,
                partials: &mut self.partials,
            };
            self.shard.forward_reduce(r.seq, r.shard_input(), r.want, &mut reduce)?
        };
        self.finish(r, t.elapsed(), out)
    }

    /// Books a step's time and sends its result on.
    fn finish(&mut self, r: Ready, elapsed: Duration, out: ShardOutput) -> Result<(), ShardError> {
        let Ready { seq, job, sample, prefill, .. } = r;
        let state = self.seqs.get_mut(&seq).ok_or(ShardError::UnknownSequence(seq))?;
        state.steps += 1;
        state.compute += elapsed;
        if prefill {
            state.prefill += elapsed;
        }
        if self.prompts.contains_key(&seq) && self.batching() {
            // Requests that arrived while this chunk ran go ahead of the next chunk.
            self.take_arrivals();
        }
        if let Some(p) = self.prompts.get_mut(&seq) {
            self.queue.push_back(p.next_step(seq, None, self.me));
            if p.rest.is_empty() {
                self.prompts.remove(&seq);
            }
        }
        self.release_forks(seq);
        if !self.leader() {
            return Ok(());
        }
        match out {
            ShardOutput::Hidden(h) => {
                if sample && self.shard.spec().embed {
                    self.ring.sent(seq, Instant::now());
                }
                self.send_next(PipeMsg::Step { seq, job, input: StepInput::Hidden(h), sample });
                Ok(())
            }
            ShardOutput::HiddenSum(sum) => self.pooled(seq, sum, sample),
            _ if !sample => Ok(()),
            out => self.sampled(seq, out),
        }
    }

    /// The last stage's leader adds a chunk of an embedding job's prompt to its pool; after the last chunk it
    /// reports the mean, scaled to unit length, and ends the sequence.
    fn pooled(&mut self, seq: u64, sum: Vec<f32>, last: bool) -> Result<(), ShardError> {
        let state = self.seqs.get_mut(&seq).ok_or(ShardError::UnknownSequence(seq))?;
        let acc = state.pooled.get_or_insert_with(|| vec![0.0; sum.len()]);
        acc.iter_mut().zip(&sum).for_each(|(a, s)| *a += s);
        if !last {
            return Ok(());
        }
        let mut vector = state.pooled.take().expect("pooled above");
        // The mean's direction is the sum's: scaling the sum to unit length is the normalized mean.
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        self.report(NodeMsg::Embedding { seq, vector });
        self.end_sequence(seq);
        Ok(())
    }

    /// The last stage's leader ends a sequence: the ring carries the close to the first stage, which sends it
    /// down the pipeline back to here.
    fn end_sequence(&mut self, seq: u64) {
        if self.shard.spec().embed {
            self.close(seq)
        } else {
            self.send_next(PipeMsg::Close { seq })
        }
    }

    /// The last stage's leader picked a token: report it, and either feed it back to the first stage or end.
    fn sampled(&mut self, seq: u64, out: ShardOutput) -> Result<(), ShardError> {
        let len = self.shard.sequence_len(seq)?;
        let state = self.seqs.get_mut(&seq).ok_or(ShardError::UnknownSequence(seq))?;
        let (token, logprobs) = match (out, &mut state.sampler) {
            (ShardOutput::Tokens(t), _) => (*t.last().ok_or_else(|| ShardError::BadInput("no token".into()))?, None),
            (ShardOutput::Logits(l), Some(s)) => s.pick(&l),
            _ => return Err(ShardError::BadInput("the head produced nothing to sample".into())),
        };
        let job = state.job.as_ref().ok_or(ShardError::UnknownSequence(seq))?;
        let index = state.generated;
        let finish = if job.stop.contains(&token) {
            Some(Finish::Stop)
        } else if index + 1 >= job.max_tokens {
            Some(Finish::Length)
        } else if len >= job.capacity as usize {
            Some(Finish::Context)
        } else {
            None
        };
        let emitted = (finish != Some(Finish::Stop)).then_some(token);
        state.generated += emitted.is_some() as u32;
        let logprobs = logprobs.filter(|_| emitted.is_some());
        self.report(NodeMsg::Token { seq, index, token: emitted, finish, logprobs });
        match finish {
            None => {
                self.send_next(PipeMsg::Step { seq, job: None, input: StepInput::Tokens(vec![token]), sample: true })
            }
            Some(_) => self.end_sequence(seq),
        }
        Ok(())
    }
}

/// The sequence a job forks from.
fn parent(job: &JobParams) -> Option<u64> {
    job.fork.map(|f| f.parent)
}

/// The all-reduce of a tensor-parallel member: send the partial to every other member, collect theirs (queueing
/// any other work that arrives meanwhile), and sum all of them in member order so every member gets the very
/// same floats.
struct GroupReduce<'a> {
    me: usize,
    seq: u64,
    group: &'a [Option<tokio::sync::mpsc::Sender<PipeMsg>>],
    rx: &'a Receiver<Work>,
    queue: &'a mut VecDeque<Work>,
    partials: &'a mut Vec<VecDeque<Vec<f32>>>,
}

impl Reducer for GroupReduce<'_> {
    fn all_reduce(&mut self, partial: &mut [f32]) -> Result<(), ShardError> {
        let k = self.group.len();
        if k <= 1 {
            return Ok(());
        }
        for tx in self.group.iter().flatten() {
            let msg = PipeMsg::Partial { seq: self.seq, data: partial.to_vec() };
            tx.blocking_send(msg).map_err(|_| ShardError::Group("a peer went away".into()))?;
        }
        let deadline = Instant::now() + REDUCE_TIMEOUT;
        let mut parts: Vec<Option<Vec<f32>>> = vec![None; k];
        loop {
            for (j, p) in parts.iter_mut().enumerate() {
                if j != self.me && p.is_none() {
                    *p = self.partials[j].pop_front();
                }
            }
            if parts.iter().enumerate().all(|(j, p)| j == self.me || p.is_some()) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Work::Pipe { from, msg: PipeMsg::Partial { data, .. } }) => {
                    if let Some(q) = self.partials.get_mut(from.member as usize) {
                        q.push_back(data);
                    }
                }
                Ok(Work::Shutdown) => {
                    self.queue.push_front(Work::Shutdown);
                    return Err(ShardError::Group("stage stopped".into()));
                }
                Ok(other) => self.queue.push_back(other),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ShardError::Group("timed out waiting for partial sums".into()))
                }
                Err(RecvTimeoutError::Disconnected) => return Err(ShardError::Group("stage stopped".into())),
            }
        }
        let mine = partial.to_vec();
        partial.fill(0.0);
        for (j, p) in parts.iter().enumerate() {
            let p = if j == self.me { &mine } else { p.as_ref().expect("collected above") };
            if p.len() != partial.len() {
                return Err(ShardError::Group(format!("partial sum of {} floats, expected {}", p.len(), mine.len())));
            }
            partial.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }
}

/// Starts the worker thread; returns its queue.
pub fn spawn(shard: Box<dyn Shard + Send>, me: MemberRef, vocab: Option<Vocabulary>) -> Sender<Work> {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = Worker::new(shard, me, rx).with_vocabulary(vocab);
    std::thread::Builder::new()
        .name(format!("stage-{}-{}", me.stage, me.member))
        .spawn(move || worker.run())
        .expect("spawning a thread");
    tx
}
