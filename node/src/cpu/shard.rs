//! The native CPU backend's [`Shard`]: the reference forward pass's arithmetic, batched over a step's tokens and
//! run on the pool with the SIMD kernels. Weights stay in the memory-mapped file in their GGML blocks.
//!
//! Per layer, five matmul and attention jobs on the pool: Q/K/V together, attention (token x KV-head tasks), the
//! output projection, gate/up together, and the down projection; in between, the row work, one job each with a
//! row a task (the residual sum + norm + quantize, bias + QK-norm + RoPE + KV write, SwiGLU + quantize; a single
//! row runs on the caller). A tensor-parallel slice sums its partial outputs through
//! the [`Reducer`] twice per layer, as every backend does. A step may carry several sequences (continuous
//! batching, [`Shard::forward_batch`]): their rows share every matmul and attend over their own caches.

use std::sync::Arc;

use edge_protocol::ShardSpec;
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::kernels::Kernels;
use super::kv::SeqKv;
use super::layer_ops::{attention, for_rows, Cache, Half, Out, Residual};
use super::matmul::{matmul, Acts, Mat};
use super::pool::Pool;
use super::rope::RopeTable;
use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::model::{Activation, ModelConfig, ShardTensors};
use crate::quant::dequantize_row;
use crate::reference::{argmax, head_norm, rmsnorm};
use crate::shard::{
    check_distinct, check_input, normed_sum, HeadOutput, Reducer, SeqId, Sequences, Shard, ShardError, ShardInput,
    ShardOutput, Step,
};

struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    bias: [Option<Vec<f32>>; 3], // q, k, v
    /// gemma3: per-head norms of queries and keys, and the norms of the attention and FFN outputs.
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    /// RoPE inverse frequencies of this layer (local layers have their own base).
    freqs: Arc<Vec<f32>>,
    /// Sliding window (local layers of gemma3): a row attends to this many positions, its own included.
    window: Option<usize>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// Buffers reused across steps (sized for the largest step seen).
#[derive(Default)]
struct Scratch {
    /// The step's RoPE sines and cosines.
    rope: RopeTable,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    delta: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Logits of a step's head rows (several MB with a large vocabulary: a fresh zeroed buffer per step cost
    /// page faults and a memset).
    logits: Vec<f32>,
    acts: Acts,
    /// Time and weight bytes per kind of op, when profiling.
    prof: Option<Vec<OpStat>>,
}

/// What one kind of op cost over the steps profiled (`edge-node bench`).
#[derive(Debug, Clone, Default)]
pub struct OpStat {
    pub op: &'static str,
    pub weight_bytes: u64,
    pub nanos: u64,
}

const OPS: [&str; 9] = [
    "qkv matmul",
    "attention",
    "output matmul",
    "gate+up matmul",
    "down matmul",
    "head matmul",
    "residual+norm+quantize",
    "rope+kv write",
    "swiglu+quantize",
];

/// Adds the time since `t0` (taken when profiling) to op `i`.
fn add_time(prof: &mut Option<Vec<OpStat>>, i: usize, t0: Option<std::time::Instant>) {
    if let (Some(p), Some(t0)) = (prof, t0) {
        p[i].nanos += t0.elapsed().as_nanos() as u64;
    }
}

/// Runs `f`, adding its time and `bytes` to op `i` when profiling.
fn timed<R>(prof: &mut Option<Vec<OpStat>>, i: usize, bytes: usize, f: impl FnOnce() -> R) -> R {
    let Some(p) = prof else { return f() };
    let t0 = std::time::Instant::now();
    let r = f();
    p[i].nanos += t0.elapsed().as_nanos() as u64;
    p[i].weight_bytes += bytes as u64;
    r
}

pub struct CpuShard {
    gguf: Gguf,
    cfg: ModelConfig,
    spec: ShardSpec,
    kernels: Kernels,
    pool: Arc<Pool>,
    layers: Vec<Layer>,
    embed: Option<TensorInfo>,
    head: Option<(Vec<f32>, Mat)>,
    seqs: Sequences<SeqKv<f16>>,
    s: Scratch,
}

impl CpuShard {
    /// Loads `spec` of the model onto the process-wide pool with the best kernels this CPU has.
    pub fn load(gguf: &Gguf, cfg: &ModelConfig, spec: ShardSpec) -> Result<CpuShard, ShardError> {
        CpuShard::load_with(gguf, cfg, spec, Kernels::detect(), super::pool::global())
    }

    /// Loads `spec` with the given kernels and pool (tests compare instruction-set paths this way).
    pub fn load_with(
        gguf: &Gguf,
        cfg: &ModelConfig,
        spec: ShardSpec,
        kernels: Kernels,
        pool: Arc<Pool>,
    ) -> Result<CpuShard, ShardError> {
        let t = ShardTensors::resolve(gguf, cfg, spec)?;
        let mat = |info: &TensorInfo| {
            Mat::new(gguf, info, kernels).ok_or_else(|| {
                ShardError::Model(GgufError::UnsupportedType {
                    tensor: info.name.clone(),
                    ty: format!("{:?} (no CPU kernel)", info.ty),
                })
            })
        };
        let read = |info: &TensorInfo| {
            let mut v = vec![0.0; info.n_elements() as usize];
            dequantize_row(info.ty, gguf.data(info), &mut v);
            v
        };
        // RoPE inverse frequencies `theta^(-2i / head_dim)`, as the reference computes them, per base.
        let freqs_of = |theta: f32| {
            Arc::new(
                (0..cfg.head_dim / 2).map(|i| theta.powf(-2.0 * i as f32 / cfg.head_dim as f32)).collect::<Vec<f32>>(),
            )
        };
        let (global, local) = (freqs_of(cfg.rope_theta), cfg.sliding.map(|s| freqs_of(s.rope_theta)));
        let layers = t
            .layers
            .iter()
            .enumerate()
            .map(|(li, l)| {
                let layer = spec.layer_start as usize + li; // absolute: the sliding-window pattern counts from 0
                let window = cfg.window(layer);
                Ok(Layer {
                    qk_norm: l.q_norm.as_ref().zip(l.k_norm.as_ref()).map(|(q, k)| (read(q), read(k))),
                    post_attn_norm: l.post_attn_norm.as_ref().map(read),
                    post_ffn_norm: l.post_ffn_norm.as_ref().map(read),
                    freqs: match (&local, window) {
                        (Some(f), Some(_)) => f.clone(),
                        _ => global.clone(),
                    },
                    window,
                    attn_norm: read(&l.attn_norm),
                    ffn_norm: read(&l.ffn_norm),
                    bias: [l.bq.as_ref().map(read), l.bk.as_ref().map(read), l.bv.as_ref().map(read)],
                    wq: mat(&l.wq)?,
                    wk: mat(&l.wk)?,
                    wv: mat(&l.wv)?,
                    wo: mat(&l.wo)?,
                    gate: mat(&l.w_gate)?,
                    up: mat(&l.w_up)?,
                    down: mat(&l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>, ShardError>>()?;
        let head = match (&t.output_norm, &t.output) {
            (Some(n), Some(o)) => Some((read(n), mat(o)?)),
            _ => None,
        };
        Ok(CpuShard {
            gguf: gguf.clone(),
            cfg: cfg.clone(),
            spec,
            kernels,
            pool,
            layers,
            embed: t.embed.clone(),
            head,
            seqs: Sequences::default(),
            s: Scratch::default(),
        })
    }

    /// Starts (or stops and clears) timing each kind of op.
    pub fn set_profiling(&mut self, on: bool) {
        self.s.prof = on.then(|| OPS.iter().map(|&op| OpStat { op, ..Default::default() }).collect());
    }

    /// Time and weight bytes per kind of op since profiling started.
    pub fn profile(&self) -> Vec<OpStat> {
        self.s.prof.clone().unwrap_or_default()
    }

    /// The kernels' instruction set and the pool's threads, e.g. `avx512vnni, 2 threads`.
    pub fn describe(&self) -> String {
        format!("{}, {} threads", self.kernels.isa().name(), self.pool.threads())
    }
}

fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// Most rows of logits the scratch keeps between steps (a decode batch's).
const KEEP_LOGIT_ROWS: usize = 32;

/// One sequence's rows in a batched step: rows `row0 .. row0 + n` of the step are its positions `pos0 ..`.
#[derive(Debug, Clone, Copy)]
struct Seg {
    seq: SeqId,
    pos0: usize,
    row0: usize,
    n: usize,
}

impl CpuShard {
    /// A batched step's rows through the layers; `x` `(rows, dim)` is the residual stream, updated in place, and
    /// `segs` says which sequence and positions its rows are. Every row's arithmetic is the same whatever else is
    /// in the batch (the matmul's sums do not depend on the tile), so batching never changes a token.
    fn forward_layers(&mut self, segs: &[Seg], x: &mut [f32], reduce: &mut dyn Reducer) -> Result<(), ShardError> {
        let c = &self.cfg;
        let (dim, hd, kv_dim, q_dim, ffn) = (c.dim, c.head_dim, c.kv_dim(), c.n_heads * c.head_dim, c.ffn_dim);
        let n = x.len() / dim;
        let model = self.gguf.bytes();
        let s = &mut self.s;
        let seqs = &mut self.seqs;
        s.rope.start(segs.iter().flat_map(|g| g.pos0..g.pos0 + g.n));
        let xs = Out(x.as_mut_ptr());
        for (li, l) in self.layers.iter().enumerate() {
            // Attention: the previous layer's feed-forward output added to the residual stream, norm + quantize, row by
            // row in one job; then Q, K, V in one job.
            let prev = li.checked_sub(1).map(|p| (Out(s.delta.as_mut_ptr()), self.layers[p].post_ffn_norm.as_deref()));
            let res = Residual { x: xs, delta: prev, dim, eps: c.rms_eps };
            let xb = resize(&mut s.xb, n * dim);
            timed(&mut s.prof, 6, 0, || {
                s.acts.form_and_quantize(&self.pool, xb, dim, &[&l.wq, &l.wk, &l.wv], |t, o| {
                    // SAFETY: row t is this call's alone.
                    rmsnorm(o, unsafe { res.row(t) }, &l.attn_norm, c.rms_eps)
                })
            });
            let (q, k, v) = (resize(&mut s.q, n * q_dim), resize(&mut s.k, n * kv_dim), resize(&mut s.v, n * kv_dim));
            let bytes = l.wq.range.len() + l.wk.range.len() + l.wv.range.len();
            timed(&mut s.prof, 0, bytes, || {
                matmul(&self.pool, model, &[&l.wq, &l.wk, &l.wv], &s.acts, n, &mut [&mut *q, &mut *k, &mut *v])
            });

            // Bias, QK-norm and RoPE of the queries and keys and the KV write (each row into its sequence's
            // cache), rows split over the pool: the rows' columns come from every thread's matmul chunks.
            let t0 = s.prof.is_some().then(std::time::Instant::now);
            let mut dst: Vec<(Half, Half)> = Vec::with_capacity(n);
            for g in segs {
                let kv = &mut seqs.get_mut(g.seq)?.kv;
                for i in 0..g.n {
                    let (kr, vr) = kv.row_ptrs(li, g.pos0 + i);
                    dst.push((Half(kr), Half(vr)));
                }
            }
            let (qp, kp, vp) = (Out(q.as_mut_ptr()), Out(k.as_mut_ptr()), Out(v.as_mut_ptr()));
            let (qp, kp, vp, dst) = (&qp, &kp, &vp, &dst);
            let rope = s.rope.rows(&l.freqs);
            for_rows(&self.pool, n, |t| {
                // SAFETY: row t's queries, keys and values, and its cache row (each row of the step is its own
                // sequence's position, so no two rows share one), are this call's alone.
                let (qt, kt, vt, kr, vr) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.0.add(t * q_dim), q_dim),
                        std::slice::from_raw_parts_mut(kp.0.add(t * kv_dim), kv_dim),
                        std::slice::from_raw_parts_mut(vp.0.add(t * kv_dim), kv_dim),
                        std::slice::from_raw_parts_mut(dst[t].0 .0, kv_dim),
                        std::slice::from_raw_parts_mut(dst[t].1 .0, kv_dim),
                    )
                };
                for (x, b) in [(&mut *qt, &l.bias[0]), (&mut *kt, &l.bias[1]), (&mut *vt, &l.bias[2])] {
                    if let Some(b) = b {
                        x.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    }
                }
                if let Some((qn, kn)) = &l.qk_norm {
                    head_norm(qt, qn, c.rms_eps);
                    head_norm(kt, kn, c.rms_eps);
                }
                rope.apply(t, qt, kt, hd, c.rope);
                kr.convert_from_f32_slice(kt);
                vr.convert_from_f32_slice(vt);
            });
            add_time(&mut s.prof, 7, t0);

            // Attention over each sequence's cache: one task per (token, KV head, part of its query heads).
            let caches = segs
                .iter()
                .map(|g| {
                    let (k, v, base) = seqs.get(g.seq)?.kv.layer(li);
                    Ok(Cache { k, v, base, pos0: g.pos0, row0: g.row0 })
                })
                .collect::<Result<Vec<_>, ShardError>>()?;
            let att = resize(&mut s.att, n * q_dim);
            timed(&mut s.prof, 1, 0, || attention(&self.pool, self.kernels, c, l.window, &caches, q, att));
            timed(&mut s.prof, 6, 0, || s.acts.form_and_quantize(&self.pool, att, q_dim, &[&l.wo], |_, _| {}));
            let delta = resize(&mut s.delta, n * dim);
            timed(&mut s.prof, 2, l.wo.range.len(), || {
                matmul(&self.pool, model, &[&l.wo], &s.acts, n, &mut [&mut *delta])
            });
            reduce.all_reduce(delta)?;

            // Feed-forward: the attention's output added, norm + quantize, gate and up in one job, SwiGLU (or
            // GeGLU) + quantize, down.
            let res = Residual {
                x: xs,
                delta: Some((Out(delta.as_mut_ptr()), l.post_attn_norm.as_deref())),
                dim,
                eps: c.rms_eps,
            };
            let xb = resize(&mut s.xb, n * dim);
            timed(&mut s.prof, 6, 0, || {
                s.acts.form_and_quantize(&self.pool, xb, dim, &[&l.gate, &l.up], |t, o| {
                    // SAFETY: row t is this call's alone.
                    rmsnorm(o, unsafe { res.row(t) }, &l.ffn_norm, c.rms_eps)
                })
            });
            let (gate, up) = (resize(&mut s.gate, n * ffn), resize(&mut s.up, n * ffn));
            timed(&mut s.prof, 3, l.gate.range.len() + l.up.range.len(), || {
                matmul(&self.pool, model, &[&l.gate, &l.up], &s.acts, n, &mut [&mut *gate, &mut *up])
            });
            let (up, kern) = (&*up, self.kernels);
            let geglu = c.act == Activation::GeluTanh;
            timed(&mut s.prof, 8, 0, || {
                s.acts.form_and_quantize(&self.pool, gate, ffn, &[&l.down], |t, g| match geglu {
                    true => kern.geglu(g, &up[t * ffn..][..ffn]),
                    false => kern.swiglu(g, &up[t * ffn..][..ffn]),
                })
            });
            let delta = resize(&mut s.delta, n * dim);
            timed(&mut s.prof, 4, l.down.range.len(), || {
                matmul(&self.pool, model, &[&l.down], &s.acts, n, &mut [&mut *delta])
            });
            reduce.all_reduce(delta)?;
        }
        // The last layer's feed-forward output (each layer's is added in the next one's first job).
        if let Some(last) = self.layers.last() {
            let res = Residual {
                x: xs,
                delta: Some((Out(s.delta.as_mut_ptr()), last.post_ffn_norm.as_deref())),
                dim,
                eps: c.rms_eps,
            };
            timed(&mut s.prof, 6, 0, || {
                for_rows(&self.pool, n, |t| {
                    // SAFETY: row t is this call's alone.
                    unsafe { res.row(t) };
                })
            });
        }
        Ok(())
    }

    /// Logits `(rows.len(), vocab)` of the given rows of `x`, in `s.logits`.
    fn head(&mut self, x: &[f32], rows: &[usize]) {
        let (norm, out) = self.head.as_ref().expect("head shard");
        let dim = self.cfg.dim;
        let xb = resize(&mut self.s.xb, rows.len() * dim);
        self.s.acts.form_and_quantize(&self.pool, xb, dim, &[out], |i, o| {
            rmsnorm(o, &x[rows[i] * dim..][..dim], norm, self.cfg.rms_eps)
        });
        // Every element is written by the matmul: no need to clear what the last step left.
        let logits = resize(&mut self.s.logits, rows.len() * out.rows);
        let (pool, model, acts) = (&self.pool, self.gguf.bytes(), &self.s.acts);
        timed(&mut self.s.prof, 5, out.range.len(), || matmul(pool, model, &[out], acts, rows.len(), &mut [logits]));
    }
}

impl Shard for CpuShard {
    fn spec(&self) -> ShardSpec {
        self.spec
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn backend_name(&self) -> String {
        format!("cpu ({})", self.describe())
    }
    fn open_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), ShardError> {
        self.seqs.check_open(&self.cfg, seq, capacity)?;
        let kv = SeqKv::alloc(self.layers.iter().map(|l| l.window), capacity, self.cfg.kv_dim())?;
        self.seqs.insert(seq, capacity, kv);
        Ok(())
    }
    fn close_sequence(&mut self, seq: SeqId) {
        self.seqs.close(seq);
    }
    fn sequence_len(&self, seq: SeqId) -> Result<usize, ShardError> {
        Ok(self.seqs.get(seq)?.len)
    }
    fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), ShardError> {
        let s = self.seqs.get_mut(seq)?;
        s.kv.rewind(len.min(s.len))?;
        self.seqs.truncate(seq, len)
    }
    fn fork(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ShardError> {
        self.seqs.fork(from, to, len, |f, t| f.copy_prefix(t, len))
    }

    fn batches(&self) -> bool {
        true
    }

    fn forward_reduce(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        want: HeadOutput,
        reduce: &mut dyn Reducer,
    ) -> Result<ShardOutput, ShardError> {
        let mut out = self.forward_batch(&[Step { seq, input, want }], reduce)?;
        Ok(out.pop().expect("one output per step"))
    }

    /// All steps' rows go through each matmul together (one read of the weights); each row attends over its own
    /// sequence's cache. Every step is checked before any runs.
    fn forward_batch(&mut self, steps: &[Step<'_>], reduce: &mut dyn Reducer) -> Result<Vec<ShardOutput>, ShardError> {
        check_distinct(steps)?;
        let dim = self.cfg.dim;
        let mut segs = Vec::with_capacity(steps.len());
        let mut rows = 0;
        for s in steps {
            let n = check_input(&self.spec, &self.cfg, &s.input)?;
            let room = self.seqs.with_room(s.seq, n)?;
            let pos0 = room.len;
            room.kv.make_room(pos0, n)?;
            segs.push(Seg { seq: s.seq, pos0, row0: rows, n });
            rows += n;
        }
        let mut x = vec![0.0; rows * dim]; // (rows, dim)
        for (s, g) in steps.iter().zip(&segs) {
            let xs = &mut x[g.row0 * dim..(g.row0 + g.n) * dim];
            match s.input {
                ShardInput::Tokens(t) => {
                    let e = self.embed.as_ref().expect("embedding shard");
                    let (rb, data) = (e.ty.row_bytes(dim), self.gguf.data(e));
                    for (&tok, xr) in t.iter().zip(xs.chunks_exact_mut(dim)) {
                        dequantize_row(e.ty, &data[tok as usize * rb..][..rb], xr);
                        if self.cfg.embed_scale != 1.0 {
                            xr.iter_mut().for_each(|v| *v *= self.cfg.embed_scale);
                        }
                    }
                }
                ShardInput::Hidden(h) => xs.copy_from_slice(h),
            }
        }
        self.forward_layers(&segs, &mut x, reduce)?;
        for g in &segs {
            self.seqs.get_mut(g.seq)?.len += g.n;
        }
        if !self.spec.head {
            // Split the rows by sequence from the back: the first sequence's rows keep the buffer (no copy for a
            // step of one sequence).
            let mut out: Vec<ShardOutput> =
                segs.iter().rev().map(|g| ShardOutput::Hidden(x.split_off(g.row0 * dim))).collect();
            out.reverse();
            return Ok(out);
        }
        // One head matmul for every row any step wants logits of.
        let wanted = |(s, g): (&Step, &Seg)| match s.want {
            HeadOutput::ArgmaxAll => g.row0..g.row0 + g.n,
            HeadOutput::ArgmaxLast | HeadOutput::LogitsLast => g.row0 + g.n - 1..g.row0 + g.n,
            HeadOutput::HiddenSum => 0..0,
        };
        let head_rows: Vec<usize> = steps.iter().zip(&segs).flat_map(wanted).collect();
        let vocab = self.cfg.vocab;
        if head_rows.is_empty() {
            self.s.logits.clear();
        } else {
            self.head(&x, &head_rows);
        }
        let mut per_row = self.s.logits[..head_rows.len() * vocab].chunks_exact(vocab);
        let norm = &self.head.as_ref().expect("head shard").0;
        let outs = steps
            .iter()
            .zip(&segs)
            .map(|(s, g)| match s.want {
                HeadOutput::ArgmaxAll => ShardOutput::Tokens(per_row.by_ref().take(g.n).map(argmax).collect()),
                HeadOutput::ArgmaxLast => ShardOutput::Tokens(vec![argmax(per_row.next().expect("a row"))]),
                HeadOutput::LogitsLast => ShardOutput::Logits(per_row.next().expect("a row").to_vec()),
                HeadOutput::HiddenSum => {
                    ShardOutput::HiddenSum(normed_sum(&x[g.row0 * dim..(g.row0 + g.n) * dim], norm, self.cfg.rms_eps))
                }
            })
            .collect();
        // A decode batch's logits stay for the next step; a long prompt's every-row logits (speculation,
        // perplexity) are not kept.
        if head_rows.len() > KEEP_LOGIT_ROWS {
            self.s.logits = Vec::new();
        }
        Ok(outs)
    }
}
