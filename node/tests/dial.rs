//! How members dial: from a fresh local port, never their listening one. libp2p's default binds a dial to the
//! listening port; two members with fixed ports that dial each other at the same moment (as mDNS discovery makes
//! them: one query's answers reach both) then meet in a TCP simultaneous open, both act as the dialer, the
//! handshake fails and neither connection exists (a testbed run in network namespaces lost a member that way).

use std::time::{Duration, Instant};

use edge_node::net::{self, keys, Client, NetConfig};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

fn tcp_port(a: &Multiaddr) -> Option<u16> {
    a.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

async fn member(key: libp2p::pnet::PreSharedKey) -> (Client, tokio::sync::watch::Sender<bool>) {
    let (client, event_loop) = net::new(NetConfig {
        identity: libp2p::identity::Keypair::generate_ed25519(),
        cluster_key: key,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        allow: None,
        capabilities: None,
    })
    .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(event_loop.run(stop_rx));
    (client, stop)
}

async fn listen_addr(c: &Client) -> Multiaddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = c.listen_addrs().await.unwrap().into_iter().find(|a| tcp_port(a).is_some()) {
            return a;
        }
        assert!(Instant::now() < deadline, "no listener");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The remote addresses `c` sees for its connections with `peer`, once there is one (10 s at most).
async fn connection_addrs(c: &Client, peer: &str) -> Vec<Multiaddr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peers = c.peers().await.unwrap();
        if let Some(p) = peers.iter().find(|p| p.peer_id == peer && !p.via.is_empty()) {
            return p.via.iter().map(|a| a.parse().unwrap()).collect();
        }
        assert!(Instant::now() < deadline, "{peer} never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_member_dials_from_a_fresh_port_not_its_listening_one() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let key = keys::new_cluster_key();
        let (a, _stop_a) = member(key).await;
        let (b, _stop_b) = member(key).await;
        let (addr_a, addr_b) = (listen_addr(&a).await, listen_addr(&b).await);
        a.dial(addr_b).await.unwrap();
        // b sees the connection coming from a's source port.
        let seen = connection_addrs(&b, &a.peer_id().to_string()).await;
        let listening = tcp_port(&addr_a).unwrap();
        assert!(
            seen.iter().all(|x| tcp_port(x).is_some_and(|p| p != listening)),
            "a dialed from its listening port {listening}: {seen:?}"
        );
        // And the other way round at the same moment: both end up connected.
        b.dial(addr_a).await.unwrap();
        connection_addrs(&a, &b.peer_id().to_string()).await;
    });
}
