//! Running a node's part of a plan ([`edge_protocol::stage`]): the coordinator opens a session, ships the stage's
//! tensors (only those not already in the [`store`]), the node loads them on its backend and starts a
//! [`worker`] thread; after wiring, hidden states, tokens and partial sums flow over pipes between nodes.
//!
//! - [`store`]: the content-addressed tensor cache (resumable, verified).
//! - [`session`]: one coordinator session: load, wire, start/cancel sequences, report.
//! - [`worker`]: the thread that owns the loaded shard and runs steps.
//! - [`open`]: opening a stage stream and waiting for the node to take it.

pub mod open;
pub mod ring;
pub mod session;
pub mod store;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_protocol::bulk::{read_msg, write_msg};
use edge_protocol::stage::{
    MemberRef, PipeMsg, PlanId, StageAccept, StageOpen, MAX_OPEN_FRAME, MAX_STAGE_FRAME, STAGE_PROTOCOL,
};
use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};

use crate::backend::Backend;
use crate::gpu::GpuContext;
use crate::net::{Client, NetError};
use crate::shard::ShardError;

use worker::Work;

/// Plans a node serves at once by default (one stage member each); `edge-node serve --max-plans` changes it.
pub const MAX_PLANS: usize = 8;
/// Stage streams (sessions and pipes) one peer may have open at once.
pub const MAX_STREAMS_PER_PEER: usize = 32;
/// How long an incoming pipe waits for its plan to be wired here.
const PIPE_WAIT: Duration = Duration::from_secs(10);
/// How long a stage stream may take to send its header (and a refusal to be written).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A stage member this node holds.
struct Hosted {
    me: MemberRef,
    held: edge_protocol::HeldShard,
    work: std::sync::mpsc::Sender<Work>,
    /// Peers allowed to open pipes into it, with the member they must claim to be (set when wired).
    accept: Mutex<Option<HashMap<PeerId, Option<MemberRef>>>>,
}

/// Everything the stage protocol needs on a node.
pub struct StageServer {
    client: Client,
    store: store::TensorStore,
    dir: PathBuf,
    backend: Backend,
    gpu: Mutex<Option<Arc<GpuContext>>>,
    hosted: Mutex<HashMap<PlanId, Arc<Hosted>>>,
    publish: Option<Publisher>,
    max_plans: usize,
    emulate: LinkEmulation,
}

/// Test-only link emulation on outgoing pipes, for the testbed (this kernel has no netem): every message is
/// delivered `latency` after it was queued (messages stay pipelined and in order), and with probability `loss`
/// it waits a retransmission timeout more, as a lost TCP segment would. Set with `EDGE_EMULATE_LATENCY_MS` and
/// `EDGE_EMULATE_LOSS` (a fraction); off by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkEmulation {
    pub latency: Duration,
    pub loss: f64,
}

/// The retransmission delay charged for an emulated loss (Linux's minimum RTO).
pub const EMULATED_RTO: Duration = Duration::from_millis(200);

/// Delays every message of `rx` by the emulated latency (plus a retransmission timeout when "lost"), counted
/// from when it was queued, keeping the order (a delayed message holds back the ones behind it, as on TCP).
fn emulated(mut rx: tokio::sync::mpsc::Receiver<PipeMsg>, e: LinkEmulation) -> tokio::sync::mpsc::Receiver<PipeMsg> {
    let (stamped_tx, mut stamped) = tokio::sync::mpsc::unbounded_channel();
    let (out_tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut rng: u64 = rand::random::<u64>() | 1;
        while let Some(msg) = rx.recv().await {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let lost = ((rng >> 11) as f64 / (1u64 << 53) as f64) < e.loss;
            let rto = if lost { EMULATED_RTO } else { Duration::ZERO };
            if stamped_tx.send((tokio::time::Instant::now() + e.latency + rto, msg)).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((at, msg)) = stamped.recv().await {
            tokio::time::sleep_until(at).await;
            if out_tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    out
}

impl LinkEmulation {
    pub fn from_env() -> LinkEmulation {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        LinkEmulation {
            latency: Duration::from_secs_f64(num("EDGE_EMULATE_LATENCY_MS").unwrap_or(0.0).clamp(0.0, 10_000.0) / 1e3),
            loss: num("EDGE_EMULATE_LOSS").unwrap_or(0.0).clamp(0.0, 1.0),
        }
    }

    fn active(&self) -> bool {
        !self.latency.is_zero() || self.loss > 0.0
    }
}

/// Told what the node holds whenever that changes (the member re-signs its capability record with it).
pub type Publisher = Box<dyn Fn(Vec<edge_protocol::HeldShard>) + Send + Sync>;

impl StageServer {
    pub fn new(
        client: Client,
        dir: &std::path::Path,
        backend: Backend,
        publish: Option<Publisher>,
        max_plans: usize,
    ) -> Result<Arc<StageServer>, store::StoreError> {
        Ok(Arc::new(StageServer {
            client,
            store: store::TensorStore::open(dir)?,
            dir: dir.to_owned(),
            backend,
            gpu: Mutex::new(None),
            hosted: Mutex::new(HashMap::new()),
            publish,
            max_plans,
            emulate: LinkEmulation::from_env(),
        }))
    }

    /// Adds or removes a hosted stage and tells the publisher.
    fn set_hosted(&self, plan: PlanId, h: Option<Arc<Hosted>>) -> Option<Arc<Hosted>> {
        let (old, held) = {
            let mut hosted = self.hosted.lock().expect("hosted lock");
            let old = match h {
                Some(h) => hosted.insert(plan, h),
                None => hosted.remove(&plan),
            };
            (old, hosted.values().map(|h| h.held).collect::<Vec<_>>())
        };
        if let Some(p) = &self.publish {
            p(held);
        }
        old
    }

    /// The node's GPU context, created on first use and shared by its stages.
    fn gpu(&self) -> Result<Arc<GpuContext>, ShardError> {
        let mut g = self.gpu.lock().expect("gpu lock");
        if let Some(ctx) = g.as_ref() {
            return Ok(ctx.clone());
        }
        let ctx = GpuContext::new()?;
        *g = Some(ctx.clone());
        Ok(ctx)
    }

    fn hosted(&self, plan: &PlanId) -> Option<Arc<Hosted>> {
        self.hosted.lock().expect("hosted lock").get(plan).cloned()
    }

    /// Serves stage streams until the network stops. Spawn it next to the event loop.
    pub async fn serve(self: Arc<Self>) -> Result<(), NetError> {
        let mut incoming = self
            .client
            .streams()
            .accept(StreamProtocol::new(STAGE_PROTOCOL))
            .map_err(|_| NetError::Request("stage protocol already served".into()))?;
        let per_peer = crate::net::limits::PerPeer::new(MAX_STREAMS_PER_PEER);
        // This loop only hands streams on: libp2p drops an inbound stream that arrives while the previous one
        // still waits here (see [`open`]), so nothing in it may wait.
        while let Some((peer, mut stream)) = incoming.next().await {
            let slot = per_peer.try_acquire(peer);
            let me = self.clone();
            tokio::spawn(async move {
                let Some(_slot) = slot else {
                    tracing::info!(%peer, "refused a stage stream: too many open from this peer");
                    let refused = StageAccept::Refused { reason: "too many stage streams open from this peer".into() };
                    let _ = tokio::time::timeout(OPEN_TIMEOUT, open::answer(&mut stream, &refused)).await;
                    return;
                };
                let header = tokio::time::timeout(OPEN_TIMEOUT, read_msg::<_, StageOpen>(&mut stream, MAX_OPEN_FRAME));
                match header.await {
                    Ok(Ok(StageOpen::Session { plan })) => {
                        if open::answer(&mut stream, &StageAccept::Accepted).await.is_ok() {
                            session::run(me, peer, plan, stream).await
                        }
                    }
                    Ok(Ok(StageOpen::Pipe { plan, from })) => me.pipe_in(peer, plan, from, stream).await,
                    Ok(Err(e)) => tracing::info!(%peer, cause = %e, "refused a stage stream"),
                    Err(_) => tracing::info!(%peer, "stage stream sent no header"),
                }
            });
        }
        Ok(())
    }

    /// An incoming pipe: checked against the plan's wiring, then every message goes to the worker's queue.
    async fn pipe_in(&self, peer: PeerId, plan: PlanId, from: MemberRef, mut stream: libp2p::Stream) {
        let deadline = Instant::now() + PIPE_WAIT;
        // A pipe may arrive just before its plan's wiring reaches this node (the plan is loaded by then).
        let hosted = loop {
            let h = self.hosted(&plan);
            let wired = h.as_ref().is_some_and(|h| h.accept.lock().expect("accept lock").is_some());
            if wired || h.is_none() || Instant::now() > deadline {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let refuse = |reason: &str| StageAccept::Refused { reason: reason.into() };
        let Some(hosted) = hosted else {
            tracing::info!(%peer, "refused a pipe into a plan this node does not hold");
            let _ = open::answer(&mut stream, &refuse("this node holds no stage of that plan")).await;
            return;
        };
        let allowed = hosted
            .accept
            .lock()
            .expect("accept lock")
            .as_ref()
            .and_then(|a| a.get(&peer).copied())
            .is_some_and(|claim| claim.is_none_or(|m| m == from));
        if !allowed {
            tracing::warn!(%peer, "refused a pipe from a peer outside the plan's wiring");
            let _ = open::answer(&mut stream, &refuse("the plan's wiring has no such pipe from this peer")).await;
            return;
        }
        if open::answer(&mut stream, &StageAccept::Accepted).await.is_err() {
            return;
        }
        loop {
            match read_msg::<_, PipeMsg>(&mut stream, MAX_STAGE_FRAME).await {
                Ok(msg) => {
                    if let Err(e) = msg.validate() {
                        tracing::warn!(%peer, cause = %e, "dropped an invalid pipe message; closing the pipe");
                        break;
                    }
                    if hosted.work.send(Work::Pipe { from, msg }).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, cause = %e, "pipe closed");
                    break;
                }
            }
        }
    }

    /// Opens a pipe to `peer` as member `me` of `plan`; returns the queue that feeds it.
    async fn pipe_out(
        &self,
        peer: PeerId,
        plan: PlanId,
        me: MemberRef,
    ) -> Result<tokio::sync::mpsc::Sender<PipeMsg>, NetError> {
        let mut stream = open::open_stage_stream(&self.client, peer, &StageOpen::Pipe { plan, from: me }).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<PipeMsg>(64);
        let emulate = self.emulate;
        if emulate.active() {
            tracing::warn!(?emulate, "emulating link latency/loss on pipes (test only)");
        }
        let mut rx = if emulate.active() { emulated(rx, emulate) } else { rx };
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = write_msg(&mut stream, &msg, MAX_STAGE_FRAME).await {
                    tracing::warn!(%peer, cause = %e, "pipe write failed");
                    break;
                }
            }
        });
        Ok(tx)
    }
}
