//! The control protocol: small request-response exchanges between cluster members (capability records, the
//! peer list, link probes), over libp2p request-response with [`crate::ControlCodec`].
//!
//! Requests are at most [`MAX_CONTROL_REQUEST`] bytes and responses [`MAX_CONTROL_RESPONSE`]; the codec enforces
//! both on every read and write. After decoding, a receiver calls [`ControlRequest::validate`] /
//! [`ControlResponse::validate`] for the per-field bounds, and [`PeerInfo::verified_capabilities`] before trusting
//! a relayed capability record.

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::capability::{Capabilities, SignedCapabilities, MAX_CAP_STRING, MAX_LISTEN_ADDRS};
use crate::wire::{check_len, check_str, WireError};

/// Protocol name of the control protocol; its last component is [`crate::PROTOCOL_VERSION`].
pub const CONTROL_PROTOCOL: &str = "/edge-infer/control/9";
const _: () = assert!(crate::is_versioned(CONTROL_PROTOCOL), "CONTROL_PROTOCOL must end with /PROTOCOL_VERSION");

/// Largest encoded [`ControlRequest`] (5 MiB: a full probe payload plus framing).
pub const MAX_CONTROL_REQUEST: usize = 5 << 20;
/// Largest encoded [`ControlResponse`] (16 MiB).
pub const MAX_CONTROL_RESPONSE: usize = 16 << 20;
/// Largest probe payload, in either direction (4 MiB): `Probe::payload` and `Probe::reply_bytes` are both capped.
pub const MAX_PROBE_BYTES: usize = 4 << 20;
/// Most entries in a [`ControlResponse::Peers`] list.
pub const MAX_PEERS: usize = 1024;
/// Longest [`ControlResponse::Error`] message.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// The libp2p protocol of [`CONTROL_PROTOCOL`].
pub fn control_protocol() -> StreamProtocol {
    StreamProtocol::new(CONTROL_PROTOCOL)
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// "Send me your signed capability record." Answered with [`ControlResponse::Capabilities`], or
    /// [`ControlResponse::Error`] by a member that runs no shards.
    Capabilities,
    /// "Who do you know?" Answered with [`ControlResponse::Peers`].
    Peers,
    /// Link measurement: `payload` goes up, `reply_bytes` bytes come back in [`ControlResponse::Probe`].
    ///
    /// A node must refuse (with [`ControlResponse::Error`]) a probe whose `payload` or `reply_bytes` exceeds
    /// [`MAX_PROBE_BYTES`]; [`ControlRequest::validate`] checks both.
    Probe {
        #[serde(with = "crate::wire::bytes")]
        payload: Vec<u8>,
        reply_bytes: u32,
    },
}

impl ControlRequest {
    /// Checks the bounds of a received request; answer [`ControlResponse::Error`] if it fails.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            ControlRequest::Capabilities | ControlRequest::Peers => Ok(()),
            ControlRequest::Probe { payload, reply_bytes } => {
                if payload.len() > MAX_PROBE_BYTES {
                    return Err(WireError::Invalid(format!(
                        "probe payload of {} bytes exceeds {MAX_PROBE_BYTES}",
                        payload.len()
                    )));
                }
                if *reply_bytes as usize > MAX_PROBE_BYTES {
                    return Err(WireError::Invalid(format!(
                        "probe reply of {reply_bytes} bytes exceeds {MAX_PROBE_BYTES}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// A control response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// The responder's signed capability record.
    Capabilities(SignedCapabilities),
    /// The peers the responder knows, with their (unverified, relayed) capability records.
    Peers(Vec<PeerInfo>),
    /// The reply to [`ControlRequest::Probe`]: `reply_bytes` bytes.
    Probe {
        #[serde(with = "crate::wire::bytes")]
        payload: Vec<u8>,
    },
    /// The request was refused or failed; a human-readable reason.
    Error(String),
}

impl ControlResponse {
    /// Checks the bounds of a received response (not the signatures of relayed records: see
    /// [`PeerInfo::verified_capabilities`]).
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            ControlResponse::Capabilities(_) => Ok(()),
            ControlResponse::Peers(peers) => {
                check_len("peer list", peers.len(), MAX_PEERS)?;
                peers.iter().try_for_each(PeerInfo::validate)
            }
            ControlResponse::Probe { payload } => check_len("probe reply", payload.len(), MAX_PROBE_BYTES),
            ControlResponse::Error(e) => check_str("error message", e, MAX_ERROR_MESSAGE),
        }
    }
}

/// One entry of a peer list: a peer some member knows, as that member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Base58 `PeerId`.
    pub peer_id: String,
    /// Multiaddresses the member knows for the peer.
    pub addrs: Vec<String>,
    /// The peer's signed record as the member last received it; check it with
    /// [`PeerInfo::verified_capabilities`].
    pub capabilities: Option<SignedCapabilities>,
    /// Round-trip time from the member to the peer, microseconds, if measured.
    pub rtt_us: Option<u32>,
}

impl PeerInfo {
    /// Checks the bounds of the entry: `peer_id` and each address at most [`MAX_CAP_STRING`] bytes, at most
    /// [`MAX_LISTEN_ADDRS`] addresses.
    pub fn validate(&self) -> Result<(), WireError> {
        check_str("peer_id", &self.peer_id, MAX_CAP_STRING)?;
        check_len("addrs", self.addrs.len(), MAX_LISTEN_ADDRS)?;
        self.addrs.iter().try_for_each(|a| check_str("address", a, MAX_CAP_STRING))
    }

    /// The peer id, parsed.
    pub fn peer(&self) -> Result<PeerId, WireError> {
        self.peer_id.parse().map_err(|e| WireError::Invalid(format!("peer id {:?}: {e}", self.peer_id)))
    }

    /// The relayed capability record, verified against [`PeerInfo::peer_id`] (so a relaying member can neither
    /// forge nor swap records).
    pub fn verified_capabilities(&self) -> Result<Option<Capabilities>, WireError> {
        match &self.capabilities {
            None => Ok(None),
            Some(signed) => signed.verify(&self.peer()?).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn protocol_name_carries_the_version() {
        assert!(CONTROL_PROTOCOL.ends_with(&format!("/{}", crate::PROTOCOL_VERSION)));
        assert_eq!(control_protocol().as_ref(), CONTROL_PROTOCOL);
    }

    #[test]
    fn probe_bounds() {
        let ok = |payload: usize, reply: u32| ControlRequest::Probe { payload: vec![0; payload], reply_bytes: reply };
        assert!(ok(MAX_PROBE_BYTES, MAX_PROBE_BYTES as u32).validate().is_ok());
        assert!(ok(MAX_PROBE_BYTES + 1, 0).validate().is_err());
        assert!(ok(0, MAX_PROBE_BYTES as u32 + 1).validate().is_err());
        assert!(ok(0, u32::MAX).validate().is_err());
        assert!(ControlRequest::Peers.validate().is_ok());
        // The largest valid probe fits the request limit; its reply fits the response limit.
        let req = crate::wire::encode(&ok(MAX_PROBE_BYTES, 0), MAX_CONTROL_REQUEST).unwrap();
        assert!(req.len() <= MAX_CONTROL_REQUEST);
        let resp = ControlResponse::Probe { payload: vec![0; MAX_PROBE_BYTES] };
        assert!(resp.validate().is_ok());
        assert!(crate::wire::encode(&resp, MAX_CONTROL_RESPONSE).is_ok());
        assert!(ControlResponse::Probe { payload: vec![0; MAX_PROBE_BYTES + 1] }.validate().is_err());
    }

    #[test]
    fn response_bounds() {
        let info = PeerInfo { peer_id: "p".into(), addrs: vec![], capabilities: None, rtt_us: None };
        assert!(ControlResponse::Peers(vec![info.clone(); MAX_PEERS]).validate().is_ok());
        assert!(ControlResponse::Peers(vec![info.clone(); MAX_PEERS + 1]).validate().is_err());
        let many = PeerInfo { addrs: vec!["a".into(); MAX_LISTEN_ADDRS + 1], ..info.clone() };
        assert!(ControlResponse::Peers(vec![many]).validate().is_err());
        let long = PeerInfo { peer_id: "p".repeat(MAX_CAP_STRING + 1), ..info };
        assert!(ControlResponse::Peers(vec![long]).validate().is_err());
        assert!(ControlResponse::Error("e".repeat(MAX_ERROR_MESSAGE + 1)).validate().is_err());
        assert!(ControlResponse::Error("no record".into()).validate().is_ok());
    }

    #[test]
    fn relayed_records_are_checked_against_the_listed_peer() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let pa = PeerId::from_public_key(&a.public());
        let pb = PeerId::from_public_key(&b.public());
        let caps = Capabilities {
            peer_id: pa.to_base58(),
            version: 1,
            agent: "edge-node/0.1.0".into(),
            adapter: "llvmpipe".into(),
            device_type: "Cpu".into(),
            backend: "cpu".into(),
            memory_bytes: 1 << 30,
            gemv_gbps: 1.0,
            dispatch_us: 2.0,
            row_gmacs: 3.0,
            shards: vec![],
            load: 0,
            listen_addrs: vec![],
        };
        let signed = SignedCapabilities::sign(&caps, &a).unwrap();
        let info = PeerInfo { peer_id: pa.to_base58(), addrs: vec![], capabilities: Some(signed), rtt_us: Some(400) };
        assert_eq!(info.verified_capabilities().unwrap(), Some(caps));
        // A relay that files A's record under B is caught.
        let swapped = PeerInfo { peer_id: pb.to_base58(), ..info.clone() };
        assert!(matches!(swapped.verified_capabilities(), Err(WireError::PeerMismatch { .. })));
        let garbage = PeerInfo { peer_id: "not a peer id".into(), ..info };
        assert!(matches!(garbage.verified_capabilities(), Err(WireError::Invalid(_))));
        let none = PeerInfo { peer_id: pb.to_base58(), addrs: vec![], capabilities: None, rtt_us: None };
        assert_eq!(none.verified_capabilities().unwrap(), None);
    }
}
