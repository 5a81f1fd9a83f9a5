//! Garbage in: random bytes, every truncation of valid encodings, oversized inputs and absurd length prefixes.
//! Decoding must return `Err` (never panic) and stay within its memory bound, which a counting global allocator
//! in this test binary measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edge_protocol::capability::MAX_CAPABILITIES_RECORD;
use edge_protocol::stage::{
    Grammar, JobParams, Manifest, MemberRef, NodeMsg, Penalties, PipeMsg, SessionMsg, StageAccept, StageOpen,
    StepInput, TensorEntry, TokenLogprobs, Vocabulary, MAX_OPEN_FRAME, MAX_STAGE_FRAME,
};
use edge_protocol::LayerSlice;
use edge_protocol::{
    decode, encode, Capabilities, ControlCodec, ControlRequest, ControlResponse, HeldShard, PeerInfo, ShardSpec,
    SignedCapabilities, WireError, MAX_CONTROL_REQUEST, MAX_CONTROL_RESPONSE,
};
use futures::executor::block_on;
use futures::io::Cursor;
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use proptest::collection::vec;
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

/// Tracks, per thread, the largest single allocation and the peak of live bytes.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + size as isize);
        let _ = PEAK.try_with(|p| p.set(p.get().max(live.get())));
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - size as isize));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns (largest single allocation, peak extra live bytes) on this thread during it.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    LARGEST.with(|l| l.set(0));
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    let largest = LARGEST.with(|l| l.get());
    let peak = PEAK.with(|p| p.get()) - base;
    (r, largest, peak.max(0) as usize)
}

/// The documented bounds of `wire::decode`.
fn check_bounds(max: usize, largest: usize, peak: usize) {
    let single = (1 << 20usize).max(16 * max);
    assert!(largest <= single, "an allocation of {largest} bytes decoding at most {max} bytes");
    assert!(peak <= 4 * single + 32 * max, "{peak} bytes live decoding at most {max} bytes");
}

/// Decodes garbage as `T` with limit `max`: must not panic; must stay within the memory bounds.
fn decode_garbage<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    let (r, largest, peak) = measure(|| decode::<T>(bytes, max));
    check_bounds(max, largest, peak);
    r
}

/// Decoding every strict prefix of a valid encoding fails; so does one trailing byte more.
fn every_truncation_fails<T: Serialize + DeserializeOwned + std::fmt::Debug>(v: &T, max: usize) {
    let bytes = encode(v, max).unwrap();
    for n in 0..bytes.len() {
        assert!(decode_garbage::<T>(&bytes[..n], max).is_err(), "{n}-byte prefix of {v:?} decoded");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(decode::<T>(&longer, max).unwrap_err(), WireError::TrailingBytes { extra: 1 });
}

fn sample_caps() -> Capabilities {
    Capabilities {
        peer_id: "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7".into(),
        version: 1 << 40,
        agent: "edge-node/0.1.0".into(),
        adapter: "llvmpipe".into(),
        device_type: "Cpu".into(),
        backend: "wgpu".into(),
        memory_bytes: 3 << 30,
        gemv_gbps: 5.9,
        dispatch_us: 35.0,
        row_gmacs: 12.5,
        shards: vec![HeldShard { model: [3; 32], spec: ShardSpec::whole(30) }],
        load: 70_000,
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/ip6/::1/udp/9/quic-v1".into()],
    }
}

fn sample_signed() -> SignedCapabilities {
    SignedCapabilities {
        record: encode(&sample_caps(), 1 << 20).unwrap(),
        public_key: vec![8, 1, 18],
        signature: vec![0xee; 64],
    }
}

#[test]
fn truncations_fail() {
    every_truncation_fails(&ShardSpec { layer_start: 1 << 20, layer_end: u32::MAX, embed: true, head: true }, 64);
    every_truncation_fails(&sample_caps(), MAX_CAPABILITIES_RECORD);
    every_truncation_fails(&sample_signed(), 1 << 20);
    every_truncation_fails(&ControlRequest::Probe { payload: vec![5; 300], reply_bytes: 1 << 22 }, MAX_CONTROL_REQUEST);
    every_truncation_fails(&ControlRequest::Peers, MAX_CONTROL_REQUEST);
    every_truncation_fails(&ControlResponse::Capabilities(sample_signed()), MAX_CONTROL_RESPONSE);
    every_truncation_fails(
        &ControlResponse::Peers(vec![
            PeerInfo {
                peer_id: "a".into(),
                addrs: vec!["/x".into(); 3],
                capabilities: Some(sample_signed()),
                rtt_us: Some(9),
            },
            PeerInfo { peer_id: "b".into(), addrs: vec![], capabilities: None, rtt_us: None },
        ]),
        MAX_CONTROL_RESPONSE,
    );
    every_truncation_fails(&ControlResponse::Probe { payload: vec![1; 1000] }, MAX_CONTROL_RESPONSE);
    every_truncation_fails(&ControlResponse::Error("refused".into()), MAX_CONTROL_RESPONSE);
}

fn sample_job() -> JobParams {
    JobParams {
        stop: vec![2, 3],
        skip_draws: 4,
        prefill_chunk: 32,
        logit_bias: vec![(5, -100.0)],
        penalties: Penalties { presence: 0.5, frequency: -0.25 },
        history: vec![7, 7, 8],
        logprobs: Some(3),
        grammar: Some(Grammar::JsonSchema(r#"{"type": "object"}"#.into())),
        ..JobParams::new(64, 9)
    }
}

fn sample_manifest() -> Manifest {
    Manifest {
        model: [7; 32],
        me: MemberRef { stage: 1, member: 2 },
        spec: ShardSpec { layer_start: 3, layer_end: 9, embed: false, head: true },
        slice: Some(LayerSlice { kv_heads: (1, 2), ffn: (32, 96), q_heads: None }),
        metadata: vec![0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0],
        tensors: vec![TensorEntry {
            name: "blk.3.attn_q.weight".into(),
            ty: 3,
            dims: vec![576, 192],
            size: 69120,
            hash: [9; 32],
        }],
        sequences: 2,
        context: 128,
        vocab: Some(Vocabulary::from_pieces([&b"a"[..], b"<|end|>", b" b"], vec![1], vec![1])),
    }
}

#[test]
fn stage_messages_truncated_fail() {
    let max = MAX_STAGE_FRAME;
    every_truncation_fails(&StageOpen::Pipe { plan: [1; 16], from: MemberRef { stage: 2, member: 0 } }, 256);
    every_truncation_fails(&StageAccept::Accepted, MAX_OPEN_FRAME);
    every_truncation_fails(&StageAccept::Refused { reason: "no such plan".into() }, MAX_OPEN_FRAME);
    every_truncation_fails(&SessionMsg::Load(sample_manifest()), max);
    every_truncation_fails(&SessionMsg::Data { tensor: 3, offset: 1 << 40, data: vec![5; 700] }, max);
    every_truncation_fails(&SessionMsg::Start { seq: 1 << 50, prompt: vec![1, 2, 3], params: sample_job() }, max);
    let wire =
        SessionMsg::Wire { next: Some("a".into()), upstream: None, group: vec!["b".into()], batched: true, batch: 8 };
    every_truncation_fails(&wire, max);
    every_truncation_fails(&NodeMsg::Need { tensors: vec![(1, 77), (4, 0)] }, max);
    every_truncation_fails(&NodeMsg::Token { seq: 5, index: 2, token: Some(9), finish: None, logprobs: None }, max);
    let logprobs = Some(TokenLogprobs { logprob: -1.5, top: vec![(9, -1.5), (4, -2.0)] });
    every_truncation_fails(&NodeMsg::Token { seq: 5, index: 2, token: Some(9), finish: None, logprobs }, max);
    let step = PipeMsg::Step { seq: 3, job: Some(sample_job()), input: StepInput::Hidden(vec![0.5; 40]), sample: true };
    every_truncation_fails(&step, max);
    every_truncation_fails(&PipeMsg::Partial { seq: 3, data: vec![1.0; 20] }, max);
    every_truncation_fails(&PipeMsg::Run { seqs: vec![3, 4, 5] }, max);
    every_truncation_fails(&PipeMsg::Group { count: 3 }, max);
}

#[test]
fn oversized_inputs_are_refused_before_decoding() {
    let bytes = encode(&ControlRequest::Probe { payload: vec![0; 100], reply_bytes: 0 }, 1024).unwrap();
    let max = bytes.len() - 1;
    assert_eq!(decode::<ControlRequest>(&bytes, max), Err(WireError::TooLarge { len: bytes.len(), max }));
    let big = vec![0u8; MAX_CONTROL_REQUEST + 1];
    assert!(matches!(decode_garbage::<ControlRequest>(&big, MAX_CONTROL_REQUEST), Err(WireError::TooLarge { .. })));
}

/// A bincode varint u64: 253 then 8 bytes LE.
fn varint_u64(n: u64) -> Vec<u8> {
    let mut b = vec![253];
    b.extend_from_slice(&n.to_le_bytes());
    b
}

/// `prefix`, then a length claiming `n` elements, then a little data.
fn claim(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut b = prefix.to_vec();
    b.extend(varint_u64(n));
    b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    b
}

#[test]
fn absurd_length_prefixes_fail_within_bounds() {
    for n in [1u64 << 60, u64::MAX, 1 << 40, 1 << 31, 1 << 24, 1 << 16] {
        // Probe payload (Vec<u8>).
        assert!(decode_garbage::<ControlRequest>(&claim(&[2], n), MAX_CONTROL_REQUEST).is_err());
        // Peer list, a peer's address list, a peer id string.
        assert!(decode_garbage::<ControlResponse>(&claim(&[1], n), MAX_CONTROL_RESPONSE).is_err());
        assert!(decode_garbage::<ControlResponse>(&claim(&[1, 1, 1, b'p'], n), MAX_CONTROL_RESPONSE).is_err());
        assert!(decode_garbage::<ControlResponse>(&claim(&[1, 1], n), MAX_CONTROL_RESPONSE).is_err());
        // Signed record bytes, error string, probe reply.
        assert!(decode_garbage::<ControlResponse>(&claim(&[0], n), MAX_CONTROL_RESPONSE).is_err());
        assert!(decode_garbage::<ControlResponse>(&claim(&[3], n), MAX_CONTROL_RESPONSE).is_err());
        assert!(decode_garbage::<ControlResponse>(&claim(&[2], n), MAX_CONTROL_RESPONSE).is_err());
        // A record's peer id, and its shard list after valid leading fields.
        assert!(decode_garbage::<Capabilities>(&claim(&[], n), MAX_CAPABILITIES_RECORD).is_err());
        let head = [&[1, b'p', 0, 0, 0, 0, 0, 0][..], &[0; 8]].concat(); // strings, version, memory, f32s
        assert!(decode_garbage::<Capabilities>(&claim(&head, n), MAX_CAPABILITIES_RECORD).is_err());
        // Small limits keep small bounds.
        assert!(decode_garbage::<ControlRequest>(&claim(&[2], n), 64).is_err());
        assert!(decode_garbage::<ControlResponse>(&claim(&[1], n), 64).is_err());
    }
}

#[test]
fn the_codec_refuses_absurd_prefixes_too() {
    let proto = StreamProtocol::new(edge_protocol::CONTROL_PROTOCOL);
    let mut codec = ControlCodec::default();
    let (r, largest, peak) = measure(|| block_on(codec.read_request(&proto, &mut Cursor::new(claim(&[2], 1 << 60)))));
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    check_bounds(MAX_CONTROL_REQUEST, largest, peak);
    let (r, largest, peak) = measure(|| block_on(codec.read_response(&proto, &mut Cursor::new(claim(&[1], 1 << 60)))));
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    check_bounds(MAX_CONTROL_RESPONSE, largest, peak);
}

/// Proptest settings: `cases` cases; failing seeds saved next to this file (`*.regressions`).
fn config(cases: u32) -> ProptestConfig {
    let persistence = proptest::test_runner::FileFailurePersistence::WithSource("regressions");
    ProptestConfig { cases, failure_persistence: Some(Box::new(persistence)), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), max in prop_oneof![Just(64usize), Just(4096), Just(MAX_CONTROL_RESPONSE)]) {
        let _ = decode_garbage::<ControlRequest>(&bytes, max);
        let _ = decode_garbage::<ControlResponse>(&bytes, max);
        let _ = decode_garbage::<Capabilities>(&bytes, max);
        let _ = decode_garbage::<SignedCapabilities>(&bytes, max);
        let _ = decode_garbage::<PeerInfo>(&bytes, max);
        let _ = decode_garbage::<ShardSpec>(&bytes, max);
    }

    /// Random bytes behind a valid variant tag reach deeper into each decoder.
    #[test]
    fn tagged_random_bytes_never_panic(tag in 0u8..7, bytes in vec(any::<u8>(), 0..256)) {
        let input = [&[tag][..], &bytes].concat();
        let _ = decode_garbage::<ControlRequest>(&input, MAX_CONTROL_REQUEST);
        let _ = decode_garbage::<ControlResponse>(&input, MAX_CONTROL_RESPONSE);
        let _ = decode_garbage::<StageOpen>(&input, 256);
        let _ = decode_garbage::<StageAccept>(&input, MAX_OPEN_FRAME);
        let _ = decode_garbage::<SessionMsg>(&input, MAX_STAGE_FRAME);
        let _ = decode_garbage::<NodeMsg>(&input, MAX_STAGE_FRAME);
        let _ = decode_garbage::<PipeMsg>(&input, MAX_STAGE_FRAME);
    }

    /// Stage messages that decode from garbage are still checked: validation either accepts or refuses, never
    /// panics, and a decoded message re-encodes within the frame limit.
    #[test]
    fn stage_garbage_decodes_into_checked_messages(tag in 0u8..7, bytes in vec(any::<u8>(), 0..512)) {
        let input = [&[tag][..], &bytes].concat();
        if let Ok(m) = decode_garbage::<SessionMsg>(&input, MAX_STAGE_FRAME) {
            let _ = m.validate();
            prop_assert!(encode(&m, MAX_STAGE_FRAME).is_ok());
        }
        if let Ok(m) = decode_garbage::<PipeMsg>(&input, MAX_STAGE_FRAME) {
            let _ = m.validate();
        }
        if let Ok(m) = decode_garbage::<NodeMsg>(&input, MAX_STAGE_FRAME) {
            let _ = m.validate();
        }
    }

    /// Flipping bytes of valid encodings never panics, and a signed record with any byte changed never verifies.
    #[test]
    fn mutated_valid_encodings(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let (signed, peer) = really_signed();
        let bytes = encode(&ControlResponse::Capabilities(signed.clone()), MAX_CONTROL_RESPONSE).unwrap();
        let mut m = bytes.clone();
        m[pos.index(bytes.len())] ^= xor;
        if let Ok(ControlResponse::Capabilities(s)) = decode_garbage::<ControlResponse>(&m, MAX_CONTROL_RESPONSE) {
            prop_assert!(s.verify(peer).is_err());
        }
    }
}

/// A record signed by a real key, and the key's peer id.
fn really_signed() -> &'static (SignedCapabilities, libp2p::PeerId) {
    static SIGNED: std::sync::OnceLock<(SignedCapabilities, libp2p::PeerId)> = std::sync::OnceLock::new();
    SIGNED.get_or_init(|| {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = libp2p::PeerId::from_public_key(&key.public());
        let caps = Capabilities { peer_id: peer.to_base58(), ..sample_caps() };
        (SignedCapabilities::sign(&caps, &key).unwrap(), peer)
    })
}
