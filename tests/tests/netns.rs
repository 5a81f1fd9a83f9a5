//! mDNS discovery for real: three `edge-node serve` members and a coordinator, each in its own network namespace,
//! joined by a bridge in a fourth (hub) namespace. Nothing is dialed explicitly; the coordinator must find all
//! three by multicast. Every namespace and process is removed when the test ends, also on failure. Where
//! `ip netns` is not permitted the test says so and does nothing.

use std::process::{Command, Stdio};
use std::time::Duration;

use edge_tests::{bin, spawn_member};

/// Namespaces created by this test, deleted on drop (which also removes their veth ends and the bridge).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A workspace binary. `cargo test --workspace` (the README's test command) rebuilds it; `cargo test -p

#[test]
fn mdns_discovers_members_across_namespaces() {
    let tag = std::process::id() % 100_000;
    let hub = format!("edge-hub-{tag}");
    if !Command::new("ip").args(["netns", "add", &hub]).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED mdns_discovers_members_across_namespaces: `ip netns add` is not permitted here");
        return;
    }
    let mut spaces = Namespaces(vec![hub.clone()]);
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &hub, "link", "set", "br0", "up"]);
    let members: Vec<String> = (1..=4).map(|i| format!("edge-m{i}-{tag}")).collect();
    for (i, ns) in members.iter().enumerate() {
        ip(&["netns", "add", ns]);
        spaces.0.push(ns.clone());
        let (a, b) = (format!("ea{tag}{i}"), format!("eb{tag}{i}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", ns]);
        ip(&["link", "set", &b, "netns", &hub]);
        ip(&["-n", &hub, "link", "set", &b, "master", "br0", "up"]);
        ip(&["-n", ns, "addr", "add", &format!("10.251.{}.{}/16", tag % 200, i + 1), "dev", &a]);
        ip(&["-n", ns, "link", "set", &a, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    let key = edge_node::net::keys::cluster_key_hex(&edge_node::net::keys::new_cluster_key());
    let data = std::env::temp_dir().join(format!("edge-netns-{tag}"));
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for ns in &members[..3] {
        let dir = data.join(ns);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(bin("edge-node"))
            .args(["serve", "--listen", "/ip4/0.0.0.0/tcp/0", "--backend", "cpu", "--memory", "1000000000"])
            .arg("--data-dir")
            .arg(&dir)
            .env("EDGE_CLUSTER_KEY", &key)
            .stderr(Stdio::null());
        let (proc, addrs) = spawn_member(cmd, 1, Duration::from_secs(60));
        nodes.push(proc);
        let addr = &addrs[0];
        ids.push(addr.rsplit('/').next().unwrap().to_string());
    }

    // The coordinator dials nobody: whatever it lists, it found by mDNS.
    let out = Command::new("ip")
        .args(["netns", "exec", &members[3]])
        .arg(bin("edge-coord"))
        .args(["peers", "--json", "--no-measure", "--wait", "30", "--min-nodes", &ids.len().to_string()])
        .arg("--data-dir")
        .arg(data.join("coord"))
        .env("EDGE_CLUSTER_KEY", &key)
        .output()
        .expect("run edge-coord in a namespace");
    drop(nodes);
    drop(spaces);
    let _ = std::fs::remove_dir_all(&data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<String> = listed.iter().map(|m| m["peer_id"].as_str().unwrap().to_string()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "the coordinator found these members by mDNS: {listed:#?}");
}
