//! The capability record a node advertises: what hardware it runs on, how fast it is, what shards it holds and
//! where it listens, signed with the node's libp2p identity key.
//!
//! The record travels as [`SignedCapabilities`]: the bincode bytes of a [`Capabilities`], the signer's public key
//! (libp2p protobuf encoding) and a signature over [`CAPABILITIES_DOMAIN`]` || record`. A receiver calls
//! [`SignedCapabilities::verify`] with the peer it got the record from (directly, or as the `peer_id` of a
//! [`crate::PeerInfo`] relayed by someone else): the key must hash to that peer, the record must name that peer,
//! and every string and list in the record is bounded, so a record can neither be forged, replayed under another
//! identity, nor blow up memory. `version` increases whenever the node changes its record; keep the highest.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::wire::{self, check_len, check_str, WireError};
use crate::ShardSpec;

/// Prefix of every signed message, so a capability signature can never be taken for another kind of signature.
pub const CAPABILITIES_DOMAIN: &[u8] = b"edge-infer/capabilities/1";
/// Longest encoded [`Capabilities`] record (128 KiB; a record at every bound below is about 115 KiB).
pub const MAX_CAPABILITIES_RECORD: usize = 128 << 10;
/// Longest string field (and listen address) in a record.
pub const MAX_CAP_STRING: usize = 1024;
/// Most listen addresses in a record.
pub const MAX_LISTEN_ADDRS: usize = 64;
/// Most held shards in a record.
pub const MAX_HELD_SHARDS: usize = 1024;
/// Longest accepted public key (protobuf encoding; an RSA-4096 key is about 550 bytes, ed25519 is 36).
pub const MAX_PUBLIC_KEY: usize = 2048;
/// Longest accepted signature (an RSA-8192 signature is 1024 bytes, ed25519 is 64).
pub const MAX_SIGNATURE: usize = 1024;

/// What a node offers to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Base58 `PeerId` of the node; bound into the signature and checked against the sender.
    pub peer_id: String,
    /// Increases whenever the record changes; receivers keep the highest.
    pub version: u64,
    /// Software name and version, e.g. `edge-node/0.1.0`.
    pub agent: String,
    /// GPU adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub adapter: String,
    /// wgpu device type: `Cpu`, `DiscreteGpu`, `IntegratedGpu`, ...
    pub device_type: String,
    /// Compute backend: `wgpu` or `cpu`.
    pub backend: String,
    /// Memory available for weights and KV cache, in bytes.
    pub memory_bytes: u64,
    /// Measured matrix-vector bandwidth, GB/s.
    pub gemv_gbps: f32,
    /// Measured per-dispatch overhead, microseconds.
    pub dispatch_us: f32,
    /// Measured multiply-adds per second (G MAC/s) that each row after the first adds to a batched matmul step
    /// (several sequences' tokens sharing one read of the weights); 0: the backend runs a batch row by row.
    pub row_gmacs: f32,
    /// Shards in the node's cache.
    pub shards: Vec<HeldShard>,
    /// Plans whose stages the node runs now (each a coordinator session).
    pub load: u32,
    /// Multiaddresses the node listens on (without the `/p2p/` suffix).
    pub listen_addrs: Vec<String>,
}

/// A shard a node holds: which model (blake3 of the model file) and which part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldShard {
    /// blake3 hash of the model.
    pub model: [u8; 32],
    /// The part of the model.
    pub spec: ShardSpec,
}

impl Capabilities {
    /// Checks every bound of the record: string lengths, list lengths, finite non-negative measurements,
    /// well-formed shard ranges.
    pub fn validate(&self) -> Result<(), WireError> {
        check_str("peer_id", &self.peer_id, MAX_CAP_STRING)?;
        check_str("agent", &self.agent, MAX_CAP_STRING)?;
        check_str("adapter", &self.adapter, MAX_CAP_STRING)?;
        check_str("device_type", &self.device_type, MAX_CAP_STRING)?;
        check_str("backend", &self.backend, MAX_CAP_STRING)?;
        check_len("listen_addrs", self.listen_addrs.len(), MAX_LISTEN_ADDRS)?;
        for a in &self.listen_addrs {
            check_str("listen address", a, MAX_CAP_STRING)?;
        }
        check_len("shards", self.shards.len(), MAX_HELD_SHARDS)?;
        for s in &self.shards {
            if s.spec.layer_start > s.spec.layer_end {
                return Err(WireError::Invalid(format!("held shard has an inverted range: {}", s.spec)));
            }
        }
        for (name, v) in
            [("gemv_gbps", self.gemv_gbps), ("dispatch_us", self.dispatch_us), ("row_gmacs", self.row_gmacs)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return Err(WireError::Invalid(format!("{name} is {v}, not a finite non-negative number")));
            }
        }
        Ok(())
    }
}

/// A [`Capabilities`] record as sent: its bytes, the signer's public key and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCapabilities {
    /// The record, encoded with [`crate::wire::encode`].
    #[serde(with = "crate::wire::bytes")]
    pub record: Vec<u8>,
    /// The signer's public key, `PublicKey::encode_protobuf`.
    #[serde(with = "crate::wire::bytes")]
    pub public_key: Vec<u8>,
    /// Signature over [`CAPABILITIES_DOMAIN`]` || record`.
    #[serde(with = "crate::wire::bytes")]
    pub signature: Vec<u8>,
}

impl SignedCapabilities {
    /// Encodes and signs `caps` with the node's identity key.
    ///
    /// Refuses a record that breaks a bound ([`Capabilities::validate`]) or whose `peer_id` is not the key's.
    pub fn sign(caps: &Capabilities, key: &Keypair) -> Result<Self, WireError> {
        caps.validate()?;
        let me = PeerId::from_public_key(&key.public()).to_base58();
        if caps.peer_id != me {
            return Err(WireError::PeerMismatch { expected: me, found: caps.peer_id.clone() });
        }
        Self::sign_record(wire::encode(caps, MAX_CAPABILITIES_RECORD)?, key)
    }

    /// Signs already encoded record bytes, without checking them.
    fn sign_record(record: Vec<u8>, key: &Keypair) -> Result<Self, WireError> {
        let signature = key.sign(&signed_message(&record)).map_err(|e| WireError::Sign(e.to_string()))?;
        Ok(SignedCapabilities { record, public_key: key.public().encode_protobuf(), signature })
    }

    /// Checks the record against `from`, the peer it describes (the sender, or the peer a relayed
    /// [`crate::PeerInfo`] is about), and returns it.
    ///
    /// In order: sizes of the three fields, the key decodes and hashes to `from`, the signature over
    /// [`CAPABILITIES_DOMAIN`]` || record` holds, the record decodes, names `from` and passes
    /// [`Capabilities::validate`]. Unauthenticated bytes are never decoded.
    pub fn verify(&self, from: &PeerId) -> Result<Capabilities, WireError> {
        for (field, len, max) in [
            ("record", self.record.len(), MAX_CAPABILITIES_RECORD),
            ("public key", self.public_key.len(), MAX_PUBLIC_KEY),
            ("signature", self.signature.len(), MAX_SIGNATURE),
        ] {
            if len > max {
                return Err(WireError::Invalid(format!("{field} of {len} bytes exceeds the limit of {max}")));
            }
        }
        let key = PublicKey::try_decode_protobuf(&self.public_key)
            .map_err(|e| WireError::BadSignature(format!("public key: {e}")))?;
        let signer = PeerId::from_public_key(&key);
        if signer != *from {
            return Err(WireError::PeerMismatch { expected: from.to_base58(), found: signer.to_base58() });
        }
        if !key.verify(&signed_message(&self.record), &self.signature) {
            return Err(WireError::BadSignature(format!("record not signed by {signer}")));
        }
        let caps: Capabilities = wire::decode(&self.record, MAX_CAPABILITIES_RECORD)?;
        if caps.peer_id != from.to_base58() {
            return Err(WireError::PeerMismatch { expected: from.to_base58(), found: caps.peer_id });
        }
        caps.validate()?;
        Ok(caps)
    }
}

fn signed_message(record: &[u8]) -> Vec<u8> {
    [CAPABILITIES_DOMAIN, record].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_for(key: &Keypair) -> Capabilities {
        Capabilities {
            peer_id: PeerId::from_public_key(&key.public()).to_base58(),
            version: 3,
            agent: "edge-node/0.1.0".into(),
            adapter: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            device_type: "Cpu".into(),
            backend: "wgpu".into(),
            memory_bytes: 8 << 30,
            gemv_gbps: 5.9,
            dispatch_us: 35.0,
            row_gmacs: 12.5,
            shards: vec![HeldShard { model: [7; 32], spec: ShardSpec::split(30, &[10])[0] }],
            load: 1,
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        }
    }

    fn peer(key: &Keypair) -> PeerId {
        PeerId::from_public_key(&key.public())
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = Keypair::generate_ed25519();
        let caps = caps_for(&key);
        let signed = SignedCapabilities::sign(&caps, &key).unwrap();
        assert_eq!(signed.verify(&peer(&key)).unwrap(), caps);
        // The signed form itself survives the wire.
        let bytes = wire::encode(&signed, 1 << 20).unwrap();
        let back: SignedCapabilities = wire::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back.verify(&peer(&key)).unwrap(), caps);
    }

    #[test]
    fn any_tampered_record_byte_fails() {
        let key = Keypair::generate_ed25519();
        let signed = SignedCapabilities::sign(&caps_for(&key), &key).unwrap();
        for i in 0..signed.record.len() {
            let mut t = signed.clone();
            t.record[i] ^= 0x01;
            assert!(matches!(t.verify(&peer(&key)), Err(WireError::BadSignature(_))), "byte {i}");
        }
        let mut t = signed.clone();
        t.record.push(0);
        assert!(matches!(t.verify(&peer(&key)), Err(WireError::BadSignature(_))));
        let mut t = signed.clone();
        t.signature[0] ^= 0x80;
        assert!(matches!(t.verify(&peer(&key)), Err(WireError::BadSignature(_))));
    }

    #[test]
    fn signature_from_another_key_fails() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut signed = SignedCapabilities::sign(&caps_for(&key), &key).unwrap();
        // Right key, signature by someone else.
        signed.signature = other.sign(&signed_message(&signed.record)).unwrap();
        assert!(matches!(signed.verify(&peer(&key)), Err(WireError::BadSignature(_))));
        // Other key and its valid signature over a record naming the first peer.
        signed.public_key = other.public().encode_protobuf();
        assert!(matches!(signed.verify(&peer(&key)), Err(WireError::PeerMismatch { .. })));
        assert!(matches!(signed.verify(&peer(&other)), Err(WireError::PeerMismatch { .. })));
    }

    #[test]
    fn signature_without_domain_fails() {
        let key = Keypair::generate_ed25519();
        let mut signed = SignedCapabilities::sign(&caps_for(&key), &key).unwrap();
        signed.signature = key.sign(&signed.record).unwrap();
        assert!(matches!(signed.verify(&peer(&key)), Err(WireError::BadSignature(_))));
    }

    #[test]
    fn record_naming_another_peer_fails() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let caps = Capabilities { peer_id: peer(&other).to_base58(), ..caps_for(&key) };
        // `sign` refuses it outright...
        assert!(matches!(SignedCapabilities::sign(&caps, &key), Err(WireError::PeerMismatch { .. })));
        // ...and a hand-made one is refused by the receiver.
        let signed =
            SignedCapabilities::sign_record(wire::encode(&caps, MAX_CAPABILITIES_RECORD).unwrap(), &key).unwrap();
        assert!(matches!(signed.verify(&peer(&key)), Err(WireError::PeerMismatch { .. })));
        assert!(matches!(signed.verify(&peer(&other)), Err(WireError::PeerMismatch { .. })));
    }

    #[test]
    fn mismatched_sender_fails() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let signed = SignedCapabilities::sign(&caps_for(&key), &key).unwrap();
        assert!(matches!(signed.verify(&peer(&other)), Err(WireError::PeerMismatch { .. })));
    }

    #[test]
    fn bounds_are_enforced_on_both_sides() {
        let key = Keypair::generate_ed25519();
        let good = caps_for(&key);
        let bad = [
            Capabilities { listen_addrs: vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_LISTEN_ADDRS + 1], ..good.clone() },
            Capabilities { listen_addrs: vec!["x".repeat(MAX_CAP_STRING + 1)], ..good.clone() },
            Capabilities { adapter: "x".repeat(MAX_CAP_STRING + 1), ..good.clone() },
            Capabilities { shards: vec![good.shards[0]; MAX_HELD_SHARDS + 1], ..good.clone() },
            Capabilities { gemv_gbps: f32::NAN, ..good.clone() },
            Capabilities { dispatch_us: -1.0, ..good.clone() },
            Capabilities { row_gmacs: f32::INFINITY, ..good.clone() },
            Capabilities {
                shards: vec![HeldShard {
                    model: [0; 32],
                    spec: ShardSpec { layer_start: 5, layer_end: 4, embed: false, head: false },
                }],
                ..good.clone()
            },
        ];
        for caps in bad {
            assert!(matches!(SignedCapabilities::sign(&caps, &key), Err(WireError::Invalid(_))), "{caps:?}");
            let signed =
                SignedCapabilities::sign_record(wire::encode(&caps, MAX_CAPABILITIES_RECORD).unwrap(), &key).unwrap();
            assert!(matches!(signed.verify(&peer(&key)), Err(WireError::Invalid(_))), "{caps:?}");
        }
        // A record at every bound still fits the record limit.
        let full = Capabilities {
            agent: "a".repeat(MAX_CAP_STRING),
            adapter: "a".repeat(MAX_CAP_STRING),
            device_type: "a".repeat(MAX_CAP_STRING),
            backend: "a".repeat(MAX_CAP_STRING),
            memory_bytes: u64::MAX,
            version: u64::MAX,
            load: u32::MAX,
            shards: vec![
                HeldShard {
                    model: [0xff; 32],
                    spec: ShardSpec { layer_start: u32::MAX, layer_end: u32::MAX, embed: true, head: true }
                };
                MAX_HELD_SHARDS
            ],
            listen_addrs: vec!["a".repeat(MAX_CAP_STRING); MAX_LISTEN_ADDRS],
            ..good
        };
        let signed = SignedCapabilities::sign(&full, &key).unwrap();
        assert_eq!(signed.verify(&peer(&key)).unwrap(), full);
    }

    #[test]
    fn oversized_or_garbage_fields_fail() {
        let key = Keypair::generate_ed25519();
        let signed = SignedCapabilities::sign(&caps_for(&key), &key).unwrap();
        let mut t = signed.clone();
        t.record = vec![0; MAX_CAPABILITIES_RECORD + 1];
        assert!(matches!(t.verify(&peer(&key)), Err(WireError::Invalid(_))));
        let mut t = signed.clone();
        t.public_key = vec![1, 2, 3];
        assert!(matches!(t.verify(&peer(&key)), Err(WireError::BadSignature(_))));
        let mut t = signed.clone();
        t.signature = vec![0; MAX_SIGNATURE + 1];
        assert!(matches!(t.verify(&peer(&key)), Err(WireError::Invalid(_))));
        let mut t = signed;
        t.signature.clear();
        assert!(matches!(t.verify(&peer(&key)), Err(WireError::BadSignature(_))));
    }
}
