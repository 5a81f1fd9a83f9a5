//! `edge-node init` and `edge-node serve`: a device joins the cluster. `serve` measures the device once (cached),
//! signs its capability record, serves bulk and stage streams (the coordinator ships it stages to run), and runs
//! until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use edge_protocol::capability::{Capabilities, SignedCapabilities};
use libp2p::{Multiaddr, PeerId};

use crate::backend::Backend;
use crate::gpu::profile::{self_benchmark, self_benchmark_cpu, SelfBench};
use crate::net::{self, keys, NetConfig};

/// Where a node keeps its identity, cluster key and caches: `$EDGE_DATA_DIR`, else
/// `$XDG_DATA_HOME/edge-infer/node`, else `~/.local/share/edge-infer/node`.
pub fn default_data_dir() -> PathBuf {
    crate::setup::user_dir("EDGE_DATA_DIR", "XDG_DATA_HOME", ".local/share", "node")
}

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Data directory (identity, cluster key, caches) [default: ~/.local/share/edge-infer/node]
    #[arg(long, env = "EDGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The cluster key (64 hex digits) [default: DATA_DIR/cluster.key]
    #[arg(long, env = "EDGE_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
}

impl ClusterArgs {
    pub fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `edge-node init`: creates the node identity and, unless one is given or stored, a new cluster key; prints both.
pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    let dir = args.cluster.dir();
    let id = keys::load_or_create_identity(&dir)?;
    let key = match keys::load_cluster_key(args.cluster.cluster_key.as_deref(), &dir) {
        Ok(k) => k,
        Err(keys::KeyError::NoClusterKey(_)) => keys::new_cluster_key(),
        Err(e) => return Err(e.into()),
    };
    let path = keys::save_cluster_key(&key, &dir)?;
    println!("data dir     {}", dir.display());
    println!("peer id      {}", id.public().to_peer_id());
    println!("cluster key  {}", keys::cluster_key_hex(&key));
    println!("(saved in {}; give the same key to every member with --cluster-key or its own init)", path.display());
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address to listen on (repeatable) [default: config.toml's, else /ip4/0.0.0.0/tcp/0 and
    /// /ip4/0.0.0.0/udp/0/quic-v1]
    #[arg(long)]
    pub listen: Vec<Multiaddr>,
    /// A peer to dial and keep dialing, e.g. /ip4/192.168.1.7/tcp/4001 (repeatable; adds to config.toml's
    /// bootstrap list).
    #[arg(long)]
    pub peer: Vec<Multiaddr>,
    /// Do not discover peers with mDNS (it never works on loopback anyway).
    #[arg(long)]
    pub no_mdns: bool,
    /// Only these peers may stay connected (repeatable; default: anyone holding the cluster key).
    #[arg(long)]
    pub allow: Vec<PeerId>,
    /// Compute backend this node offers [default: config.toml's, else auto: wgpu on a real GPU, else cpu].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Bytes available for weights and KV cache [default: config.toml's, else the memory the system reports as
    /// available].
    #[arg(long)]
    pub memory: Option<u64>,
    /// Plans (coordinator sessions) served at once; more are refused as busy [default: config.toml's, else 8].
    #[arg(long)]
    pub max_plans: Option<usize>,
    /// Threads of the CPU backend [default: the physical cores this process may use].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Memory the system reports as available (Linux `MemAvailable`), or 0 when unknown.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024))
        })
        .unwrap_or(0)
}

/// The device measurement (wgpu's from the cache in `dir` when it was made for this adapter and runtime), its
/// device type, and the backend `backend` resolves to: `auto` takes wgpu when the adapter is a real GPU whose
/// matrix-vector speed beats the native CPU kernels', the CPU kernels otherwise.
fn measure(dir: &std::path::Path, backend: Backend, memory: u64) -> anyhow::Result<(SelfBench, String, Backend)> {
    let wgpu = |ctx: &std::sync::Arc<crate::gpu::GpuContext>| -> anyhow::Result<SelfBench> {
        let cache = dir.join("selfbench.json");
        let cached: Option<SelfBench> =
            std::fs::read(&cache).ok().and_then(|b| serde_json::from_slice(&b).ok()).filter(|b: &SelfBench| {
                // A record without a batched rate predates wgpu batching: measure again.
                b.adapter == ctx.describe()
                    && b.runtime == format!("edge-node/{}", env!("CARGO_PKG_VERSION"))
                    && b.row_gmacs > 0.0
            });
        Ok(match cached {
            Some(b) => b,
            None => {
                let b = self_benchmark(ctx)?;
                let _ = std::fs::write(&cache, serde_json::to_vec_pretty(&b)?);
                b
            }
        })
    };
    Ok(match backend {
        Backend::Cpu => (self_benchmark_cpu(false, memory), "Cpu".into(), Backend::Cpu),
        Backend::Reference => (self_benchmark_cpu(true, memory), "Cpu".into(), Backend::Reference),
        Backend::Wgpu => {
            let ctx = crate::gpu::GpuContext::new()?;
            (wgpu(&ctx)?, format!("{:?}", ctx.info.device_type), Backend::Wgpu)
        }
        Backend::Auto => {
            let cpu = self_benchmark_cpu(false, memory);
            match crate::gpu::GpuContext::new() {
                Ok(ctx) if ctx.info.device_type != wgpu::DeviceType::Cpu => {
                    let gpu = wgpu(&ctx)?;
                    if gpu.gemv_gbps > cpu.gemv_gbps {
                        (gpu, format!("{:?}", ctx.info.device_type), Backend::Wgpu)
                    } else {
                        (cpu, "Cpu".into(), Backend::Cpu)
                    }
                }
                _ => (cpu, "Cpu".into(), Backend::Cpu),
            }
        }
    })
}

/// How a member runs (what `serve` gets from its flags and config file).
pub struct MemberOptions {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub allow: Vec<PeerId>,
    pub backend: Backend,
    pub memory: Option<u64>,
    /// Plans served at once ([`crate::stage::MAX_PLANS`] by default).
    pub max_plans: usize,
}

impl MemberOptions {
    /// A member on 127.0.0.1 (any port) that dials nobody and runs no mDNS: a one-machine cluster's member.
    pub fn loopback(backend: Backend, memory: Option<u64>) -> MemberOptions {
        MemberOptions {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid address")],
            bootstrap: Vec::new(),
            mdns: false,
            allow: Vec::new(),
            backend,
            memory,
            max_plans: crate::stage::MAX_PLANS,
        }
    }
}

/// A member running on the current tokio runtime: its network, bulk-stream server and signed record.
pub struct RunningMember {
    pub client: net::Client,
    pub addrs: Vec<Multiaddr>,
    pub capabilities: Capabilities,
    stop: tokio::sync::watch::Sender<bool>,
    event_loop: tokio::task::JoinHandle<()>,
    bulk: tokio::task::JoinHandle<Result<(), net::NetError>>,
    stages: tokio::task::JoinHandle<Result<(), net::NetError>>,
}

impl RunningMember {
    /// The addresses to reach it, with its peer id.
    pub fn dial_addrs(&self) -> Vec<Multiaddr> {
        let me = self.client.peer_id();
        self.addrs.iter().map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(me))).collect()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.bulk.abort();
        self.stages.abort();
        let _ = self.event_loop.await;
    }
}

/// Starts a member with the identity in `dir`: measures the device (cached), joins the network, serves bulk
/// streams and advertises its signed capability record. Used by `edge-node serve` and by a coordinator that runs
/// a local node in its own process.
pub async fn start_member(
    dir: &std::path::Path,
    cluster_key: libp2p::pnet::PreSharedKey,
    o: MemberOptions,
) -> anyhow::Result<RunningMember> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity = keys::load_or_create_identity(dir)?;
    let (bench, device_type, backend) = {
        let (dir, backend, memory) = (dir.to_owned(), o.backend, o.memory.unwrap_or_else(available_memory));
        tokio::task::spawn_blocking(move || measure(&dir, backend, memory)).await??
    };
    let listeners = o.listen.len().max(1);
    let cfg = NetConfig {
        identity: identity.clone(),
        cluster_key,
        listen: o.listen,
        bootstrap: o.bootstrap,
        mdns: o.mdns,
        allow: (!o.allow.is_empty()).then(|| o.allow.into_iter().collect()),
        capabilities: None,
    };
    let (client, event_loop) = net::new(cfg)?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let event_loop = tokio::spawn(event_loop.run(stop_rx));
    let bulk = tokio::spawn(net::bulk::serve(client.clone()));

    // Wait (bounded) for every listener (TCP and QUIC come up separately; a loaded machine can be a while between
    // them), then advertise them in the signed record.
    let mut addrs = Vec::new();
    for _ in 0..50 {
        addrs = client.listen_addrs().await?;
        if addrs.len() >= listeners {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let capabilities = Capabilities {
        peer_id: client.peer_id().to_string(),
        version: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64),
        agent: format!("edge-node/{}", env!("CARGO_PKG_VERSION")),
        adapter: bench.adapter.clone(),
        device_type,
        backend: backend.name().into(),
        memory_bytes: o.memory.unwrap_or_else(available_memory),
        gemv_gbps: bench.gemv_gbps,
        dispatch_us: bench.dispatch_us,
        row_gmacs: bench.row_gmacs,
        shards: Vec::new(),
        load: 0,
        listen_addrs: addrs.iter().map(|a| a.to_string()).collect(),
    };
    client.set_capabilities(SignedCapabilities::sign(&capabilities, &identity)?).await?;
    // The record follows what the node holds: re-signed whenever a stage is loaded or freed.
    let publish: crate::stage::Publisher = {
        let (client, base, identity) = (client.clone(), capabilities.clone(), identity.clone());
        let version = std::sync::atomic::AtomicU64::new(capabilities.version);
        Box::new(move |held| {
            let caps = Capabilities {
                version: version.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                load: held.len() as u32,
                shards: held,
                ..base.clone()
            };
            match SignedCapabilities::sign(&caps, &identity) {
                Ok(signed) => {
                    let _ = client.try_set_capabilities(signed);
                }
                Err(e) => tracing::warn!(cause = %e, "capability record not re-signed"),
            }
        })
    };
    let stages =
        tokio::spawn(crate::stage::StageServer::new(client.clone(), dir, backend, Some(publish), o.max_plans)?.serve());
    Ok(RunningMember { client, addrs, capabilities, stop, event_loop, bulk, stages })
}

/// `edge-node serve`: joins the cluster and serves until Ctrl-C or SIGTERM.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let dir = args.cluster.dir();
    let cluster_key = keys::load_cluster_key(args.cluster.cluster_key.as_deref(), &dir)?;
    let file = crate::net::config::FileConfig::load(&dir)?;
    if let Some(n) = args.threads.or(file.threads) {
        crate::cpu::pool::set_threads(n);
    }
    let listen = match (args.listen.is_empty(), file.listen.is_empty()) {
        (false, _) => args.listen.clone(),
        (true, false) => file.listen.clone(),
        (true, true) => vec!["/ip4/0.0.0.0/tcp/0".parse()?, "/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
    };
    let opts = MemberOptions {
        listen,
        bootstrap: file.bootstrap.iter().chain(&args.peer).cloned().collect(),
        mdns: !args.no_mdns && file.mdns.unwrap_or(true),
        allow: file.allow.iter().chain(&args.allow).copied().collect(),
        backend: args.backend.or(file.backend).unwrap_or(Backend::Auto),
        memory: args.memory.or(file.memory),
        max_plans: args.max_plans.or(file.max_plans).unwrap_or(crate::stage::MAX_PLANS),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let member = start_member(&dir, cluster_key, opts).await?;
        for a in member.dial_addrs() {
            println!("listening {a}");
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        let c = &member.capabilities;
        eprintln!(
            "edge-node {}: {} ({}), GEMV {:.2} GB/s, dispatch {:.0} us, batched rows {:.1} G MAC/s; Ctrl-C to stop",
            c.peer_id, c.adapter, c.backend, c.gemv_gbps, c.dispatch_us, c.row_gmacs
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        member.stop().await;
        anyhow::Ok(())
    })
}
