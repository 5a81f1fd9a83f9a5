//! A cluster of real processes on 127.0.0.1 (explicit dials: mDNS never runs on loopback): three `edge-node serve`
//! members and the coordinator CLI. Every process is killed when its guard drops, also when a test fails.

use std::process::Command;
use std::time::{Duration, Instant};

use edge_tests::{bin, new_key, temp_dir, Node, NodeSpec, TempDir};

fn start_node(key: &str, peers: &[&str]) -> Node {
    Node::start(key, NodeSpec { peers, ..Default::default() })
}

/// A member listening on TCP and QUIC.
fn start_node_quic(key: &str) -> Node {
    Node::start(key, NodeSpec { quic: true, ..Default::default() })
}

/// A member whose `config.toml` lists `bootstrap` (besides the `--peer` flags).
fn start_node_with_config(key: &str, peers: &[&str], bootstrap: &[&str]) -> Node {
    Node::start(key, NodeSpec { peers, bootstrap, ..Default::default() })
}

/// `edge-coord peers --json` from `peer` with `key`: the members it lists after `wait` seconds. Use it where the
/// test checks that someone is *not* listed; [`coord_members`] where it waits for members to show up.
fn coord_peers(key: &str, peer: &str, wait: f64) -> Vec<serde_json::Value> {
    coord_peers_from(key, &[peer], &["--wait", &wait.to_string()])
}

/// `edge-coord peers --json --min-nodes n` from `peers`: returns once `n` members are seen (fails after 60 s).
fn coord_members(key: &str, peers: &[&str], n: usize) -> Vec<serde_json::Value> {
    coord_peers_from(key, peers, &["--wait", "60", "--min-nodes", &n.to_string()])
}

fn coord_peers_from(key: &str, peers: &[&str], extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = TempDir(temp_dir("coord"));
    let mut cmd = Command::new(bin("edge-coord"));
    cmd.args(["peers", "--json", "--no-mdns"]).args(extra);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    let out = cmd.arg("--data-dir").arg(&dir.0).env("EDGE_CLUSTER_KEY", key).output().expect("run edge-coord peers");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("peers --json prints a list")
}

fn ids(members: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = members.iter().map(|m| m["peer_id"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

#[test]
fn three_nodes_and_a_coordinator_form_a_cluster() {
    let key = new_key();
    let a = start_node(&key, &[]);
    let b = start_node(&key, &[&a.addr]);
    let c = start_node_with_config(&key, &[], &[&a.addr]); // joins through its config file's bootstrap list
                                                           // The coordinator knows only `a`; it learns `b` and `c` from a's peer list.
    let members = coord_members(&key, &[&a.addr], 3);
    let mut want = vec![a.peer_id.clone(), b.peer_id.clone(), c.peer_id.clone()];
    want.sort();
    assert_eq!(ids(&members), want, "{members:#?}");
    for m in &members {
        let caps = &m["capabilities"];
        assert_eq!(caps["peer_id"], m["peer_id"], "the signed record names its sender");
        assert_eq!(caps["backend"], "cpu");
        assert_eq!(caps["memory_bytes"], 1_000_000_000u64);
        assert!(caps["gemv_gbps"].as_f64().unwrap() > 0.0, "measured at start: {caps}");
        assert!(caps["row_gmacs"].as_f64().unwrap() > 0.0, "the cpu backend batches rows: {caps}");
        assert!(m["rtt_us"].as_u64().is_some(), "ping measured the link: {m}");
        assert!(m["bandwidth_mbps"].as_f64().unwrap() > 0.0, "probe measured the link: {m}");
    }
}

#[test]
fn too_few_members_is_a_clear_error_naming_who_was_seen() {
    let key = new_key();
    let a = start_node(&key, &[]);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nobody = format!("/ip4/127.0.0.1/tcp/{free}");
    let dir = TempDir(temp_dir("coord"));
    let out = Command::new(bin("edge-coord"))
        .args(["peers", "--json", "--no-mdns", "--no-measure", "--wait", "2", "--min-nodes", "2"])
        .args(["--peer", &a.addr, "--peer", &nobody])
        .arg("--data-dir")
        .arg(&dir.0)
        .env("EDGE_CLUSTER_KEY", &key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("for 2 member(s) (--min-nodes) and saw 1"), "{err}");
    assert!(err.contains(&a.peer_id[a.peer_id.len() - 8..]), "names the member it saw: {err}");
    assert!(err.contains(&format!("not seen: {nobody}")), "names the address it did not see: {err}");
    // Enough members: it returns as soon as they are seen, long before --wait.
    let start = Instant::now();
    assert_eq!(coord_peers_from(&key, &[&a.addr], &["--wait", "600", "--min-nodes", "1"]).len(), 1);
    assert!(start.elapsed() < Duration::from_secs(300), "waited {:?}", start.elapsed());
}

#[test]
fn a_member_without_the_cluster_key_is_refused() {
    let key = new_key();
    let a = start_node(&key, &[]);
    let stranger = start_node(&new_key(), &[&a.addr]);
    // The stranger dialed `a` but never got past the pre-shared-key handshake: the cluster is `a` alone.
    assert_eq!(ids(&coord_peers(&key, &a.addr, 2.0)), vec![a.peer_id.clone()]);
    // And a coordinator with the wrong key sees nothing at all.
    assert!(coord_peers(&new_key(), &a.addr, 1.5).is_empty());
    drop(stranger);
}

#[test]
fn a_killed_node_disappears_from_the_cluster() {
    let key = new_key();
    let a = start_node(&key, &[]);
    let b = start_node(&key, &[&a.addr]);
    let c = start_node(&key, &[&a.addr]);
    assert_eq!(coord_members(&key, &[&a.addr], 3).len(), 3);
    let dead = c.peer_id.clone();
    drop(c); // SIGKILL: no goodbye
    let start = Instant::now();
    let bound = edge_node::net::event_loop::LIVENESS_TIMEOUT + Duration::from_secs(2);
    loop {
        let members = coord_peers(&key, &a.addr, 1.0);
        if !ids(&members).contains(&dead) {
            let mut want = vec![a.peer_id.clone(), b.peer_id.clone()];
            want.sort();
            assert_eq!(ids(&members), want);
            break;
        }
        assert!(start.elapsed() < bound, "the killed node was still listed after {:?}", start.elapsed());
    }
    drop((a.proc, b.proc));
}

#[test]
fn quic_is_open_only_to_members_that_proved_the_key_over_tcp() {
    let key = new_key();
    let a = start_node_quic(&key);
    let quic = a.quic.clone().unwrap();
    // A stranger over QUIC is refused when the connection is established: no identify, no control protocol.
    assert!(coord_peers(&new_key(), &quic, 1.5).is_empty());
    // A key holder cannot make first contact over QUIC either: the key is proven over TCP.
    assert!(coord_peers(&key, &quic, 1.5).is_empty());
    // Once it has, QUIC is a second path to the same member.
    // (The QUIC dial may be refused while TCP has not proven the key yet; the bootstrap list is redialed.)
    let start = Instant::now();
    loop {
        let members = coord_peers_from(&key, &[&a.addr, &quic], &["--wait", "4"]);
        assert!(ids(&members).iter().all(|id| *id == a.peer_id), "{members:#?}");
        let via: Vec<&str> =
            members.iter().flat_map(|m| m["via"].as_array().unwrap()).map(|v| v.as_str().unwrap()).collect();
        if via.iter().any(|v| v.contains("/quic-v1")) && via.iter().any(|v| v.contains("/tcp/")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never connected over both transports: {via:?}");
    }
}

#[test]
fn only_allowlisted_peers_stay_connected() {
    let key = new_key();
    let b = start_node(&key, &[]);
    // `a` admits only `b`: the coordinator holds the key but is not on the list.
    let a = Node::start(&key, NodeSpec { peers: &[&b.addr], extra: &["--allow", &b.peer_id], ..Default::default() });
    assert!(coord_peers(&key, &a.addr, 1.5).is_empty(), "a disconnects the coordinator");
    // Through `b` (no allowlist) the coordinator learns of `a` and dials it, and `a` refuses it again.
    let via_b = coord_peers(&key, &b.addr, 3.0);
    assert_eq!(ids(&via_b), vec![b.peer_id.clone()], "{via_b:#?}");
}

#[test]
fn a_restarted_member_is_redialed_and_rejoins() {
    let key = new_key();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = temp_dir("restart");
    let _cleanup = TempDir(dir.clone()); // the member's identity outlives its first process
    let a = Node::start(&key, NodeSpec { port, dir: Some(dir.clone()), ..Default::default() });
    let a_addr = a.addr.clone();
    let b = start_node(&key, &[&a_addr]);
    assert_eq!(coord_members(&key, &[&b.addr], 2).len(), 2);
    let a_id = a.peer_id.clone();
    drop(a.proc); // killed
    assert_eq!(ids(&coord_peers(&key, &b.addr, 1.0)), vec![b.peer_id.clone()]);
    // Same identity, same port: b's backoff redial finds it again.
    let a2 = Node::start(&key, NodeSpec { port, dir: Some(dir), ..Default::default() });
    assert_eq!(a2.peer_id, a_id, "the identity persists in the data dir");
    let start = Instant::now();
    loop {
        if ids(&coord_peers(&key, &b.addr, 1.0)).contains(&a_id) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(25), "b did not reconnect to the restarted member");
    }
}

#[test]
fn init_and_cluster_key_print_usable_keys() {
    let dir = TempDir(temp_dir("init"));
    let run = |args: &[&str]| {
        let out = Command::new(bin("edge-node")).arg("init").arg("--data-dir").arg(&dir.0).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let field =
        |out: &str, name: &str| out.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap();
    let first = run(&[]);
    let (id, key) = (field(&first, "peer id"), field(&first, "cluster key"));
    assert_eq!(key.len(), 64);
    let again = run(&[]);
    assert_eq!((field(&again, "peer id"), field(&again, "cluster key")), (id.clone(), key), "init keeps both");
    let out = Command::new(bin("edge-coord")).arg("cluster-key").output().unwrap();
    let new = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(new.len() == 64 && new.chars().all(|c| c.is_ascii_hexdigit()), "{new}");
    let joined = run(&["--cluster-key", &new]);
    assert_eq!(field(&joined, "cluster key"), new, "init stores a given key");
    assert_eq!(field(&joined, "peer id"), id);
    let bad = Command::new(bin("edge-node"))
        .args(["init", "--cluster-key", "xyz", "--data-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("invalid cluster key"));
}

#[test]
fn the_coordinator_can_run_a_local_member_for_a_one_machine_cluster() {
    let dir = TempDir(temp_dir("local"));
    let out = Command::new(bin("edge-coord"))
        .args(["peers", "--json", "--no-mdns", "--wait", "60", "--min-nodes", "1", "--local-node", "--backend", "cpu"])
        .arg("--data-dir")
        .arg(&dir.0)
        .env("EDGE_CLUSTER_KEY", new_key())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let members: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(members.len(), 1, "{members:#?}");
    assert_eq!(members[0]["capabilities"]["backend"], "cpu");
}
