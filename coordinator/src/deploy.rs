//! Putting a plan on the cluster: a session per stage member, each sent a [`Manifest`] of exactly the tensors of
//! its stage (blake3 per tensor); the node answers with what its cache lacks, which is all that is sent (resuming
//! an interrupted transfer), with a progress bar per node; then every member is wired to its neighbours.
//! The [`Deployment`] then starts sequences on the first stage and receives tokens and timings from the nodes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edge_node::backend::LoadedModel;
use edge_node::gguf_writer::GgufWriter;
use edge_node::model::stage::{stage_image, StageImage};
use edge_node::net::Client;
use edge_protocol::bulk::{read_msg, write_msg};
use edge_protocol::stage::{
    Hash, JobParams, Manifest, MemberRef, NodeMsg, PlanId, SessionMsg, StageOpen, TensorEntry, Vocabulary,
    MAX_DATA_CHUNK, MAX_STAGE_FRAME,
};
use edge_protocol::{LayerSlice, ShardSpec};
use futures::io::WriteHalf;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use tokio::sync::mpsc;

/// One stage as deployed: its layers and its members (one, or a tensor-parallel group in member order).
#[derive(Debug, Clone)]
pub struct Assignment {
    pub spec: ShardSpec,
    pub members: Vec<(PeerId, Option<LayerSlice>)>,
}

/// What every deployment of a model sends besides its tensors, worked out once per process: the file's hash (it
/// names the model in each manifest) and the vocabulary the sampling stage matches grammars against.
pub struct ModelFacts {
    pub hash: Hash,
    pub vocab: Vocabulary,
}

impl ModelFacts {
    /// Hashes the whole file (blocking: a few hundred milliseconds for a model of a few hundred megabytes).
    pub fn of(model: &LoadedModel, tok: &edge_node::tokenizer::Tokenizer) -> ModelFacts {
        ModelFacts { hash: *blake3::hash(model.gguf.bytes()).as_bytes(), vocab: tok.vocabulary() }
    }
}

/// What loading a member cost.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub member: MemberRef,
    pub peer: PeerId,
    pub backend: String,
    pub sent_bytes: u64,
    pub stage_bytes: u64,
    pub load_ms: u32,
    /// The member's backend runs several sequences' steps as one batch.
    pub batches: bool,
}

/// How long a node may take to answer each phase.
const NEED_TIMEOUT: Duration = Duration::from_secs(120);
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
const WIRE_TIMEOUT: Duration = Duration::from_secs(30);

struct Session {
    member: MemberRef,
    peer: PeerId,
    w: WriteHalf<libp2p::Stream>,
}

impl Session {
    async fn send(&mut self, msg: &SessionMsg) -> anyhow::Result<()> {
        write_msg(&mut self.w, msg, MAX_STAGE_FRAME).await.with_context(|| format!("sending to {}", self.peer))
    }
}

/// A plan running on the cluster.
pub struct Deployment {
    pub plan: PlanId,
    pub stages: Vec<Assignment>,
    pub loads: Vec<LoadReport>,
    sessions: Vec<Session>,
    events: mpsc::UnboundedReceiver<(MemberRef, NodeMsg)>,
    /// Members whose session stream broke (the node died, restarted or dropped the connection).
    lost: std::sync::Arc<std::sync::Mutex<Vec<MemberRef>>>,
    /// The tasks reading the sessions; aborted on drop, which drops the streams and so frees the stages even
    /// when a deployment is abandoned half-way (a failed load, an error, a panic).
    _readers: Readers,
}

/// Session reader tasks, aborted when dropped.
struct Readers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Readers {
    fn drop(&mut self) {
        self.0.iter().for_each(|r| r.abort());
    }
}

/// The stage image and manifest of one member.
struct Prepared<'a> {
    image: StageImage<'a>,
    manifest: Manifest,
}

fn prepare<'a>(
    model: &'a LoadedModel,
    model_hash: Hash,
    me: MemberRef,
    spec: ShardSpec,
    slice: Option<LayerSlice>,
    vocab: Option<&Vocabulary>,
    (sequences, context): (u32, u32),
) -> anyhow::Result<Prepared<'a>> {
    let image = stage_image(&model.gguf, &model.config, spec, slice)?;
    let mut meta = GgufWriter::new();
    for (k, v) in &image.kv {
        meta = meta.kv(k.clone(), v.clone());
    }
    let tensors = image
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            ty: t.ty.id(),
            dims: t.dims.clone(),
            size: t.data.len() as u64,
            hash: *blake3::hash(&t.data).as_bytes(),
        })
        .collect();
    let metadata = meta.to_bytes()?;
    let vocab = vocab.cloned();
    let manifest = Manifest { model: model_hash, me, spec, slice, metadata, tensors, sequences, context, vocab };
    Ok(Prepared { image, manifest })
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<(MemberRef, NodeMsg)>,
    deadline: Instant,
    what: &str,
) -> anyhow::Result<(MemberRef, NodeMsg)> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, events.recv()).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => bail!("every session closed while {what}"),
        Err(_) => bail!("timed out while {what}"),
    }
}

/// Ships and loads `stages` on their members and wires them into a pipeline. `sequences` x `context` is what
/// each stage must be able to hold at once; `batch` is the most sequences that move through the stages as one
/// group (the plan's [`crate::plan::Prediction::batch`]).
pub async fn deploy(
    client: &Client,
    (model, facts): (&LoadedModel, &ModelFacts),
    stages: Vec<Assignment>,
    (sequences, batch): (u32, u32),
    context: u32,
    progress: &indicatif::MultiProgress,
) -> anyhow::Result<Deployment> {
    anyhow::ensure!(!stages.is_empty(), "empty plan");
    let plan: PlanId = rand::random();
    let mut prepared = Vec::new();
    for (s, a) in stages.iter().enumerate() {
        for (j, (_, slice)) in a.members.iter().enumerate() {
            let me = MemberRef { stage: s as u32, member: j as u32 };
            // The stages that sample get the vocabulary.
            let vocab = Some(&facts.vocab).filter(|_| a.spec.head);
            prepared.push(prepare(model, facts.hash, me, a.spec, *slice, vocab, (sequences, context))?);
        }
    }

    // Open a session per member; a reader task per session forwards what the node says.
    let (tx, events) = mpsc::unbounded_channel();
    let lost = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut sessions = Vec::new();
    let mut readers = Readers(Vec::new());
    for (s, a) in stages.iter().enumerate() {
        for (j, (peer, _)) in a.members.iter().enumerate() {
            let member = MemberRef { stage: s as u32, member: j as u32 };
            let stream = edge_node::stage::open::open_stage_stream(client, *peer, &StageOpen::Session { plan })
                .await
                .context("opening a session")?;
            let (mut r, w) = stream.split();
            let tx = tx.clone();
            let lost = lost.clone();
            let peer_id = *peer;
            readers.0.push(tokio::spawn(async move {
                loop {
                    match read_msg::<_, NodeMsg>(&mut r, MAX_STAGE_FRAME).await {
                        Ok(msg) if msg.validate().is_ok() => {
                            if tx.send((member, msg)).is_err() {
                                break;
                            }
                        }
                        Ok(_) => tracing::warn!(peer = %peer_id, "dropped an invalid message"),
                        Err(e) => {
                            lost.lock().expect("lost lock").push(member);
                            let message = format!("session with {peer_id} ended: {e}");
                            let _ = tx.send((member, NodeMsg::Error { seq: None, message }));
                            break;
                        }
                    }
                }
            }));
            sessions.push(Session { member, peer: *peer, w });
        }
    }
    let mut d = Deployment { plan, stages, loads: Vec::new(), sessions, events, lost, _readers: readers };

    // Load: manifests out, needs back.
    for (sess, p) in d.sessions.iter_mut().zip(&prepared) {
        sess.send(&SessionMsg::Load(p.manifest.clone())).await?;
    }
    let mut loading = Loading::new(d.sessions.len());
    let deadline = Instant::now() + NEED_TIMEOUT;
    while !loading.answered() {
        let (m, msg) = next_event(&mut d.events, deadline, "checking node caches").await?;
        loading.on(d.index(m)?, m, msg)?;
    }
    let needs = loading.needs.clone();

    // Ship what is missing, all members at once, a progress bar each.
    let style =
        indicatif::ProgressStyle::with_template("{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut sent = vec![0u64; d.sessions.len()];
    let sends =
        d.sessions.iter_mut().zip(&prepared).zip(&needs).zip(sent.iter_mut()).map(|(((sess, p), need), sent)| {
            let need = need.clone().unwrap_or_default();
            let total: u64 = need.iter().map(|(i, have)| p.image.tensors[*i as usize].data.len() as u64 - have).sum();
            let bar = progress.add(indicatif::ProgressBar::new(total));
            bar.set_style(style.clone());
            let peer = sess.peer.to_string();
            bar.set_prefix(format!("..{} stage {}", &peer[peer.len().saturating_sub(8)..], sess.member.stage));
            async move {
                for (i, have) in need {
                    let data = &p.image.tensors[i as usize].data;
                    let mut off = have as usize;
                    while off < data.len() {
                        let end = (off + MAX_DATA_CHUNK).min(data.len());
                        let msg = SessionMsg::Data { tensor: i, offset: off as u64, data: data[off..end].to_vec() };
                        sess.send(&msg).await?;
                        bar.inc((end - off) as u64);
                        *sent += (end - off) as u64;
                        off = end;
                    }
                }
                bar.finish();
                anyhow::Ok(())
            }
        });
    futures::future::try_join_all(sends).await?;

    let deadline = Instant::now() + LOAD_TIMEOUT;
    while !loading.loaded() {
        let (m, msg) = next_event(&mut d.events, deadline, "loading stages").await?;
        loading.on(d.index(m)?, m, msg)?;
    }
    let loaded = loading.loads.into_iter().flatten();
    d.loads = (d.sessions.iter().zip(&prepared).zip(sent).zip(loaded))
        .map(|(((sess, p), sent_bytes), (backend, load_ms, batches))| LoadReport {
            member: sess.member,
            peer: sess.peer,
            backend,
            sent_bytes,
            stage_bytes: p.manifest.bytes(),
            load_ms,
            batches,
        })
        .collect();

    // Wire: each leader to the next stage's leader (the last to the first: the ring), groups among themselves; a
    // group batches when every member's backend does.
    let n = d.stages.len();
    let batched: Vec<bool> =
        (0..n).map(|s| d.loads.iter().filter(|l| l.member.stage as usize == s).all(|l| l.batches)).collect();
    for i in 0..d.sessions.len() {
        let m = d.sessions[i].member;
        let s = m.stage as usize;
        let leader = |s: usize| d.stages[s].members[0].0.to_string();
        let msg = SessionMsg::Wire {
            next: (m.member == 0).then(|| leader((s + 1) % n)),
            upstream: (m.member == 0).then(|| leader((s + n - 1) % n)),
            group: d.stages[s].members.iter().map(|(p, _)| p.to_string()).collect(),
            batched: batched[s],
            batch,
        };
        d.sessions[i].send(&msg).await?;
    }
    let deadline = Instant::now() + WIRE_TIMEOUT;
    let mut wired = vec![false; d.sessions.len()];
    while wired.iter().any(|w| !w) {
        let (m, msg) = next_event(&mut d.events, deadline, "wiring stages").await?;
        match msg {
            NodeMsg::Wired => wired[d.index(m)?] = true,
            NodeMsg::Error { message, .. } => bail!("stage {} member {}: {message}", m.stage, m.member),
            other => bail!("unexpected {other:?} while wiring"),
        }
    }
    Ok(d)
}

/// What the members said while loading, in whatever order their sessions deliver it: each member answers its
/// manifest with what its cache lacks (Need), then, once it holds every tensor, says it has loaded. A member whose
/// cache holds everything loads right after its Need, which may be before another member has answered at all.
struct Loading {
    needs: Vec<Option<Vec<(u32, u64)>>>,
    loads: Vec<Option<(String, u32, bool)>>,
}

impl Loading {
    fn new(members: usize) -> Self {
        Self { needs: vec![None; members], loads: vec![None; members] }
    }

    /// Every member has said what it lacks.
    fn answered(&self) -> bool {
        self.needs.iter().all(Option::is_some)
    }

    /// Every member has loaded its stage.
    fn loaded(&self) -> bool {
        self.loads.iter().all(Option::is_some)
    }

    /// Takes member `i`'s message; anything out of order is an error naming the member.
    fn on(&mut self, i: usize, m: MemberRef, msg: NodeMsg) -> anyhow::Result<()> {
        match msg {
            NodeMsg::Need { tensors } if self.needs[i].is_none() => self.needs[i] = Some(tensors),
            NodeMsg::Loaded { backend, load_ms, batches, .. } if self.needs[i].is_some() && self.loads[i].is_none() => {
                self.loads[i] = Some((backend, load_ms, batches))
            }
            NodeMsg::Error { message, .. } => bail!("stage {} member {}: {message}", m.stage, m.member),
            other => bail!("stage {} member {}: unexpected {other:?} while loading", m.stage, m.member),
        }
        Ok(())
    }
}

impl Deployment {
    fn index(&self, m: MemberRef) -> anyhow::Result<usize> {
        self.sessions.iter().position(|s| s.member == m).context("message from an unknown member")
    }

    /// The first stage's leader (where sequences start).
    pub fn first(&self) -> MemberRef {
        self.sessions[0].member
    }

    /// The peer running a stage member.
    pub fn peer(&self, m: MemberRef) -> Option<PeerId> {
        self.sessions.iter().find(|s| s.member == m).map(|s| s.peer)
    }

    /// The peers whose session broke so far.
    pub fn lost_peers(&self) -> Vec<PeerId> {
        let lost = self.lost.lock().expect("lost lock").clone();
        lost.into_iter().filter_map(|m| self.peer(m)).collect()
    }

    /// Starts a sequence on the first stage.
    pub async fn start(&mut self, seq: u64, prompt: Vec<u32>, params: JobParams) -> anyhow::Result<()> {
        self.sessions[0].send(&SessionMsg::Start { seq, prompt, params }).await
    }

    /// Stops a sequence early.
    pub async fn cancel(&mut self, seq: u64) -> anyhow::Result<()> {
        self.sessions[0].send(&SessionMsg::Cancel { seq }).await
    }

    /// The next thing a node said (None when every session has ended).
    pub async fn event(&mut self, timeout: Duration) -> anyhow::Result<Option<(MemberRef, NodeMsg)>> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Ok(e) => Ok(e),
            Err(_) => bail!("no word from the cluster for {} s", timeout.as_secs()),
        }
    }

    /// Closes every session: the nodes free their stages (their tensor caches stay).
    pub async fn close(mut self) {
        for s in &mut self.sessions {
            let _ = s.w.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded() -> NodeMsg {
        NodeMsg::Loaded { backend: "cpu".into(), load_ms: 5, received_bytes: 0, batches: true }
    }

    fn member(i: u32) -> MemberRef {
        MemberRef { stage: i, member: 0 }
    }

    #[test]
    fn a_cached_member_may_load_before_another_member_answers() {
        let mut l = Loading::new(2);
        l.on(0, member(0), NodeMsg::Need { tensors: vec![] }).unwrap();
        l.on(0, member(0), loaded()).unwrap();
        assert!(!l.answered() && !l.loaded());
        l.on(1, member(1), NodeMsg::Need { tensors: vec![(3, 0)] }).unwrap();
        assert!(l.answered() && !l.loaded());
        l.on(1, member(1), loaded()).unwrap();
        assert!(l.loaded());
        assert_eq!(l.needs[1], Some(vec![(3, 0)]));
        assert_eq!(l.loads[0], Some(("cpu".to_string(), 5, true)));
    }

    #[test]
    fn out_of_order_messages_and_node_errors_name_the_member() {
        let mut l = Loading::new(2);
        let e = l.on(1, member(1), loaded()).unwrap_err().to_string();
        assert!(e.starts_with("stage 1 member 0: unexpected Loaded"), "{e}");
        l.on(0, member(0), NodeMsg::Need { tensors: vec![] }).unwrap();
        let e = l.on(0, member(0), NodeMsg::Need { tensors: vec![] }).unwrap_err().to_string();
        assert!(e.contains("unexpected Need"), "{e}");
        l.on(0, member(0), loaded()).unwrap();
        assert!(l.on(0, member(0), loaded()).is_err(), "loaded twice");
        let e = l.on(1, member(1), NodeMsg::Error { seq: None, message: "out of memory".into() }).unwrap_err();
        assert_eq!(e.to_string(), "stage 1 member 0: out of memory");
    }
}
