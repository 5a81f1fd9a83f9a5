//! The stage protocol against a peer that holds the cluster key but not a plan: pipes into plans the node does not
//! hold are refused (with the reason) and closed at once, stage streams beyond the per-peer limit are refused, and
//! tensor bytes that do not match their hash are rejected with a clear error. Two members in this process, on
//! 127.0.0.1.

use std::time::Duration;

use edge_node::backend::Backend;
use edge_node::net::keys;
use edge_node::serve::{start_member, MemberOptions, RunningMember};
use edge_node::stage::open::{open_stage_stream, OpenError};
use edge_node::stage::MAX_STREAMS_PER_PEER;
use edge_protocol::bulk::{read_msg, write_msg};
use edge_protocol::stage::{
    Manifest, MemberRef, NodeMsg, SessionMsg, StageAccept, StageOpen, TensorEntry, MAX_OPEN_FRAME, MAX_STAGE_FRAME,
    STAGE_PROTOCOL,
};
use edge_protocol::ShardSpec;
use futures::AsyncReadExt;
use libp2p::StreamProtocol;

async fn member(dir: &std::path::Path, key: libp2p::pnet::PreSharedKey) -> RunningMember {
    let opts = MemberOptions::loopback(Backend::Cpu, Some(1 << 30));
    start_member(dir, key, opts).await.unwrap()
}

/// Whether the other side closed the stream within `within` (false: still open).
async fn closed(s: &mut libp2p::Stream, within: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(tokio::time::timeout(within, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[test]
fn strangers_to_a_plan_get_nothing() {
    let root = std::env::temp_dir().join(format!("edge-stage-sec-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let key = keys::new_cluster_key();
        let node = member(&root.join("node"), key).await;
        let peer = member(&root.join("peer"), key).await;
        for a in node.dial_addrs() {
            peer.client.dial(a).await.unwrap();
        }
        let target = node.client.peer_id();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !peer.client.peers().await.unwrap().iter().any(|p| p.peer_id == target.to_string()) {
            assert!(std::time::Instant::now() < deadline, "the members did not connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let control = peer.client.streams();
        let open = || {
            let mut c = control.clone();
            async move { c.open_stream(target, StreamProtocol::new(STAGE_PROTOCOL)).await.unwrap() }
        };

        // A burst of stage streams at once (as when every member of a plan wires at the same moment): libp2p
        // drops an inbound stream that arrives while the previous one waits for the node to take it; the opener
        // sees that and opens it again, so every one is taken.
        let burst = (0..24u8).map(|i| {
            let client = peer.client.clone();
            async move { open_stage_stream(&client, target, &StageOpen::Session { plan: [i; 16] }).await }
        });
        let opened = futures::future::join_all(burst).await;
        let lost: Vec<String> = opened.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
        assert!(lost.is_empty(), "streams of a burst were lost: {lost:?}");
        drop(opened);

        // A pipe into a plan the node does not hold: refused with the reason, and closed at once.
        let pipe = StageOpen::Pipe { plan: [7; 16], from: MemberRef { stage: 0, member: 0 } };
        match open_stage_stream(&peer.client, target, &pipe).await {
            Err(OpenError::Refused { reason, .. }) => assert!(reason.contains("holds no stage"), "{reason}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        let mut s = open().await;
        write_msg(&mut s, &pipe, MAX_OPEN_FRAME).await.unwrap();
        assert!(matches!(read_msg(&mut s, MAX_OPEN_FRAME).await, Ok(StageAccept::Refused { .. })));
        assert!(closed(&mut s, Duration::from_secs(3)).await, "pipe into an unknown plan stays open");

        // Tensor bytes that do not hash to the manifest's hash are refused, with a reason.
        let mut s = open_stage_stream(&peer.client, target, &StageOpen::Session { plan: [9; 16] }).await.unwrap();
        let data = vec![1u8; 4096];
        let manifest = Manifest {
            model: [0; 32],
            me: MemberRef { stage: 0, member: 0 },
            spec: ShardSpec::whole(1),
            slice: None,
            metadata: vec![],
            tensors: vec![TensorEntry {
                name: "output_norm.weight".into(),
                ty: 0,
                dims: vec![1024],
                size: data.len() as u64,
                hash: *blake3::hash(b"something else").as_bytes(),
            }],
            sequences: 1,
            context: 8,
            vocab: None,
        };
        write_msg(&mut s, &SessionMsg::Load(manifest), MAX_STAGE_FRAME).await.unwrap();
        let need: NodeMsg = read_msg(&mut s, MAX_STAGE_FRAME).await.unwrap();
        assert_eq!(need, NodeMsg::Need { tensors: vec![(0, 0)] });
        write_msg(&mut s, &SessionMsg::Data { tensor: 0, offset: 0, data }, MAX_STAGE_FRAME).await.unwrap();
        match read_msg::<_, NodeMsg>(&mut s, MAX_STAGE_FRAME).await.unwrap() {
            NodeMsg::Error { seq: None, message } => assert!(message.contains("do not match its hash"), "{message}"),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(closed(&mut s, Duration::from_secs(3)).await);

        // (The streams above release their slots as their tasks end.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Never more stage streams of one peer served at once than the limit: open more, without a header (so
        // the node holds each one open, waiting for it). Those over the limit are refused with the reason; the
        // others get no answer yet.
        let mut streams = Vec::new();
        for _ in 0..MAX_STREAMS_PER_PEER + 8 {
            streams.push(open().await);
        }
        let answers = streams.iter_mut().map(|s| async move {
            match tokio::time::timeout(Duration::from_secs(2), read_msg::<_, StageAccept>(s, MAX_OPEN_FRAME)).await {
                Ok(Ok(StageAccept::Refused { reason })) => {
                    assert!(reason.contains("too many"), "{reason}");
                    false
                }
                Ok(Ok(StageAccept::Accepted)) => panic!("a stream without a header was accepted"),
                Ok(Err(_)) => false, // dropped unread (libp2p's accept queue was full): not served either
                Err(_) => true,      // still waiting for its header: served
            }
        });
        let open_now = futures::future::join_all(answers).await.iter().filter(|served| **served).count();
        assert!(open_now > 0 && open_now <= MAX_STREAMS_PER_PEER, "{open_now} streams served at once");
        drop(streams);
        node.stop().await;
        peer.stop().await;
    });
    let _ = std::fs::remove_dir_all(&root);
}
