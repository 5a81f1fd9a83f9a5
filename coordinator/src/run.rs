//! `edge-coord run`: plan the model over the members found, ship each its stage, run the prompt (or several
//! copies at once), stream the text, and print what was measured next to what the planner predicted.

use std::collections::HashSet;
use std::io::Write;

use anyhow::Context;
use edge_node::backend::LoadedModel;
use edge_node::commands::{ModelArgs, PreparedPrompt, PromptArgs};
use edge_node::tokenizer::{TextStream, Tokenizer};
use edge_protocol::stage::JobParams;
use libp2p::PeerId;

use crate::cluster::{self, JoinArgs};
use crate::deploy::{self, Assignment, Deployment};
use crate::job::{self, Job, Outcome};
use crate::plan::{self, NodeProfile, Plan, PlanRequest};
use crate::ModelDescription;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub join: JoinArgs,
    /// Run this many copies of the prompt at once (they share the pipeline: each stage works on a different
    /// sequence at the same time).
    #[arg(long, default_value_t = 1)]
    pub sequences: usize,
    /// Tensor parallelism: `auto` (the planner decides), `off`, or K to run the whole model as one stage split
    /// across K nodes.
    #[arg(long, default_value = "auto")]
    pub tensor_parallel: plan::TpMode,
    /// Force a pipeline of exactly this many stages (even layer split over that many members) instead of the
    /// planner's choice.
    #[arg(long)]
    pub stages: Option<usize>,
    /// Chunked prefill: most prompt tokens per step (0: whole prompts in one step).
    #[arg(long, default_value_t = crate::serve::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: u32,
    /// Print a JSON report (tokens, timings, plan) on stdout instead of the text.
    #[arg(long)]
    pub json: bool,
}

/// Everything a run measured, next to the plan.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub plan: Plan,
    pub nodes: Vec<NodeProfile>,
    pub outcomes: Vec<Outcome>,
    pub loads: Vec<LoadSummary>,
    /// Decode tokens per second of all sequences together.
    pub aggregate_tps: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct LoadSummary {
    pub stage: u32,
    pub member: u32,
    pub peer: String,
    pub backend: String,
    pub sent_bytes: u64,
    pub stage_bytes: u64,
    pub load_ms: u32,
}

impl From<&deploy::LoadReport> for LoadSummary {
    fn from(l: &deploy::LoadReport) -> LoadSummary {
        LoadSummary {
            stage: l.member.stage,
            member: l.member.member,
            peer: l.peer.to_string(),
            backend: l.backend.clone(),
            sent_bytes: l.sent_bytes,
            stage_bytes: l.stage_bytes,
            load_ms: l.load_ms,
        }
    }
}

/// Times a run re-plans after losing a node before it gives up.
pub const MAX_RECOVERIES: u32 = 3;

/// The plan's stages as deployments: a whole-layer stage has one member and no slice.
pub fn assignments(plan: &Plan, desc: &ModelDescription, nodes: &[NodeProfile]) -> anyhow::Result<Vec<Assignment>> {
    plan.stages
        .iter()
        .map(|s| {
            let members = s
                .members
                .iter()
                .map(|m| {
                    let peer: PeerId = nodes[m.node].id.parse().context("node id is not a peer id")?;
                    Ok((peer, m.slice(desc)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Assignment { spec: s.spec(), members })
        })
        .collect()
}

/// A pipeline of `k` stages over the first `k` nodes, layers split as evenly as possible (for tests and
/// benchmarks that need a given shape), with the planner's prediction for it.
pub fn even_pipeline(
    desc: &ModelDescription,
    nodes: &[NodeProfile],
    req: &PlanRequest,
    k: usize,
) -> anyhow::Result<Plan> {
    let n = desc.n_layers;
    anyhow::ensure!(
        k >= 1 && k <= nodes.len() && k <= n,
        "--stages {k}: there are {} nodes and {n} layers",
        nodes.len()
    );
    let cuts: Vec<u32> = (1..k).map(|i| (i * n / k) as u32).collect();
    let cost = plan::cost::CostModel::new(desc, req);
    let specs = edge_protocol::ShardSpec::split(n as u32, &cuts);
    for (i, spec) in specs.iter().enumerate() {
        let (a, b) = (spec.layer_start as usize, spec.layer_end as usize);
        let need = cost.stage_memory(a, b, spec.embed, spec.head);
        let have = plan::cost::usable_memory(nodes[i].memory_bytes);
        anyhow::ensure!(
            need <= have,
            "--stages {k}: stage {i} needs {need} bytes, node {} can use {have}",
            nodes[i].id
        );
    }
    let stages: Vec<plan::Stage> = specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| plan::Stage {
            layer_start: spec.layer_start,
            layer_end: spec.layer_end,
            embed: spec.embed,
            head: spec.head,
            members: vec![plan::StageMember {
                node: i,
                kv_heads: (0, desc.n_kv_heads as u32),
                ffn: (0, desc.ffn_dim as u32),
                q_heads: None,
                memory_bytes: cost.stage_memory(
                    spec.layer_start as usize,
                    spec.layer_end as usize,
                    spec.embed,
                    spec.head,
                ),
            }],
            compute_us: 0.0,
        })
        .collect();
    let prediction = plan::predict(desc, nodes, req, &stages);
    let stages =
        stages.into_iter().zip(&prediction.stage_us).map(|(s, &us)| plan::Stage { compute_us: us, ..s }).collect();
    Ok(Plan { stages, prediction })
}

/// What to put on the cluster: the model, the planner's request, and an optional forced pipeline depth.
pub struct Target<'a> {
    pub model: &'a LoadedModel,
    pub facts: &'a deploy::ModelFacts,
    pub desc: &'a ModelDescription,
    pub req: &'a PlanRequest,
    /// `--stages K`: an even K-stage pipeline (fewer when recovering with fewer nodes).
    pub stages: Option<usize>,
    /// After a loss: the plan that ran (over its nodes), whose layout is kept with the lost members replaced
    /// when that predicts nearly as well as a fresh plan ([`plan::repair`]).
    pub previous: Option<(&'a Plan, &'a [NodeProfile])>,
}

/// A plan deployed on the cluster.
pub struct Planned {
    pub plan: Plan,
    /// The nodes the plan indexes (`plan.stages[..].members[..].node`).
    pub nodes: Vec<NodeProfile>,
    /// The members they come from (capabilities, links).
    pub members: Vec<cluster::Member>,
    pub deployment: Deployment,
}

/// Why [`plan_and_deploy`] failed.
#[derive(Debug)]
pub enum PlanFailure {
    /// No plan fits the members (or none answered): waiting will not help unless nodes join.
    NoPlan(anyhow::Error),
    /// A plan was made but shipping or loading it failed (a node went away meanwhile, or was busy).
    Deploy(anyhow::Error),
}

impl PlanFailure {
    /// The error, whichever kind of failure it is.
    pub fn error(self) -> anyhow::Error {
        match self {
            PlanFailure::NoPlan(e) | PlanFailure::Deploy(e) => e,
        }
    }
}

/// Discovers the members alive now (as `discovery` says, links measured), leaves out `excluded` peer ids, plans
/// (or builds the forced even pipeline), prints the plan on stderr and deploys it. `recovering`: a forced pipeline may
/// shrink to the nodes left.
pub async fn plan_and_deploy(
    client: &edge_node::net::Client,
    discovery: &cluster::Discovery,
    target: &Target<'_>,
    excluded: &HashSet<String>,
    recovering: bool,
    progress: &indicatif::MultiProgress,
) -> Result<Planned, PlanFailure> {
    let Target { desc, req, stages, .. } = *target;
    let (members, nodes) = discover(client, discovery, excluded).await?;
    let planned = match stages {
        Some(k) if recovering => even_pipeline(desc, &nodes, req, k.min(nodes.len())),
        Some(k) => even_pipeline(desc, &nodes, req, k),
        None => plan::plan(desc, &nodes, req).map_err(anyhow::Error::from),
    };
    let plan = planned.map_err(PlanFailure::NoPlan)?;
    let (plan, kept) = plan::repair::keep_or_fresh(desc, &nodes, req, plan, target.previous);
    if kept {
        eprintln!(
            "keeping the plan's layout with the lost node(s) replaced (within {:.0}% of a new plan's throughput; \
             the other members need nothing shipped)",
            (1.0 - plan::repair::KEEP_LAYOUT) * 100.0
        );
    }
    eprintln!("{}", plan.describe(&nodes));
    deploy_plan(client, target, plan, nodes, members, progress).await
}

/// The members alive now (as `discovery` says, links measured) that sent a capability record, without
/// `excluded` peer ids, with their profiles for the planner.
pub async fn discover(
    client: &edge_node::net::Client,
    discovery: &cluster::Discovery,
    excluded: &HashSet<String>,
) -> Result<(Vec<cluster::Member>, Vec<NodeProfile>), PlanFailure> {
    let members: Vec<cluster::Member> =
        cluster::members_but(client, discovery, true, excluded).await.map_err(PlanFailure::NoPlan)?;
    let (members, nodes): (Vec<cluster::Member>, Vec<NodeProfile>) =
        members.into_iter().filter_map(|m| NodeProfile::from_member(&m).map(|n| (m, n))).unzip();
    if nodes.is_empty() {
        return Err(PlanFailure::NoPlan(anyhow::anyhow!(
            "no members answered (check --peer addresses and the cluster key)"
        )));
    }
    Ok((members, nodes))
}

/// Ships `plan` (over `nodes`, from `members`) for the plan's own sequence count.
pub async fn deploy_plan(
    client: &edge_node::net::Client,
    target: &Target<'_>,
    plan: Plan,
    nodes: Vec<NodeProfile>,
    members: Vec<cluster::Member>,
    progress: &indicatif::MultiProgress,
) -> Result<Planned, PlanFailure> {
    let Target { model, facts, desc, req, .. } = *target;
    let assigned = assignments(&plan, desc, &nodes).map_err(PlanFailure::NoPlan)?;
    let sequences = (plan.prediction.sequences as u32, plan.prediction.batch as u32);
    let deployment = deploy::deploy(client, (model, facts), assigned, sequences, req.context as u32, progress)
        .await
        .map_err(PlanFailure::Deploy)?;
    Ok(Planned { plan, nodes, members, deployment })
}

pub fn main(args: &RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=64).contains(&args.sequences), "--sequences must be between 1 and 64");
    let m = args.model.open()?;
    let tok = Tokenizer::from_gguf(&m.gguf)?;
    let PreparedPrompt { ids, context, sampling, stop } = args.prompt.prepare(&tok, &m.config)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty");
    anyhow::ensure!(
        ids.len() < context,
        "the prompt is {} tokens but the context holds {context}; shorten it or raise --ctx",
        ids.len()
    );
    let capacity = context.min(ids.len() + args.prompt.tokens);
    let desc = ModelDescription::from_gguf(&m.gguf, &m.config)?;
    let facts = deploy::ModelFacts::of(&m, &tok);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(async {
        let joined = cluster::join(&args.join).await?;
        let result = async {
            let discovery = cluster::Joined::discovery(&args.join)?;
            let req =
                PlanRequest { context: capacity, sequences: args.sequences, tensor_parallel: args.tensor_parallel };
            let params = JobParams {
                sampling,
                stop,
                prefill_chunk: args.prefill_chunk,
                ..JobParams::new(capacity as u32, args.prompt.tokens as u32)
            };
            let jobs: Vec<Job> =
                (0..args.sequences).map(|_| Job { prompt: ids.clone(), params: params.clone() }).collect();
            let mut state = vec![Outcome::default(); jobs.len()];
            let mut stream = TextStream::new(&tok);
            let mut stdout = std::io::stdout().lock();
            let stream_text = !args.json && args.sequences == 1;
            if stream_text && !args.prompt.chat {
                let _ = write!(stdout, "{}", args.prompt.prompt);
            }
            let progress = indicatif::MultiProgress::new();
            if args.json {
                progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut excluded: HashSet<String> = HashSet::new();
            let mut attempt = 0;
            // The plan that ran before a loss, over its nodes.
            let mut previous: Option<(Plan, Vec<NodeProfile>)> = None;
            let (plan, nodes, loads) = loop {
                // Plan on the members alive now (after a loss, without the nodes that failed).
                let last = previous.as_ref().map(|(p, n)| (p, n.as_slice()));
                let target =
                    Target { model: &m, facts: &facts, desc: &desc, req: &req, stages: args.stages, previous: last };
                // After a loss, fewer members than --min-nodes are expected.
                let discovery = if attempt > 0 { discovery.relaxed() } else { discovery.clone() };
                let Planned { plan, nodes, deployment: mut d, .. } =
                    match plan_and_deploy(&joined.client, &discovery, &target, &excluded, attempt > 0, &progress).await
                    {
                        Ok(p) => p,
                        Err(PlanFailure::NoPlan(e)) if attempt > 0 => {
                            anyhow::bail!("no set of the remaining nodes can run the model: {e:#}")
                        }
                        Err(PlanFailure::NoPlan(e)) => return Err(e),
                        Err(PlanFailure::Deploy(e)) if attempt < MAX_RECOVERIES => {
                            eprintln!("warning: deploying failed ({e:#}); planning again");
                            attempt += 1;
                            tokio::time::sleep(edge_node::net::event_loop::LIVENESS_TIMEOUT).await;
                            continue;
                        }
                        Err(PlanFailure::Deploy(e)) => return Err(e),
                    };
                let loads: Vec<LoadSummary> = d.loads.iter().map(LoadSummary::from).collect();
                let r = job::run(&mut d, &jobs, &mut state, |_, token| {
                    if stream_text {
                        let _ = write!(stdout, "{}", stream.push(token));
                        let _ = stdout.flush();
                    }
                })
                .await;
                if r.is_err() {
                    // Give the other sessions a moment to report their own breakage.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                let lost = d.lost_peers();
                d.close().await;
                match r {
                    Ok(()) => break (plan, nodes, loads),
                    Err(f) if !f.retry || attempt >= MAX_RECOVERIES => return Err(f.into()),
                    Err(f) => {
                        let done: usize = state.iter().map(|o| o.tokens.len()).sum();
                        eprintln!(
                            "\nwarning: {f}; {done} token(s) kept, re-planning without {} lost node(s) and replaying",
                            lost.len()
                        );
                        excluded.extend(lost.iter().map(|p| p.to_string()));
                        previous = Some((plan, nodes));
                        attempt += 1;
                    }
                }
            };
            if stream_text {
                writeln!(stdout, "{}", stream.finish())?;
            }
            let outcomes = state;
            let generated: usize = outcomes.iter().map(|o| o.tokens.len().saturating_sub(1)).sum();
            // All sequences decode at the same time: tokens after the first over the longest decode.
            let decode_wall = outcomes.iter().map(|o| o.decode).max().unwrap_or_default();
            let aggregate_tps = generated as f64 / decode_wall.as_secs_f64().max(1e-9);
            anyhow::Ok(Report { plan, nodes, outcomes, loads, aggregate_tps })
        }
        .await;
        joined.leave().await;
        result
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if args.sequences > 1 {
            for (i, o) in report.outcomes.iter().enumerate() {
                println!("[{i}] {}", tok.decode(&o.tokens));
            }
        }
        if args.prompt.print_ids {
            for o in &report.outcomes {
                println!("ids: {:?}", o.tokens);
            }
        }
        print_report(&report);
    }
    Ok(())
}

/// Measured next to predicted, on stderr.
fn print_report(r: &Report) {
    let p = &r.plan.prediction;
    let h = edge_node::commands::human_bytes;
    for l in &r.loads {
        eprintln!(
            "stage {} member {} on ..{}: {} sent of {} ({}), loaded in {} ms",
            l.stage,
            l.member,
            &l.peer[l.peer.len().saturating_sub(8)..],
            h(l.sent_bytes),
            h(l.stage_bytes),
            l.backend,
            l.load_ms
        );
    }
    let Some(o) = r.outcomes.first() else { return };
    let tok_ms = if o.tokens.len() > 1 { o.decode.as_secs_f64() * 1e3 / (o.tokens.len() - 1) as f64 } else { 0.0 };
    eprintln!(
        "measured:  first token {:.0} ms | decode {:.1} tok/s per sequence ({tok_ms:.2} ms/token) | {:.1} tok/s for {} sequence(s)",
        o.first_token.as_secs_f64() * 1e3,
        o.decode_tps(),
        r.aggregate_tps,
        r.outcomes.len()
    );
    eprintln!(
        "predicted: decode {:.1} tok/s per sequence ({:.2} ms/token) | {:.1} tok/s for {} sequence(s)",
        p.tokens_per_s,
        p.token_latency_us / 1e3,
        p.throughput_tokens_per_s,
        p.sequences
    );
    let mut compute_ms = 0.0;
    for (s, st) in o.stages.iter().enumerate() {
        let measured = st.decode_step_us().map(|us| us / 1e3);
        compute_ms += measured.unwrap_or(0.0);
        eprintln!(
            "  stage {s}: compute {} ms/token, predicted {:.2}",
            measured.map_or("-".into(), |m| format!("{m:.2}")),
            p.stage_us.get(s).copied().unwrap_or(0.0) / 1e3
        );
    }
    let hops = if o.stages.len() > 1 { o.stages.len() } else { 0 };
    if hops > 0 && o.tokens.len() > 1 {
        let per_hop = ((tok_ms - compute_ms) / hops as f64).max(0.0);
        let predicted = p.hop_us.iter().sum::<f64>() / p.hop_us.len().max(1) as f64 / 1e3;
        eprintln!(
            "  network: {per_hop:.2} ms per hop over {hops} hops (token time minus stage compute), predicted {predicted:.2}"
        );
    }
}
