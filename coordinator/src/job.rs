//! Running sequences on a [`Deployment`]: all of them are started at once (the stages then work on different
//! sequences at the same time), tokens are handed to the caller as the last stage reports them, and each stage's
//! compute time per sequence is collected for the measured-vs-predicted report.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use edge_protocol::stage::{Finish, JobParams, NodeMsg};

use crate::deploy::Deployment;

/// One sequence to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: JobParams,
}

/// One stage's work on one sequence.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTime {
    pub steps: u32,
    pub compute_us: u64,
    pub prefill_us: u64,
}

impl StageTime {
    /// Mean compute per decode step (the steps after the prefill).
    pub fn decode_step_us(&self) -> Option<f64> {
        let decode_steps = self.steps.saturating_sub(1);
        (decode_steps > 0).then(|| (self.compute_us - self.prefill_us) as f64 / decode_steps as f64)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    pub finish: Option<Finish>,
    /// From start to the first token.
    pub first_token: Duration,
    /// From the first token to the last.
    pub decode: Duration,
    /// Per stage (leader's view).
    pub stages: Vec<StageTime>,
}

impl Outcome {
    pub fn decode_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// How long the cluster may stay silent while sequences are running.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `jobs` concurrently; `on_token(job index, token)` sees every generated token as it arrives.
pub async fn run(
    d: &mut Deployment,
    jobs: Vec<Job>,
    mut on_token: impl FnMut(usize, u32),
) -> anyhow::Result<Vec<Outcome>> {
    let base: u64 = rand::random::<u64>() >> 16 << 16;
    let n_stages = d.stages.len();
    let t0 = Instant::now();
    let mut out: Vec<Outcome> = jobs
        .iter()
        .map(|_| Outcome {
            tokens: Vec::new(),
            finish: None,
            first_token: Duration::ZERO,
            decode: Duration::ZERO,
            stages: vec![StageTime::default(); n_stages],
        })
        .collect();
    let mut stats_seen: HashMap<u64, usize> = HashMap::new();
    for (i, job) in jobs.into_iter().enumerate() {
        d.start(base + i as u64, job.prompt, job.params).await?;
    }
    let n_jobs = out.len();
    let index = |seq: u64| -> anyhow::Result<usize> {
        let i = seq.wrapping_sub(base) as usize;
        if seq < base || i >= n_jobs {
            bail!("a node reported an unknown sequence {seq}");
        }
        Ok(i)
    };
    let mut started = vec![t0; out.len()];
    let mut finished_at: Option<Instant> = None;
    loop {
        let all_finished = out.iter().all(|o| o.finish.is_some());
        let all_stats = stats_seen.values().sum::<usize>() == out.len() * n_stages;
        if all_finished && (all_stats || finished_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5))) {
            break;
        }
        let wait = if all_finished { Duration::from_secs(5) } else { SILENCE_TIMEOUT };
        let event = match d.event(wait).await {
            Ok(Some(e)) => e,
            Ok(None) => bail!("the cluster closed every session"),
            Err(_) if all_finished => break, // timings are optional
            Err(e) => return Err(e),
        };
        match event {
            (_, NodeMsg::Token { seq, token, finish, .. }) => {
                let i = index(seq)?;
                let o = &mut out[i];
                let now = Instant::now();
                if o.tokens.is_empty() && token.is_some() {
                    o.first_token = now - t0;
                    started[i] = now;
                }
                if let Some(t) = token {
                    o.tokens.push(t);
                    on_token(i, t);
                }
                o.decode = now - started[i];
                if finish.is_some() {
                    o.finish = finish;
                    if out.iter().all(|o| o.finish.is_some()) {
                        finished_at = Some(now);
                    }
                }
            }
            (m, NodeMsg::SeqStats { seq, steps, compute_us, prefill_us }) => {
                let i = index(seq)?;
                if let Some(s) = out[i].stages.get_mut(m.stage as usize) {
                    *s = StageTime { steps, compute_us, prefill_us };
                    *stats_seen.entry(seq).or_default() += 1;
                }
            }
            (m, NodeMsg::Error { seq, message }) => {
                let which = seq.map_or(String::new(), |s| format!(" (sequence {})", s.wrapping_sub(base)));
                bail!("stage {} member {}{which}: {message}", m.stage, m.member)
            }
            (_, other) => tracing::debug!(?other, "ignored"),
        }
    }
    Ok(out)
}
