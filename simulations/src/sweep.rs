//! The sweeps behind `simulations/README.md`: each prints a table and writes a PNG into the output directory.
//!
//! - (a) `throughput_nodes.png`: aggregate tokens/s against the node count (1 to 1,024) for four device/link
//!   mixes, one plan (the runtime today) against as many replicas as pay off.
//! - (b) `pipeline_vs_tp.png`: pipeline, forced tensor parallelism and the planner's choice as the link latency
//!   grows, for one sequence (latency) and eight (throughput); (b2) a table: the planner's pick against forced
//!   pipelines on a high-latency link.
//! - (c) `planner_choices.png`: stages, tensor-parallel members and nodes used against the cluster size.
//! - (d) `churn.png` and `churn_timeline.png`: throughput, first-token time and failed requests as nodes fail
//!   more often.

use std::fmt::Write;
use std::path::Path;

use edge_coord::plan::{plan, PlanRequest, TpMode};

use crate::cluster::Cluster;
use crate::config::{Arrivals, Churn, Replicas, SimConfig, Workload};
use crate::models;
use crate::plot::{self, Axis, Chart, Legend, Series};
use crate::profiles::{DeviceProfile, LinkSpec, ETHERNET, FIVE_G, LAPTOP_IGPU, M2, PHONE, PI5, RTX4070, WIFI};
use crate::stats::fmt;
use crate::{simulate, SimError};

/// A device mix on one kind of link.
pub struct Mix {
    pub name: &'static str,
    pub devices: Vec<(&'static DeviceProfile, f64)>,
    pub link: LinkSpec,
}

impl Mix {
    pub fn cluster(&self, n: usize) -> Cluster {
        Cluster::mixed(n, &self.devices, self.link)
    }
}

/// Laptops, phones, Raspberry Pis and a Mac on one home Wi-Fi.
pub fn home_mix() -> Mix {
    Mix {
        name: "home mix, Wi-Fi",
        devices: vec![(&LAPTOP_IGPU, 1.0), (&PHONE, 2.0), (&PI5, 1.0), (&M2, 1.0)],
        link: WIFI,
    }
}

pub fn mixes() -> Vec<Mix> {
    vec![
        Mix { name: "Pi 5, Wi-Fi", devices: vec![(&PI5, 1.0)], link: WIFI },
        Mix { name: "phones, 5G", devices: vec![(&PHONE, 1.0)], link: FIVE_G },
        home_mix(),
        Mix { name: "RTX 4070, Ethernet", devices: vec![(&RTX4070, 1.0)], link: ETHERNET },
    ]
}

fn sizes(quick: bool) -> Vec<usize> {
    if quick {
        vec![1, 4, 16, 64]
    } else {
        (0..=10).map(|k| 1usize << k).collect()
    }
}

/// Closed-loop chat-like load: 128-token prompts, 128 generated tokens (both +-50%).
fn chat(users: usize, think_s: f64) -> Workload {
    Workload {
        arrivals: Arrivals::Closed { users, think_s },
        prompt_tokens: 128,
        output_tokens: 128,
        length_spread: 0.5,
        sequences: None,
    }
}

/// (a) Throughput against the node count, for a small and a large model.
pub fn throughput_vs_nodes(out: &Path, quick: bool) -> Result<String, SimError> {
    let mut t = String::new();
    let mut charts = Vec::new();
    // Simulated seconds and warm-up: a 7B prefill takes a minute on a Pi 5.
    for (model_name, seconds, warmup) in [("qwen2.5-0.5b", 120.0, 40.0), ("llama-7b-q4", 400.0, 150.0)] {
        let (seconds, warmup) = if quick { (seconds / 4.0, warmup / 4.0) } else { (seconds, warmup) };
        let model = models::model(model_name).expect("known model");
        let _ = writeln!(
            t,
            "(a) {model_name}, closed loop, one user per node (no think time), {seconds:.0} s simulated, the first \
             {warmup:.0} s not counted"
        );
        let _ = writeln!(
            t,
            "{:<20} {:>6} {:>12} {:>9} {:>14} {:>9} {:>9}",
            "MIX", "NODES", "1 PLAN TOK/S", "TTFT P50", "REPLICAS TOK/S", "TTFT P50", "REPLICAS"
        );
        let mut series = Vec::new();
        for (m, mix) in mixes().into_iter().enumerate() {
            let (mut one, mut many) = (Vec::new(), Vec::new());
            for n in sizes(quick) {
                let mut row = Vec::new();
                for replicas in [Replicas::Fixed(1), Replicas::Auto] {
                    let mut cfg = SimConfig::new(model_name, model.clone(), mix.cluster(n), chat(n, 0.0));
                    cfg.replicas = replicas;
                    cfg.seconds = Some(seconds);
                    cfg.warmup_s = warmup;
                    let r = simulate(&cfg)?;
                    row.push((r.tokens_per_s, r.ttft_p50_s, r.replicas));
                }
                let _ = writeln!(
                    t,
                    "{:<20} {n:>6} {:>12.1} {:>9} {:>14.1} {:>9} {:>9}",
                    mix.name,
                    row[0].0,
                    fmt(row[0].1, 2),
                    row[1].0,
                    fmt(row[1].1, 2),
                    row[1].2
                );
                one.push((n as f64, row[0].0));
                many.push((n as f64, row[1].0));
            }
            series.push(Series::new(format!("{}: replicas", mix.name), many).color(m));
            series.push(Series::new(format!("{}: one plan", mix.name), one).color(m).dashed());
        }
        t.push('\n');
        charts.push(Chart::new(model_name, "nodes", "tokens/s (all requests)", Axis::Log2, Axis::Log10).series(series));
    }
    plot::save(&out.join("throughput_nodes.png"), &charts, 1300, 560)?;
    Ok(t)
}

/// A link of the given latency on the Ethernet bandwidth, without randomness (or with jitter of the same mean).
fn link_with(latency_us: f64, jitter: bool) -> LinkSpec {
    LinkSpec {
        name: "swept",
        latency_us: if jitter { latency_us / 2.0 } else { latency_us },
        jitter_us: if jitter { latency_us / 2.0 } else { 0.0 },
        bandwidth_mbps: 110.0,
        loss: 0.0,
        shared_by: None,
    }
}

/// (b) Pipeline against tensor parallelism as the links get slower.
pub fn pipeline_vs_tp(out: &Path, quick: bool) -> Result<String, SimError> {
    let model_name = "llama-7b-q4";
    let model = models::model(model_name).expect("known model");
    let latencies: Vec<f64> = if quick {
        vec![100.0, 1000.0, 10_000.0]
    } else {
        vec![50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0, 20_000.0]
    };
    let modes: [(&str, TpMode, bool); 4] = [
        ("pipeline (tensor parallel off)", TpMode::Off, false),
        ("tensor parallel over 8", TpMode::Force(8), false),
        ("tensor parallel over 8, jittery link", TpMode::Force(8), true),
        ("planner's choice (auto)", TpMode::Auto, false),
    ];
    let mut t = String::new();
    let _ = writeln!(t, "(b) {model_name} on 8 Raspberry Pi 5, 110 MB/s links, 64-token prompt, 32 tokens");
    let _ = writeln!(t, "{:<38} {:>5} {:>8} {:>10} {:>10} {:>8}", "MODE", "SEQS", "LAT MS", "TOK/S", "PLANNER", "PLAN");
    let mut charts = Vec::new();
    for sequences in [1usize, 8] {
        let mut series = Vec::new();
        for (name, mode, jitter) in modes {
            let mut points = Vec::new();
            for &lat in &latencies {
                let cluster = Cluster::homogeneous(8, &PI5, link_with(lat, jitter));
                let req = PlanRequest { context: 96, sequences, tensor_parallel: mode };
                let r = crate::predict_run(&model, &cluster, &req, None, 64, 32, 1)?;
                let tps = if sequences == 1 { r.decode_tps_per_sequence } else { r.aggregate_decode_tps };
                let p = r.plans[0].as_ref().expect("a plan");
                let predicted = if sequences == 1 { p.predicted_tokens_per_s } else { p.predicted_throughput };
                let shape = if p.tp_stages > 0 {
                    format!("{}s/tp{}", p.stages, p.tp_members)
                } else {
                    format!("{}s", p.stages)
                };
                let _ = writeln!(
                    t,
                    "{name:<38} {sequences:>5} {:>8.2} {tps:>10.2} {predicted:>10.2} {shape:>8}",
                    lat / 1e3
                );
                points.push((lat / 1e3, tps));
            }
            let s = Series::new(name, points);
            series.push(if mode == TpMode::Auto { s.dashed() } else { s });
        }
        let title = if sequences == 1 { "one sequence: decode tok/s" } else { "8 sequences: total decode tok/s" };
        charts.push(
            Chart::new(title, "one-way link latency (ms)", "tokens/s", Axis::Log10, Axis::Linear)
                .series(series)
                .legend(Legend::UpperRight),
        );
    }
    plot::save(&out.join("pipeline_vs_tp.png"), &charts, 1200, 520)?;
    Ok(t)
}

/// (b2) The planner's throughput objective against forced even pipelines on a high-latency link: 64 phones on
/// 5G serving Qwen2.5-0.5B to 64 users. In the runtime a hop's latency overlaps with other sequences' compute,
/// and the planner counts it in a token's time only (it once charged it as busy time and kept the model on one
/// phone).
pub fn latency_hiding(quick: bool) -> Result<String, SimError> {
    let model_name = "qwen2.5-0.5b";
    let model = models::model(model_name).expect("known model");
    let (seconds, warmup) = if quick { (60.0, 20.0) } else { (240.0, 60.0) };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "(b2) {model_name} on 64 phones over 5G, 64 users without think time, {seconds:.0} s ({warmup:.0} s warm-up)"
    );
    let _ = writeln!(t, "{:<22} {:>7} {:>12} {:>12} {:>10}", "PLAN", "STAGES", "PLANNER THRU", "SIMULATED", "TTFT P50");
    for stages in [None, Some(2), Some(4), Some(8), Some(16)] {
        let mut cfg =
            SimConfig::new(model_name, model.clone(), Cluster::homogeneous(64, &PHONE, FIVE_G), chat(64, 0.0));
        cfg.stages = stages;
        cfg.seconds = Some(seconds);
        cfg.warmup_s = warmup;
        let r = simulate(&cfg)?;
        let p = r.plans[0].as_ref().expect("a plan");
        let name = stages.map_or("planner's choice".to_string(), |k| format!("even pipeline, {k}"));
        let _ = writeln!(
            t,
            "{name:<22} {:>7} {:>12.1} {:>12.1} {:>10}",
            p.stages,
            p.predicted_throughput,
            r.tokens_per_s,
            fmt(r.ttft_p50_s, 2)
        );
    }
    Ok(t)
}

/// (c) What the planner chooses as the cluster grows.
pub fn planner_choices(out: &Path) -> Result<String, SimError> {
    let model_name = "llama-7b-q4";
    let model = models::model(model_name).expect("known model");
    let clusters = [home_mix(), Mix { name: "Pi 5, Ethernet", devices: vec![(&PI5, 1.0)], link: ETHERNET }];
    let mut t = String::new();
    let _ = writeln!(t, "(c) {model_name}, context 512, tensor parallel auto");
    let _ = writeln!(
        t,
        "{:<16} {:>5} {:>6} {:>7} {:>10} {:>6} {:>10} {:>10}",
        "CLUSTER", "SEQS", "NODES", "STAGES", "TP MEMBERS", "USED", "PRED TOK/S", "PRED THRU"
    );
    let mut charts = Vec::new();
    for c in &clusters {
        for sequences in [1usize, 8] {
            let (mut stages, mut tp, mut used) = (Vec::new(), Vec::new(), Vec::new());
            for n in sizes(false) {
                let nodes = c.cluster(n).node_profiles();
                let req = PlanRequest { context: 512, sequences, tensor_parallel: TpMode::Auto };
                match plan(&model, &nodes, &req) {
                    Ok(p) => {
                        let s = crate::deploy::summary(&p);
                        let _ = writeln!(
                            t,
                            "{:<16} {sequences:>5} {n:>6} {:>7} {:>10} {:>6} {:>10.2} {:>10.2}",
                            c.name,
                            s.stages,
                            s.tp_members,
                            s.nodes_used,
                            s.predicted_tokens_per_s,
                            s.predicted_throughput
                        );
                        stages.push((n as f64, s.stages as f64));
                        tp.push((n as f64, s.tp_members as f64));
                        used.push((n as f64, s.nodes_used as f64));
                    }
                    Err(_) => {
                        let _ = writeln!(t, "{:<16} {sequences:>5} {n:>6}   no plan fits", c.name);
                    }
                }
            }
            let title = format!(
                "{}, {sequences} sequence{}",
                c.name,
                if sequences == 1 { " (latency)" } else { "s (throughput)" }
            );
            let series = vec![
                Series::new("nodes used", used),
                Series::new("pipeline stages", stages),
                Series::new("tensor-parallel members", tp).dashed(),
            ];
            charts.push(Chart::new(title, "nodes in the cluster", "count", Axis::Log2, Axis::Linear).series(series));
        }
    }
    plot::save_grid(&out.join("planner_choices.png"), &charts, (2, 2), 1200, 860)?;
    Ok(t)
}

/// The churn scenario: 8 phones on Wi-Fi serving a 7B model to 8 users, one plan.
pub fn churn_config(mtbf_s: Option<f64>, seconds: f64, seed: u64) -> SimConfig {
    let model = models::model("llama-7b-q4").expect("known model");
    let cluster = Cluster::homogeneous(8, &PHONE, WIFI);
    let mut cfg = SimConfig::new("llama-7b-q4", model, cluster, chat(8, 5.0));
    cfg.seconds = Some(seconds);
    cfg.seed = seed;
    cfg.churn = mtbf_s.map(|m| Churn { mtbf_s: Some(m), down_s: 600.0 });
    cfg
}

/// (d) Churn: throughput, first-token time and failures against the nodes' MTBF.
pub fn churn(out: &Path, quick: bool) -> Result<String, SimError> {
    let mtbfs: Vec<f64> =
        if quick { vec![3600.0, 600.0] } else { vec![28_800.0, 14_400.0, 7200.0, 3600.0, 1800.0, 900.0, 600.0, 300.0] };
    let seeds: Vec<u64> = if quick { vec![1] } else { vec![1, 2, 3, 4] };
    let seconds = if quick { 1200.0 } else { 3600.0 };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "(d) llama-7b-q4 on 8 phones over Wi-Fi, 8 users (5 s think), {seconds:.0} s, mean downtime 600 s, mean of {} seeds",
        seeds.len()
    );
    let _ = writeln!(
        t,
        "{:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "MTBF S", "TOK/S", "TTFT P50", "TTFT P95", "FAILED %", "REJECTED", "FAILURES", "REPLANS", "NO PLAN"
    );
    let run = |mtbf: Option<f64>| -> Result<[f64; 8], SimError> {
        let mut acc = [0.0; 8];
        for &seed in &seeds {
            let r = simulate(&churn_config(mtbf, seconds, seed))?;
            // Requests accepted and then lost; users retrying while there is no plan are rejected, not counted.
            let failed = 100.0 * r.failed as f64 / (r.completed + r.failed).max(1) as f64;
            let v = [
                r.tokens_per_s,
                r.ttft_p50_s,
                r.ttft_p95_s,
                failed,
                r.node_failures as f64,
                r.replans as f64,
                r.failed_replans as f64,
                r.rejected as f64,
            ];
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x / seeds.len() as f64;
            }
        }
        Ok(acc)
    };
    let base = run(None)?;
    let line = |t: &mut String, label: String, v: &[f64; 8]| {
        let _ = writeln!(
            t,
            "{label:>9} {:>8.2} {:>9.2} {:>9.2} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>8.1}",
            v[0], v[1], v[2], v[3], v[7], v[4], v[5], v[6]
        );
    };
    line(&mut t, "none".into(), &base);
    let (mut tps, mut p50, mut p95, mut failed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &m in &mtbfs {
        let v = run(Some(m))?;
        line(&mut t, format!("{m:.0}"), &v);
        let minutes = m / 60.0;
        tps.push((minutes, v[0]));
        p50.push((minutes, v[1]));
        p95.push((minutes, v[2]));
        failed.push((minutes, v[3]));
    }
    let span = |v: f64| vec![(mtbfs[mtbfs.len() - 1] / 60.0, v), (mtbfs[0] / 60.0, v)];
    let x = "MTBF per node (minutes)";
    let charts = [
        Chart::new("throughput", x, "tokens/s", Axis::Log10, Axis::Linear)
            .series(vec![Series::new("with churn", tps), Series::new("no churn", span(base[0])).reference()])
            .legend(Legend::LowerRight),
        Chart::new("first token and failed requests", x, "seconds / percent", Axis::Log10, Axis::Linear)
            .series(vec![
                Series::new("TTFT p50 (s)", p50),
                Series::new("TTFT p95 (s)", p95),
                Series::new("accepted requests lost (%)", failed),
                Series::new("TTFT p95, no churn", span(base[2])).color(1).reference(),
            ])
            .legend(Legend::UpperRight),
    ];
    plot::save(&out.join("churn.png"), &charts, 1200, 520)?;
    Ok(t)
}

/// One churn run's throughput over time with the failures marked.
pub fn churn_timeline(out: &Path) -> Result<String, SimError> {
    let mut cfg = churn_config(Some(1800.0), 3600.0, 1);
    cfg.bin_s = 30.0;
    let r = simulate(&cfg)?;
    timeline_png(&out.join("churn_timeline.png"), "8 phones, Wi-Fi, llama-7b-q4, MTBF 30 min per node", &r)?;
    Ok(format!(
        "(d) timeline, MTBF 1800 s, seed 1: {} failures, {} re-plans ({} found no plan), {:.1} tok/s, {} of {} \
         requests failed, {} rejected\n",
        r.node_failures,
        r.replans,
        r.failed_replans,
        r.tokens_per_s,
        r.failed,
        r.completed + r.failed,
        r.rejected
    ))
}

/// Tokens/s per bin over a run, node failures as vertical lines.
pub fn timeline_png(path: &Path, title: &str, r: &crate::SimResult) -> Result<(), SimError> {
    let bin = r.timeline_bin_s;
    let points: Vec<(f64, f64)> =
        r.timeline.iter().enumerate().map(|(i, &n)| ((i as f64 + 0.5) * bin, n as f64 / bin)).collect();
    let chart = Chart::new(title, "time (s); red lines: node failures", "tokens/s", Axis::Linear, Axis::Linear)
        .series(vec![Series::new("", points)]);
    let chart = Chart { marks: r.failure_times_s.clone(), ..chart };
    plot::save(path, &[chart], 1000, 420)
}

/// Every sweep; the tables concatenated.
pub fn all(out: &Path, quick: bool) -> Result<String, SimError> {
    let mut t = String::new();
    for part in [
        planner_choices(out)?,
        pipeline_vs_tp(out, quick)?,
        latency_hiding(quick)?,
        churn(out, quick)?,
        churn_timeline(out)?,
        throughput_vs_nodes(out, quick)?,
    ] {
        println!("{part}");
        t.push_str(&part);
        t.push('\n');
    }
    Ok(t)
}
