//! `edge-sim`: the cluster simulator's command line (see `simulations/README.md`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_coord::plan::TpMode;
use edge_sim::cluster::{parse_mix, Cluster};
use edge_sim::config::{Arrivals, Churn, Replicas, SimConfig, Workload};
use edge_sim::{bench, models, profiles, simulate, sweep, validate};

#[derive(Parser)]
#[command(name = "edge-sim", about = "Discrete-event simulator of edge clusters running the real planner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate one cluster under a request load and print what it measured.
    Scenario(Box<ScenarioArgs>),
    /// Run the sweeps of the findings report: tables on stdout, PNG plots in --out.
    Sweep {
        #[arg(long, default_value = "simulations/plots")]
        out: PathBuf,
        /// Fewer points and shorter runs (a smoke test).
        #[arg(long)]
        quick: bool,
    },
    /// Time the planner for 1 to 1,024 nodes (target: under 1 s for 1,024).
    BenchPlanner {
        /// Repetitions per case (the fastest counts).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Compare simulated runs with the measured 3-node benchmark of the README.
    Validate,
    /// List the device and link profiles and the models.
    Profiles,
}

#[derive(Parser)]
struct ScenarioArgs {
    #[arg(long, default_value_t = 64)]
    nodes: usize,
    /// A device profile, or a mix with weights: `pi5:3,phone:1`.
    #[arg(long, default_value = "pi5")]
    device: String,
    #[arg(long, default_value = "wifi")]
    link: String,
    /// Closed-loop users (each waits for its answer, thinks, asks again).
    #[arg(long, default_value_t = 8)]
    users: usize,
    /// Open-loop Poisson arrivals (requests per second) instead of users.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 2.0)]
    think_s: f64,
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    /// Rates, first-token times and token intervals count from this time on.
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// auto, off, or a number of nodes for one tensor-parallel stage.
    #[arg(long, default_value = "auto")]
    tensor_parallel: TpMode,
    /// Force an even pipeline of this many stages.
    #[arg(long)]
    stages: Option<usize>,
    /// Copies of the model (1: the runtime today; auto: the count predicting the most throughput).
    #[arg(long, default_value = "1")]
    replicas: Replicas,
    /// Sequence slots per replica (default: users per replica, at most 64).
    #[arg(long)]
    sequences: Option<usize>,
    /// Mean time between failures per node in seconds, or `profile` for each device's own.
    #[arg(long)]
    churn_mtbf_s: Option<String>,
    /// Mean time a failed node stays away (s).
    #[arg(long, default_value_t = 600.0)]
    churn_down_s: f64,
    /// From a failure to the coordinator acting on it (s).
    #[arg(long, default_value_t = edge_sim::config::DETECT_S)]
    detect_s: f64,
    #[arg(long, default_value = "smollm2")]
    model: String,
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Lengths vary uniformly by this fraction around the means.
    #[arg(long, default_value_t = 0.5)]
    length_spread: f64,
    /// Ship every stage at time 0 instead of starting with warm caches.
    #[arg(long)]
    cold_start: bool,
    /// Throughput over time (and failures) as a PNG.
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Scenario(a) => scenario(*a),
        Command::Sweep { out, quick } => {
            sweep::all(&out, quick)?;
            println!("plots written to {}", out.display());
            Ok(())
        }
        Command::BenchPlanner { reps } => {
            print!("{}", bench::table(&bench::run(reps)));
            Ok(())
        }
        Command::Validate => {
            print!("{}", validate::table()?);
            Ok(())
        }
        Command::Profiles => {
            profiles_table();
            Ok(())
        }
    }
}

fn scenario(a: ScenarioArgs) -> anyhow::Result<()> {
    let mix = parse_mix(&a.device).map_err(anyhow::Error::msg)?;
    let link = profiles::link(&a.link).with_context(|| {
        let names: Vec<&str> = profiles::LINKS.iter().map(|l| l.name).collect();
        format!("unknown link {:?} (one of {})", a.link, names.join(", "))
    })?;
    let model = models::model(&a.model)
        .with_context(|| format!("unknown model {:?} (one of {})", a.model, models::MODELS.join(", ")))?;
    anyhow::ensure!(a.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(a.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!((0.0..a.seconds).contains(&a.warmup_s), "--warmup-s must be at least 0 and below --seconds");
    anyhow::ensure!(a.detect_s >= 0.0, "--detect-s must not be negative");
    let arrivals = match a.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            Arrivals::Poisson { rate }
        }
        None => Arrivals::Closed { users: a.users.max(1), think_s: a.think_s.max(0.0) },
    };
    let churn = match a.churn_mtbf_s.as_deref() {
        None => None,
        Some("profile") => Some(Churn { mtbf_s: None, down_s: a.churn_down_s }),
        Some(s) => {
            let m: f64 = s.parse().with_context(|| format!("--churn-mtbf-s {s:?} is not seconds or profile"))?;
            anyhow::ensure!(m > 0.0, "--churn-mtbf-s must be positive");
            Some(Churn { mtbf_s: Some(m), down_s: a.churn_down_s })
        }
    };
    let workload = Workload {
        arrivals,
        prompt_tokens: a.prompt.max(1),
        output_tokens: a.tokens.max(1),
        length_spread: a.length_spread.clamp(0.0, 1.0),
        sequences: a.sequences,
    };
    let mut cfg = SimConfig::new(&a.model, model, Cluster::mixed(a.nodes, &mix, link), workload);
    cfg.tensor_parallel = a.tensor_parallel;
    cfg.stages = a.stages;
    cfg.replicas = a.replicas;
    cfg.churn = churn;
    cfg.seconds = Some(a.seconds);
    cfg.warmup_s = a.warmup_s;
    cfg.detect_s = a.detect_s;
    cfg.seed = a.seed;
    cfg.cold_start = a.cold_start;
    let r = simulate(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} x {} on {}, model {}, {} replica(s), tensor parallel {}, seed {}",
            a.nodes, a.device, a.link, a.model, r.replicas, a.tensor_parallel, a.seed
        );
        print!("{}\n{}", r.plans_table(), r.table());
    }
    if let Some(png) = &a.png {
        let title = format!("{} x {} on {}, {}", a.nodes, a.device, a.link, a.model);
        sweep::timeline_png(png, &title, &r)?;
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}

fn profiles_table() {
    println!(
        "{:<18} {:>9} {:>9} {:>8} {:>9} {:>10} {:>6} {:>8}  SOURCE",
        "DEVICE", "MEMORY GB", "GEMV GB/s", "DISP US", "ROW GMAC", "PREFILL GF", "CALIB", "MTBF H"
    );
    for d in profiles::DEVICES {
        println!(
            "{:<18} {:>9.1} {:>9.1} {:>8.0} {:>9.0} {:>10.0} {:>6.2} {:>8.1}  {}",
            d.name,
            d.memory_bytes as f64 / 1e9,
            d.gemv_gbps,
            d.dispatch_us,
            d.row_gmacs,
            d.prefill_gflops,
            d.calibration,
            d.mtbf_s / 3600.0,
            d.source
        );
    }
    println!("\n{:<10} {:>10} {:>10} {:>8} {:>7} {:>12}", "LINK", "LAT MS", "JITTER MS", "MB/s", "LOSS %", "SHARED BY");
    for l in profiles::LINKS {
        println!(
            "{:<10} {:>10.2} {:>10.2} {:>8.0} {:>7.2} {:>12}",
            l.name,
            l.latency_us / 1e3,
            l.jitter_us / 1e3,
            l.bandwidth_mbps,
            l.loss * 100.0,
            l.shared_by.map_or("-".to_string(), |k| format!("{k} nodes"))
        );
    }
    println!("\nmodels: {}", models::MODELS.join(", "));
}
