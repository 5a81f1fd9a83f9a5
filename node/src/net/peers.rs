//! What a member knows about the others: addresses, the verified capability record, round-trip time and when
//! it last answered. A peer whose connections are all closed, or that has not answered for
//! [`super::swarm::PING_TIMEOUT`] plus one ping interval, is not part of the live view.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use edge_protocol::capability::{Capabilities, SignedCapabilities};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct PeerState {
    pub addrs: Vec<Multiaddr>,
    /// Open connections and the remote address of each.
    pub connections: HashMap<ConnectionId, Multiaddr>,
    pub caps: Option<(Capabilities, SignedCapabilities)>,
    pub rtt: Option<Duration>,
    pub last_seen: Instant,
}

/// A peer as the live view reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSnapshot {
    pub peer_id: String,
    pub addrs: Vec<String>,
    /// Remote addresses of the open connections (which transports are in use).
    pub via: Vec<String>,
    pub capabilities: Option<Capabilities>,
    pub rtt_us: Option<u64>,
    pub last_seen_ms: u64,
}

#[derive(Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerState>,
}

impl PeerTable {
    pub fn entry(&mut self, peer: PeerId) -> &mut PeerState {
        self.peers.entry(peer).or_insert_with(|| PeerState {
            addrs: Vec::new(),
            connections: HashMap::new(),
            caps: None,
            rtt: None,
            last_seen: Instant::now(),
        })
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerState> {
        self.peers.get(peer)
    }

    pub fn add_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let e = self.entry(peer);
        if !e.addrs.contains(&addr) && e.addrs.len() < 16 {
            e.addrs.push(addr);
        }
    }

    pub fn seen(&mut self, peer: PeerId) {
        self.entry(peer).last_seen = Instant::now();
    }

    /// Peers that are connected and answered within `timeout`.
    pub fn live(&self, timeout: Duration) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        self.peers.iter().filter(move |(_, s)| !s.connections.is_empty() && s.last_seen.elapsed() <= timeout)
    }

    /// Connected peers that stopped answering (to be disconnected).
    pub fn stalled(&self, timeout: Duration) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, s)| !s.connections.is_empty() && s.last_seen.elapsed() > timeout)
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn snapshot(&self, timeout: Duration) -> Vec<PeerSnapshot> {
        let mut v: Vec<PeerSnapshot> = self
            .live(timeout)
            .map(|(p, s)| PeerSnapshot {
                peer_id: p.to_string(),
                addrs: s.addrs.iter().map(|a| a.to_string()).collect(),
                via: {
                    let mut v: Vec<String> = s.connections.values().map(|a| a.to_string()).collect();
                    v.sort();
                    v
                },
                capabilities: s.caps.as_ref().map(|c| c.0.clone()),
                rtt_us: s.rtt.map(|d| d.as_micros() as u64),
                last_seen_ms: s.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        v
    }
}
