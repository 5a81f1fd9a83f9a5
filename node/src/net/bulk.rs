//! Dedicated streams for bulk data ([`edge_protocol::bulk`]): a member serves them with bounded concurrency and a
//! deadline per stream; [`measure_bandwidth`] times an echo over one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_protocol::bulk::{self, BulkRequest, BULK_PROTOCOL};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::Semaphore;

use super::{Client, NetError};

/// Streams served at once; more wait (a peer cannot exhaust the node).
pub const MAX_CONCURRENT_STREAMS: usize = 8;
/// Bulk streams one peer may have open at once.
pub const MAX_STREAMS_PER_PEER: usize = 2;
/// A stream that has not finished by then is dropped.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(60);

/// Serves incoming bulk streams until the network stops. Spawn it next to the event loop.
pub async fn serve(client: Client) -> Result<(), NetError> {
    let mut incoming = client
        .streams()
        .accept(StreamProtocol::new(BULK_PROTOCOL))
        .map_err(|_| NetError::Request("bulk protocol already served".into()))?;
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_STREAMS));
    let per_peer = super::limits::PerPeer::new(MAX_STREAMS_PER_PEER);
    // Nothing in this loop waits: libp2p drops an inbound stream that arrives while the previous one is still
    // queued for it (see `stage::open`).
    while let Some((peer, mut stream)) = incoming.next().await {
        let Some(peer_slot) = per_peer.try_acquire(peer) else {
            tracing::info!(%peer, "refused a bulk stream: too many open from this peer");
            continue;
        };
        let permits = permits.clone();
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else { return };
            let work = async {
                match bulk::read_request(&mut stream).await? {
                    BulkRequest::Echo { bytes } => bulk::serve_echo(&mut stream, bytes).await,
                }
            };
            match tokio::time::timeout(STREAM_DEADLINE, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "bulk stream failed"),
                Err(_) => tracing::debug!(%peer, "bulk stream timed out"),
            }
            drop((permit, peer_slot));
        });
    }
    Ok(())
}

/// Link bandwidth to `peer` in MB/s: `bytes` sent and the same received back over one dedicated stream.
pub async fn measure_bandwidth(client: &Client, peer: PeerId, bytes: u32) -> Result<f64, NetError> {
    let mut control = client.streams();
    let t = Instant::now();
    let run = async {
        let mut s = control
            .open_stream(peer, StreamProtocol::new(BULK_PROTOCOL))
            .await
            .map_err(|e| NetError::Request(format!("{peer}: {e}")))?;
        let io = |e: std::io::Error| NetError::Request(format!("{peer}: {e}"));
        bulk::write_request(&mut s, &BulkRequest::Echo { bytes }).await.map_err(io)?;
        bulk::send_bytes(&mut s, bytes as usize).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        bulk::recv_bytes(&mut s, bytes as usize).await.map_err(io)?;
        Ok::<_, NetError>(())
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .map_err(|_| NetError::Request(format!("{peer}: timed out")))??;
    Ok(2.0 * bytes as f64 / t.elapsed().as_secs_f64() / 1e6)
}
