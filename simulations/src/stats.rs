//! What a simulation measures, and the result it reports.

use std::fmt::Write;

use serde::Serialize;

/// A log-bucketed histogram (1% buckets from 1 us): percentiles within 1%, memory independent of the count.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

const GROWTH: f64 = 1.01;

impl Histogram {
    pub fn add(&mut self, us: f64) {
        let b = if us <= 1.0 { 0 } else { (us.ln() / GROWTH.ln()).floor() as usize + 1 };
        if b >= self.buckets.len() {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += 1;
        self.count += 1;
        self.sum += us;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// NaN when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }

    /// The `q` quantile (0..=1): the middle of the bucket holding it; NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let target = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= target {
                return if b == 0 { 1.0 } else { GROWTH.powf(b as f64 - 0.5) };
            }
        }
        GROWTH.powf(self.buckets.len() as f64)
    }
}

/// The `q` quantile of `v` (nearest rank), NaN when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// A stage step or a token, recorded when [`crate::SimConfig::trace`] is set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum TraceEvent {
    /// Stage `stage` of replica `replica` (plan `epoch`) ran a step of sequence `req` over `[start, end)` (us).
    Step { replica: u32, epoch: u32, stage: u32, req: u32, tokens: u32, start: f64, end: f64 },
    /// Request `req` arrived at `t` (us).
    Arrival { req: u32, t: f64 },
    /// The coordinator received token `index` of request `req` at `t` (us).
    Token { req: u32, index: u32, t: f64 },
}

/// `v` with `decimals`, or `-` when it is not a number (nothing was measured).
pub fn fmt(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".into()
    }
}

/// The plan one replica runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    pub stages: usize,
    /// Stages split tensor-parallel, and the members of the largest.
    pub tp_stages: usize,
    pub tp_members: usize,
    pub nodes_used: usize,
    pub sequences: usize,
    pub predicted_tokens_per_s: f64,
    pub predicted_throughput: f64,
    pub token_latency_ms: f64,
}

/// What a simulation reports.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Simulated time the rates are over (s): after the warm-up.
    pub seconds: f64,
    pub nodes: usize,
    pub replicas: usize,
    /// Plans of the replicas at the start (`None`: no plan fits).
    pub plans: Vec<Option<PlanSummary>>,
    /// Tokens the coordinator received (after the warm-up).
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub requests: u64,
    pub completed: u64,
    /// Accepted, then lost (the replica found no plan after a failure).
    pub failed: u64,
    /// Refused on arrival: no replica had a plan (a user retries after at least 1 s).
    pub rejected: u64,
    /// Still queued or running at the end.
    pub unfinished: u64,
    /// Of the requests that arrived after the warm-up and got a first token (NaN: none did).
    pub ttft_mean_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p95_s: f64,
    /// Interval between consecutive tokens of a sequence at the coordinator (NaN: none measured).
    pub token_latency_mean_ms: f64,
    pub token_latency_p95_ms: f64,
    /// Mean over finished sequences of (tokens - 1) / (last token - first token), as `edge-coord run` reports.
    pub decode_tps_per_sequence: f64,
    /// All sequences' tokens after the first / (last token - the latest first token), as `edge-coord run`.
    pub aggregate_decode_tps: f64,
    pub node_failures: u64,
    pub replans: u64,
    /// Re-plans that found no plan (requests of that replica fail).
    pub failed_replans: u64,
    pub shipped_bytes: u64,
    /// Tokens received per timeline bin.
    pub timeline_bin_s: f64,
    pub timeline: Vec<u64>,
    /// When nodes failed (s).
    pub failure_times_s: Vec<f64>,
    /// Token index out of order at the coordinator (always 0).
    pub order_violations: u64,
    pub events: u64,
    #[serde(skip)]
    pub trace: Vec<TraceEvent>,
}

impl SimResult {
    /// The result as a table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "{:<34} {:>14}", "METRIC", "VALUE");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(o, "{k:<34} {v:>14}");
        };
        row("simulated time (s)", format!("{:.0}", self.seconds));
        row("nodes / replicas", format!("{} / {}", self.nodes, self.replicas));
        row("tokens/s (aggregate)", format!("{:.1}", self.tokens_per_s));
        row("tokens", self.tokens.to_string());
        row(
            "requests (done/failed/rejected)",
            format!("{} ({}/{}/{})", self.requests, self.completed, self.failed, self.rejected),
        );
        row("requests unfinished at the end", self.unfinished.to_string());
        row("time to first token mean (s)", fmt(self.ttft_mean_s, 3));
        row("time to first token p50 (s)", fmt(self.ttft_p50_s, 3));
        row("time to first token p95 (s)", fmt(self.ttft_p95_s, 3));
        row("per-token latency mean (ms)", fmt(self.token_latency_mean_ms, 2));
        row("per-token latency p95 (ms)", fmt(self.token_latency_p95_ms, 2));
        row("decode tok/s per sequence", format!("{:.2}", self.decode_tps_per_sequence));
        row("node failures", self.node_failures.to_string());
        row("re-plans (no plan fits)", format!("{} ({})", self.replans, self.failed_replans));
        row("shipped after re-plans (MB)", format!("{:.1}", self.shipped_bytes as f64 / 1e6));
        row("events", self.events.to_string());
        o
    }

    /// The replicas' plans, one line each (identical plans counted once).
    pub fn plans_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<9} {:>6} {:>9} {:>10} {:>10} {:>10} {:>12} {:>12}",
            "REPLICAS", "STAGES", "TP STAGES", "TP MEMBERS", "NODES USED", "SEQUENCES", "PRED TOK/S", "PRED THRU"
        );
        let mut groups: Vec<(Option<&PlanSummary>, usize)> = Vec::new();
        for p in &self.plans {
            match groups.iter_mut().find(|g| g.0 == p.as_ref()) {
                Some(g) => g.1 += 1,
                None => groups.push((p.as_ref(), 1)),
            }
        }
        for (p, n) in groups {
            match p {
                Some(p) => {
                    let _ = writeln!(
                        o,
                        "{n:<9} {:>6} {:>9} {:>10} {:>10} {:>10} {:>12.1} {:>12.1}",
                        p.stages,
                        p.tp_stages,
                        p.tp_members,
                        p.nodes_used,
                        p.sequences,
                        p.predicted_tokens_per_s,
                        p.predicted_throughput
                    );
                }
                None => {
                    let _ = writeln!(o, "{n:<9} no plan fits");
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_percent() {
        let mut h = Histogram::default();
        let mut v: Vec<f64> = (1..=10_000).map(|i| i as f64 * 10.0).collect();
        for &x in &v {
            h.add(x);
        }
        for q in [0.5, 0.95, 0.99] {
            let exact = quantile(&mut v, q);
            assert!((h.quantile(q) / exact - 1.0).abs() < 0.01, "q {q}: {} vs {exact}", h.quantile(q));
        }
        assert!((h.mean() - 50_005.0).abs() < 1e-6);
        assert!(Histogram::default().mean().is_nan());
        assert_eq!(fmt(f64::NAN, 2), "-");
    }
}
