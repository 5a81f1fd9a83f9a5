//! The stage protocol against a peer that holds the cluster key but not a plan: pipes into plans the node does not
//! hold are closed at once, stage streams beyond the per-peer limit are refused, and tensor bytes that do not match
//! their hash are rejected with a clear error. Two members in this process, on 127.0.0.1.

use std::time::Duration;

use edge_node::backend::Backend;
use edge_node::net::keys;
use edge_node::serve::{start_member, MemberOptions, RunningMember};
use edge_node::stage::MAX_STREAMS_PER_PEER;
use edge_protocol::bulk::{read_msg, write_msg};
use edge_protocol::stage::{
    Manifest, MemberRef, NodeMsg, SessionMsg, StageOpen, TensorEntry, MAX_STAGE_FRAME, STAGE_PROTOCOL,
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

        // A pipe into a plan the node does not hold: closed at once.
        let mut s = open().await;
        write_msg(&mut s, &StageOpen::Pipe { plan: [7; 16], from: MemberRef { stage: 0, member: 0 } }, 256)
            .await
            .unwrap();
        assert!(closed(&mut s, Duration::from_secs(3)).await, "pipe into an unknown plan stays open");

        // Tensor bytes that do not hash to the manifest's hash are refused, with a reason.
        let mut s = open().await;
        write_msg(&mut s, &StageOpen::Session { plan: [9; 16] }, 256).await.unwrap();
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
        // the node holds each one open, waiting), and count the ones still open after a while.
        let mut streams = Vec::new();
        for _ in 0..MAX_STREAMS_PER_PEER + 8 {
            streams.push(open().await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let checks = streams.iter_mut().map(|s| closed(s, Duration::from_millis(500)));
        let open_now = futures::future::join_all(checks).await.iter().filter(|c| !**c).count();
        assert!(open_now > 0 && open_now <= MAX_STREAMS_PER_PEER, "{open_now} streams served at once");
        drop(streams);
        node.stop().await;
        peer.stop().await;
    });
    let _ = std::fs::remove_dir_all(&root);
}
