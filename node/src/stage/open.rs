//! Opening a stage stream ([`StageOpen`] then the node's [`StageAccept`]) so that no stream is lost silently.
//!
//! libp2p-stream hands inbound streams to the acceptor through a queue of one: when a second stream of the same
//! protocol arrives before the acceptor took the first (two members of a tensor-parallel group wiring into the
//! same node at once, on a busy machine), the second is dropped. The opener only learns of it at a later write
//! ("a tensor-parallel peer went away"). Here the opener waits for the node's answer: a stream that ends before
//! it was dropped unread and is opened again (bounded in tries and time); a refusal is an error with the node's
//! reason.

use std::time::{Duration, Instant};

use edge_protocol::bulk::{read_msg, write_msg};
use edge_protocol::stage::{StageAccept, StageOpen, MAX_OPEN_FRAME, STAGE_PROTOCOL};
use libp2p::{PeerId, StreamProtocol};

use crate::net::{Client, NetError};

/// How long opening a stage stream may take in all (tries and the node's wait for its plan's wiring included).
pub const OPEN_DEADLINE: Duration = Duration::from_secs(30);
/// Tries when the node drops the stream unanswered.
pub const OPEN_TRIES: u32 = 8;

/// Why a stage stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The node answered and refused: retrying will not help.
    #[error("{peer} refused the stream: {reason}")]
    Refused { peer: PeerId, reason: String },
    /// No stream could be opened, or none was answered, within the tries and the deadline.
    #[error("{peer}: {cause}")]
    Failed { peer: PeerId, cause: String },
}

impl From<OpenError> for NetError {
    fn from(e: OpenError) -> NetError {
        NetError::Request(e.to_string())
    }
}

/// Opens a stage stream to `peer`, sends `open` and waits for the node to take it. Retries (with a short backoff)
/// when the stream ends unanswered; fails at once on a refusal.
pub async fn open_stage_stream(client: &Client, peer: PeerId, open: &StageOpen) -> Result<libp2p::Stream, OpenError> {
    let deadline = Instant::now() + OPEN_DEADLINE;
    let mut last = String::from("no try");
    for attempt in 0..OPEN_TRIES {
        if attempt > 0 {
            let backoff = Duration::from_millis(25 << attempt.min(5));
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            tracing::debug!(%peer, attempt, cause = %last, "opening a stage stream again");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let failed = |cause: String| OpenError::Failed { peer, cause };
        let once = async {
            let mut s = client
                .streams()
                .open_stream(peer, StreamProtocol::new(STAGE_PROTOCOL))
                .await
                .map_err(|e| failed(e.to_string()))?;
            write_msg(&mut s, open, MAX_OPEN_FRAME).await.map_err(|e| failed(format!("sending the header: {e}")))?;
            match read_msg::<_, StageAccept>(&mut s, MAX_OPEN_FRAME).await {
                Ok(StageAccept::Accepted) => Ok(s),
                Ok(StageAccept::Refused { reason }) => Err(OpenError::Refused { peer, reason }),
                // Ended unanswered: dropped before anyone read it.
                Err(e) => Err(failed(format!("the stream ended unanswered ({e})"))),
            }
        };
        match tokio::time::timeout(left, once).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(refused @ OpenError::Refused { .. })) => return Err(refused),
            Ok(Err(OpenError::Failed { cause, .. })) => last = cause,
            Err(_) => {
                last = format!("no answer in {} s", OPEN_DEADLINE.as_secs());
                break;
            }
        }
    }
    Err(OpenError::Failed { peer, cause: format!("opening a stage stream failed: {last}") })
}

/// The node's side: answers the opener of `stream`.
pub async fn answer(stream: &mut libp2p::Stream, accept: &StageAccept) -> std::io::Result<()> {
    write_msg(stream, accept, MAX_OPEN_FRAME).await
}
