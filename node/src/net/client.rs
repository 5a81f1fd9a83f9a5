//! The handle the rest of the program uses to talk to the network: cheap to clone, every call a command to the
//! [`super::EventLoop`] answered on a oneshot. All methods are cancel-safe: dropping the future drops the reply.

use edge_protocol::capability::SignedCapabilities;
use edge_protocol::control::{ControlRequest, ControlResponse};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::event_loop::Command;
use super::peers::PeerSnapshot;
use super::NetError;

#[derive(Clone)]
pub struct Client {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) peer_id: PeerId,
    pub(super) streams: libp2p_stream::Control,
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Opens and accepts dedicated streams (bulk data) directly, without going through the event loop.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Starts dialing an address (the connection is reported by the peer table).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// The live view: connected peers that answered recently, with their verified capability records.
    pub async fn peers(&self) -> Result<Vec<PeerSnapshot>, NetError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// One control request to `peer`.
    pub async fn request(&self, peer: PeerId, req: ControlRequest) -> Result<ControlResponse, NetError> {
        self.call(|reply| Command::Request { peer, req, reply }).await?
    }

    /// [`Client::set_capabilities`] from synchronous code (dropped if the event loop is busy or gone).
    pub fn try_set_capabilities(&self, caps: SignedCapabilities) -> Result<(), NetError> {
        self.tx.try_send(Command::SetCapabilities { caps }).map_err(|_| NetError::Stopped)
    }

    /// Replaces the capability record this member gives out.
    pub async fn set_capabilities(&self, caps: SignedCapabilities) -> Result<(), NetError> {
        self.tx.send(Command::SetCapabilities { caps }).await.map_err(|_| NetError::Stopped)
    }
}
