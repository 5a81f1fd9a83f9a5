//! `GET /metrics` in the Prometheus text format (version 0.0.4), read from the scheduler's board:
//!
//! - `edge_requests_total{outcome}`: completion requests that ended, by outcome (`done`, `failed`, `cancelled`:
//!   the client went away, `rejected`: refused on arrival with 429 or 503);
//! - `edge_prompt_tokens_total`, `edge_prompt_tokens_shared_total` (positions the `n` choices of a request copied
//!   from the first choice's prefill), `edge_generation_tokens_total`;
//! - `edge_time_to_first_token_seconds`, `edge_inter_token_latency_seconds`: histograms (arrival to first token,
//!   queueing included; the gap between a sequence's consecutive tokens);
//! - `edge_queue_depth`, `edge_running_sequences` (all replicas), `edge_plan_up` (1 while a plan runs),
//!   `edge_replicas_up` (replicas whose plan runs);
//! - per node (`node` = peer id): `edge_node_tokens_per_second` (tokens its stage processed over the last ~10 s),
//!   `edge_node_rtt_seconds` (ping round trip from the coordinator, when known), `edge_node_up`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::board::Board;
use super::status::JobState;

/// Upper bounds (s) of the time-to-first-token buckets.
pub const TTFT_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Upper bounds (s) of the inter-token buckets.
pub const ITL_BUCKETS: [f64; 12] = [0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not yet cumulative).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// What the scheduler counts for `/metrics` (the rest is read from the board when rendering).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Ended requests by outcome.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Prompt tokens of the accepted requests.
    pub prompt_tokens: u64,
    /// Prompt positions that a choice copied from another choice's prefill instead of computing them.
    pub forked_tokens: u64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            outcomes: BTreeMap::new(),
            prompt_tokens: 0,
            forked_tokens: 0,
            ttft: Histogram::new(&TTFT_BUCKETS),
            itl: Histogram::new(&ITL_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn ended(&mut self, outcome: &'static str) {
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    /// Counts a job's move into a final state (once: a job already final is not counted again).
    pub fn transition(&mut self, from: JobState, to: JobState) {
        let fin = |s: JobState| matches!(s, JobState::Done | JobState::Failed | JobState::Cancelled);
        if fin(to) && !fin(from) {
            self.ended(to.as_str());
        }
    }
}

/// A node's live figures (from the coordinator's peer view): up, round trip.
pub struct Live {
    pub id: String,
    pub alive: bool,
    pub rtt_s: Option<f64>,
}

/// The exposition text.
pub fn render(b: &Board, live: &[Live]) -> String {
    let m = &b.metrics;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, rows: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let outcomes: Vec<(String, f64)> = ["done", "failed", "cancelled", "rejected"]
        .iter()
        .map(|o| (format!("{{outcome=\"{o}\"}}"), m.outcomes.get(o).copied().unwrap_or(0) as f64))
        .collect();
    counter("edge_requests_total", "Completion requests that ended, by outcome.", "counter", &outcomes);
    let one = |v: f64| vec![(String::new(), v)];
    counter("edge_prompt_tokens_total", "Prompt tokens of accepted requests.", "counter", &one(m.prompt_tokens as f64));
    let forked = "Prompt tokens whose prefill a request's choice shared with another choice (copied, not computed).";
    counter("edge_prompt_tokens_shared_total", forked, "counter", &one(m.forked_tokens as f64));
    counter("edge_generation_tokens_total", "Tokens generated.", "counter", &one(b.completion_tokens as f64));
    counter("edge_queue_depth", "Requests waiting for a sequence slot.", "gauge", &one(b.queued() as f64));
    counter("edge_running_sequences", "Sequences running on every replica.", "gauge", &one(b.running() as f64));
    counter(
        "edge_plan_up",
        "1 while a plan runs (requests are served), else 0.",
        "gauge",
        &one(b.plan().is_some() as u8 as f64),
    );
    let replicas_up = b.replicas.iter().filter(|r| r.plan.is_some()).count();
    counter("edge_replicas_up", "Replicas of the model whose plan runs now.", "gauge", &one(replicas_up as f64));
    let label = |id: &str| format!("{{node=\"{}\"}}", id.replace(['\\', '"', '\n'], "_"));
    let rates: Vec<(String, f64)> = live.iter().map(|n| (label(&n.id), b.rate(&n.id))).collect();
    counter("edge_node_tokens_per_second", "Tokens a node's stage processed per second (last ~10 s).", "gauge", &rates);
    let rtts: Vec<(String, f64)> = live.iter().filter_map(|n| Some((label(&n.id), n.rtt_s?))).collect();
    counter("edge_node_rtt_seconds", "Ping round trip from the coordinator to a node.", "gauge", &rtts);
    let up: Vec<(String, f64)> = live.iter().map(|n| (label(&n.id), n.alive as u8 as f64)).collect();
    counter("edge_node_up", "1 while the node is in the coordinator's live view.", "gauge", &up);
    m.ttft.render("edge_time_to_first_token_seconds", "Arrival to first token, queueing included.", &mut out);
    m.itl.render("edge_inter_token_latency_seconds", "Time between a sequence's consecutive tokens.", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_with_sum_and_count() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0, f64::NAN] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("x", "help", &mut out);
        let want = "# HELP x help\n# TYPE x histogram\nx_bucket{le=\"0.1\"} 2\nx_bucket{le=\"1\"} 3\n\
                    x_bucket{le=\"+Inf\"} 4\nx_sum 3.65\nx_count 4\n";
        assert_eq!(out, want);
    }

    #[test]
    fn an_outcome_is_counted_once_when_a_job_ends() {
        let mut m = Metrics::default();
        m.transition(JobState::Queued, JobState::Running);
        m.transition(JobState::Running, JobState::Done);
        m.transition(JobState::Done, JobState::Done);
        m.transition(JobState::Running, JobState::Cancelled);
        m.transition(JobState::Failed, JobState::Cancelled);
        assert_eq!(m.outcomes.get("done"), Some(&1));
        assert_eq!(m.outcomes.get("cancelled"), Some(&1));
        assert_eq!(m.outcomes.get("running"), None);
    }
}
