//! The libp2p stack: TCP wrapped in the cluster's pre-shared key (pnet: a peer without the key fails the
//! very first handshake and sees nothing), then Noise and Yamux; QUIC beside it, open only to peers that proved
//! the key over TCP ([`super::gate`]); and the behaviours every member runs: identify, ping (liveness and
//! round-trip time), mDNS (optional), Kademlia, the control protocol and dedicated bulk streams.

use std::time::Duration;

use edge_protocol::codec::ControlCodec;
use edge_protocol::control::CONTROL_PROTOCOL;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, kad, mdns, noise, ping, tcp, yamux, StreamProtocol, Swarm, Transport};

/// How often peers are pinged, and after how long without an answer a peer counts as gone.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First: it refuses QUIC connections from peers without the key before any other handler is created.
    pub gate: super::gate::KeyGate,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub control: request_response::Behaviour<ControlCodec>,
    /// Dedicated streams for bulk data ([`edge_protocol::bulk`]).
    pub stream: libp2p_stream::Behaviour,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the network stack: {0}")]
pub struct SwarmError(String);

/// Builds the swarm for `key`, admitting only peers holding `psk`.
pub fn build_swarm(key: Keypair, psk: PreSharedKey, mdns: bool) -> Result<Swarm<Behaviour>, SwarmError> {
    let err = |e: &dyn std::fmt::Display| SwarmError(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(10)))
        })
        .map_err(|e| err(&e))?
        .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let me = key.public().to_peer_id();
            let mdns = if mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?) } else { None };
            let mut kad = kad::Behaviour::with_config(
                me,
                kad::store::MemoryStore::new(me),
                kad::Config::new(StreamProtocol::new("/edge-infer/kad/9")),
            );
            kad.set_mode(Some(kad::Mode::Server));
            let version = format!("edge-node/{}", env!("CARGO_PKG_VERSION"));
            Ok(Behaviour {
                gate: super::gate::KeyGate::default(),
                identify: identify::Behaviour::new(
                    identify::Config::new("/edge-infer/1".into(), key.public()).with_agent_version(version),
                ),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL).with_timeout(PING_TIMEOUT)),
                mdns: Toggle::from(mdns),
                kad,
                control: request_response::Behaviour::with_codec(
                    ControlCodec::default(),
                    [(StreamProtocol::new(CONTROL_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10))
                        .with_max_concurrent_streams(64),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}
