//! One coordinator session: `Load` (answer with the tensors still needed, receive them, verify, load the shard),
//! then `Wire` (open pipes to the neighbours), then `Start`/`Cancel` for sequences until the coordinator closes
//! the stream, which frees the stage.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use edge_protocol::bulk::{read_msg, write_msg};
use edge_protocol::stage::{Manifest, MemberRef, NodeMsg, PlanId, SessionMsg, MAX_STAGE_FRAME};
use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use tokio::sync::mpsc::UnboundedSender;

use super::store::hex;
use super::worker::{self, Outbox, Work};
use super::{Hosted, StageServer};
use crate::backend::Backend;
use crate::cpu::CpuShard;
use crate::gguf::Gguf;
use crate::gguf_writer::GgufWriter;
use crate::gpu::{GpuOptions, GpuShard};
use crate::model::ModelConfig;
use crate::quant::GgmlType;
use crate::reference::ReferenceShard;
use crate::shard::Shard;

pub(super) async fn run(server: Arc<StageServer>, peer: PeerId, plan: PlanId, stream: libp2p::Stream) {
    let (mut r, mut w) = stream.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<NodeMsg>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Err(e) = write_msg(&mut w, &m, MAX_STAGE_FRAME).await {
                tracing::debug!(cause = %e, "session write failed");
                break;
            }
        }
        let _ = w.close().await;
    });
    tracing::info!(%peer, plan = %hex(&plan), "session opened");
    if let Err(e) = serve(&server, plan, &mut r, &tx).await {
        tracing::warn!(%peer, cause = %format!("{e:#}"), "session failed");
        let _ = tx.send(NodeMsg::Error { seq: None, message: format!("{e:#}").chars().take(4000).collect() });
    }
    if let Some(h) = server.set_hosted(plan, None) {
        let _ = h.work.send(Work::Shutdown);
    }
    drop(tx);
    let _ = writer.await;
    tracing::info!(%peer, plan = %hex(&plan), "session closed; stage freed");
}

async fn next_msg<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<Option<SessionMsg>> {
    match read_msg::<_, SessionMsg>(r, MAX_STAGE_FRAME).await {
        Ok(m) => {
            m.validate()?;
            Ok(Some(m))
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn serve<R: AsyncRead + Unpin>(
    server: &Arc<StageServer>,
    plan: PlanId,
    r: &mut R,
    tx: &UnboundedSender<NodeMsg>,
) -> anyhow::Result<()> {
    let Some(SessionMsg::Load(manifest)) = next_msg(r).await? else { bail!("a session must start with Load") };
    {
        let hosted = server.hosted.lock().expect("hosted lock");
        if hosted.contains_key(&plan) {
            bail!("this node already holds a stage of this plan");
        }
        if hosted.len() >= server.max_plans {
            bail!("busy: this node already serves {} plans", server.max_plans);
        }
    }
    let manifest = Arc::new(manifest);
    let t0 = Instant::now();

    // Ship: only what the cache lacks, resuming partial transfers.
    let need = {
        let (s, m) = (server.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || s.store.need(&m.tensors)).await?
    };
    let mut missing: HashSet<u32> = need.iter().map(|(i, _)| *i).collect();
    tx.send(NodeMsg::Need { tensors: need })?;
    let mut received = 0u64;
    while !missing.is_empty() {
        let Some(SessionMsg::Data { tensor, offset, data }) = next_msg(r).await? else {
            bail!("expected tensor data ({} tensors missing)", missing.len())
        };
        if !missing.contains(&tensor) {
            bail!("tensor {tensor} was not asked for");
        }
        received += data.len() as u64;
        let (s, m) = (server.clone(), manifest.clone());
        let done =
            tokio::task::spawn_blocking(move || s.store.write(&m.tensors[tensor as usize], offset, &data)).await??;
        if done {
            missing.remove(&tensor);
        }
    }

    // Load on this node's backend.
    let shard = {
        let (s, m) = (server.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || s.load(plan, &m)).await??
    };
    let (backend, batches) = (shard.backend_name(), shard.batches());
    let me = manifest.me;
    let work = worker::spawn(shard, me, manifest.vocab.clone());
    let held = edge_protocol::HeldShard { model: manifest.model, spec: manifest.spec };
    let hosted = Arc::new(Hosted { me, held, work: work.clone(), accept: Mutex::new(None) });
    server.set_hosted(plan, Some(hosted.clone()));
    let load_ms = t0.elapsed().as_millis().min(u32::MAX as u128) as u32;
    tracing::info!(stage = me.stage, member = me.member, spec = %manifest.spec, received, load_ms, "stage loaded");
    tx.send(NodeMsg::Loaded { backend, load_ms, received_bytes: received, batches })?;

    while let Some(msg) = next_msg(r).await? {
        match msg {
            SessionMsg::Wire { next, upstream, group, batched, batch } => {
                let mut outbox = wire(server, plan, &hosted, [next, upstream], group, tx.clone()).await?;
                outbox.group_batches = batched;
                outbox.batch = batch as usize;
                work.send(Work::Wired(outbox)).context("stage stopped")?;
                tx.send(NodeMsg::Wired)?;
            }
            SessionMsg::Start { seq, prompt, params } => work.send(Work::Start { seq, prompt, params })?,
            SessionMsg::Cancel { seq } => work.send(Work::Cancel { seq })?,
            SessionMsg::Load(_) | SessionMsg::Data { .. } => bail!("the stage is already loaded"),
        }
    }
    Ok(())
}

/// Opens the pipes of this member and records who may open pipes into it.
async fn wire(
    server: &StageServer,
    plan: PlanId,
    hosted: &Hosted,
    [next, upstream]: [Option<String>; 2],
    group: Vec<String>,
    coordinator: UnboundedSender<NodeMsg>,
) -> anyhow::Result<Outbox> {
    let me = hosted.me;
    let my_id = server.client.peer_id();
    let parse = |p: &String| p.parse::<PeerId>().with_context(|| format!("bad peer id {p:?}"));
    let group: Vec<PeerId> = group.iter().map(parse).collect::<anyhow::Result<_>>()?;
    if group.get(me.member as usize) != Some(&my_id) {
        bail!("the wiring does not list this node as member {} of its stage", me.member);
    }
    let next = next.as_ref().map(parse).transpose()?;
    // Pipes come from the other members of the group (each claiming its member index) and, into the leader,
    // from the previous stage's leader (the last stage's around the ring).
    let mut accept: HashMap<PeerId, Option<MemberRef>> = HashMap::new();
    if let (Some(up), 0) = (upstream.as_ref().map(parse).transpose()?, me.member) {
        accept.insert(up, None);
    }
    for (j, p) in group.iter().enumerate() {
        if *p != my_id {
            accept.insert(*p, Some(MemberRef { stage: me.stage, member: j as u32 }));
        }
    }
    *hosted.accept.lock().expect("accept lock") = Some(accept);
    let next = match next {
        Some(p) if p != my_id && me.member == 0 => Some(server.pipe_out(p, plan, me).await?),
        _ => None,
    };
    let mut out_group = Vec::new();
    for (j, p) in group.iter().enumerate() {
        out_group.push(if j == me.member as usize { None } else { Some(server.pipe_out(*p, plan, me).await?) });
    }
    Ok(Outbox { coordinator, next, group: out_group, group_batches: false, batch: 0 })
}

impl StageServer {
    /// Rebuilds the stage's GGUF from the cached tensors and loads it on this node's backend.
    fn load(&self, plan: PlanId, m: &Manifest) -> anyhow::Result<Box<dyn Shard + Send>> {
        let meta = crate::gguf::parse_bytes(&m.metadata).context("stage metadata")?;
        let maps = m.tensors.iter().map(|t| self.store.map(&t.hash)).collect::<Result<Vec<_>, _>>()?;
        let mut w = GgufWriter::new();
        for (k, v) in &meta.metadata {
            w = w.kv(k.clone(), v.clone());
        }
        for (t, map) in m.tensors.iter().zip(&maps) {
            let ty = GgmlType::from_id(t.ty).with_context(|| format!("tensor {}: unknown type {}", t.name, t.ty))?;
            w = w.tensor(t.name.clone(), &t.dims, ty, &map[..]);
        }
        let dir = self.dir.join("stages");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{}-{}.gguf", hex(&plan), m.me.stage, m.me.member));
        w.write(&path)?;
        let g = Gguf::open(&path);
        let _ = std::fs::remove_file(&path); // the mapping keeps it while the stage lives
        let g = g?;
        let cfg = ModelConfig::from_gguf(&g)?;
        m.spec.validate(cfg.n_layers as u32).map_err(anyhow::Error::msg)?;
        if cfg.partial_layers != m.slice.is_some() {
            bail!("the stage metadata and the manifest disagree about tensor parallelism");
        }
        let backend = self.backend.resolve();
        let mut shard: Box<dyn Shard + Send> = match backend {
            Backend::Wgpu => Box::new(GpuShard::load(self.gpu()?, &g, &cfg, m.spec, GpuOptions::default())?),
            Backend::Reference => Box::new(ReferenceShard::load(&g, &cfg, m.spec)?),
            Backend::Cpu | Backend::Auto => Box::new(CpuShard::load(&g, &cfg, m.spec)?),
        };
        if backend == Backend::Wgpu {
            warm_up(&mut *shard)?;
        }
        Ok(shard)
    }
}

/// Runs a throwaway two-position prompt and one decode step, so the kernels' first-use compilation (tens of
/// milliseconds each on lavapipe) happens at load and not inside the first job's timings.
fn warm_up(shard: &mut dyn Shard) -> Result<(), crate::shard::ShardError> {
    use crate::shard::{HeadOutput, ShardInput};
    const SEQ: u64 = u64::MAX;
    let dim = shard.config().dim;
    shard.open_sequence(SEQ, 4)?;
    let result = (|| {
        for n in [2, 1] {
            let (tokens, hidden) = (vec![0u32; n], vec![0f32; n * dim]);
            let input = if shard.spec().embed { ShardInput::Tokens(&tokens) } else { ShardInput::Hidden(&hidden) };
            shard.forward(SEQ, input, HeadOutput::ArgmaxLast)?;
        }
        Ok(())
    })();
    shard.close_sequence(SEQ);
    result
}
