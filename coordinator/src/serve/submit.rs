//! The HTTP handlers' side of the schedulers: a [`Handle`] routes a request as a [`Submission`] to one replica's
//! scheduler (refused at once with 429 or 503 when every queue is full or no plan runs) and the request's
//! [`Event`]s come back on its channel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::board::Board;
use super::logprobs::Entry;
use super::openai::ApiError;
use super::scheduler::Active;
use super::status::JobKind;
use crate::job::Job;

/// What the scheduler tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text, with the log-probabilities of the tokens generated since the previous `Text` when the request
    /// asked for them. The text is never empty, except on the last `Text` of a request when it only carries the
    /// log-probabilities of tokens whose text was held back (a stop string) or empty.
    Text(String, Vec<Entry>),
    /// A call of one of the request's tools, read out of the text ([`super::tools::split_calls`]).
    Call(edge_node::chat_tools::FunctionCall),
    /// An embedding request's vector (unit length), right before its `Done`.
    Embedding(Vec<f32>),
    /// The end: OpenAI's finish reason and the tokens generated.
    Done { finish_reason: &'static str, completion_tokens: usize },
    /// The request failed (status and message for the API error).
    Failed(ApiError),
}

/// A request for the scheduler.
pub struct Submission {
    pub id: String,
    pub kind: JobKind,
    pub job: Job,
    pub stop: Vec<String>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Another choice of the same request (its id) whose prompt's prefill this one shares while both run.
    pub shares_prefill_with: Option<String>,
    pub(super) arrived: Instant,
    /// Its place in that replica's queue.
    pub(super) _ticket: Option<Ticket>,
}

/// Counts a request against its replica's queue limit until it is dropped.
pub(super) struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a replica's scheduler receives: a new request, or a running one handed over by a replica that lost its
/// plan (it resumes from its prompt and the tokens it has).
pub enum Work {
    New(Box<Submission>),
    Moved(Box<Active>),
}

/// A replica's queue.
struct Lane {
    tx: mpsc::Sender<Work>,
    /// Its requests waiting or running.
    pending: Arc<AtomicUsize>,
    limit: usize,
}

impl Lane {
    /// Takes a place in the lane, unless it is full.
    fn ticket(&self) -> Option<Ticket> {
        let t = Ticket(self.pending.clone());
        (self.pending.fetch_add(1, Ordering::SeqCst) < self.limit).then_some(t)
    }
}

/// Recent requests remembered with their replica (so a request's further choices go where its first went).
const ROUTED_KEPT: usize = 1024;

/// The router: the handlers submit requests here and it sends each to the replica that will finish it soonest
/// (see [`Handle::submit_choice`]); the handlers also read the board here. Each scheduler holds a [`Weak`]
/// copy, so the schedulers end when the HTTP side drops its handles.
#[derive(Clone)]
pub struct Handle {
    lanes: Arc<Mutex<Vec<Lane>>>,
    routed: Arc<Mutex<VecDeque<(String, usize)>>>,
    pub board: Arc<Mutex<Board>>,
}

/// A scheduler's reference to the router (it does not keep the lanes open).
#[derive(Clone)]
pub struct Weak {
    lanes: std::sync::Weak<Mutex<Vec<Lane>>>,
    routed: Arc<Mutex<VecDeque<(String, usize)>>>,
    pub board: Arc<Mutex<Board>>,
}

impl Weak {
    pub fn upgrade(&self) -> Option<Handle> {
        Some(Handle { lanes: self.lanes.upgrade()?, routed: self.routed.clone(), board: self.board.clone() })
    }
}

impl Handle {
    /// A router with no replica yet.
    pub fn new(board: Board) -> Handle {
        Handle {
            lanes: Arc::new(Mutex::new(Vec::new())),
            routed: Arc::new(Mutex::new(VecDeque::new())),
            board: Arc::new(Mutex::new(board)),
        }
    }

    pub fn downgrade(&self) -> Weak {
        Weak { lanes: Arc::downgrade(&self.lanes), routed: self.routed.clone(), board: self.board.clone() }
    }

    /// Adds a replica reading `tx`, with at most `limit` requests waiting or running on it; returns its index.
    pub(super) fn add_replica(&self, tx: mpsc::Sender<Work>, limit: usize) -> usize {
        let mut lanes = self.lanes.lock().expect("lanes lock");
        lanes.push(Lane { tx, pending: Arc::new(AtomicUsize::new(0)), limit });
        let i = lanes.len() - 1;
        self.board.lock().expect("board lock").replica(i);
        i
    }

    /// Queues a request; its events come back on the returned channel. Refused at once (429, 503) when the queue
    /// is full or the cluster cannot run the model.
    pub fn submit(
        &self,
        id: String,
        kind: JobKind,
        job: Job,
        stop: Vec<String>,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        self.submit_choice(id, kind, job, stop, None)
    }

    /// Replicas in the order a request should try them: the one that will finish it soonest first, by (requests
    /// waiting or running + 1) / predicted throughput; ties go to the lower index (the faster replica). A
    /// replica that re-plans comes after every running one; an unavailable one is left out. `first`, when
    /// given and not unavailable, comes before all (another choice of the same request runs there).
    fn order(&self, lanes: &[Lane], first: Option<usize>, but: Option<usize>) -> Vec<usize> {
        let b = self.board.lock().expect("board lock");
        let mut scored: Vec<(bool, f64, usize)> = (0..lanes.len())
            .filter(|&i| Some(i) != but)
            .filter_map(|i| {
                let r = b.replicas.get(i)?;
                if r.unavailable.is_some() {
                    return None;
                }
                let load = lanes[i].pending.load(Ordering::SeqCst) as f64 + 1.0;
                let score = r.plan.as_ref().map_or(f64::INFINITY, |p| load / p.predicted_tokens_per_s.max(1e-9));
                Some((Some(i) != first, score, i))
            })
            .collect();
        scored.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        scored.into_iter().map(|(_, _, i)| i).collect()
    }

    /// [`Handle::submit`] for a further choice of a request: it goes to the replica of the choice
    /// `shares_prefill_with` and forks that one's prefill when it runs (the same prompt), instead of running the
    /// prompt again.
    pub fn submit_choice(
        &self,
        id: String,
        kind: JobKind,
        job: Job,
        stop: Vec<String>,
        shares_prefill_with: Option<String>,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let refused = |e: ApiError| {
            self.board.lock().expect("board lock").metrics.ended("rejected");
            Err(e)
        };
        // (The board's lock is released before `refused` takes it again.)
        let unavailable = self.board.lock().expect("board lock").unavailable();
        if let Some(why) = unavailable {
            return refused(ApiError::unavailable(why));
        }
        let sibling = shares_prefill_with.as_ref().and_then(|w| {
            self.routed.lock().expect("routed lock").iter().rev().find(|(id, _)| id == w).map(|&(_, i)| i)
        });
        let lanes = self.lanes.lock().expect("lanes lock");
        let order = self.order(&lanes, sibling, None);
        let (events, rx) = mpsc::unbounded_channel();
        let mut sub = Some(Box::new(Submission {
            id,
            kind,
            job,
            stop,
            events,
            shares_prefill_with,
            arrived: Instant::now(),
            _ticket: None,
        }));
        let mut closed = 0;
        for &i in &order {
            let Some(ticket) = lanes[i].ticket() else { continue };
            let mut s = sub.take().expect("a submission to send");
            s._ticket = Some(ticket);
            let id = s.id.clone();
            match lanes[i].tx.try_send(Work::New(s)) {
                Ok(()) => {
                    let mut routed = self.routed.lock().expect("routed lock");
                    routed.push_back((id, i));
                    if routed.len() > ROUTED_KEPT {
                        routed.pop_front();
                    }
                    return Ok(rx);
                }
                Err(e) => {
                    closed += matches!(e, mpsc::error::TrySendError::Closed(_)) as usize;
                    let Work::New(s) = e.into_inner() else { unreachable!("a new submission was sent") };
                    sub = Some(s);
                }
            }
        }
        let limit = lanes.iter().map(|l| l.limit).sum();
        drop(lanes);
        if order.is_empty() || closed == order.len() {
            return refused(ApiError::unavailable(if order.is_empty() {
                "no replica runs the model".to_string()
            } else {
                "the scheduler has stopped".to_string()
            }));
        }
        refused(ApiError::queue_full(limit))
    }

    /// Hands requests of replica `from` (which lost its plan) to the others, best first; gives back the ones no
    /// other replica can take.
    pub(super) fn hand_over(&self, from: usize, moved: Vec<Active>) -> Vec<Active> {
        let lanes = self.lanes.lock().expect("lanes lock");
        let mut left = Vec::new();
        'next: for a in moved {
            let mut a = Box::new(a);
            for i in self.order(&lanes, None, Some(from)) {
                // A running request takes its place even beyond the limit (it was admitted already).
                let _ = lanes[i].pending.fetch_add(1, Ordering::SeqCst);
                a.sub._ticket = Some(Ticket(lanes[i].pending.clone()));
                match lanes[i].tx.try_send(Work::Moved(a)) {
                    Ok(()) => continue 'next,
                    Err(e) => {
                        let Work::Moved(back) = e.into_inner() else { unreachable!("a moved request was sent") };
                        a = back;
                    }
                }
            }
            left.push(*a);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::status::{ModelInfo, PlanStatus};
    use edge_protocol::stage::JobParams;

    /// A router over replicas of the given queue limits, with a plan of `predicted` tok/s each.
    fn router(limits: &[usize], predicted: &[f64]) -> (Handle, Vec<mpsc::Receiver<Work>>) {
        let info = ModelInfo { id: "m".into(), arch: "llama".into(), layers: 1, context: 8 };
        let h = Handle::new(Board::new(info));
        let rxs = limits
            .iter()
            .zip(predicted)
            .map(|(&limit, &p)| {
                let (tx, rx) = mpsc::channel(limit);
                let i = h.add_replica(tx, limit);
                h.board.lock().unwrap().replica(i).plan =
                    Some(PlanStatus { id: format!("p{i}"), stages: vec![], predicted_tokens_per_s: p, sequences: 1 });
                rx
            })
            .collect();
        (h, rxs)
    }

    fn job() -> Job {
        let params = JobParams::new(8, 4);
        Job { prompt: vec![1], params }
    }

    /// The replica each submission went to, in order.
    fn drain(rxs: &mut [mpsc::Receiver<Work>]) -> Vec<(String, usize)> {
        let mut got = Vec::new();
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(Work::New(s)) = rx.try_recv() {
                got.push((s.id.clone(), i));
                std::mem::forget(s); // keep its place taken
            }
        }
        got.sort();
        got
    }

    #[test]
    fn requests_beyond_the_queue_get_429_and_an_unavailable_cluster_503() {
        let (h, mut rxs) = router(&[2], &[10.0]);
        let submit = || h.submit("id".into(), JobKind::Completion, job(), vec![]);
        let _a = submit().unwrap();
        let _b = submit().unwrap();
        let e = submit().unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, Some("queue_full")));
        // A request the scheduler is done with frees its place.
        drop(rxs[0].try_recv().unwrap());
        assert!(submit().is_ok());
        h.board.lock().unwrap().replica(0).unavailable = Some("no plan fits".into());
        let e = submit().unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, Some("cluster_unavailable")));
        assert!(e.message.contains("no plan fits"));
        // Both refusals count as rejected requests in /metrics.
        assert_eq!(h.board.lock().unwrap().metrics.outcomes.get("rejected"), Some(&2));
    }

    #[test]
    fn requests_go_where_they_finish_soonest_and_choices_follow_their_first() {
        // Replica 1 is twice as fast: it takes two requests for each of replica 0's.
        let (h, mut rxs) = router(&[8, 8], &[10.0, 20.0]);
        for i in 0..6 {
            h.submit(format!("r{i}"), JobKind::Completion, job(), vec![]).unwrap();
        }
        let got = drain(&mut rxs);
        let on = |r: usize| got.iter().filter(|g| g.1 == r).count();
        assert_eq!((on(0), on(1)), (2, 4), "{got:?}");
        // The first request goes to the faster replica.
        assert_eq!(got[0], ("r0".to_string(), 1));
        // A further choice goes to its first choice's replica, even when that one is busier.
        h.submit_choice("r0-1".into(), JobKind::Chat, job(), vec![], Some("r0".into())).unwrap();
        h.submit_choice("r2-1".into(), JobKind::Chat, job(), vec![], Some("r2".into())).unwrap();
        let r2 = got.iter().find(|g| g.0 == "r2").unwrap().1;
        assert_eq!(drain(&mut rxs), vec![("r0-1".to_string(), 1), ("r2-1".to_string(), r2)]);
        // An unavailable replica takes nothing; a re-planning one only what no running one can hold.
        h.board.lock().unwrap().replica(1).unavailable = Some("lost".into());
        h.submit("x".into(), JobKind::Completion, job(), vec![]).unwrap();
        assert_eq!(drain(&mut rxs), vec![("x".to_string(), 0)]);
        {
            let mut b = h.board.lock().unwrap();
            b.replica(1).unavailable = None;
            b.replica(1).plan = None;
        }
        h.submit("y".into(), JobKind::Completion, job(), vec![]).unwrap();
        assert_eq!(drain(&mut rxs), vec![("y".to_string(), 0)]);
    }
}
