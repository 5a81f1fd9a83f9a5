//! `edge-coord status`: reads `/api/status` from a running `edge-coord serve` and prints it as tables (or the raw
//! JSON with `--json`).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;

use super::status::Status;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Where `edge-coord serve` listens.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The server's API key, if it has one.
    #[arg(long, env = "EDGE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the status JSON as the server sent it.
    #[arg(long)]
    pub json: bool,
}

/// GETs `/api/status` from `base`: the body, or an error saying what went wrong.
pub fn fetch(base: &str, api_key: Option<&str>) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    anyhow::ensure!(base.starts_with("http://"), "--url must start with http:// (got {base:?})");
    let url = format!("{base}/api/status");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut req = agent.get(&url);
    if let Some(k) = api_key {
        req = req.header("Authorization", format!("Bearer {}", k.trim()));
    }
    let mut resp = req.call().map_err(|e| {
        anyhow::anyhow!("nothing answers at {base} ({e}); is `edge-coord serve` running there? (see --url)")
    })?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        let hint = if status.as_u16() == 401 { " (pass the server's key with --api-key or EDGE_API_KEY)" } else { "" };
        anyhow::bail!("{url} answered {status}: {message}{hint}");
    }
    Ok(body)
}

pub fn main(args: &StatusArgs) -> anyhow::Result<()> {
    let body = fetch(&args.url, args.api_key.as_deref())?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let status: Status =
        serde_json::from_str(&body).with_context(|| format!("{} did not answer with a status", args.url))?;
    print!("{}", render(&status));
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(6)..]
}

/// The status as text: the model and totals, the nodes, the plan, the recent jobs.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let m = &s.model;
    let _ = writeln!(
        o,
        "model {} ({}, {} layers, context {}) | up {:.0} s | {} requests, {} tokens generated",
        m.id, m.arch, m.layers, m.context, s.totals.uptime_s, s.totals.requests, s.totals.completion_tokens
    );
    let _ = writeln!(o, "\nnodes");
    let _ = writeln!(
        o,
        "  {:<8} {:<32} {:<7} {:>10} {:>9} {:>8} {:>9} {:>6} {:>5} {:>8}",
        "NAME", "ADAPTER", "BACKEND", "MEMORY", "GEMV GB/s", "RTT ms", "LINK MB/s", "ALIVE", "SEQS", "TOK/S"
    );
    for n in &s.nodes {
        let _ = writeln!(
            o,
            "  {:<8} {:<32.32} {:<7} {:>10} {:>9.2} {:>8} {:>9} {:>6} {:>5} {:>8.1}",
            n.name,
            n.adapter,
            n.backend,
            edge_node::commands::human_bytes(n.memory_bytes),
            n.gemv_gbps,
            opt(n.rtt_ms, 2),
            opt(n.bandwidth_mbps, 0),
            if n.alive { "yes" } else { "NO" },
            n.active_sequences,
            n.tokens_per_s
        );
    }
    if s.replicas.len() > 1 {
        for (i, r) in s.replicas.iter().enumerate() {
            let load = format!("replica {}: {} running, {} waiting", i + 1, r.running, r.queued);
            match (&r.plan, &r.unavailable) {
                (Some(p), _) => render_plan(&mut o, &format!("{load} | plan"), p),
                (None, Some(why)) => {
                    let _ = writeln!(o, "\n{load} | unavailable: {why}");
                }
                (None, None) => {
                    let _ = writeln!(o, "\n{load} | re-planning");
                }
            }
        }
    } else {
        match &s.plan {
            None => {
                let _ = writeln!(o, "\nplan: none (the cluster cannot run the model now)");
            }
            Some(p) => render_plan(&mut o, "plan", p),
        }
    }
    let _ = writeln!(o, "\njobs (most recent first)");
    if s.jobs.is_empty() {
        let _ = writeln!(o, "  none yet");
    } else {
        let _ = writeln!(
            o,
            "  {:<34} {:<10} {:<9} {:>6} {:>10} {:>7} {:>9} {:<7} ERROR",
            "ID", "KIND", "STATE", "PROMPT", "COMPLETION", "TOK/S", "FIRST ms", "FINISH"
        );
        for j in &s.jobs {
            let _ = writeln!(
                o,
                "  {:<34} {:<10} {:<9} {:>6} {:>10} {:>7} {:>9} {:<7} {}",
                j.id,
                j.kind.as_str(),
                j.state.as_str(),
                j.prompt_tokens,
                j.completion_tokens,
                opt(j.tokens_per_s, 1),
                opt(j.first_token_ms, 0),
                j.finish_reason.as_deref().unwrap_or("-"),
                j.error.as_deref().unwrap_or("")
            );
        }
    }
    o
}

/// A plan's line and its stages.
fn render_plan(o: &mut String, label: &str, p: &super::status::PlanStatus) {
    let _ = writeln!(
        o,
        "\n{label} {} | {} stage(s) | {} sequences | predicted {:.1} tok/s",
        &p.id[..p.id.len().min(12)],
        p.stages.len(),
        p.sequences,
        p.predicted_tokens_per_s
    );
    for (i, st) in p.stages.iter().enumerate() {
        let members: Vec<String> = st
            .members
            .iter()
            .map(|m| match (m.kv_heads, m.q_heads, m.ffn) {
                (Some(_), Some(q), Some(f)) => {
                    format!("{} (q heads {}..{}, ffn {}..{})", short(&m.node), q.0, q.1, f.0, f.1)
                }
                (Some(h), None, Some(f)) => {
                    format!("{} (kv heads {}..{}, ffn {}..{})", short(&m.node), h.0, h.1, f.0, f.1)
                }
                _ => short(&m.node).to_string(),
            })
            .collect();
        let role = match (st.embed, st.head) {
            (true, true) => " [embed, head]",
            (true, false) => " [embed]",
            (false, true) => " [head]",
            _ => "",
        };
        let _ = writeln!(
            o,
            "  stage {i}: layers {}..{}{role} on {} | predicted {:.2} ms/token",
            st.layers.0,
            st.layers.1,
            members.join(", "),
            st.predicted_us / 1e3
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_renders_every_section() {
        let v = serde_json::json!({
            "model": {"id": "M", "arch": "llama", "layers": 30, "context": 512},
            "nodes": [{"id": "12D3KooWabcdef123456", "name": "123456", "adapter": "llvmpipe", "backend": "wgpu",
                       "memory_bytes": 1000000000u64, "gemv_gbps": 3.5, "rtt_ms": 0.2, "bandwidth_mbps": null,
                       "alive": true, "active_sequences": 1, "tokens_per_s": 12.5}],
            "plan": {"id": "00ff00ff00ff00ff", "stages": [{"layers": [0, 30], "embed": true, "head": true,
                     "members": [{"node": "12D3KooWabcdef123456", "kv_heads": null, "ffn": null}], "predicted_us": 2500.0}],
                     "predicted_tokens_per_s": 100.0, "sequences": 4},
            "jobs": [{"id": "cmpl-1", "kind": "completion", "state": "done", "prompt_tokens": 11, "completion_tokens": 32,
                      "tokens_per_s": 20.0, "first_token_ms": 150.0, "created": 1, "finish_reason": "length", "error": null}],
            "totals": {"requests": 1, "completion_tokens": 32, "uptime_s": 9.0}
        });
        let s: Status = serde_json::from_value(v).unwrap();
        let text = render(&s);
        for want in [
            "model M (llama, 30 layers, context 512)",
            "123456",
            "stage 0: layers 0..30 [embed, head] on 123456",
            "cmpl-1",
            "length",
            "2.50 ms/token",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn a_query_head_split_shows_its_query_heads() {
        let members = serde_json::json!([
            {"node": "12D3KooWaaaaaa111111", "kv_heads": [0, 1], "q_heads": [0, 2], "ffn": [0, 1024]},
            {"node": "12D3KooWbbbbbb222222", "kv_heads": [0, 1], "q_heads": [2, 4], "ffn": [1024, 2048]}]);
        let v = serde_json::json!({
            "model": {"id": "M", "arch": "gemma3", "layers": 18, "context": 512}, "nodes": [], "jobs": [],
            "plan": {"id": "00ff00ff00ff00ff", "stages": [{"layers": [0, 18], "embed": true, "head": true,
                     "members": members, "predicted_us": 2500.0}], "predicted_tokens_per_s": 100.0, "sequences": 1},
            "totals": {"requests": 0, "completion_tokens": 0, "uptime_s": 1.0}
        });
        let text = render(&serde_json::from_value(v).unwrap());
        for want in ["111111 (q heads 0..2, ffn 0..1024)", "222222 (q heads 2..4, ffn 1024..2048)"] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn each_replica_is_shown_with_its_load() {
        let plan = serde_json::json!({"id": "00ff00ff00ff00ff", "stages": [{"layers": [0, 30], "embed": true, "head": true,
            "members": [{"node": "12D3KooWabcdef123456", "kv_heads": null, "ffn": null}], "predicted_us": 2500.0}],
            "predicted_tokens_per_s": 100.0, "sequences": 2});
        let v = serde_json::json!({
            "model": {"id": "M", "arch": "llama", "layers": 30, "context": 512},
            "nodes": [], "plan": plan, "jobs": [],
            "replicas": [{"plan": plan, "running": 2, "queued": 1, "unavailable": null},
                         {"plan": null, "running": 0, "queued": 0, "unavailable": "no plan fits"},
                         {"plan": null, "running": 1, "queued": 0, "unavailable": null}],
            "totals": {"requests": 1, "completion_tokens": 32, "uptime_s": 9.0}
        });
        let text = render(&serde_json::from_value(v).unwrap());
        for want in [
            "replica 1: 2 running, 1 waiting | plan 00ff00ff00ff | 1 stage(s) | 2 sequences",
            "replica 2: 0 running, 0 waiting | unavailable: no plan fits",
            "replica 3: 1 running, 0 waiting | re-planning",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = fetch(&format!("http://127.0.0.1:{port}"), None).unwrap_err().to_string();
        assert!(e.contains("nothing answers at") && e.contains("edge-coord serve"), "{e}");
    }
}
