//! The cluster-key gate for QUIC. The pre-shared key (pnet) can only wrap byte streams, so it protects TCP but
//! not QUIC. This behaviour closes that gap: a peer is *admitted* once it has completed a TCP connection (which
//! requires the cluster key), and a QUIC connection is accepted only from an admitted peer. QUIC's TLS
//! authenticates the peer id, so a stranger cannot borrow an admitted one. The check runs when the connection is
//! established, before any protocol handler exists: a stranger learns our peer id (which is in our address
//! anyway) and nothing else — no identify, no ping, no control protocol.
//!
//! Members therefore make first contact over TCP; QUIC is an additional path between members.

use std::collections::HashSet;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

#[derive(Default)]
pub struct KeyGate {
    admitted: HashSet<PeerId>,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {0} has not proven the cluster key over TCP; QUIC is refused")]
pub struct NotAdmitted(PeerId);

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

impl KeyGate {
    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains(peer)
    }

    fn check(&mut self, peer: PeerId, addr: &Multiaddr) -> Result<THandler<Self>, ConnectionDenied> {
        if is_quic(addr) {
            if !self.admitted.contains(&peer) {
                return Err(ConnectionDenied::new(NotAdmitted(peer)));
            }
        } else if self.admitted.len() < 100_000 {
            // Any other transport here is TCP behind the pre-shared key: the peer holds the cluster key.
            self.admitted.insert(peer);
        }
        Ok(dummy::ConnectionHandler)
    }
}

impl NetworkBehaviour for KeyGate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, remote)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, addr)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_needs_a_tcp_admission_first() {
        let mut g = KeyGate::default();
        let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap();
        let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert!(g.check(peer, &quic).is_err());
        assert!(!g.is_admitted(&peer));
        assert!(g.check(peer, &tcp).is_ok());
        assert!(g.is_admitted(&peer));
        assert!(g.check(peer, &quic).is_ok());
    }
}
