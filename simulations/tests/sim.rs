//! The simulator against hand-computed cases, its invariants, determinism, churn, the measured 3-node benchmark
//! and its speed at 1,024 nodes.

use std::collections::HashMap;
use std::time::Instant;

use edge_coord::plan::{predict, PlanRequest, TpMode};
use edge_coord::ModelDescription;
use edge_sim::config::{Arrivals, Churn, Replicas, SimConfig, Workload};
use edge_sim::deploy::plan_nodes;
use edge_sim::profiles::{DeviceProfile, CPU_2CORE, ETHERNET, FIVE_G, LAVAPIPE_2CORE, PHONE, PI5, WIFI};
use edge_sim::stats::TraceEvent;
use edge_sim::{models, simulate, validate, Cluster, SimResult};

fn uncalibrated(d: &DeviceProfile) -> DeviceProfile {
    DeviceProfile { calibration: 1.0, ..d.clone() }
}

/// Arrival times of coordinator tokens per request, in order.
fn token_times(r: &SimResult) -> HashMap<u32, Vec<(u32, f64)>> {
    let mut out: HashMap<u32, Vec<(u32, f64)>> = HashMap::new();
    for e in &r.trace {
        if let TraceEvent::Token { req, index, t } = *e {
            out.entry(req).or_default().push((index, t));
        }
    }
    out
}

/// Token `k >= 1` of a single sequence comes one decode step (position `prompt + k - 1`, which reads
/// `prompt + k` cached positions) after token `k - 1`; the planner's KV term assumes a cache half full of
/// `context`, so its prediction at `context = 2 (prompt + k)` is that step.
fn check_intervals(
    model: &ModelDescription,
    cluster: &Cluster,
    req: PlanRequest,
    stages: Option<usize>,
    ring_fix: f64,
) {
    let (prompt, tokens) = (16, 24);
    let mut cfg = validate::run_config(model, cluster, &req, stages, prompt, tokens, 1);
    cfg.trace = true;
    let r = simulate(&cfg).unwrap();
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let (plan, sub) = plan_nodes(model, &cluster.node_profiles(), &all, &req, stages).unwrap();
    let times = &token_times(&r)[&0];
    assert_eq!(times.len(), tokens);
    for k in 1..tokens {
        let at = PlanRequest { context: 2 * (prompt + k), ..req };
        let expected = predict(model, &sub, &at, &plan.stages).token_latency_us - ring_fix;
        let got = times[k].1 - times[k - 1].1;
        assert!((got - expected).abs() < 0.1, "token {k}: interval {got} us, planner {expected} us");
    }
}

#[test]
fn one_node_token_interval_is_the_planner_prediction() {
    let cluster = Cluster::homogeneous(1, &uncalibrated(&PI5), ETHERNET).steady();
    let req = PlanRequest { context: 64, sequences: 1, tensor_parallel: TpMode::Off };
    check_intervals(&models::smollm2(), &cluster, req, None, 0.0);
}

#[test]
fn pipeline_token_interval_is_the_planner_prediction_with_a_token_id_on_the_ring() {
    let cluster = Cluster::homogeneous(3, &uncalibrated(&PI5), ETHERNET).steady();
    let mut model = models::smollm2();
    // A hidden state of one packet: the switch then forwards whole messages, as the planner's formula assumes.
    model.activation_bytes_per_token = 1024;
    let req = PlanRequest { context: 64, sequences: 1, tensor_parallel: TpMode::Off };
    // The planner charges the ring's last hop a hidden state; the runtime sends a 4-byte token id.
    let fix = (model.activation_bytes_per_token - 4) as f64 * 2.0 / ETHERNET.bandwidth_mbps;
    check_intervals(&model, &cluster, req, Some(3), fix);
}

#[test]
fn tensor_parallel_token_interval_is_the_planner_prediction() {
    let cluster = Cluster::homogeneous(3, &uncalibrated(&PI5), ETHERNET).steady();
    let req = PlanRequest { context: 64, sequences: 1, tensor_parallel: TpMode::Force(3) };
    check_intervals(&models::smollm2(), &cluster, req, None, 0.0);
}

/// One stage on `nodes` CPU-backend nodes (one, or a tensor-parallel group): eight sequences sent together run
/// as steps of eight rows, as the runtime's
/// stage worker does: the first request's prefill runs alone, the second step carries its first token and the
/// other seven prompts, and from then on every step holds all eight. Each token then comes one batched step after
/// the last: the planner's batched latency at that cache length (the first request is one position ahead of the
/// others, which the planner's average does not see: within 0.5%). The first request also ends a step earlier,
/// so the others' last step has seven rows. Returns the planner's prediction for the plan.
fn check_batched_steps(nodes: usize, tensor_parallel: TpMode) -> edge_coord::plan::Prediction {
    let cluster = Cluster::homogeneous(nodes, &uncalibrated(&CPU_2CORE), ETHERNET).steady();
    let model = models::smollm2();
    let (prompt, tokens) = (16, 24);
    let req = PlanRequest { context: 64, sequences: 8, tensor_parallel };
    let mut cfg = validate::run_config(&model, &cluster, &req, None, prompt, tokens, 1);
    cfg.trace = true;
    let r = simulate(&cfg).unwrap();
    let all: Vec<usize> = (0..nodes).collect();
    let (plan, sub) = plan_nodes(&model, &cluster.node_profiles(), &all, &req, None).unwrap();
    assert_eq!(plan.stages.len(), 1);
    let mut rows: Vec<(f64, u32)> = Vec::new();
    for e in &r.trace {
        if let TraceEvent::Step { start, tokens: t, .. } = *e {
            match rows.last_mut() {
                Some(last) if last.0 == start => last.1 += 1,
                _ => rows.push((start, 1)),
            }
            assert!(t == 1 || t as usize == prompt);
        }
    }
    let sizes: Vec<u32> = rows.iter().map(|r| r.1).collect();
    assert_eq!(sizes.len(), tokens + 1, "{sizes:?}");
    assert_eq!(&sizes[..2], &[1, 8]);
    assert!(sizes[2..tokens].iter().all(|&n| n == 8), "{sizes:?}");
    assert_eq!(sizes[tokens], 7);
    let times = token_times(&r);
    assert_eq!(times.len(), 8);
    for (req_id, t) in &times {
        assert_eq!(t.len(), tokens);
        let (from, to) = if *req_id == 0 { (2, tokens) } else { (1, tokens - 1) };
        for k in from..to {
            let at = PlanRequest { context: 2 * (prompt + k), ..req };
            let p = predict(&model, &sub, &at, &plan.stages);
            assert_eq!(p.batch, 8, "{p:?}");
            let got = t[k].1 - t[k - 1].1;
            let rel = (got - p.batch_latency_us).abs() / p.batch_latency_us;
            assert!(rel < 0.005, "request {req_id} token {k}: {got} us, planner {} us", p.batch_latency_us);
        }
    }
    predict(&model, &sub, &PlanRequest { context: 64, ..req }, &plan.stages)
}

#[test]
fn a_batching_node_steps_every_sequence_at_the_planner_batched_time() {
    let one = check_batched_steps(1, TpMode::Off);
    // Eight tokens per batched step: more than 2.5 times one sequence's rate on this profile.
    assert!(one.throughput_tokens_per_s > 2.5 * one.tokens_per_s, "{one:?}");
}

/// The same with the stage split over two such nodes (tensor parallel): the group batches as one node does, its
/// all-reduces carrying every row.
#[test]
fn a_batching_tensor_parallel_group_steps_every_sequence_at_the_planner_batched_time() {
    check_batched_steps(2, TpMode::Force(2));
}

fn busy_config(seed: u64) -> SimConfig {
    let workload = Workload {
        arrivals: Arrivals::Poisson { rate: 0.5 },
        prompt_tokens: 64,
        output_tokens: 48,
        length_spread: 0.5,
        sequences: Some(6),
    };
    let cluster = Cluster::homogeneous(12, &PI5, WIFI);
    let mut cfg = SimConfig::new("smollm2", models::smollm2(), cluster, workload);
    cfg.seconds = Some(600.0);
    cfg.seed = seed;
    cfg.stages = Some(4);
    cfg.churn = Some(Churn { mtbf_s: Some(1200.0), down_s: 120.0 });
    cfg.trace = true;
    cfg
}

fn arrivals(r: &SimResult) -> Vec<f64> {
    r.trace.iter().filter_map(|e| if let TraceEvent::Arrival { t, .. } = e { Some(*t) } else { None }).collect()
}

#[test]
fn same_seed_same_result_other_seed_other_arrivals() {
    let a = simulate(&busy_config(7)).unwrap();
    let b = simulate(&busy_config(7)).unwrap();
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    assert_eq!(a.trace, b.trace);
    let c = simulate(&busy_config(8)).unwrap();
    assert!(arrivals(&a).len() > 100);
    assert_ne!(arrivals(&a), arrivals(&c));
}

#[test]
fn stages_run_one_step_at_a_time_and_tokens_arrive_in_order() {
    for tp in [TpMode::Off, TpMode::Force(3)] {
        let mut cfg = busy_config(3);
        if tp != TpMode::Off {
            cfg.stages = None;
            cfg.tensor_parallel = tp;
        }
        let r = simulate(&cfg).unwrap();
        // Tensor parallel over Wi-Fi is slow (60 all-reduces per token), but it runs.
        assert!(r.tokens > 500 && r.node_failures > 0, "{} tokens, {} failures", r.tokens, r.node_failures);
        let mut steps: HashMap<(u32, u32, u32), Vec<(f64, f64)>> = HashMap::new();
        for e in &r.trace {
            if let TraceEvent::Step { replica, epoch, stage, start, end, .. } = *e {
                assert!(end >= start);
                steps.entry((replica, epoch, stage)).or_default().push((start, end));
            }
        }
        assert!(!steps.is_empty());
        for (key, mut v) in steps {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            for w in v.windows(2) {
                assert!(w[1].0 >= w[0].1, "stage {key:?} ran two steps at once: {w:?}");
            }
        }
        for (req, times) in token_times(&r) {
            for (i, &(index, t)) in times.iter().enumerate() {
                assert_eq!(index as usize, i, "request {req}: token {index} arrived as number {i}");
                assert!(i == 0 || t >= times[i - 1].1);
            }
        }
        assert_eq!(r.order_violations, 0);
    }
}

/// A closed loop of `users` with `think_s` between requests, prompts and answers of the given mean lengths.
fn closed_loop(users: usize, think_s: f64, prompt_tokens: usize, output_tokens: usize, spread: f64) -> Workload {
    Workload {
        arrivals: Arrivals::Closed { users, think_s },
        prompt_tokens,
        output_tokens,
        length_spread: spread,
        sequences: None,
    }
}

fn churn_run(device: DeviceProfile, nodes: usize, mtbf_s: f64, down_s: f64) -> SimResult {
    let workload = closed_loop(4, 2.0, 32, 32, 0.0);
    let cluster = Cluster::homogeneous(nodes, &device, ETHERNET);
    let mut cfg = SimConfig::new("smollm2", models::smollm2(), cluster, workload);
    cfg.seconds = Some(3000.0);
    cfg.churn = Some(Churn { mtbf_s: Some(mtbf_s), down_s });
    simulate(&cfg).unwrap()
}

#[test]
fn churn_replans_and_fails_requests_when_memory_runs_short() {
    // 90 MB nodes: SmolLM2 needs two of them (a stage of half the layers with the embedding or the head).
    let small = DeviceProfile { memory_bytes: 90_000_000, ..PHONE };
    let one = Cluster::homogeneous(1, &small, ETHERNET).node_profiles();
    let req = PlanRequest { context: 64, sequences: 1, tensor_parallel: TpMode::Auto };
    assert!(edge_coord::plan::plan(&models::smollm2(), &one, &req).is_err(), "one small node holds the model");
    let r = churn_run(small, 3, 150.0, 600.0);
    println!("{}", r.table());
    assert!(r.plans[0].as_ref().unwrap().nodes_used >= 2);
    assert!(r.node_failures >= 5);
    assert!(r.replans >= 1, "no re-plan");
    assert!(r.failed_replans >= 1, "every re-plan found a plan");
    assert!(r.failed >= 1, "no request failed");
    assert!(r.completed >= 1);
    assert!(r.shipped_bytes > 0);
}

#[test]
fn churn_with_room_to_spare_replans_without_failing_requests() {
    let r = churn_run(PI5, 6, 300.0, 30.0);
    println!("{}", r.table());
    assert!(r.node_failures >= 10);
    assert!(r.replans >= 1);
    assert_eq!(r.failed_replans, 0);
    assert_eq!(r.failed, 0);
    assert!(r.completed > 100);
}

#[test]
fn a_replan_ships_about_the_lost_stage_not_the_whole_layout() {
    // Finding 4: 16 phones over Wi-Fi run a 7B in 8 stages while nodes fail every 30 min on average. A re-plan
    // keeps the layout with the lost member replaced by a spare (`plan::repair`); a fresh plan shipped ~2 stages.
    let model = models::model("llama-7b-q4").unwrap();
    let workload = closed_loop(8, 5.0, 128, 128, 0.5);
    let mut cfg = SimConfig::new("llama-7b-q4", model.clone(), Cluster::homogeneous(16, &PHONE, WIFI), workload);
    cfg.seconds = Some(3600.0);
    cfg.churn = Some(Churn { mtbf_s: Some(1800.0), down_s: 600.0 });
    let r = simulate(&cfg).unwrap();
    println!("{}", r.table());
    let stages = r.plans[0].as_ref().unwrap().stages;
    let weights = model.layer_weight_bytes.iter().sum::<u64>() + model.embed_bytes + model.head_bytes;
    let stage = weights as f64 / stages as f64;
    assert!(r.replans >= 5, "{} re-plans", r.replans);
    let each = r.shipped_bytes as f64 / r.replans as f64;
    assert!(each <= 1.3 * stage, "{each:.0} bytes shipped per re-plan; a stage holds {stage:.0}");
}

#[test]
fn matches_the_measured_three_node_benchmark() {
    for row in validate::rows().unwrap() {
        println!(
            "{:<40} threads {} measured {:>5.1} simulated {:>5.1} ({:+.0}%)",
            row.name,
            row.threads,
            row.measured,
            row.simulated,
            row.error() * 100.0
        );
        assert!(row.error().abs() <= validate::BOUND, "{} ({} threads): {:?}", row.name, row.threads, row);
    }
}

#[test]
fn lavapipe_prefill_matches_the_measured_rate() {
    // README "Performance": a 128-token prompt prefills at 26.2 tok/s on one process.
    let cluster = Cluster::homogeneous(1, &LAVAPIPE_2CORE, edge_sim::profiles::LOOPBACK);
    let req = PlanRequest { context: 160, sequences: 1, tensor_parallel: TpMode::Off };
    let r = validate::predict_run(&models::smollm2(), &cluster, &req, None, 128, 2, 1).unwrap();
    let rate = 128.0 / r.ttft_mean_s;
    assert!((rate / 26.2 - 1.0).abs() < validate::BOUND, "prefill {rate:.1} tok/s");
}

#[test]
fn a_1024_node_scenario_runs_quickly() {
    let workload = closed_loop(2048, 1.0, 128, 128, 0.5);
    let cluster = Cluster::mixed(1024, &[(&PI5, 1.0), (&PHONE, 1.0)], WIFI);
    let mut cfg = SimConfig::new("smollm2", models::smollm2(), cluster, workload);
    cfg.replicas = Replicas::Auto;
    cfg.seconds = Some(120.0);
    cfg.churn = Some(Churn { mtbf_s: None, down_s: 300.0 });
    let t = Instant::now();
    let r = simulate(&cfg).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("1,024 nodes, {} replicas, 120 s simulated: {secs:.2} s wall, {} events", r.replicas, r.events);
    println!("{}", r.table());
    assert!(r.replicas > 1);
    assert!(r.tokens_per_s > 1000.0);
    assert!(secs < 60.0, "{secs:.1} s");
}

#[test]
fn planner_plans_1024_distinct_nodes_within_a_second() {
    let nodes = edge_sim::bench::mixed(1024, 7);
    for model in [models::smollm2(), models::model("llama-70b-q4").unwrap()] {
        let req = PlanRequest { context: 1024, sequences: 8, tensor_parallel: TpMode::Auto };
        let (ms, plan) = edge_sim::bench::time_plan(&model, &nodes, &req, 3);
        println!("{} layers, 1,024 mixed nodes: {ms:.1} ms, plan {plan:?}", model.n_layers);
        assert!(plan.is_some());
        assert!(ms < edge_sim::bench::TARGET_MS, "{ms:.0} ms");
    }
}

/// Simulator finding 2's 5G case: Qwen2.5-0.5B on 64 phones over 5G (11 ms one-way plus jitter), 64 users. A
/// hop's latency overlaps with other sequences' steps, so it adds to a token's time and not to a stage's busy
/// time: the planner chooses a pipeline (it kept the model on one phone when it counted latency as busy time),
/// and with short prompts (the planner models decode only) the simulation delivers what it predicts.
#[test]
fn on_5g_the_planner_pipelines_a_small_model_for_many_users() {
    let model = models::model("qwen2.5-0.5b").unwrap();
    let run = |stages: Option<usize>, prompt_tokens: usize| {
        let users = closed_loop(64, 0.0, prompt_tokens, 128, 0.5);
        let mut cfg = SimConfig::new("qwen", model.clone(), Cluster::homogeneous(64, &PHONE, FIVE_G), users);
        cfg.stages = stages;
        cfg.seconds = Some(60.0);
        cfg.warmup_s = 20.0;
        let r = simulate(&cfg).unwrap();
        let p = r.plans[0].clone().unwrap();
        let (predicted, got) = (p.predicted_throughput, r.tokens_per_s);
        println!(
            "{stages:?}, prompts of {prompt_tokens}: {} stages, predicted {predicted:.1} tok/s, simulated {got:.1}",
            p.stages
        );
        (p.stages, predicted, got)
    };
    let (stages, _, got) = run(None, 128);
    let (_, _, one) = run(Some(1), 128);
    assert!(stages > 1, "{stages} stages");
    assert!(got > 2.0 * one, "{got:.1} against one phone's {one:.1} tok/s");
    let (stages, predicted, got) = run(None, 4);
    assert!(stages > 1, "{stages} stages");
    assert!((got / predicted - 1.0).abs() < 0.1, "simulated {got:.1} against predicted {predicted:.1} tok/s");
}

/// Simulator finding 1: one plan stops scaling at a handful of nodes, replicas use the rest. 16 Raspberry Pi 5s
/// serving Qwen2.5-0.5B to 16 users: the simulation runs the replicas the planner's `plan_replicas` chooses
/// (the code `edge-coord plan --replicas auto` runs), and they deliver more than one plan on the same nodes.
#[test]
fn sixteen_pis_run_the_planners_replicas_and_beat_one_plan() {
    let model = models::model("qwen2.5-0.5b").unwrap();
    let users = closed_loop(16, 0.0, 16, 128, 0.5);
    let cluster = Cluster::homogeneous(16, &PI5, ETHERNET);
    let run = |replicas: Replicas| {
        let mut cfg = SimConfig::new("qwen", model.clone(), cluster.clone(), users);
        cfg.replicas = replicas;
        cfg.seconds = Some(120.0);
        cfg.warmup_s = 30.0;
        let r = simulate(&cfg).unwrap();
        println!("{replicas}: {} replicas, {:.1} tok/s", r.replicas, r.tokens_per_s);
        r
    };
    let auto = run(Replicas::Auto);
    let one = run(Replicas::Fixed(1));
    let req = PlanRequest { context: users.context(), sequences: 16, tensor_parallel: TpMode::Auto };
    let planned = edge_coord::plan::replicas::plan_replicas(&model, &cluster.node_profiles(), &req, Replicas::Auto);
    let planned = planned.unwrap();
    assert_eq!(auto.replicas, planned.replicas.len());
    assert!(auto.replicas > 1, "{} replicas", auto.replicas);
    assert!(
        auto.tokens_per_s > 1.5 * one.tokens_per_s,
        "{:.1} against one plan's {:.1}",
        auto.tokens_per_s,
        one.tokens_per_s
    );
    let predicted = planned.throughput_tokens_per_s;
    assert!((auto.tokens_per_s / predicted - 1.0).abs() < 0.15, "{:.1} against {predicted:.1}", auto.tokens_per_s);
}
