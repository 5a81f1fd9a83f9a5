//! The event loop: the only owner of the Swarm (rust-libp2p's file-sharing example). It answers the control
//! protocol for this member, keeps the peer table, dials the configured peers again with backoff, and serves
//! the [`super::Client`]'s commands, which arrive on a bounded channel with a oneshot for the reply.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use edge_protocol::capability::SignedCapabilities;
use edge_protocol::control::{ControlRequest, ControlResponse, PeerInfo};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, kad, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};

use super::peers::{PeerSnapshot, PeerTable};
use super::swarm::{Behaviour, BehaviourEvent, PING_INTERVAL, PING_TIMEOUT};
use super::NetError;

/// A peer that answered nothing for this long is dropped from the live view and disconnected.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(PING_TIMEOUT.as_secs() + PING_INTERVAL.as_secs() + 1);

pub(super) enum Command {
    Dial { addr: Multiaddr, reply: oneshot::Sender<Result<(), NetError>> },
    Peers { reply: oneshot::Sender<Vec<PeerSnapshot>> },
    ListenAddrs { reply: oneshot::Sender<Vec<Multiaddr>> },
    Request { peer: PeerId, req: ControlRequest, reply: oneshot::Sender<Result<ControlResponse, NetError>> },
    SetCapabilities { caps: SignedCapabilities },
}

/// An address to keep dialing, with exponential backoff while it fails.
struct Redial {
    addr: Multiaddr,
    /// The peer behind it, once known (from a `/p2p/` suffix or the first connection).
    peer: Option<PeerId>,
    next: Instant,
    delay: Duration,
    /// Found by mDNS: any connection with the peer satisfies it (it may have dialed us), and it is forgotten
    /// when mDNS says the peer has gone.
    mdns: bool,
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    peers: PeerTable,
    /// Requests sent for a client, and capability requests this loop sends by itself.
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<ControlResponse, NetError>>>,
    auto_caps: HashMap<OutboundRequestId, PeerId>,
    my_caps: Option<SignedCapabilities>,
    allow: Option<HashSet<PeerId>>,
    redial: Vec<Redial>,
    next_kad_bootstrap: Instant,
    /// Control requests answered per peer per second.
    rate: super::limits::RateLimit,
}

/// Control requests one peer may make per second; more are answered with an error.
pub const MAX_CONTROL_REQUESTS_PER_SECOND: u32 = 50;

/// How often Kademlia walks the network for members beyond the first hop.
const KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);

impl EventLoop {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        caps: Option<SignedCapabilities>,
        allow: Option<HashSet<PeerId>>,
        bootstrap: Vec<Multiaddr>,
    ) -> EventLoop {
        let now = Instant::now();
        let redial = bootstrap
            .into_iter()
            .map(|addr| Redial {
                peer: peer_of(&addr),
                addr,
                next: now,
                delay: Duration::from_millis(500),
                mdns: false,
            })
            .collect();
        EventLoop {
            swarm,
            commands,
            peers: PeerTable::default(),
            pending: HashMap::new(),
            auto_caps: HashMap::new(),
            my_caps: caps,
            allow,
            redial,
            next_kad_bootstrap: now + Duration::from_secs(2),
            rate: super::limits::RateLimit::new(MAX_CONTROL_REQUESTS_PER_SECOND),
        }
    }

    /// Runs until `shutdown` turns true or every [`super::Client`] is dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                _ = shutdown.changed() => if *shutdown.borrow() { break },
            }
        }
        tracing::debug!("network event loop stopped");
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        for r in &mut self.redial {
            if r.next > now {
                continue;
            }
            // Satisfied by an open connection over this very address (a QUIC address is kept apart from TCP), or
            // for a peer found by mDNS by any connection with it.
            let want = without_p2p(&r.addr);
            let connected = r.peer.and_then(|p| self.peers.get(&p)).is_some_and(|s| {
                (r.mdns && !s.connections.is_empty()) || s.connections.values().any(|a| without_p2p(a) == want)
            });
            if !connected {
                if let Err(e) = dial(&mut self.swarm, r.addr.clone()) {
                    tracing::debug!(addr = %r.addr, cause = %e, "dial failed");
                }
                r.delay = (r.delay * 2).min(Duration::from_secs(10));
            } else {
                r.delay = Duration::from_millis(500);
            }
            r.next = now + r.delay;
        }
        if now >= self.next_kad_bootstrap && self.swarm.connected_peers().next().is_some() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            self.next_kad_bootstrap = now + KAD_BOOTSTRAP_INTERVAL;
        }
        for peer in self.peers.stalled(LIVENESS_TIMEOUT) {
            tracing::info!(%peer, "peer stopped answering; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let _ = reply.send(dial(&mut self.swarm, addr).map_err(|e| NetError::Dial(e.to_string())));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peers.snapshot(LIVENESS_TIMEOUT));
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Request { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().control.send_request(&peer, req);
                self.pending.insert(id, reply);
            }
            Command::SetCapabilities { caps } => self.my_caps = Some(caps),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let me = *self.swarm.local_peer_id();
                tracing::info!(%address, "listening on {address}/p2p/{me}");
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                if self.allow.as_ref().is_some_and(|a| !a.contains(&peer_id)) {
                    tracing::warn!(peer = %peer_id, "peer is not on the allowlist; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let e = self.peers.entry(peer_id);
                e.connections.insert(connection_id, endpoint.get_remote_address().clone());
                e.last_seen = Instant::now();
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address();
                    self.peers.add_addr(peer_id, addr.clone());
                    let bare = without_p2p(addr);
                    for r in self.redial.iter_mut().filter(|r| r.peer.is_none() && without_p2p(&r.addr) == bare) {
                        r.peer = Some(peer_id);
                    }
                }
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, "connected");
                    let id = self.swarm.behaviour_mut().control.send_request(&peer_id, ControlRequest::Capabilities);
                    self.auto_caps.insert(id, peer_id);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                let e = self.peers.entry(peer_id);
                e.connections.remove(&connection_id);
                if num_established == 0 {
                    tracing::info!(peer = %peer_id, "disconnected");
                    e.caps = None;
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, cause = %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                // Without the cluster key the pnet handshake fails here.
                tracing::info!(from = %send_back_addr, cause = %error, "refused an incoming connection");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                for addr in info.listen_addrs.into_iter().take(16) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    self.peers.add_addr(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => match result {
                Ok(rtt) => {
                    self.peers.seen(peer);
                    let e = self.peers.entry(peer);
                    e.rtt = Some(rtt);
                    // A member connected before it had its record (it signs it once it listens) answered the
                    // request made on connecting with an error: ask again, one request at a time.
                    if e.caps.is_none() && !self.auto_caps.values().any(|p| *p == peer) {
                        let id = self.swarm.behaviour_mut().control.send_request(&peer, ControlRequest::Capabilities);
                        self.auto_caps.insert(id, peer);
                    }
                }
                Err(e) => tracing::debug!(%peer, cause = %e, "ping failed"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                // Both sides of a pair discover each other at the same moment (one query's answers reach every
                // member) and both dial; a dial that fails is tried again from the tick, with backoff, until the
                // two are connected either way or mDNS reports the peer gone.
                let now = Instant::now();
                for (peer, addr) in found {
                    if self.redial.iter().any(|r| r.mdns && r.peer == Some(peer) && r.addr == addr) {
                        continue;
                    }
                    if !self.swarm.is_connected(&peer) {
                        tracing::info!(%peer, %addr, "discovered by mDNS");
                    }
                    let delay = Duration::from_millis(500);
                    self.redial.push(Redial { addr, peer: Some(peer), next: now, delay, mdns: true });
                }
                self.on_tick();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    self.redial.retain(|r| !(r.mdns && r.peer == Some(peer) && r.addr == addr));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. }))
                // A member beyond the first hop, learned through Kademlia: connect to it.
                if peer != *self.swarm.local_peer_id() && !self.swarm.is_connected(&peer) => {
                    if let Some(addr) = addresses.iter().next() {
                        tracing::debug!(%peer, %addr, "found by Kademlia");
                        let _ = dial(&mut self.swarm, addr.clone());
                    }
                }
            SwarmEvent::Behaviour(BehaviourEvent::Control(e)) => self.on_control(e),
            _ => {}
        }
    }

    fn on_control(&mut self, event: request_response::Event<ControlRequest, ControlResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                self.peers.seen(peer);
                let response = if self.rate.allow(peer) {
                    self.answer(request)
                } else {
                    ControlResponse::Error("busy: too many requests from this peer".into())
                };
                if self.swarm.behaviour_mut().control.send_response(channel, response).is_err() {
                    tracing::debug!(%peer, "response not sent: the peer went away");
                }
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                self.peers.seen(peer);
                if let Some(p) = self.auto_caps.remove(&request_id) {
                    self.store_caps(p, response);
                } else if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                self.auto_caps.remove(&request_id);
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request(format!("{peer}: {error}"))));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, cause = %error, "inbound control request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn store_caps(&mut self, peer: PeerId, response: ControlResponse) {
        match response {
            ControlResponse::Capabilities(signed) => match signed.verify(&peer) {
                Ok(caps) => {
                    tracing::info!(%peer, adapter = %caps.adapter, "capabilities received");
                    self.peers.entry(peer).caps = Some((caps, signed));
                }
                Err(e) => tracing::warn!(%peer, cause = %e, "rejected a capability record"),
            },
            // A coordinator or client has no record to give.
            ControlResponse::Error(e) => tracing::debug!(%peer, reason = %e, "peer has no capability record"),
            _ => tracing::warn!(%peer, "unexpected answer to a capability request"),
        }
    }

    fn answer(&self, request: ControlRequest) -> ControlResponse {
        if let Err(e) = request.validate() {
            return ControlResponse::Error(e.to_string());
        }
        match request {
            ControlRequest::Capabilities => match &self.my_caps {
                Some(c) => ControlResponse::Capabilities(c.clone()),
                None => ControlResponse::Error("this member runs no shards".into()),
            },
            ControlRequest::Peers => ControlResponse::Peers(
                self.peers
                    .live(LIVENESS_TIMEOUT)
                    // 100 records at the 128 KiB bound stay under the 16 MiB response limit.
                    .take(100)
                    .map(|(p, s)| PeerInfo {
                        peer_id: p.to_string(),
                        addrs: s.addrs.iter().map(|a| a.to_string()).collect(),
                        capabilities: s.caps.as_ref().map(|c| c.1.clone()),
                        rtt_us: s.rtt.map(|d| d.as_micros().min(u32::MAX as u128) as u32),
                    })
                    .collect(),
            ),
            ControlRequest::Probe { reply_bytes, .. } => {
                ControlResponse::Probe { payload: vec![0; reply_bytes as usize] }
            }
        }
    }
}

/// Dials from a fresh local port. libp2p's default binds a dial to the listening port; two members with fixed
/// ports that dial each other at the same moment (as mDNS makes them) then meet in one TCP simultaneous open on
/// which both sides act as the dialer, the security handshake fails and neither connection exists.
fn dial(swarm: &mut Swarm<Behaviour>, addr: Multiaddr) -> Result<(), libp2p::swarm::DialError> {
    swarm.dial(libp2p::swarm::dial_opts::DialOpts::unknown_peer_id().address(addr).allocate_new_port().build())
}

/// The address without its `/p2p/...` part.
fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect()
}

/// The peer id in a `/p2p/...` suffix.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
