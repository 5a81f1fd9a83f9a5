//! Running sequences on a [`Deployment`]: all unfinished ones are started at once (the stages then work on
//! different sequences at the same time), tokens are handed to the caller as the last stage reports them, and each
//! stage's compute time per sequence is collected for the measured-vs-predicted report.
//!
//! Progress lives in the caller's [`Outcome`]s, so when a stage fails ([`Failure`]) the same jobs can be run again
//! on a new deployment: each resumes from its prompt plus the tokens it already has (the new stages rebuild the KV
//! cache by prefilling them) and its sampler skips the draws already made.

use std::time::{Duration, Instant};

use edge_protocol::stage::{Finish, JobParams, MemberRef, NodeMsg, TokenLogprobs};

use crate::deploy::Deployment;

/// One sequence to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: JobParams,
}

/// One stage's work on one sequence.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTime {
    pub steps: u32,
    pub compute_us: u64,
    pub prefill_us: u64,
}

impl StageTime {
    /// Mean compute per decode step (the steps after the prefill).
    pub fn decode_step_us(&self) -> Option<f64> {
        let decode_steps = self.steps.saturating_sub(1);
        (decode_steps > 0).then(|| (self.compute_us - self.prefill_us) as f64 / decode_steps as f64)
    }
}

/// What a job has produced so far.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    pub finish: Option<Finish>,
    /// From the first start to the first token.
    pub first_token: Duration,
    /// From the first token to the last.
    pub decode: Duration,
    /// Per stage of the deployment that finished it (leader's view).
    pub stages: Vec<StageTime>,
    /// Times the job was resumed on a new plan after a failure.
    pub resumed: u32,
    /// An embedding job's result (unit length).
    #[serde(skip)]
    pub embedding: Option<Vec<f32>>,
    #[serde(skip)]
    started_at: Option<Instant>,
    #[serde(skip)]
    first_at: Option<Instant>,
}

impl Outcome {
    pub fn decode_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Why a run stopped before every job finished.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The stage member that failed, when known.
    pub member: Option<MemberRef>,
    pub message: String,
    /// Whether running again on other nodes may help (a stage or node failed), or not (the job itself is bad).
    pub retry: bool,
}

/// How long running sequences may go without a word from the cluster before the run counts as stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The job as it resumes from `o`: prompt plus the tokens generated so far, the rest of the budget.
pub fn resumed(job: &Job, o: &Outcome) -> Job {
    let done = o.tokens.len() as u32;
    let mut prompt = job.prompt.clone();
    prompt.extend_from_slice(&o.tokens);
    let mut history = job.params.history.clone();
    if job.params.keeps_history() {
        history.extend_from_slice(&o.tokens);
    }
    let params = JobParams {
        max_tokens: job.params.max_tokens.saturating_sub(done),
        skip_draws: job.params.skip_draws + done,
        history,
        ..job.params.clone()
    };
    Job { prompt, params }
}

impl Outcome {
    /// Gets the job ready to (re)start on a deployment of `n_stages` stages at `now`: `None` when it has already
    /// ended (its budget or context used up is recorded as its finish), else the job to send ([`resumed`] from the
    /// tokens it has).
    pub fn restart(&mut self, job: &Job, n_stages: usize, now: Instant) -> Option<Job> {
        self.started_at.get_or_insert(now);
        if self.finish.is_some() {
            return None;
        }
        if job.params.embed {
            // An embedding holds just its prompt (checked when it was accepted) and resumes from scratch.
            self.stages = vec![StageTime::default(); n_stages];
            return Some(job.clone());
        }
        if self.tokens.len() as u32 >= job.params.max_tokens {
            self.finish = Some(Finish::Length);
            return None;
        }
        if job.prompt.len() + self.tokens.len() >= job.params.capacity as usize {
            self.finish = Some(Finish::Context);
            return None;
        }
        self.stages = vec![StageTime::default(); n_stages];
        if !self.tokens.is_empty() {
            self.resumed += 1;
        }
        Some(resumed(job, self))
    }
}

/// What a message from a node means for the sequences it concerns (see [`apply`]).
#[derive(Debug)]
pub enum Update {
    /// Sequence `seq` produced `token` (appended to its outcome; with its log-probability when the job asked)
    /// and/or ended (`finished`: its finish is set).
    Token { seq: u64, token: Option<u32>, finished: bool, logprobs: Option<TokenLogprobs> },
    /// A stage leader reported its timings of `seq` (recorded in the outcome).
    /// A stage's timings arrived; `forked`: the prompt positions the first stage copied from another sequence.
    Stats { seq: u64, forked: u32 },
    /// A stage failed, or one sequence (`seq`) did. `failure.retry` says whether other nodes may help.
    Failed { seq: Option<u64>, failure: Failure },
    /// Nothing for a known sequence.
    Ignored,
}

/// Applies one event from a deployment to the outcome of its sequence (`outcome(seq)`: `None` for a sequence the
/// caller does not know, e.g. one it cancelled). Shared by the batch [`run`] and the API server's scheduler.
pub fn apply<'a>(event: (MemberRef, NodeMsg), outcome: impl FnOnce(u64) -> Option<&'a mut Outcome>) -> Update {
    match event {
        (_, NodeMsg::Token { seq, token, finish, logprobs, .. }) => {
            let Some(o) = outcome(seq) else { return Update::Ignored };
            let now = Instant::now();
            if let Some(t) = token {
                let first = *o.first_at.get_or_insert(now);
                if o.tokens.is_empty() {
                    o.first_token = now - o.started_at.unwrap_or(now);
                }
                o.tokens.push(t);
                o.decode = now - first;
            }
            if finish.is_some() {
                o.finish = finish;
            }
            Update::Token { seq, token, finished: finish.is_some(), logprobs }
        }
        (_, NodeMsg::Embedding { seq, vector }) => {
            let Some(o) = outcome(seq) else { return Update::Ignored };
            o.first_token = o.started_at.map(|t| t.elapsed()).unwrap_or_default();
            o.embedding = Some(vector);
            o.finish = Some(Finish::Stop);
            Update::Token { seq, token: None, finished: true, logprobs: None }
        }
        (m, NodeMsg::SeqStats { seq, steps, compute_us, prefill_us, forked }) => {
            let Some(o) = outcome(seq) else { return Update::Ignored };
            match o.stages.get_mut(m.stage as usize) {
                Some(s) => {
                    *s = StageTime { steps, compute_us, prefill_us };
                    Update::Stats { seq, forked: if m.stage == 0 { forked } else { 0 } }
                }
                None => Update::Ignored,
            }
        }
        (m, NodeMsg::Error { seq, message }) => {
            // A refused input (context, vocabulary) fails the same way anywhere; a lost stage does not.
            let retry = !message.contains("context full") && !message.contains("bad input");
            let message = format!("stage {} member {}: {message}", m.stage, m.member);
            Update::Failed { seq, failure: Failure { member: Some(m), message, retry } }
        }
        (_, other) => {
            tracing::debug!(?other, "ignored");
            Update::Ignored
        }
    }
}

/// Runs every unfinished job of `state` (same length as `jobs`) on `d`; `on_token(job index, token)` sees each
/// new token as it arrives.
pub async fn run(
    d: &mut Deployment,
    jobs: &[Job],
    state: &mut [Outcome],
    mut on_token: impl FnMut(usize, u32),
) -> Result<(), Failure> {
    let fail = |member, message: String| Failure { member, message, retry: true };
    let base: u64 = rand::random::<u64>() >> 16 << 16;
    let n_stages = d.stages.len();
    let now = Instant::now();
    let mut running = 0usize;
    for (i, (job, o)) in jobs.iter().zip(state.iter_mut()).enumerate() {
        let Some(j) = o.restart(job, n_stages, now) else { continue };
        d.start(base + i as u64, j.prompt, j.params).await.map_err(|e| fail(Some(d.first()), format!("{e:#}")))?;
        running += 1;
    }
    let n_jobs = state.len();
    let index = |seq: u64| -> Option<usize> {
        let i = seq.wrapping_sub(base) as usize;
        (seq >= base && i < n_jobs).then_some(i)
    };
    let mut stats_seen = 0usize;
    let mut finished_at: Option<Instant> = None;
    loop {
        let all_finished = state.iter().all(|o| o.finish.is_some());
        let all_stats = stats_seen >= running * n_stages;
        if all_finished && (all_stats || finished_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5))) {
            return Ok(());
        }
        let wait = if all_finished { Duration::from_secs(5) } else { STALL_TIMEOUT };
        let event = match d.event(wait).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(fail(None, "the cluster closed every session".into())),
            Err(_) if all_finished => return Ok(()), // timings are optional
            Err(e) => return Err(fail(None, format!("{e:#}"))),
        };
        match apply(event, |seq| index(seq).map(|i| &mut state[i])) {
            Update::Token { seq, token, finished, .. } => {
                let i = index(seq).expect("a known sequence");
                if let Some(t) = token {
                    on_token(i, t);
                }
                if finished && state.iter().all(|o| o.finish.is_some()) {
                    finished_at = Some(Instant::now());
                }
            }
            Update::Stats { .. } => stats_seen += 1,
            Update::Failed { seq, mut failure } => {
                if let Some(i) = seq.and_then(index) {
                    failure.message.push_str(&format!(" (sequence {i})"));
                }
                return Err(failure);
            }
            Update::Ignored => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(message: &str) -> Failure {
        let event = (MemberRef { stage: 0, member: 1 }, NodeMsg::Error { seq: Some(3), message: message.into() });
        match apply(event, |_| None) {
            Update::Failed { failure, .. } => failure,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_resumed_job_carries_its_tokens_for_the_penalties_and_the_grammar() {
        let mut params = JobParams::new(64, 10);
        params.skip_draws = 1;
        let job = Job { prompt: vec![1, 2], params };
        let o = Outcome { tokens: vec![7, 8, 7], ..Outcome::default() };
        let r = resumed(&job, &o);
        assert_eq!(r.prompt, [1, 2, 7, 8, 7]);
        assert_eq!((r.params.max_tokens, r.params.skip_draws), (7, 4));
        assert!(r.params.history.is_empty(), "no penalties: nothing to carry");
        let mut job = job;
        job.params.penalties.frequency = 0.5;
        job.params.history = vec![9];
        assert_eq!(resumed(&job, &o).params.history, [9, 7, 8, 7]);
        // A grammar has matched the tokens too.
        job.params.penalties.frequency = 0.0;
        job.params.grammar = Some(edge_protocol::stage::Grammar::Lark("start: /a+/".into()));
        assert_eq!(resumed(&job, &o).params.history, [9, 7, 8, 7]);
    }

    #[test]
    fn a_failed_group_member_is_retried_and_a_bad_job_is_not() {
        use edge_node::shard::ShardError;
        let group = ShardError::Group("a peer went away".into()).to_string();
        assert!(failure(&group).retry, "another plan may succeed: {group}");
        let bad = ShardError::BadInput("token 99999 is outside the vocabulary".into()).to_string();
        assert!(!failure(&bad).retry);
        let full = ShardError::ContextFull { need: 9, capacity: 8 }.to_string();
        assert!(!failure(&full).retry);
        assert_eq!(failure("x").message, "stage 0 member 1: x");
    }
}
