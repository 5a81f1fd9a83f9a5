//! Continuous batching on the cpu and wgpu backends: steps of different sequences in one forward
//! (`Shard::forward_batch`) give every sequence exactly the logits it gets alone, bit for bit, whatever joins the
//! batch, in which order, with prompts fed in chunks among other sequences' decode steps, on one shard or a
//! pipeline of two. A bad step fails the whole batch before any sequence moves.

mod common;

use std::sync::{Arc, OnceLock};

use common::tiny::*;
use edge_node::cpu::kernels::Kernels;
use edge_node::cpu::pool::Pool;
use edge_node::cpu::CpuShard;
use edge_node::gguf::Gguf;
use edge_node::gpu::{GpuContext, GpuOptions, GpuShard};
use edge_node::model::ModelConfig;
use edge_node::quant::GgmlType;
use edge_node::reference::argmax;
use edge_node::shard::{HeadOutput, NoReduce, SeqId, Shard, ShardError, ShardInput, ShardOutput, Step};
use edge_protocol::ShardSpec;

/// Greedy tokens decoded after each prompt.
const DECODE: usize = 6;
const CAPACITY: usize = 64;

/// Where the shards run.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Cpu,
    /// wgpu, at most this many rows per submit (a batch of more rows runs in several submits).
    Wgpu(usize),
}

/// One wgpu device for the whole test binary (its pipelines compile once).
fn gpu() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| GpuContext::new().expect("a wgpu adapter (lavapipe on CI)")).clone()
}

fn shards(g: &Gguf, cfg: &ModelConfig, stages: usize, backend: Backend) -> Vec<Box<dyn Shard>> {
    let pool = Arc::new(Pool::new(2));
    let layers = cfg.n_layers as u32;
    let specs = if stages == 1 { vec![ShardSpec::whole(layers)] } else { ShardSpec::split(layers, &[layers / 2]) };
    let load = |s: ShardSpec| -> Box<dyn Shard> {
        match backend {
            Backend::Cpu => Box::new(CpuShard::load_with(g, cfg, s, Kernels::detect(), pool.clone()).unwrap()),
            Backend::Wgpu(rows) => {
                let opts = GpuOptions { max_step_tokens: rows, ..GpuOptions::default() };
                Box::new(GpuShard::load(gpu(), g, cfg, s, opts).unwrap())
            }
        }
    };
    specs.into_iter().map(load).collect()
}

/// One batched step through every stage: `(sequence, token ids, what the head returns)`.
fn step(
    stages: &mut [Box<dyn Shard>],
    batch: &[(SeqId, Vec<u32>, HeadOutput)],
) -> Result<Vec<ShardOutput>, ShardError> {
    let mut hidden: Option<Vec<ShardOutput>> = None;
    for shard in stages.iter_mut() {
        let steps: Vec<Step> = batch
            .iter()
            .enumerate()
            .map(|(i, (seq, ids, want))| {
                let input = match &hidden {
                    None => ShardInput::Tokens(ids),
                    Some(h) => match &h[i] {
                        ShardOutput::Hidden(h) => ShardInput::Hidden(h),
                        other => panic!("a middle stage returned {other:?}"),
                    },
                };
                Step { seq: *seq, input, want: *want }
            })
            .collect();
        let out = shard.forward_batch(&steps, &mut NoReduce)?;
        assert_eq!(out.len(), batch.len(), "one output per step");
        hidden = Some(out);
    }
    Ok(hidden.expect("at least one stage"))
}

/// Logits of the prompt's last position, then of every greedy step, for one sequence alone on one shard.
fn alone(g: &Gguf, cfg: &ModelConfig, p: &[u32], backend: Backend) -> Vec<Vec<f32>> {
    let mut s = shards(g, cfg, 1, backend);
    s[0].open_sequence(1, CAPACITY).unwrap();
    let mut out = vec![logits(s[0].forward(1, ShardInput::Tokens(p), HeadOutput::LogitsLast).unwrap())];
    for _ in 0..DECODE {
        let t = argmax(out.last().unwrap());
        out.push(logits(s[0].forward(1, ShardInput::Tokens(&[t]), HeadOutput::LogitsLast).unwrap()));
    }
    out
}

/// Runs the prompts as a continuously batched server would: sequence `i` arrives at tick `arrive[i]`; every
/// tick each running sequence adds one step to the batch (its next prompt chunk of at most `chunk` tokens, else
/// one decode step), in an order that rotates with the tick. Returns every sequence's logits as `alone` does.
fn batched(
    g: &Gguf,
    cfg: &ModelConfig,
    (stages, backend): (usize, Backend),
    prompts: &[Vec<u32>],
    arrive: &[usize],
    chunk: usize,
) -> Vec<Vec<Vec<f32>>> {
    let mut st = shards(g, cfg, stages, backend);
    let mut fed = vec![0; prompts.len()];
    let mut out: Vec<Vec<Vec<f32>>> = vec![vec![]; prompts.len()];
    for tick in 0..100 {
        let mut batch = vec![];
        for k in 0..prompts.len() {
            let i = (k + tick) % prompts.len();
            if arrive[i] > tick || out[i].len() > DECODE {
                continue;
            }
            if arrive[i] == tick {
                for s in st.iter_mut() {
                    s.open_sequence(i as SeqId, CAPACITY).unwrap();
                }
            }
            let ids = if fed[i] < prompts[i].len() {
                let end = (fed[i] + chunk).min(prompts[i].len());
                let ids = prompts[i][fed[i]..end].to_vec();
                fed[i] = end;
                ids
            } else {
                vec![argmax(out[i].last().expect("the prompt's logits"))]
            };
            batch.push((i as SeqId, ids, HeadOutput::LogitsLast));
        }
        if batch.is_empty() && out.iter().all(|o| o.len() > DECODE) {
            return out;
        }
        for ((seq, _, _), o) in batch.iter().zip(step(&mut st, &batch).unwrap()) {
            let i = *seq as usize;
            if fed[i] == prompts[i].len() {
                out[i].push(logits(o)); // a chunk that is not the prompt's last has no logits anyone uses
            }
        }
    }
    panic!("the schedule did not finish in 100 ticks");
}

/// Schedules (stages, arrivals, prompt chunk) of the four prompts.
const SCHEDULES: [(usize, [usize; 4], usize); 5] =
    [(1, [0, 0, 0, 0], 64), (1, [0, 1, 2, 3], 7), (1, [3, 2, 0, 0], 4), (2, [0, 2, 1, 0], 7), (2, [1, 0, 0, 2], 64)];

fn check(g: &Gguf, cfg: &ModelConfig, what: &str, backend: Backend, schedules: &[(usize, [usize; 4], usize)]) {
    let prompts: Vec<Vec<u32>> = [1, 5, 17, 40].iter().map(|&n| prompt(cfg.vocab, n, n as u64)).collect();
    let want: Vec<_> = prompts.iter().map(|p| alone(g, cfg, p, backend)).collect();
    for &(stages, arrive, chunk) in schedules {
        let got = batched(g, cfg, (stages, backend), &prompts, &arrive, chunk);
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            assert!(
                got == want,
                "{what} on {backend:?}: sequence {i} (prompt of {}) differs in a batch: {stages} stage(s), arrivals \
                 {arrive:?}, chunks of {chunk}",
                prompts[i].len()
            );
        }
    }
}

#[test]
fn a_sequence_gets_its_alone_logits_in_any_batch() {
    let (g, c) = Tiny::llama(|_, _| GgmlType::Q4_1).load();
    check(&g, &c, "llama q4_1", Backend::Cpu, &SCHEDULES);
    let (g, c) = Tiny::qwen2_kquants().load();
    check(&g, &c, "qwen2 k-quants", Backend::Cpu, &SCHEDULES);
}

/// The wgpu backend batches too: one submit runs every sequence's rows (several when they pass `max_step_tokens`:
/// 16 here, so 40-token prompts sent whole run on their own and chunked ones share submits).
#[test]
fn wgpu_sequences_get_their_alone_logits_in_any_batch() {
    let (g, c) = Tiny::llama(|_, _| GgmlType::Q4_1).load();
    check(&g, &c, "llama q4_1", Backend::Wgpu(256), &SCHEDULES);
    check(&g, &c, "llama q4_1", Backend::Wgpu(16), &SCHEDULES);
    let (g, c) = Tiny::qwen2_kquants().load();
    check(&g, &c, "qwen2 k-quants", Backend::Wgpu(256), &SCHEDULES);
    let (g, c) = Tiny::gemma3().load();
    check(&g, &c, "gemma3", Backend::Wgpu(16), &SCHEDULES);
}

#[test]
fn smollm2_sequences_keep_their_tokens_in_any_batch() {
    let (g, c) = common::smollm2();
    check(&g, &c, "SmolLM2-135M Q4_1", Backend::Cpu, &SCHEDULES);
    check(&g, &c, "SmolLM2-135M Q4_1", Backend::Wgpu(256), &SCHEDULES[1..2]);
}

#[test]
fn argmax_rows_in_a_batch_are_the_alone_ones() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q5_0).load();
    let (a, b) = (prompt(cfg.vocab, 9, 1), prompt(cfg.vocab, 3, 2));
    let mut s = shards(&g, &cfg, 1, Backend::Cpu);
    s[0].open_sequence(1, CAPACITY).unwrap();
    let want = tokens(s[0].forward(1, ShardInput::Tokens(&a), HeadOutput::ArgmaxAll).unwrap());
    assert_eq!(want.len(), 9);
    let mut s = shards(&g, &cfg, 1, Backend::Cpu);
    for seq in [1, 2] {
        s[0].open_sequence(seq, CAPACITY).unwrap();
    }
    let out = step(&mut s, &[(2, b.clone(), HeadOutput::LogitsLast), (1, a, HeadOutput::ArgmaxAll)]).unwrap();
    assert_eq!(out[1], ShardOutput::Tokens(want), "every position's argmax, in the step's place");
    let mut alone_b = shards(&g, &cfg, 1, Backend::Cpu);
    alone_b[0].open_sequence(2, CAPACITY).unwrap();
    assert_eq!(out[0], alone_b[0].forward(2, ShardInput::Tokens(&b), HeadOutput::LogitsLast).unwrap());
}

/// A batch with a bad step (a sequence twice, an unknown one, one past its context, a token outside the
/// vocabulary) is refused as a whole: no sequence advances, and the good steps then run as if nothing happened.
#[test]
fn a_bad_step_fails_the_whole_batch_and_moves_nothing() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q8_0).load();
    let p = prompt(cfg.vocab, 5, 3);
    let want = alone(&g, &cfg, &p, Backend::Cpu);
    let mut s = shards(&g, &cfg, 1, Backend::Cpu);
    s[0].open_sequence(1, CAPACITY).unwrap();
    s[0].open_sequence(2, 4).unwrap();
    let good = (1, p.clone(), HeadOutput::LogitsLast);
    let bad = [
        (vec![good.clone(), (1, vec![1], HeadOutput::LogitsLast)], "twice"),
        (vec![good.clone(), (9, vec![1], HeadOutput::LogitsLast)], "unknown sequence 9"),
        (vec![good.clone(), (2, vec![1; 5], HeadOutput::LogitsLast)], "context full"),
        (vec![good.clone(), (2, vec![cfg.vocab as u32], HeadOutput::LogitsLast)], "outside the vocabulary"),
    ];
    for (batch, why) in bad {
        let e = step(&mut s, &batch).expect_err(why).to_string();
        assert!(e.contains(why), "{why}: {e}");
        assert_eq!((s[0].sequence_len(1).unwrap(), s[0].sequence_len(2).unwrap()), (0, 0), "{why}: nothing moved");
    }
    let out = step(&mut s, &[good, (2, vec![7, 8], HeadOutput::ArgmaxLast)]).unwrap();
    assert_eq!(out[0], ShardOutput::Logits(want[0].clone()));
    assert_eq!((s[0].sequence_len(1).unwrap(), s[0].sequence_len(2).unwrap()), (5, 2));
}
