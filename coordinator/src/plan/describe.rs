//! A plan as a table, for people.

use std::fmt::Write;

use super::{NodeProfile, Plan};

/// A node id short enough for a table: long ids (peer ids) keep their last 12 characters.
fn short_id(id: &str) -> String {
    if id.chars().count() <= 20 {
        id.to_string()
    } else {
        let tail: String = id.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        format!("..{tail}")
    }
}

impl Plan {
    /// One line per stage member (stage, layers, node, kv heads and FFN columns of a tensor-parallel member,
    /// memory, predicted ms), the hops, and the prediction.
    pub fn describe(&self, nodes: &[NodeProfile]) -> String {
        let h = edge_node::commands::human_bytes;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<6} {:<18} {:<22} {:<9} {:<12} {:>10} {:>9}",
            "STAGE", "LAYERS", "NODE", "KV HEADS", "FFN", "MEMORY", "MS"
        );
        for (i, s) in self.stages.iter().enumerate() {
            let mut layers = format!("{}..{}", s.layer_start, s.layer_end);
            if s.embed {
                layers.push_str(" +embed");
            }
            if s.head {
                layers.push_str(" +head");
            }
            for (j, m) in s.members.iter().enumerate() {
                let id = nodes.get(m.node).map_or_else(|| format!("#{}", m.node), |n| short_id(&n.id));
                let (heads, ffn) = if s.members.len() > 1 {
                    let (h0, h1) = m.q_heads.unwrap_or(m.kv_heads);
                    let q = if m.q_heads.is_some() { "q " } else { "" };
                    (format!("{q}{h0}..{h1}"), format!("{}..{}", m.ffn.0, m.ffn.1))
                } else {
                    ("all".to_string(), "all".to_string())
                };
                let (stage, layers, ms) = if j == 0 {
                    (i.to_string(), layers.as_str(), format!("{:.3}", s.compute_us / 1e3))
                } else {
                    (String::new(), "", String::new())
                };
                let _ = writeln!(
                    out,
                    "{stage:<6} {layers:<18} {id:<22} {heads:<9} {ffn:<12} {:>10} {ms:>9}",
                    h(m.memory_bytes)
                );
            }
        }
        let p = &self.prediction;
        if !p.hop_us.is_empty() {
            let n = p.hop_us.len();
            let hops: Vec<String> =
                p.hop_us.iter().enumerate().map(|(i, us)| format!("{i}->{} {:.3}", (i + 1) % n, us / 1e3)).collect();
            let _ = writeln!(out, "hops (ms)  {}", hops.join(", "));
        }
        let _ = writeln!(
            out,
            "predicted  token latency {:.2} ms ({:.1} tok/s for one sequence); throughput {:.1} tok/s with {} \
             sequence{} (bottleneck {:.2} ms)",
            p.token_latency_us / 1e3,
            p.tokens_per_s,
            p.throughput_tokens_per_s,
            p.sequences,
            if p.sequences == 1 { "" } else { "s" },
            p.bottleneck_us / 1e3
        );
        if p.batch > 1 {
            let _ = writeln!(
                out,
                "batched    {} group{} of {} sequences in every stage step (a batch through the plan {:.2} ms, bottleneck {:.2} ms)",
                p.micro_batches,
                if p.micro_batches == 1 { "" } else { "s" },
                p.batch,
                p.batch_latency_us / 1e3,
                p.batch_bottleneck_us / 1e3
            );
        }
        out
    }
}
