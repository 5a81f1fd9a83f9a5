//! The stage worker's queue: a request that arrives while a long prompt is prefilled in chunks joins the very next
//! batch (with that prompt's next chunk), so its first token waits about one chunk, not two; embeddings; forks;
//! the members of a tensor-parallel stage running the very same batches; a batch staying whole down a pipeline,
//! and a new sequence joining the group out in the ring.

mod common;

use std::sync::{Arc, Mutex};

use common::tiny::*;
use edge_node::cpu::CpuShard;
use edge_node::model::ModelConfig;
use edge_node::quant::GgmlType;
use edge_node::shard::{HeadOutput, Reducer, SeqId, Shard, ShardError, ShardInput, ShardOutput, Step};
use edge_node::stage::worker::{Outbox, Work, Worker};
use edge_protocol::stage::{Fork, JobParams, MemberRef, NodeMsg, PipeMsg, StepInput};
use edge_protocol::{LayerSlice, ShardSpec};

/// Each forward call's steps as (sequence, input tokens).
type Calls = Arc<Mutex<Vec<Vec<(SeqId, usize)>>>>;

/// A CPU shard that records what each forward call ran, and each fork as (from, to, positions).
struct Recording {
    inner: CpuShard,
    calls: Calls,
    forks: Arc<Mutex<Vec<Fork3>>>,
}

/// A fork as (from, to, positions).
type Fork3 = (SeqId, SeqId, usize);

impl Recording {
    fn new(inner: CpuShard, calls: Calls) -> Recording {
        Recording { inner, calls, forks: Arc::default() }
    }
}

/// Where a stage of one member sends its results: the coordinator's channel, `next` (None: around its own ring),
/// batches of at most `batch` sequences (0: no limit).
fn lone(
    coordinator: tokio::sync::mpsc::UnboundedSender<NodeMsg>,
    next: Option<tokio::sync::mpsc::Sender<PipeMsg>>,
    batch: usize,
) -> Outbox {
    Outbox { coordinator, next, group: vec![None], group_batches: false, batch }
}

/// A stage of the tiny model (`spec` of its config) behind a recorder; its calls and the config.
fn recorded(spec: impl FnOnce(&ModelConfig) -> ShardSpec) -> (Recording, Calls, ModelConfig) {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q4_0).load();
    let calls = Calls::default();
    let shard = Recording::new(CpuShard::load(&g, &cfg, spec(&cfg)).unwrap(), calls.clone());
    (shard, calls, cfg)
}

/// A worker's queue, wired to send what goes to the next stage to the last receiver (reports to the other).
type Piped = (
    std::sync::mpsc::Sender<Work>,
    std::sync::mpsc::Receiver<Work>,
    tokio::sync::mpsc::UnboundedReceiver<NodeMsg>,
    tokio::sync::mpsc::Receiver<PipeMsg>,
);

fn piped_queue() -> Piped {
    let (tx, rx) = std::sync::mpsc::channel();
    let (to_coord, reports) = tokio::sync::mpsc::unbounded_channel();
    let (next, sent) = tokio::sync::mpsc::channel(64);
    tx.send(Work::Wired(lone(to_coord, Some(next), 0))).unwrap();
    (tx, rx, reports, sent)
}

fn rows(input: &ShardInput<'_>) -> usize {
    match input {
        ShardInput::Tokens(t) => t.len(),
        ShardInput::Hidden(_) => 0,
    }
}

impl Shard for Recording {
    fn spec(&self) -> ShardSpec {
        self.inner.spec()
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn backend_name(&self) -> String {
        self.inner.backend_name()
    }
    fn open_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), ShardError> {
        self.inner.open_sequence(seq, capacity)
    }
    fn close_sequence(&mut self, seq: SeqId) {
        self.inner.close_sequence(seq)
    }
    fn sequence_len(&self, seq: SeqId) -> Result<usize, ShardError> {
        self.inner.sequence_len(seq)
    }
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ShardError> {
        self.inner.truncate(seq, len)
    }
    fn fork(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ShardError> {
        self.forks.lock().unwrap().push((from, to, len));
        self.inner.fork(from, to, len)
    }
    fn forward_reduce(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        want: HeadOutput,
        reduce: &mut dyn Reducer,
    ) -> Result<ShardOutput, ShardError> {
        self.calls.lock().unwrap().push(vec![(seq, rows(&input))]);
        self.inner.forward_reduce(seq, input, want, reduce)
    }
    fn batches(&self) -> bool {
        self.inner.batches()
    }
    fn forward_batch(&mut self, steps: &[Step<'_>], reduce: &mut dyn Reducer) -> Result<Vec<ShardOutput>, ShardError> {
        self.calls.lock().unwrap().push(steps.iter().map(|s| (s.seq, rows(&s.input))).collect());
        self.inner.forward_batch(steps, reduce)
    }
}

#[test]
fn a_request_arriving_during_a_chunked_prefill_joins_the_next_batch() {
    let (shard, calls, cfg) = recorded(|c| ShardSpec::whole(c.n_layers as u32));
    let me = MemberRef { stage: 0, member: 0 };
    let (tx, rx) = std::sync::mpsc::channel();
    let (to_coord, mut from_worker) = tokio::sync::mpsc::unbounded_channel();
    // Everything is queued before the worker runs: the long prompt's Start, then the short one's behind it.
    tx.send(Work::Wired(lone(to_coord, None, 0))).unwrap();
    let long = JobParams { prefill_chunk: 4, ..JobParams::new(64, 2) };
    tx.send(Work::Start { seq: 1, prompt: prompt(cfg.vocab, 12, 1), params: long }).unwrap();
    tx.send(Work::Start { seq: 2, prompt: prompt(cfg.vocab, 3, 2), params: JobParams::new(64, 2) }).unwrap();
    let worker = std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run());

    let mut finished = Vec::new();
    while finished.len() < 2 {
        match from_worker.blocking_recv().expect("the worker reports") {
            NodeMsg::Token { seq, finish: Some(_), .. } => finished.push(seq),
            NodeMsg::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    tx.send(Work::Shutdown).unwrap();
    worker.join().unwrap();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls[0], vec![(1, 4), (2, 3)], "the short prompt rides with the first chunk: {calls:?}");
    let long_inputs: Vec<usize> = calls.iter().flatten().filter(|s| s.0 == 1).map(|s| s.1).collect();
    assert_eq!(long_inputs, [4, 4, 4, 1], "the long prompt in chunks of 4, then its decode step: {calls:?}");
}

/// A batch's results go to the next stage as one announced group ([`PipeMsg::Group`]); a stage that is told of a
/// group waits for all of its steps and runs them as one batch, however far apart they arrive (without it, a stage
/// starts at the first step and the pipeline's batches split ever smaller).
#[test]
fn a_batch_goes_on_as_one_announced_group_and_the_next_stage_runs_it_whole() {
    let (shard, calls, cfg) = recorded(|c| ShardSpec::whole(c.n_layers as u32));
    let me = MemberRef { stage: 0, member: 0 };
    let (tx, rx, _reports, mut sent) = piped_queue();
    for seq in 1..=3u64 {
        let p = prompt(cfg.vocab, 2 + seq as usize, seq);
        tx.send(Work::Start { seq, prompt: p, params: JobParams::new(64, 4) }).unwrap();
    }
    let worker = std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run());

    // The three prompts ran as one batch: their tokens go on announced as one group, the steps right behind.
    let group = sent.blocking_recv();
    assert!(matches!(group, Some(PipeMsg::Group { count: 3 })), "{group:?}");
    let steps: Vec<PipeMsg> = (0..3).map(|_| sent.blocking_recv().expect("a step")).collect();
    let seqs: Vec<u64> = steps
        .iter()
        .map(|m| match m {
            PipeMsg::Step { seq, .. } => *seq,
            other => panic!("expected a step, got {other:?}"),
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Around the ring they come back announced, one at a time and apart: the stage runs them as one batch.
    let from = MemberRef { stage: 1, member: 0 };
    tx.send(Work::Pipe { from, msg: PipeMsg::Group { count: 3 } }).unwrap();
    for msg in steps {
        std::thread::sleep(std::time::Duration::from_millis(25));
        tx.send(Work::Pipe { from, msg }).unwrap();
    }
    let again = sent.blocking_recv();
    assert!(matches!(again, Some(PipeMsg::Group { count: 3 })), "{again:?}");
    tx.send(Work::Shutdown).unwrap();
    worker.join().unwrap();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "two batches of three: {calls:?}");
    assert_eq!(calls[1], vec![(1, 1), (2, 1), (3, 1)], "{calls:?}");
}

/// Batches hold at most the planned group of sequences (`Outbox::batch`): the rest run as a group of their own.
#[test]
fn batches_hold_at_most_the_planned_group() {
    let (shard, calls, cfg) = recorded(|c| ShardSpec::whole(c.n_layers as u32));
    let (tx, rx) = std::sync::mpsc::channel();
    let (to_coord, mut reports) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Work::Wired(lone(to_coord, None, 2))).unwrap();
    for seq in 1..=3u64 {
        tx.send(Work::Start { seq, prompt: prompt(cfg.vocab, 2, seq), params: JobParams::new(64, 2) }).unwrap();
    }
    let me = MemberRef { stage: 0, member: 0 };
    let worker = std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run());
    let mut finished = 0;
    while finished < 3 {
        match reports.blocking_recv().expect("the worker reports") {
            NodeMsg::Token { finish: Some(_), .. } => finished += 1,
            NodeMsg::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    tx.send(Work::Shutdown).unwrap();
    worker.join().unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(calls.iter().all(|c| c.len() <= 2), "{calls:?}");
    assert_eq!(calls[0], vec![(1, 2), (2, 2)], "{calls:?}");
    assert_eq!(calls[1][0], (3, 2), "the third prompt waited for the next batch: {calls:?}");
}

/// The first stage of a pipeline: a new sequence whose prompt is ready while another sequence's step is out in
/// the ring waits for that step to come back and runs with it, so the two decode as one group from then on.
#[test]
fn a_new_sequence_on_the_first_stage_joins_the_group_out_in_the_ring() {
    let (shard, calls, cfg) = recorded(|_| ShardSpec { layer_start: 0, layer_end: 1, embed: true, head: false });
    let me = MemberRef { stage: 0, member: 0 };
    let (tx, rx, _reports, mut sent) = piped_queue();
    tx.send(Work::Start { seq: 1, prompt: prompt(cfg.vocab, 5, 1), params: JobParams::new(64, 4) }).unwrap();
    let worker = std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run());
    let out = sent.blocking_recv();
    assert!(matches!(out, Some(PipeMsg::Step { seq: 1, sample: true, .. })), "{out:?}");

    // Sequence 2 comes while 1 is out; 1's token comes back around the ring a little later.
    tx.send(Work::Start { seq: 2, prompt: prompt(cfg.vocab, 3, 2), params: JobParams::new(64, 4) }).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(10));
    let back = PipeMsg::Step { seq: 1, job: None, input: StepInput::Tokens(vec![7]), sample: true };
    tx.send(Work::Pipe { from: MemberRef { stage: 2, member: 0 }, msg: back }).unwrap();
    let group = sent.blocking_recv();
    assert!(matches!(group, Some(PipeMsg::Group { count: 2 })), "{group:?}");
    tx.send(Work::Shutdown).unwrap();
    worker.join().unwrap();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls, vec![vec![(1, 5)], vec![(2, 3), (1, 1)]], "2's prompt runs with 1's next token");
}

#[test]
fn an_embedding_job_answers_one_unit_vector_and_closes_its_sequence() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q4_0).load();
    let whole = ShardSpec::whole(cfg.n_layers as u32);
    let ids = prompt(cfg.vocab, 12, 3);
    let mut alone = CpuShard::load(&g, &cfg, whole).unwrap();
    alone.open_sequence(1, 64).unwrap();
    let ShardOutput::HiddenSum(mut want) = alone.forward(1, ShardInput::Tokens(&ids), HeadOutput::HiddenSum).unwrap()
    else {
        panic!("a hidden sum expected")
    };
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
    want.iter_mut().for_each(|v| *v /= norm);

    let shard = CpuShard::load(&g, &cfg, whole).unwrap();
    let me = MemberRef { stage: 0, member: 0 };
    let (tx, rx) = std::sync::mpsc::channel();
    let (to_coord, mut from_worker) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Work::Wired(lone(to_coord, None, 0))).unwrap();
    let embed = JobParams { embed: true, ..JobParams::new(64, 1) };
    tx.send(Work::Start { seq: 1, prompt: ids.clone(), params: embed.clone() }).unwrap();
    let chunked = JobParams { prefill_chunk: 5, ..embed };
    tx.send(Work::Start { seq: 2, prompt: ids.clone(), params: chunked }).unwrap();
    let worker = std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run());

    let (mut vectors, mut closed) = (vec![None, None], 0);
    while closed < 2 {
        match from_worker.blocking_recv().expect("the worker reports") {
            NodeMsg::Embedding { seq, vector } => {
                assert!(vectors[seq as usize - 1].replace(vector).is_none(), "one embedding per job");
            }
            NodeMsg::SeqStats { seq, .. } => {
                assert!(vectors[seq as usize - 1].is_some(), "the embedding comes before the close");
                closed += 1;
            }
            NodeMsg::Token { seq, .. } => panic!("sequence {seq} sampled a token"),
            NodeMsg::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    tx.send(Work::Shutdown).unwrap();
    worker.join().unwrap();
    for v in vectors.into_iter().map(Option::unwrap) {
        let dot: f32 = v.iter().zip(&want).map(|(a, b)| a * b).sum();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length: {norm}");
        assert!(dot > 0.9999, "the whole prompt's mean direction, in one step or in chunks of 5: {dot}");
    }
}

/// Each sequence's tokens, the forks the shard made and its forward calls.
type Choices = (Vec<Vec<u32>>, Vec<Fork3>, Vec<Vec<(SeqId, usize)>>);

/// Runs three greedy choices of one request and a fork of a sequence that is not here through a one-stage worker,
/// each generating `max_tokens`; returns each one's tokens, the forks the shard made and its forward calls.
fn choices(max_tokens: u32) -> Choices {
    let (shard, calls, cfg) = recorded(|c| ShardSpec::whole(c.n_layers as u32));
    let forks = shard.forks.clone();
    let me = MemberRef { stage: 0, member: 0 };
    let (tx, rx) = std::sync::mpsc::channel();
    let (to_coord, mut from_worker) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Work::Wired(lone(to_coord, None, 0))).unwrap();
    // Sent together as the coordinator sends them: the parent's prompt is prefilled in chunks of 4, the forks
    // wait for it. A fork of a sequence that is not here runs its whole prompt.
    let ids = prompt(cfg.vocab, 12, 4);
    let params = JobParams { prefill_chunk: 4, ..JobParams::new(64, max_tokens) };
    let fork = |parent| JobParams { fork: Some(Fork { parent, len: 11 }), ..params.clone() };
    tx.send(Work::Start { seq: 1, prompt: ids.clone(), params: params.clone() }).unwrap();
    tx.send(Work::Start { seq: 2, prompt: ids.clone(), params: fork(1) }).unwrap();
    tx.send(Work::Start { seq: 3, prompt: ids.clone(), params: fork(1) }).unwrap();
    tx.send(Work::Start { seq: 4, prompt: ids.clone(), params: fork(99) }).unwrap();
    let worker = std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run());

    let mut tokens = vec![Vec::new(); 4];
    let mut closed = 0;
    while closed < 4 {
        match from_worker.blocking_recv().expect("the worker reports") {
            NodeMsg::Token { seq, token, .. } => tokens[seq as usize - 1].extend(token),
            NodeMsg::SeqStats { .. } => closed += 1,
            NodeMsg::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    tx.send(Work::Shutdown).unwrap();
    worker.join().unwrap();
    let forks = forks.lock().unwrap().clone();
    let calls = calls.lock().unwrap().clone();
    (tokens, forks, calls)
}

#[test]
fn forks_share_their_parents_prefill_and_generate_its_tokens() {
    let (tokens, forks, calls) = choices(5);
    assert_eq!(tokens[0].len(), 5);
    assert!(tokens.iter().all(|t| *t == tokens[0]), "every choice says what the parent says: {tokens:?}");
    assert_eq!(forks, [(1, 2, 11), (1, 3, 11)], "the unknown parent is not forked");
    let prompt_rows = |seq: SeqId| -> usize {
        let rows: Vec<usize> = calls.iter().flatten().filter(|s| s.0 == seq).map(|s| s.1).collect();
        rows[..rows.len() - 4].iter().sum()
    };
    assert_eq!(prompt_rows(1), 12, "{calls:?}");
    assert_eq!((prompt_rows(2), prompt_rows(3)), (1, 1), "the forks run only the last prompt token: {calls:?}");
    assert_eq!(prompt_rows(4), 12, "{calls:?}");
}

#[test]
fn a_parent_that_ends_at_its_first_token_closes_after_its_forks_copied_it() {
    // On one stage the parent closes right after its last token, which comes out of the same step that lets its
    // forks start: the close waits until they have copied its positions.
    let (tokens, forks, _) = choices(1);
    assert!(tokens.iter().all(|t| t.len() == 1 && *t == tokens[0]), "{tokens:?}");
    assert_eq!(forks, [(1, 2, 11), (1, 3, 11)]);
}

/// Each sequence's tokens and each member's forward calls.
type PairRun = (Vec<Vec<u32>>, [Vec<Vec<(SeqId, usize)>>; 2]);

/// A pipe from member `from` into a worker's queue, as a session's pipe delivers it; the thread ends once every
/// sender is gone and it has delivered what they sent.
fn pipe(
    from: u32,
    to: &std::sync::mpsc::Sender<Work>,
) -> (tokio::sync::mpsc::Sender<PipeMsg>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PipeMsg>(64);
    let to = to.clone();
    let thread = std::thread::spawn(move || {
        while let Some(msg) = rx.blocking_recv() {
            if to.send(Work::Pipe { from: MemberRef { stage: 0, member: from }, msg }).is_err() {
                break;
            }
        }
    });
    (tx, thread)
}

/// Four greedy requests sent together through a one-stage plan whose stage is the tiny model split two ways (KV
/// heads and FFN columns), the members wired to each other as a session wires them; `batched`: the group batches.
fn tensor_parallel_pair(batched: bool) -> PairRun {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q4_0).load();
    let spec = ShardSpec::whole(cfg.n_layers as u32);
    let slices = [
        LayerSlice { kv_heads: (0, 1), ffn: (0, 64), q_heads: None },
        LayerSlice { kv_heads: (1, 2), ffn: (64, 96), q_heads: None },
    ];
    let calls = [Calls::default(), Calls::default()];
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| std::sync::mpsc::channel()).unzip();
    let (to_coord, mut from_leader) = tokio::sync::mpsc::unbounded_channel();
    let (to_coord_1, mut from_member) = tokio::sync::mpsc::unbounded_channel();
    let (to_member, leader_pipe) = pipe(0, &txs[1]);
    let group = vec![None, Some(to_member)];
    txs[0]
        .send(Work::Wired(Outbox { coordinator: to_coord, next: None, group, group_batches: batched, batch: 0 }))
        .unwrap();
    let group = vec![Some(pipe(1, &txs[0]).0), None];
    txs[1]
        .send(Work::Wired(Outbox { coordinator: to_coord_1, next: None, group, group_batches: batched, batch: 0 }))
        .unwrap();
    for seq in 1..=4u64 {
        let ids = prompt(cfg.vocab, 2 + seq as usize, seq);
        txs[0].send(Work::Start { seq, prompt: ids, params: JobParams::new(64, 6) }).unwrap();
    }
    let workers: Vec<_> = common::member_models(&g, &cfg, spec, &slices)
        .into_iter()
        .zip(rxs)
        .zip(&calls)
        .enumerate()
        .map(|(i, (((m, c), rx), calls))| {
            let shard = Recording::new(CpuShard::load(&m, &c, spec).unwrap(), calls.clone());
            let me = MemberRef { stage: 0, member: i as u32 };
            std::thread::spawn(move || Worker::new(Box::new(shard), me, rx).run())
        })
        .collect();

    let mut tokens = vec![Vec::new(); 4];
    let mut finished = 0;
    while finished < 4 {
        match from_leader.blocking_recv().expect("the leader reports") {
            NodeMsg::Token { seq, token, finish, .. } => {
                tokens[seq as usize - 1].extend(token);
                finished += finish.is_some() as usize;
            }
            NodeMsg::Error { message, .. } => panic!("leader: {message}"),
            _ => {}
        }
    }
    // The leader stops first; once its pipe has delivered everything it sent (the last partial sums of member 1's
    // last step among them), member 1 stops behind that in its queue.
    let mut workers = workers.into_iter();
    txs[0].send(Work::Shutdown).unwrap();
    workers.next().unwrap().join().unwrap();
    leader_pipe.join().unwrap();
    txs[1].send(Work::Shutdown).unwrap();
    workers.next().unwrap().join().unwrap();
    while let Ok(msg) = from_member.try_recv() {
        assert!(!matches!(msg, NodeMsg::Error { .. }), "member 1: {msg:?}");
    }
    let calls = calls.map(|c| c.lock().unwrap().clone());
    (tokens, calls)
}

#[test]
fn tensor_parallel_members_run_the_same_batches_and_the_same_tokens_as_steps_alone() {
    let (alone, alone_calls) = tensor_parallel_pair(false);
    assert!(alone_calls.iter().flatten().all(|c| c.len() == 1), "{alone_calls:?}");
    let (batched, calls) = tensor_parallel_pair(true);
    assert!(batched.iter().all(|t| t.len() == 6), "{batched:?}");
    assert_eq!(batched, alone, "a row's result does not depend on the batch");
    assert_eq!(calls[0], calls[1], "both members run the very same batches");
    assert!(calls[0].iter().any(|c| c.len() > 1), "the leader batched: {:?}", calls[0]);
}
