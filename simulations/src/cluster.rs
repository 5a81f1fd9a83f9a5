//! A simulated cluster: nodes (a device profile, a link, optionally a host shared with other nodes) and the
//! coordinator's link, and the planner's view of it ([`Cluster::node_profiles`]).

use edge_coord::plan::{LinkProfile, NodeProfile};
use serde::Serialize;

use crate::profiles::{DeviceProfile, LinkSpec};

/// One `edge-node` member.
#[derive(Debug, Clone, Serialize)]
pub struct SimNode {
    pub id: String,
    pub device: DeviceProfile,
    pub link: LinkSpec,
    /// Index into [`Cluster::hosts`] when the node shares its machine's cores with other nodes.
    pub host: Option<usize>,
}

/// A machine whose cores several nodes share (the 3-node cluster on this 2-core machine). Steps running at the
/// same time on one host share it as a work-conserving processor: a step of a node with `t` threads alone runs at
/// `speedup(t)` (core equivalents); when the running steps together ask for more than `cores`, each gets
/// `cores / sum(speedups)` of its speed. Lavapipe's threads wait on each other inside a step, and another
/// process's step fills those gaps, so several steps together use the cores better than one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Host {
    pub cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub nodes: Vec<SimNode>,
    pub hosts: Vec<Host>,
    /// The coordinator's link (prompts in, tokens out, shards shipped after a re-plan).
    pub coordinator: LinkSpec,
}

impl Cluster {
    /// `n` nodes of one device on one kind of link (the coordinator on the same kind of link).
    pub fn homogeneous(n: usize, device: &DeviceProfile, link: LinkSpec) -> Cluster {
        Cluster::mixed(n, &[(device, 1.0)], link)
    }

    /// `n` nodes of several devices in the given proportions, interleaved (smooth weighted round robin, so any
    /// prefix of the nodes has the mix's proportions).
    pub fn mixed(n: usize, mix: &[(&DeviceProfile, f64)], link: LinkSpec) -> Cluster {
        let total: f64 = mix.iter().map(|m| m.1).sum();
        let mut credit = vec![0.0f64; mix.len()];
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            for (c, m) in credit.iter_mut().zip(mix) {
                *c += m.1;
            }
            let pick = (0..mix.len()).fold(0, |b, j| if credit[j] > credit[b] { j } else { b });
            credit[pick] -= total;
            let device = mix[pick].0.clone();
            nodes.push(SimNode { id: format!("{}-{i}", device.name), device, link, host: None });
        }
        Cluster { nodes, hosts: Vec::new(), coordinator: link }
    }

    /// Every node on one host of `cores` cores (nodes keep their own links, e.g. loopback).
    pub fn on_one_host(mut self, cores: f64) -> Cluster {
        self.hosts = vec![Host { cores }];
        for n in &mut self.nodes {
            n.host = Some(0);
        }
        self
    }

    /// Every node's device with `threads` compute threads.
    pub fn with_threads(mut self, threads: u32) -> Cluster {
        for n in &mut self.nodes {
            n.device.threads = threads;
        }
        self
    }

    /// Jitter and loss off on every link.
    pub fn steady(mut self) -> Cluster {
        for n in &mut self.nodes {
            n.link = n.link.steady();
        }
        self.coordinator = self.coordinator.steady();
        self
    }

    /// What the planner sees: each node's capability record and measured link.
    pub fn node_profiles(&self) -> Vec<NodeProfile> {
        self.nodes.iter().map(node_profile).collect()
    }
}

pub fn node_profile(n: &SimNode) -> NodeProfile {
    NodeProfile {
        id: n.id.clone(),
        memory_bytes: n.device.memory_bytes,
        gemv_gbps: n.device.gemv_gbps,
        dispatch_us: n.device.dispatch_us,
        row_gmacs: n.device.row_gmacs,
        native_weights: n.device.native_weights,
        link: LinkProfile { latency_us: n.link.planner_latency_us(), bandwidth_mbps: n.link.bandwidth_mbps },
        host: None,
    }
}

/// Parses `pi5` or `pi5:3,phone:1` (device names with weights).
pub fn parse_mix(spec: &str) -> Result<Vec<(&'static DeviceProfile, f64)>, String> {
    spec.split(',')
        .map(|part| {
            let (name, w) = part.split_once(':').unwrap_or((part, "1"));
            let d = crate::profiles::device(name.trim()).ok_or_else(|| {
                let names: Vec<&str> = crate::profiles::DEVICES.iter().map(|d| d.name).collect();
                format!("unknown device {name:?} (one of {})", names.join(", "))
            })?;
            let w: f64 = w.trim().parse().map_err(|_| format!("bad weight {w:?} for {name}"))?;
            if !(w.is_finite() && w > 0.0) {
                return Err(format!("the weight of {name} must be positive"));
            }
            Ok((d, w))
        })
        .collect()
}
