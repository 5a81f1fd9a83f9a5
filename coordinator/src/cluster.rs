//! The coordinator's view of the cluster: it joins as a member (same key, same stack), dials what it is given,
//! learns the rest from its peers (the control protocol's peer list) and measures each link: round-trip time from
//! ping and bandwidth from a timed echo (1 MiB up, 1 MiB down) over a dedicated bulk stream. The planner takes this view as input.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edge_node::net::{Client, PeerSnapshot};
use edge_protocol::control::{ControlRequest, ControlResponse};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// A cluster member as the planner sees it: the live view of the peer (capabilities, ping round-trip time)
/// and the link bandwidth measured over a bulk stream.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub peer: PeerSnapshot,
    /// Bytes moved both ways by an echo over a bulk stream / time, in MB/s.
    pub bandwidth_mbps: Option<f64>,
}

/// Bytes sent each way by the bandwidth probe.
pub const PROBE_BYTES: usize = 1 << 20;

/// Discovers the cluster for `wait`: every round asks each live peer for its peers and dials the ones not yet
/// connected. Returns the live peers that sent a capability record (members running shards).
pub async fn discover(client: &Client, wait: Duration) -> Vec<PeerSnapshot> {
    let deadline = Instant::now() + wait;
    let mut dialed: HashSet<String> = HashSet::new();
    while Instant::now() < deadline {
        let known = client.peers().await.unwrap_or_default();
        let known_ids: HashSet<&str> = known.iter().map(|p| p.peer_id.as_str()).collect();
        for p in &known {
            let Ok(peer) = p.peer_id.parse::<PeerId>() else { continue };
            let Ok(Ok(ControlResponse::Peers(list))) =
                tokio::time::timeout(Duration::from_secs(2), client.request(peer, ControlRequest::Peers)).await
            else {
                continue;
            };
            for info in list.into_iter().take(256) {
                if info.peer_id == client.peer_id().to_string() || known_ids.contains(info.peer_id.as_str()) {
                    continue;
                }
                if !dialed.insert(info.peer_id.clone()) {
                    continue;
                }
                for a in info.addrs.iter().take(4).filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    let _ = client.dial(a).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    client.peers().await.unwrap_or_default().into_iter().filter(|p| p.capabilities.is_some()).collect()
}

/// Measures the bandwidth to `peer` over a dedicated bulk stream (1 MiB each way).
pub async fn measure_bandwidth(client: &Client, peer: PeerId) -> Option<f64> {
    match edge_node::net::bulk::measure_bandwidth(client, peer, PROBE_BYTES as u32).await {
        Ok(mbps) => Some(mbps),
        Err(e) => {
            tracing::warn!(%peer, cause = %e, "bandwidth not measured");
            None
        }
    }
}

/// The members with their links measured.
pub async fn members(client: &Client, wait: Duration, measure: bool) -> Vec<Member> {
    let mut out = Vec::new();
    for p in discover(client, wait).await {
        let bandwidth_mbps = match (measure, p.peer_id.parse::<PeerId>()) {
            (true, Ok(peer)) => measure_bandwidth(client, peer).await,
            _ => None,
        };
        out.push(Member { peer: p, bandwidth_mbps });
    }
    out
}
