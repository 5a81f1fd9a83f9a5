//! Cluster networking over libp2p: one [`EventLoop`] owns the Swarm, a cloneable [`Client`] sends it commands
//! (rust-libp2p's file-sharing example).
//!
//! - [`config`]: the optional `config.toml` (listen addresses, bootstrap list, mDNS, allowlist).
//! - [`gate`]: QUIC connections only from peers that proved the cluster key over TCP.
//! - [`keys`]: the node identity and the cluster key, on disk and on the command line.
//! - [`swarm`]: TCP + pre-shared key + Noise + Yamux, QUIC, and the behaviours (identify, ping, mDNS, Kademlia, control).
//! - [`event_loop`]: the loop that owns the Swarm, answers the control protocol, keeps the peer table.
//! - [`client`]: the handle to it.
//! - [`bulk`]: dedicated streams: serving them and measuring a link with one.
//! - [`peers`]: the peer table and its live view.
//! - [`limits`]: per-peer stream and request-rate limits.

pub mod bulk;
pub mod client;
pub mod config;
pub mod event_loop;
pub mod gate;
pub mod keys;
pub mod limits;
pub mod peers;
pub mod swarm;

use std::collections::HashSet;

use edge_protocol::capability::SignedCapabilities;
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

pub use client::Client;
pub use event_loop::EventLoop;
pub use peers::PeerSnapshot;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Swarm(#[from] swarm::SwarmError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("the network event loop has stopped")]
    Stopped,
}

/// How a member joins the cluster.
pub struct NetConfig {
    pub identity: Keypair,
    pub cluster_key: PreSharedKey,
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/tcp/0`); none for a client that only dials.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial and keep dialing (with backoff) when they go away.
    pub bootstrap: Vec<Multiaddr>,
    /// mDNS discovery on the local network (never on loopback).
    pub mdns: bool,
    /// Only these peers may stay connected (None: every holder of the cluster key).
    pub allow: Option<HashSet<PeerId>>,
    /// The capability record to give out (None for a coordinator or a client).
    pub capabilities: Option<SignedCapabilities>,
}

/// Builds the network: the [`Client`] to use and the [`EventLoop`] to spawn.
pub fn new(cfg: NetConfig) -> Result<(Client, EventLoop), NetError> {
    let peer_id = cfg.identity.public().to_peer_id();
    let mut swarm = swarm::build_swarm(cfg.identity, cfg.cluster_key, cfg.mdns)?;
    for addr in cfg.listen {
        swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen { addr, reason: e.to_string() })?;
    }
    let (tx, rx) = mpsc::channel(64);
    let streams = swarm.behaviour().stream.new_control();
    let event_loop = EventLoop::new(swarm, rx, cfg.capabilities, cfg.allow, cfg.bootstrap);
    Ok((Client { tx, peer_id, streams }, event_loop))
}
