//! Issue #5 item 3: the simulator against the process testbed on the same small configurations. Each case runs
//! `scripts/testbed.sh` (members in network namespaces, tbf-limited links, emulated pipe latency; or 127.0.0.1
//! where namespaces are not permitted), then simulates the same cluster with `predict_run` and prints both.
//!
//! What is checked is what the simulator adds to its device profile: how a pipeline over several members (hops,
//! links, shared cores) changes the speed of one member. The ratio "3-stage pipeline / one node" from the
//! simulator must be within [`BOUND`] of the same ratio measured in the same run. The absolute tok/s is printed,
//! not asserted: it follows the device profile (measured on an idle machine) and moves with whatever else runs
//! on this shared machine (under two busy loops both measured speeds halve; their ratio does not).

use std::process::Command;

use edge_coord::plan::{PlanRequest, TpMode};
use edge_sim::cluster::Cluster;
use edge_sim::profiles::{LinkSpec, LAVAPIPE_2CORE};
use edge_sim::validate::predict_run;

/// Largest relative error between the simulated and the measured speed-up of a pipeline over one node.
const BOUND: f64 = 0.40;
const TOKENS: usize = 32;
const PROMPT_TOKENS: usize = 11;

/// Runs the testbed; returns the measured decode tok/s of the one sequence.
fn testbed(nodes: usize, stages: usize, rate: &str, latency_ms: f64) -> f64 {
    let root = env!("CARGO_MANIFEST_DIR");
    let bins = std::path::Path::new(root).join("../target/release");
    let out = Command::new("bash")
        .arg(format!("{root}/../scripts/testbed.sh"))
        .args(["-n", &nodes.to_string(), "--rate", rate, "--latency-ms", &latency_ms.to_string()])
        .args(["--backend", "wgpu"]) // the simulator's device profile is lavapipe's
        .args(["--", "--stages", &stages.to_string(), "-n", &TOKENS.to_string(), "--json", "--tensor-parallel", "off"])
        .env("EDGE_BIN", &bins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let o = &r["outcomes"][0];
    let n = o["tokens"].as_array().unwrap().len() as f64 - 1.0;
    let secs = o["decode"]["secs"].as_f64().unwrap() + o["decode"]["nanos"].as_f64().unwrap() / 1e9;
    n / secs
}

#[test]
fn the_simulator_predicts_the_testbed() {
    let model = edge_sim::models::smollm2();
    let mut runs = Vec::new();
    for (nodes, stages, rate, rate_mbps, latency_ms) in [(1, 1, "100mbit", 12.5, 1.0), (3, 3, "100mbit", 12.5, 1.0)] {
        let measured = testbed(nodes, stages, rate, latency_ms);
        // The testbed's links: tbf at `rate` both ways, the emulated latency on every pipe message plus what the
        // namespaces' veths and the stack add (about as much as loopback).
        let link = LinkSpec {
            name: "testbed",
            latency_us: 150.0 + latency_ms * 1e3 / 2.0,
            jitter_us: 0.0,
            bandwidth_mbps: rate_mbps,
            loss: 0.0,
            shared_by: None,
        };
        let cluster = Cluster::homogeneous(nodes, &LAVAPIPE_2CORE, link).on_one_host(2.0).with_threads(2);
        let req = PlanRequest { context: PROMPT_TOKENS + TOKENS, sequences: 1, tensor_parallel: TpMode::Off };
        let sim = predict_run(&model, &cluster, &req, Some(stages), PROMPT_TOKENS, TOKENS, 1).unwrap();
        let simulated = sim.decode_tps_per_sequence;
        let err = simulated / measured - 1.0;
        println!(
            "{nodes} node(s), {stages} stage(s), {rate}, +{latency_ms} ms: measured {measured:.1} tok/s, \
             simulated {simulated:.1} tok/s, error {:+.0}%",
            err * 100.0
        );
        runs.push((measured, simulated));
    }
    let (measured, simulated) = (runs[1].0 / runs[0].0, runs[1].1 / runs[0].1);
    let err = simulated / measured - 1.0;
    println!(
        "3-stage pipeline / one node: measured {measured:.2}, simulated {simulated:.2}, error {:+.0}%",
        err * 100.0
    );
    assert!(err.abs() <= BOUND, "simulator off by {:.0}% (bound {:.0}%)", err * 100.0, BOUND * 100.0);
}
