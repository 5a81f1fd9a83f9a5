//! Golden byte fixtures: the exact encoding of fixed messages. If one of these fails, the wire format changed:
//! either undo the change, or bump `PROTOCOL_VERSION` (and with it every protocol name) and re-pin the bytes.
//!
//! Encoding reminders (bincode 2 standard): integers are varints (< 251: one byte; 251 + u16 LE; 252 + u32 LE;
//! 253 + u64 LE), enum variants are their index as a varint, strings and vecs are a varint length then the
//! elements, `[u8; 32]` is 32 bytes, `f32` is 4 bytes LE, `bool` one byte, `Option` a 0/1 byte then the value.

use edge_protocol::{
    decode, encode, Capabilities, ControlRequest, ControlResponse, HeldShard, PeerInfo, ShardSpec, SignedCapabilities,
};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{de::DeserializeOwned, Serialize};

/// Asserts the exact encoding of `v`, and that it decodes back to `v`.
fn pinned<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T, hex: &str) {
    let bytes = encode(v, usize::MAX).unwrap();
    assert_eq!(hex::encode(&bytes), hex, "the encoding of {v:?} changed");
    assert_eq!(&decode::<T>(&bytes, bytes.len()).unwrap(), v);
}

/// A fixed identity: ed25519 from a constant secret (ed25519 signatures are deterministic, RFC 8032).
fn fixed_key() -> Keypair {
    Keypair::ed25519_from_bytes([7u8; 32]).unwrap()
}

const FIXED_PEER: &str = "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7";

fn fixed_caps() -> Capabilities {
    Capabilities {
        peer_id: FIXED_PEER.into(),
        version: 300,
        agent: "edge-node/0.1.0".into(),
        adapter: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        device_type: "Cpu".into(),
        backend: "wgpu".into(),
        memory_bytes: 8 << 30,
        gemv_gbps: 5.5,
        dispatch_us: 35.25,
        row_gmacs: 2.0,
        shards: vec![
            HeldShard {
                model: [0xab; 32],
                spec: ShardSpec { layer_start: 0, layer_end: 10, embed: true, head: false },
            },
            HeldShard {
                model: [0x01; 32],
                spec: ShardSpec { layer_start: 10, layer_end: 300, embed: false, head: true },
            },
        ],
        load: 2,
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    }
}

/// The encoding of [`fixed_caps`], field by field.
#[rustfmt::skip]
const CAPS_HEX: &str = concat!(
    "34", "313244334b6f6f5752617750627850745031655a614a70756d476e7957583244635579643352516e796472336541746f34417a37", // peer_id (52 bytes)
    "fb2c01",                                                                 // version 300
    "0f", "656467652d6e6f64652f302e312e30",                                   // agent
    "20", "6c6c766d7069706520284c4c564d2031352e302e362c20323536206269747329", // adapter
    "03", "437075",                                                           // device_type "Cpu"
    "04", "77677075",                                                         // backend "wgpu"
    "fd", "0000000002000000",                                                 // memory_bytes 8 GiB
    "0000b040",                                                               // gemv_gbps 5.5
    "00000d42",                                                               // dispatch_us 35.25
    "00000040",                                                               // row_gmacs 2.0
    "02",                                                                     // 2 shards
    "abababababababababababababababababababababababababababababababab", "000a0100",  // [0xab; 32], 0..10 +embed
    "0101010101010101010101010101010101010101010101010101010101010101", "0afb2c010001", // [0x01; 32], 10..300 +head
    "02",                                                                     // load
    "01", "17", "2f6970342f3132372e302e302e312f7463702f34303031",             // listen_addrs
);

#[test]
fn control_requests() {
    pinned(&ControlRequest::Capabilities, "00");
    pinned(&ControlRequest::Peers, "01");
    pinned(&ControlRequest::Probe { payload: vec![1, 2, 3], reply_bytes: 7 }, "020301020307");
    pinned(&ControlRequest::Probe { payload: vec![], reply_bytes: 4 << 20 }, "0200fc00004000");
}

#[test]
fn shard_spec() {
    pinned(&ShardSpec { layer_start: 10, layer_end: 20, embed: false, head: true }, "0a140001");
    pinned(&ShardSpec { layer_start: 0, layer_end: 300, embed: true, head: false }, "00fb2c010100");
}

#[test]
fn capabilities_record() {
    assert_eq!(PeerId::from_public_key(&fixed_key().public()).to_base58(), FIXED_PEER);
    pinned(&fixed_caps(), CAPS_HEX);
}

#[test]
fn signed_capabilities() {
    const PUBLIC_KEY: &str = "08011220ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
    const SIGNATURE: &str = concat!(
        "61c854ac9086bd97a60fbea2d4f74907e7250c09dc601a226c2e372d0f0f4290",
        "36c4d8e848af987ed7e4cefa3245f1048f3aee3faa75bea686ece177fe8c6402",
    );
    let signed = SignedCapabilities::sign(&fixed_caps(), &fixed_key()).unwrap();
    assert_eq!(hex::encode(&signed.record), CAPS_HEX);
    assert_eq!(hex::encode(&signed.public_key), PUBLIC_KEY);
    // Pins the domain separation too: a different prefix gives a different signature.
    assert_eq!(hex::encode(&signed.signature), SIGNATURE);
    // The record is 236 bytes: a one-byte length (< 251).
    pinned(&signed, &format!("ec{CAPS_HEX}24{PUBLIC_KEY}40{SIGNATURE}"));
    assert_eq!(signed.verify(&FIXED_PEER.parse().unwrap()).unwrap(), fixed_caps());
    pinned(&ControlResponse::Capabilities(signed), &format!("00ec{CAPS_HEX}24{PUBLIC_KEY}40{SIGNATURE}"));
}

#[test]
fn control_responses() {
    pinned(&ControlResponse::Error("no".into()), "03026e6f");
    pinned(&ControlResponse::Probe { payload: vec![9, 9] }, "02020909");
    pinned(
        &ControlResponse::Peers(vec![PeerInfo {
            peer_id: "p".into(),
            addrs: vec!["/a".into()],
            capabilities: None,
            rtt_us: Some(1000),
        }]),
        // variant 1, 1 peer, "p", 1 addr "/a", None, Some(1000)
        concat!("01", "01", "0170", "01022f61", "00", "01fbe803"),
    );
}
