//! The HTTP handlers' side of the scheduler: a [`Handle`] queues a request as a [`Submission`] (refused at once
//! with 429 or 503 when the queue is full or no plan runs) and the request's [`Event`]s come back on its channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::board::Board;
use super::logprobs::Entry;
use super::openai::ApiError;
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
    _ticket: Ticket,
}

/// Counts a request against the queue limit until it is dropped.
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The handlers' side: submit requests, read the board.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Submission>,
    pending: Arc<AtomicUsize>,
    limit: usize,
    pub board: Arc<Mutex<Board>>,
}

impl Handle {
    /// The handle of a scheduler reading `tx`; at most `limit` requests wait or run at once.
    pub(super) fn new(tx: mpsc::Sender<Submission>, limit: usize, board: Arc<Mutex<Board>>) -> Handle {
        Handle { tx, pending: Arc::new(AtomicUsize::new(0)), limit, board }
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

    /// [`Handle::submit`] for a further choice of a request: it forks the prefill of the choice
    /// `shares_prefill_with` when that one runs (the same prompt), instead of running the prompt again.
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
        let unavailable = self.board.lock().expect("board lock").unavailable.clone();
        if let Some(why) = unavailable {
            return refused(ApiError::unavailable(why));
        }
        let ticket = Ticket(self.pending.clone());
        if self.pending.fetch_add(1, Ordering::SeqCst) >= self.limit {
            return refused(ApiError::queue_full(self.limit));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let sub =
            Submission { id, kind, job, stop, events, shares_prefill_with, arrived: Instant::now(), _ticket: ticket };
        match self.tx.try_send(sub) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => refused(ApiError::queue_full(self.limit)),
            Err(mpsc::error::TrySendError::Closed(_)) => refused(ApiError::unavailable("the scheduler has stopped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::status::ModelInfo;
    use edge_protocol::stage::JobParams;

    fn handle(limit: usize) -> (Handle, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(limit);
        let info = ModelInfo { id: "m".into(), arch: "llama".into(), layers: 1, context: 8 };
        let board = Arc::new(Mutex::new(Board::new(info)));
        (Handle { tx, pending: Arc::new(AtomicUsize::new(0)), limit, board }, rx)
    }

    fn job() -> Job {
        let params = JobParams::new(8, 4);
        Job { prompt: vec![1], params }
    }

    #[test]
    fn requests_beyond_the_queue_get_429_and_an_unavailable_cluster_503() {
        let (h, mut rx) = handle(2);
        let submit = || h.submit("id".into(), JobKind::Completion, job(), vec![]);
        let _a = submit().unwrap();
        let _b = submit().unwrap();
        let e = submit().unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, Some("queue_full")));
        // A request the scheduler is done with frees its place.
        drop(rx.try_recv().unwrap());
        assert!(submit().is_ok());
        h.board.lock().unwrap().unavailable = Some("no plan fits".into());
        let e = submit().unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, Some("cluster_unavailable")));
        assert!(e.message.contains("no plan fits"));
        // Both refusals count as rejected requests in /metrics.
        assert_eq!(h.board.lock().unwrap().metrics.outcomes.get("rejected"), Some(&2));
    }
}
