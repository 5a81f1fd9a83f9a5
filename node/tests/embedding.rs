//! Embeddings' head output (`HeadOutput::HiddenSum`): on every backend, the sum over a step's positions of the
//! final-normed hidden state, against the reference body's hidden states normed here by hand; chunks of a
//! prompt add up to the whole prompt; in a CPU batch it is what the step gives alone.

mod common;

use common::tiny::*;
use edge_node::cpu::CpuShard;
use edge_node::gguf::Gguf;
use edge_node::model::ModelConfig;
use edge_node::quant::GgmlType;
use edge_node::reference::ReferenceShard;
use edge_node::shard::{HeadOutput, NoReduce, Shard, ShardInput, ShardOutput, Step};
use edge_protocol::ShardSpec;

const CAPACITY: usize = 64;

fn model() -> (Gguf, ModelConfig) {
    Tiny::llama(|l, s| match (l, s) {
        (None, _) => GgmlType::Q8_0,
        (Some(1), _) => GgmlType::Q4_1,
        _ => GgmlType::Q4_0,
    })
    .load()
}

fn sum(o: ShardOutput) -> Vec<f32> {
    match o {
        ShardOutput::HiddenSum(s) => s,
        other => panic!("expected a hidden sum, got {other:?}"),
    }
}

/// The oracle: the reference body's last hidden states (every layer, no head), each RMS-normed with the
/// model's `output_norm.weight` here, summed.
fn expected(g: &Gguf, cfg: &ModelConfig, ids: &[u32]) -> Vec<f32> {
    let body = ShardSpec { layer_start: 0, layer_end: cfg.n_layers as u32, embed: true, head: false };
    let mut shard = ReferenceShard::load(g, cfg, body).unwrap();
    shard.open_sequence(1, CAPACITY).unwrap();
    let h = hidden(shard.forward(1, ShardInput::Tokens(ids), HeadOutput::ArgmaxLast).unwrap());
    let w = g.tensors.iter().find(|t| t.name == "output_norm.weight").expect("the final norm");
    let w = edge_node::reference::read_f32(g, w);
    let mut out = vec![0.0f64; cfg.dim];
    for row in h.chunks_exact(cfg.dim) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / cfg.dim as f64;
        let scale = 1.0 / (ms + cfg.rms_eps as f64).sqrt();
        out.iter_mut().zip(row.iter().zip(&w)).for_each(|(o, (&x, &w))| *o += x as f64 * scale * w as f64);
    }
    out.into_iter().map(|v| v as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

/// Runs `ids` through `shard` in the given chunk sizes, adding up the sums.
fn pooled(shard: &mut dyn Shard, ids: &[u32], chunks: &[usize]) -> Vec<f32> {
    shard.open_sequence(9, CAPACITY).unwrap();
    let mut total = vec![0.0; shard.config().dim];
    let mut at = 0;
    for &c in chunks {
        let s = sum(shard.forward(9, ShardInput::Tokens(&ids[at..at + c]), HeadOutput::HiddenSum).unwrap());
        total.iter_mut().zip(&s).for_each(|(t, s)| *t += s);
        at += c;
    }
    assert_eq!(at, ids.len());
    shard.close_sequence(9);
    total
}

#[test]
fn every_backend_sums_the_final_normed_hidden_states() {
    let (g, cfg) = model();
    let ids = prompt(cfg.vocab, 13, 5);
    let want = expected(&g, &cfg, &ids);
    let whole = ShardSpec::whole(cfg.n_layers as u32);

    let mut reference = ReferenceShard::load(&g, &cfg, whole).unwrap();
    let got = pooled(&mut reference, &ids, &[13]);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "reference {a} vs {b}");
    }
    let chunked = pooled(&mut reference, &ids, &[5, 1, 7]);
    for (a, b) in chunked.iter().zip(&got) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "chunked {a} vs whole {b}");
    }

    // The quantized backends carry their activation quantization: the same direction, closely.
    let mut cpu = CpuShard::load(&g, &cfg, whole).unwrap();
    for chunks in [&[13][..], &[4, 9]] {
        let c = cosine(&pooled(&mut cpu, &ids, chunks), &want);
        assert!(c > 0.999, "cpu in chunks {chunks:?}: cosine {c}");
    }
    let ctx = edge_node::gpu::GpuContext::new().unwrap();
    let mut gpu = edge_node::gpu::GpuShard::load(ctx, &g, &cfg, whole, Default::default()).unwrap();
    for chunks in [&[13][..], &[6, 7]] {
        let c = cosine(&pooled(&mut gpu, &ids, chunks), &want);
        assert!(c > 0.999, "wgpu in chunks {chunks:?}: cosine {c}");
    }
    // A shard without the head has nothing to pool: it passes its hidden states on.
    let body = ShardSpec { layer_start: 0, layer_end: 2, embed: true, head: false };
    let mut first = CpuShard::load(&g, &cfg, body).unwrap();
    first.open_sequence(1, CAPACITY).unwrap();
    let out = first.forward(1, ShardInput::Tokens(&ids), HeadOutput::HiddenSum).unwrap();
    assert_eq!(hidden(out).len(), ids.len() * cfg.dim);
}

#[test]
fn an_embedding_in_a_cpu_batch_is_what_it_is_alone() {
    let (g, cfg) = model();
    let whole = ShardSpec::whole(cfg.n_layers as u32);
    let (a, b) = (prompt(cfg.vocab, 9, 1), prompt(cfg.vocab, 4, 2));
    let mut shard = CpuShard::load(&g, &cfg, whole).unwrap();
    let alone_a = pooled(&mut shard, &a, &[9]);
    shard.open_sequence(3, CAPACITY).unwrap();
    let alone_b = tokens(shard.forward(3, ShardInput::Tokens(&b), HeadOutput::ArgmaxLast).unwrap());
    shard.close_sequence(3);

    shard.open_sequence(1, CAPACITY).unwrap();
    shard.open_sequence(2, CAPACITY).unwrap();
    let steps = [
        Step { seq: 2, input: ShardInput::Tokens(&b), want: HeadOutput::ArgmaxLast },
        Step { seq: 1, input: ShardInput::Tokens(&a), want: HeadOutput::HiddenSum },
    ];
    let mut out = shard.forward_batch(&steps, &mut NoReduce).unwrap().into_iter();
    assert_eq!(tokens(out.next().unwrap()), alone_b);
    assert_eq!(sum(out.next().unwrap()), alone_a, "bit for bit, as any row of a batch");
}
