//! The coordinator's view of the cluster: it joins as a member (same key, same stack), dials what it is given,
//! learns the rest from its peers (the control protocol's peer list) and measures each link: round-trip time from
//! ping and bandwidth from a timed echo (1 MiB up, 1 MiB down) over a dedicated bulk stream. The planner takes this view as input.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edge_node::net::{Client, PeerSnapshot};
use edge_protocol::control::{ControlRequest, ControlResponse};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

/// A cluster member as the planner sees it: the live view of the peer (capabilities, ping round-trip time)
/// and the link bandwidth measured over a bulk stream.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub peer: PeerSnapshot,
    /// Bytes moved both ways by an echo over a bulk stream / time, in MB/s.
    pub bandwidth_mbps: Option<f64>,
}

/// Bytes sent each way by the bandwidth probe.
pub const PROBE_BYTES: usize = 1 << 20;

/// How long to look for members and how many to wait for.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// How long to look (without `min_nodes`: all of it; with it: at most this long).
    pub wait: Duration,
    /// Plan only once this many members with capability records are seen (0: after `wait`, with whoever was seen).
    pub min_nodes: usize,
    /// The addresses the user gave (`--peer`), named in the error when too few members were seen.
    pub expected: Vec<Multiaddr>,
}

/// How long a re-plan looks for members when `--wait` was only an upper bound for `--min-nodes` (the `--wait`
/// default): the members are already connected, only the lost ones are gone.
pub const REPLAN_WAIT: Duration = Duration::from_secs(3);

impl Discovery {
    /// The discovery of a re-plan: no minimum (after a node was lost, fewer members are expected), and with
    /// `--min-nodes` not the whole `--wait` either (at most [`REPLAN_WAIT`]).
    pub fn relaxed(&self) -> Discovery {
        let wait = if self.min_nodes > 0 { self.wait.min(REPLAN_WAIT) } else { self.wait };
        Discovery { min_nodes: 0, wait, ..self.clone() }
    }
}

/// Discovers the cluster: every round asks each live peer for its peers and dials the ones not yet connected.
/// Returns the live peers that sent a capability record (members running shards): as soon as `min_nodes` of them
/// are seen with their round trips measured, else after `wait`; an error naming who was seen and who was not
/// when fewer than `min_nodes` were.
pub async fn discover(client: &Client, d: &Discovery) -> anyhow::Result<Vec<PeerSnapshot>> {
    let start = Instant::now();
    let deadline = start + d.wait;
    let mut dialed: HashSet<String> = HashSet::new();
    let members =
        |known: &[PeerSnapshot]| known.iter().filter(|p| p.capabilities.is_some()).cloned().collect::<Vec<_>>();
    while Instant::now() < deadline {
        let known = client.peers().await.unwrap_or_default();
        // Enough members, each with its link's round trip measured (the planner reads it).
        let now = members(&known);
        if d.min_nodes > 0 && now.len() >= d.min_nodes && now.iter().all(|p| p.rtt_us.is_some()) {
            break;
        }
        let known_ids: HashSet<&str> = known.iter().map(|p| p.peer_id.as_str()).collect();
        for p in &known {
            let Ok(peer) = p.peer_id.parse::<PeerId>() else { continue };
            let Ok(Ok(ControlResponse::Peers(list))) =
                tokio::time::timeout(Duration::from_secs(2), client.request(peer, ControlRequest::Peers)).await
            else {
                continue;
            };
            for info in list.into_iter().take(256) {
                if info.peer_id == client.peer_id().to_string() || known_ids.contains(info.peer_id.as_str()) {
                    continue;
                }
                if !dialed.insert(info.peer_id.clone()) {
                    continue;
                }
                for a in info.addrs.iter().take(4).filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    let _ = client.dial(a).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300).min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let known = client.peers().await.unwrap_or_default();
    let found = members(&known);
    if found.len() < d.min_nodes {
        anyhow::bail!("{}", too_few(d, &known, start.elapsed()));
    }
    Ok(found)
}

/// The error when fewer than `min_nodes` members were seen: who was, and who was not.
fn too_few(d: &Discovery, known: &[PeerSnapshot], waited: Duration) -> String {
    let short = |id: &str| format!("..{}", &id[id.len().saturating_sub(8)..]);
    let members: Vec<&PeerSnapshot> = known.iter().filter(|p| p.capabilities.is_some()).collect();
    let mut msg = format!(
        "waited {:.1} s for {} member(s) (--min-nodes) and saw {}",
        waited.as_secs_f64(),
        d.min_nodes,
        members.len()
    );
    if !members.is_empty() {
        let seen: Vec<String> = members
            .iter()
            .map(|p| format!("{} at {}", short(&p.peer_id), p.via.first().or(p.addrs.first()).map_or("?", |a| a)))
            .collect();
        msg += &format!(": {}", seen.join(", "));
    }
    let unready: Vec<String> = known.iter().filter(|p| p.capabilities.is_none()).map(|p| short(&p.peer_id)).collect();
    if !unready.is_empty() {
        msg += &format!(
            "; connected but no capability record yet (a coordinator, or a member still starting): {}",
            unready.join(", ")
        );
    }
    // A --peer address is seen when a member's id or one of its addresses matches it.
    let matches = |a: &Multiaddr, p: &PeerSnapshot| {
        let text = a.to_string();
        let id = a.iter().find_map(|c| match c {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id.to_string()),
            _ => None,
        });
        let base = text.split("/p2p/").next().unwrap_or(&text).to_string();
        id.as_deref() == Some(p.peer_id.as_str()) || p.addrs.iter().chain(&p.via).any(|x| x.starts_with(&base))
    };
    let missing: Vec<String> =
        d.expected.iter().filter(|a| !members.iter().any(|p| matches(a, p))).map(|a| a.to_string()).collect();
    if !missing.is_empty() {
        msg += &format!("; not seen: {}", missing.join(", "));
    }
    msg + " (check that every member runs with the same cluster key and that the addresses are reachable, or raise --wait)"
}

/// Measures the bandwidth to `peer` over a dedicated bulk stream (1 MiB each way); tried up to three times, since
/// a busy peer's network stack may drop a new stream unread.
pub async fn measure_bandwidth(client: &Client, peer: PeerId) -> Option<f64> {
    let mut last = None;
    for _ in 0..3 {
        match edge_node::net::bulk::measure_bandwidth(client, peer, PROBE_BYTES as u32).await {
            Ok(mbps) => return Some(mbps),
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        tracing::warn!(%peer, cause = %e, "bandwidth not measured");
    }
    None
}

/// The members with their links measured.
pub async fn members(client: &Client, d: &Discovery, measure: bool) -> anyhow::Result<Vec<Member>> {
    members_but(client, d, measure, &HashSet::new()).await
}

/// [`members`] without the peer ids in `excluded` (not measured either: they may be busy serving).
pub async fn members_but(
    client: &Client,
    d: &Discovery,
    measure: bool,
    excluded: &HashSet<String>,
) -> anyhow::Result<Vec<Member>> {
    let mut out = Vec::new();
    for p in discover(client, d).await?.into_iter().filter(|p| !excluded.contains(&p.peer_id)) {
        let bandwidth_mbps = match (measure, p.peer_id.parse::<PeerId>()) {
            (true, Ok(peer)) => measure_bandwidth(client, peer).await,
            _ => None,
        };
        out.push(Member { peer: p, bandwidth_mbps });
    }
    Ok(out)
}

/// How the coordinator joins the cluster (the flags `peers`, `plan` and `run` share).
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub cluster: edge_node::serve::ClusterArgs,
    /// A member to start from, e.g. /ip4/192.168.1.7/tcp/4001 (repeatable; adds to the bootstrap list in
    /// DATA_DIR/config.toml).
    #[arg(long)]
    pub peer: Vec<Multiaddr>,
    /// How long to discover, in seconds (with --min-nodes: at most this long).
    #[arg(long, default_value_t = 3.0)]
    pub wait: f64,
    /// Wait (up to --wait) until this many members are seen, then go on at once; fewer is an error naming who
    /// was seen and who was not. Without it, whoever was seen after --wait is used.
    #[arg(long, value_name = "N")]
    pub min_nodes: Option<usize>,
    /// Do not discover members with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Also run a member in this process (a one-machine cluster), on 127.0.0.1.
    #[arg(long)]
    pub local_node: bool,
    /// Backend of the local member.
    #[arg(long, value_enum, default_value_t = edge_node::backend::Backend::Auto, requires = "local_node")]
    pub backend: edge_node::backend::Backend,
}

/// The coordinator's data directory: the one given, else the node's default with `coord` in place of `node`.
pub fn coord_dir(given: &Option<std::path::PathBuf>) -> std::path::PathBuf {
    given.clone().unwrap_or_else(|| edge_node::serve::default_data_dir().with_file_name("coord"))
}

/// The coordinator as a cluster member (no capability record, no stages), plus the optional in-process node.
pub struct Joined {
    pub client: Client,
    pub local: Option<edge_node::serve::RunningMember>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Joined {
    /// What `args` say about discovery (checked).
    pub fn discovery(args: &JoinArgs) -> anyhow::Result<Discovery> {
        anyhow::ensure!((0.0..=600.0).contains(&args.wait), "--wait must be between 0 and 600 seconds");
        let min_nodes = args.min_nodes.unwrap_or(0);
        anyhow::ensure!(
            args.min_nodes.is_none() || (1..=1024).contains(&min_nodes),
            "--min-nodes must be between 1 and 1024"
        );
        Ok(Discovery { wait: Duration::from_secs_f64(args.wait), min_nodes, expected: args.peer.clone() })
    }

    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(m) = self.local {
            m.stop().await;
        }
    }
}

/// Joins the cluster as the coordinator (identity and key from the data directory or flags).
pub async fn join(args: &JoinArgs) -> anyhow::Result<Joined> {
    Joined::discovery(args)?;
    let dir = coord_dir(&args.cluster.data_dir);
    let identity = edge_node::net::keys::load_or_create_identity(&dir)?;
    let cluster_key = edge_node::net::keys::load_cluster_key(args.cluster.cluster_key.as_deref(), &dir)?;
    let file = edge_node::net::config::FileConfig::load(&dir)?;
    let local = if args.local_node {
        let opts = edge_node::serve::MemberOptions::loopback(args.backend, None);
        Some(edge_node::serve::start_member(&dir.join("local-node"), cluster_key, opts).await?)
    } else {
        None
    };
    let peers = args.peer.iter().cloned().chain(local.iter().flat_map(|m| m.dial_addrs()));
    let cfg = edge_node::net::NetConfig {
        identity,
        cluster_key,
        listen: vec!["/ip4/0.0.0.0/tcp/0".parse()?],
        bootstrap: file.bootstrap.into_iter().chain(peers).collect(),
        mdns: !args.no_mdns && file.mdns.unwrap_or(true),
        allow: (!file.allow.is_empty()).then(|| file.allow.into_iter().collect()),
        capabilities: None,
    };
    let (client, event_loop) = edge_node::net::new(cfg)?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(event_loop.run(stop_rx));
    Ok(Joined { client, local, stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replan_drops_the_minimum_and_does_not_wait_out_a_long_bound() {
        let d = Discovery { wait: Duration::from_secs(60), min_nodes: 3, expected: vec![] };
        let r = d.relaxed();
        assert_eq!((r.min_nodes, r.wait), (0, REPLAN_WAIT));
        // Without --min-nodes, --wait is how long discovery takes, on a re-plan too.
        let plain = Discovery { wait: Duration::from_secs(10), min_nodes: 0, expected: vec![] };
        assert_eq!(plain.relaxed().wait, Duration::from_secs(10));
    }
}
