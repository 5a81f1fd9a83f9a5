//! Property tests: every message type survives encode -> decode unchanged (and through the codec), and signed
//! capability records survive sign -> encode -> decode -> verify.

use edge_protocol::capability::{MAX_CAPABILITIES_RECORD, MAX_CAP_STRING, MAX_HELD_SHARDS, MAX_LISTEN_ADDRS};
use edge_protocol::{
    decode, encode, Capabilities, ControlCodec, ControlRequest, ControlResponse, HeldShard, PeerInfo, ShardSpec,
    SignedCapabilities, WireError, MAX_CONTROL_REQUEST, MAX_CONTROL_RESPONSE,
};
use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::identity::Keypair;
use libp2p::request_response::Codec;
use libp2p::{PeerId, StreamProtocol};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

/// Any Unicode string of at most `max` chars.
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// f32 without NaN (NaN != NaN would fail the equality, not the encoding).
fn number() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN", |f| !f.is_nan())
}

fn shard_spec() -> impl Strategy<Value = ShardSpec> {
    (any::<u32>(), any::<u32>(), any::<bool>(), any::<bool>())
        .prop_map(|(layer_start, layer_end, embed, head)| ShardSpec { layer_start, layer_end, embed, head })
}

fn held_shard() -> impl Strategy<Value = HeldShard> {
    (any::<[u8; 32]>(), shard_spec()).prop_map(|(model, spec)| HeldShard { model, spec })
}

fn capabilities(max_str: usize, max_vec: usize) -> impl Strategy<Value = Capabilities> {
    (
        (text(max_str), any::<u64>(), text(max_str), text(max_str), text(max_str), text(max_str)),
        (
            any::<u64>(),
            number(),
            number(),
            number(),
            vec(held_shard(), 0..=max_vec),
            any::<u32>(),
            vec(text(max_str), 0..=max_vec),
        ),
    )
        .prop_map(
            |(
                (peer_id, version, agent, adapter, device_type, backend),
                (memory_bytes, gemv_gbps, dispatch_us, row_gmacs, shards, load, listen_addrs),
            )| Capabilities {
                peer_id,
                version,
                agent,
                adapter,
                device_type,
                backend,
                memory_bytes,
                gemv_gbps,
                dispatch_us,
                row_gmacs,
                shards,
                load,
                listen_addrs,
            },
        )
}

fn signed_capabilities() -> impl Strategy<Value = SignedCapabilities> {
    (bytes(300), bytes(64), bytes(128)).prop_map(|(record, public_key, signature)| SignedCapabilities {
        record,
        public_key,
        signature,
    })
}

fn peer_info() -> impl Strategy<Value = PeerInfo> {
    (text(60), vec(text(40), 0..4), proptest::option::of(signed_capabilities()), proptest::option::of(any::<u32>()))
        .prop_map(|(peer_id, addrs, capabilities, rtt_us)| PeerInfo { peer_id, addrs, capabilities, rtt_us })
}

fn control_request() -> impl Strategy<Value = ControlRequest> {
    prop_oneof![
        Just(ControlRequest::Capabilities),
        Just(ControlRequest::Peers),
        (bytes(2000), any::<u32>()).prop_map(|(payload, reply_bytes)| ControlRequest::Probe { payload, reply_bytes }),
    ]
}

fn control_response() -> impl Strategy<Value = ControlResponse> {
    prop_oneof![
        signed_capabilities().prop_map(ControlResponse::Capabilities),
        vec(peer_info(), 0..6).prop_map(ControlResponse::Peers),
        bytes(2000).prop_map(|payload| ControlResponse::Probe { payload }),
        text(200).prop_map(ControlResponse::Error),
    ]
}

/// encode -> decode gives `v` back, at exactly its length as the limit; one byte less is refused.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    v: &T,
    max: usize,
) -> Result<(), TestCaseError> {
    let bytes = encode(v, max).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decode::<T>(&bytes, max).unwrap(), v);
    prop_assert_eq!(&decode::<T>(&bytes, bytes.len()).unwrap(), v);
    prop_assert_eq!(
        decode::<T>(&bytes, bytes.len() - 1),
        Err(WireError::TooLarge { len: bytes.len(), max: bytes.len() - 1 })
    );
    Ok(())
}

/// Proptest settings: `cases` cases; failing seeds saved next to this file (`*.regressions`).
fn config(cases: u32) -> ProptestConfig {
    let persistence = proptest::test_runner::FileFailurePersistence::WithSource("regressions");
    ProptestConfig { cases, failure_persistence: Some(Box::new(persistence)), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn shard_spec_round_trips(v in shard_spec()) {
        round_trip(&v, 64)?;
    }

    #[test]
    fn held_shard_round_trips(v in held_shard()) {
        round_trip(&v, 128)?;
    }

    #[test]
    fn capabilities_round_trip(v in capabilities(40, 8)) {
        round_trip(&v, MAX_CAPABILITIES_RECORD)?;
    }

    #[test]
    fn signed_capabilities_round_trip(v in signed_capabilities()) {
        round_trip(&v, 1 << 20)?;
    }

    #[test]
    fn peer_info_round_trips(v in peer_info()) {
        round_trip(&v, 1 << 20)?;
    }

    #[test]
    fn control_request_round_trips(v in control_request()) {
        round_trip(&v, MAX_CONTROL_REQUEST)?;
    }

    #[test]
    fn control_response_round_trips(v in control_response()) {
        round_trip(&v, MAX_CONTROL_RESPONSE)?;
    }

    #[test]
    fn codec_round_trips(req in control_request(), resp in control_response()) {
        let proto = StreamProtocol::new(edge_protocol::CONTROL_PROTOCOL);
        let mut codec = ControlCodec::default();
        let mut up = Cursor::new(Vec::new());
        block_on(codec.write_request(&proto, &mut up, req.clone())).unwrap();
        prop_assert_eq!(block_on(codec.read_request(&proto, &mut Cursor::new(up.into_inner()))).unwrap(), req);
        let mut down = Cursor::new(Vec::new());
        block_on(codec.write_response(&proto, &mut down, resp.clone())).unwrap();
        prop_assert_eq!(block_on(codec.read_response(&proto, &mut Cursor::new(down.into_inner()))).unwrap(), resp);
    }
}

fn signing_key() -> &'static (Keypair, PeerId) {
    static KEY: std::sync::OnceLock<(Keypair, PeerId)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let k = Keypair::generate_ed25519();
        let p = PeerId::from_public_key(&k.public());
        (k, p)
    })
}

proptest! {
    #![proptest_config(config(64))]

    /// Any record within the bounds (strings up to the full 1 KiB) signs, travels and verifies unchanged.
    #[test]
    fn valid_records_sign_and_verify(
        mut caps in capabilities(MAX_CAP_STRING / 4, 16),
        gemv in 0.0f32..1e6,
        dispatch in 0.0f32..1e6,
        row in 0.0f32..1e6,
        many_shards in proptest::option::of(held_shard()),
        many_addrs in proptest::option::of(text(MAX_CAP_STRING / 4)),
    ) {
        let (key, peer) = signing_key();
        caps.peer_id = peer.to_base58();
        caps.gemv_gbps = gemv;
        caps.dispatch_us = dispatch;
        caps.row_gmacs = row;
        for s in &mut caps.shards {
            if s.spec.layer_start > s.spec.layer_end {
                std::mem::swap(&mut s.spec.layer_start, &mut s.spec.layer_end);
            }
        }
        if let Some(mut s) = many_shards {
            s.spec.layer_end = s.spec.layer_end.max(s.spec.layer_start);
            caps.shards = vec![s; MAX_HELD_SHARDS];
        }
        if let Some(a) = many_addrs {
            caps.listen_addrs = vec![a; MAX_LISTEN_ADDRS];
        }
        let signed = SignedCapabilities::sign(&caps, key).unwrap();
        let resp = ControlResponse::Capabilities(signed);
        let bytes = encode(&resp, MAX_CONTROL_RESPONSE).unwrap();
        let ControlResponse::Capabilities(back) = decode(&bytes, MAX_CONTROL_RESPONSE).unwrap() else {
            return Err(TestCaseError::fail("wrong variant"));
        };
        prop_assert_eq!(back.verify(peer).unwrap(), caps);
    }
}
