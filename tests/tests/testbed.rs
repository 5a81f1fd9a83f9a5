//! `scripts/testbed.sh` end to end: two members in their own network namespaces (bridge, mDNS, tbf, emulated pipe
//! latency) on the CPU backend generate one CPU shard's tokens through a 2-stage pipeline, and nothing the
//! script created is left behind. Where `ip netns` is not permitted the script falls back to 127.0.0.1, which this test accepts.

use std::process::Command;

use edge_tests::bin;

#[test]
fn the_testbed_runs_a_shaped_cluster_and_cleans_up() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bins = bin("edge-node").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(format!("{root}/../scripts/testbed.sh"))
        .args(["-n", "2", "--rate", "100mbit", "--latency-ms", "1", "--profiles", "fast,slow", "--backend", "cpu"])
        .args(["--", "--stages", "2", "-n", "12", "--json"])
        .env("EDGE_BIN", &bins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let tokens: Vec<u32> =
        report["outcomes"][0]["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let m = edge_tests::smollm2();
    let mut chain = m.shards(edge_node::backend::Backend::Cpu, &[], &Default::default()).unwrap();
    let req = edge_node::generate::GenerateRequest {
        prompt: edge_tests::REFERENCE_IDS.to_vec(),
        max_tokens: 12,
        context: 64,
        sampling: Default::default(),
        stop: vec![],
    };
    let (one, _) = edge_node::generate::generate(&mut chain, &req, |_| true).unwrap();
    assert_eq!(tokens, one, "the tokens of one CPU shard");
    assert_eq!(report["plan"]["stages"].as_array().unwrap().len(), 2);
    if !stderr.contains("falling back to 127.0.0.1") {
        assert!(stderr.contains("10.252.0."), "members in the namespaces: {stderr}");
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(!list.lines().any(|l| l.starts_with("tb")), "namespaces left behind: {list}");
    }
    let ps = Command::new("pgrep").args(["-f", "edge-node serve --data-dir /tmp/tmp"]).output().unwrap();
    assert!(ps.stdout.is_empty(), "members left running: {}", String::from_utf8_lossy(&ps.stdout));
}
