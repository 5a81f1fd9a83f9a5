//! [`GpuShard`]: a shard on a wgpu device. Activations stay on the device between layers; one step is one
//! submit with one readback (the sampled token, the last logits, or the hidden state for the next shard), and may
//! hold the rows of several sequences (continuous batching, see `batch.rs`).
//!
//! Per layer: fused norm+QKV matmul, RoPE + KV write, attention, O matmul + residual, fused norm+gate/up+SwiGLU,
//! down matmul + residual: 6 dispatches (more only when q/k/v types differ or a matrix is chunked). gemma3 adds
//! three: QK-norm before RoPE, and its post-norms, which norm the O and down outputs before the residual add.
//!
//! A member of a tensor-parallel stage (`cfg.partial_layers`) runs the same kernels, but its O and down matmuls
//! write partial sums to their own buffer instead of adding to the residual stream: the stage sums them between
//! the blocks, on the host (see `tensor_parallel.rs`).

use std::sync::Arc;

use edge_protocol::ShardSpec;

use crate::gguf::{Gguf, TensorInfo};
use crate::model::{Activation, ModelConfig, ShardTensors};
use crate::shard::{HeadOutput, Reducer, SeqId, Sequences, Shard, ShardError, ShardInput, ShardOutput, Step};

use super::context::{GpuContext, UNIFORM_VIEW_BYTES};
use super::dispatch::{group_tokens, Dispatch, Grid, MatParams, Narrow, Params8, StepParams};
use super::kernels::{bind, bind_res, Kernel, Pipeline, PipelineKey, Res};
use super::kv::GpuSeq;
use super::weights::GpuMatrix;

/// Rows whose logits one step may hold (the greedy check of a whole prompt runs in steps of this size; a batch holds
/// the last rows of at most this many sequences).
pub(super) const HEAD_ROWS: u64 = 32;

#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Largest weight chunk in bytes (default: a whole matrix per chunk); smaller values split matrices into
    /// row chunks, one dispatch each (tests use this to exercise chunking).
    pub max_binding_bytes: Option<u64>,
    /// Positions processed per submit; longer prompts run in several steps.
    pub max_step_tokens: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { max_binding_bytes: None, max_step_tokens: 256 }
    }
}

/// Device buffers for one step's activations, shared by all sequences.
pub(super) struct Activations {
    pub(super) tokens: wgpu::Buffer, // (max_step) u32
    pub(super) x: wgpu::Buffer,      // (max_step, dim) residual stream
    pub(super) qkv: wgpu::Buffer,    // (max_step, q_dim + 2 kv_dim)
    pub(super) q: wgpu::Buffer,      // (max_step, q_dim) after RoPE
    pub(super) att: wgpu::Buffer,    // (max_step, q_dim) attention output
    h: wgpu::Buffer,                 // (max_step, ffn_dim) SwiGLU output
    /// (head rows, dim): the rows of `x` the head computes logits of, gathered (see `batch.rs`).
    pub(super) xh: wgpu::Buffer,
    /// (max_step, dim) O / down outputs kept off the residual stream: a tensor-parallel member's partial sums,
    /// or gemma3's outputs before their post-norm.
    pub(super) partial: wgpu::Buffer,
    pub(super) logits: wgpu::Buffer,  // (head rows, vocab)
    pub(super) argmax: wgpu::Buffer,  // (head rows) u32
    pub(super) staging: wgpu::Buffer, // readback: the residual stream, then argmax tokens and logits
    dummy: wgpu::Buffer,              // bound where a kernel's optional storage input is unused
    dummy_view: wgpu::Buffer,         // bound where a kernel's optional uniform view is unused
    /// Entry g (at g * align bytes) holds g: which token group a matmul dispatch serves.
    groups: wgpu::Buffer,
}

pub(super) struct GpuLayer {
    pub(super) qkv: Vec<Dispatch>,       // norm + q/k/v projections (+ QK-norm)
    pub(super) o: Vec<Dispatch>,         // output projection + residual (post-norm, tensor-parallel: into `partial`)
    pub(super) gate_up: Vec<Dispatch>,   // norm + gate/up + SwiGLU or GeGLU
    pub(super) down: Vec<Dispatch>,      // down projection + residual (as `o`)
    pub(super) post_attn: Vec<Dispatch>, // gemma3, whole layers: x += norm(partial)
    pub(super) post_ffn: Vec<Dispatch>,  // gemma3, whole layers: x += norm(partial)
    /// gemma3, tensor-parallel member: the post-norm weights, applied on the host to the summed partials.
    pub(super) host_post_norms: Option<(Vec<f32>, Vec<f32>)>,
}

pub struct GpuShard {
    pub(super) ctx: Arc<GpuContext>,
    pub(super) cfg: ModelConfig,
    pub(super) spec: ShardSpec,
    pub(super) opts: GpuOptions,
    pub(super) step: wgpu::Buffer,
    pub(super) act: Activations,
    pub(super) embed: Option<Dispatch>,
    pub(super) layers: Vec<GpuLayer>,
    pub(super) head: Vec<Dispatch>, // norm + head matmul chunks over `xh`, argmax
    /// The final norm's weights on the host (embeddings: [`HeadOutput::HiddenSum`]).
    pub(super) output_norm: Option<Vec<f32>>,
    pub(super) seqs: Sequences<GpuSeq>,
}

impl GpuShard {
    /// Uploads the shard's weights (still quantized) and builds every pipeline it needs.
    pub fn load(
        ctx: Arc<GpuContext>,
        g: &Gguf,
        cfg: &ModelConfig,
        spec: ShardSpec,
        opts: GpuOptions,
    ) -> Result<GpuShard, ShardError> {
        let c = cfg;
        if c.partial_layers {
            check_slice(c)?;
        }
        let t = ShardTensors::resolve(g, cfg, spec)?;
        let align = ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        if !(c.dim * 4).is_multiple_of(align) {
            return Err(ShardError::Gpu(format!(
                "model width {} is not a multiple of {} floats, which this device's uniform offset alignment needs",
                c.dim,
                align / 4
            )));
        }
        if c.head_dim > 256 || !c.head_dim.is_multiple_of(4) {
            return Err(ShardError::Gpu(format!(
                "head dim {} is not supported by attention.wgsl (multiple of 4, at most 256)",
                c.head_dim
            )));
        }
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let m = opts.max_step_tokens.max(1) as u64;
        let max_binding = opts.max_binding_bytes.unwrap_or(u64::MAX);
        let f = 4u64;
        let head_rows = if spec.head { m.min(HEAD_ROWS) } else { 0 };
        let act = Activations {
            tokens: ctx.storage("tokens", m * 4),
            x: ctx.activation("x", m * c.dim as u64 * f),
            qkv: ctx.storage("qkv", m * qkv_dim as u64 * f),
            q: ctx.storage("q", m * q_dim as u64 * f),
            att: ctx.activation("att", m * q_dim as u64 * f),
            h: ctx.activation("h", m * c.ffn_dim as u64 * f),
            xh: ctx.activation("xh", head_rows * c.dim as u64 * f),
            logits: ctx.storage("logits", head_rows * c.vocab as u64 * f),
            argmax: ctx.storage("argmax", head_rows * 4),
            staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: m * c.dim as u64 * f + head_rows * (c.vocab as u64 + 1) * f,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            dummy: ctx.storage("dummy", 16),
            dummy_view: ctx.uniform_view("dummy view", &[]),
            groups: {
                let align = ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
                let mut entries = vec![0u8; (m as usize + 1) * align];
                for g in 0..=m as usize {
                    entries[g * align..g * align + 4].copy_from_slice(&(g as u32).to_le_bytes());
                }
                ctx.uniform_view("groups", &entries)
            },
            partial: ctx.storage("partial", if c.partial_layers || c.post_norms { m * c.dim as u64 * f } else { 16 }),
        };
        let step = ctx.uniform("step", &StepParams { n_tok: 0, pos0: 0, head_n: 0, head_row0: 0 });
        let mut me = GpuShard {
            ctx: ctx.clone(),
            cfg: c.clone(),
            spec,
            opts,
            step,
            act,
            embed: None,
            layers: Vec::new(),
            head: Vec::new(),
            output_norm: t.output_norm.as_ref().map(|n| crate::reference::read_f32(g, n)),
            seqs: Sequences::default(),
        };
        let vector = |info: &TensorInfo| ctx.uniform_view(&info.name, g.data(info));
        let host = |info: &Option<TensorInfo>| info.as_ref().map(|i| crate::reference::read_f32(g, i));
        let storage = |v: &[f32]| ctx.storage_init("norm", bytemuck::cast_slice(v));
        let norm_params = ctx.uniform("norm", &Params8([c.dim as u32, c.rms_eps.to_bits(), 0, 0, 0, 0, 0, 0]));
        let qk_params = ctx.uniform(
            "qk norm",
            &Params8([
                c.n_heads as u32,
                c.n_kv_heads as u32,
                c.head_dim as u32,
                qkv_dim as u32,
                c.rms_eps.to_bits(),
                0,
                0,
                0,
            ]),
        );

        // The embedding table doubles as the head when tied: upload it once.
        let embed_matrix = t.embed.as_ref().map(|e| GpuMatrix::concat(&ctx, g, &[e], max_binding));
        if let Some(em) = &embed_matrix {
            if em.chunks.len() != 1 {
                return Err(ShardError::Gpu(format!(
                    "embedding table of {} bytes was split into chunks (max_binding_bytes); chunked gathers are not implemented",
                    em.bytes()
                )));
            }
            let p = me.pipeline(Kernel::Embed, Some(em.ty), vec![]);
            let scale = c.embed_scale.to_bits();
            let params = ctx.uniform("embed", &Params8([em.rows as u32, em.cols as u32, scale, 0, 0, 0, 0, 0]));
            let ch = &em.chunks[0];
            let bg = bind_res(
                &ctx,
                &p,
                &[
                    Res::Buf(&me.step),
                    Res::Buf(&params),
                    Res::Buf(&me.act.tokens),
                    Res::Tex(&ch.scale),
                    Res::Tex(&ch.quant),
                    Res::Buf(&me.act.x),
                ],
            );
            me.embed = Some(Dispatch {
                pipe: p,
                narrow: None,
                bind: bg,
                grid: Grid::Embed { blocks: (c.dim / 32) as u32 },
                weight_bytes: 0,
            });
        }

        for lt in &t.layers {
            let attn_norm = vector(&lt.attn_norm);
            let ffn_norm = vector(&lt.ffn_norm);
            let bias = if c.qkv_bias {
                let mut b = Vec::new();
                for x in [&lt.bq, &lt.bk, &lt.bv] {
                    let x = x.as_ref().ok_or_else(|| ShardError::BadInput("qkv bias missing on some layers".into()))?;
                    b.extend_from_slice(g.data(x));
                }
                Some(ctx.storage_init("qkv_bias", &b))
            } else {
                None
            };
            // q, k and v as one matrix when they share a type (one dispatch), else one matmul each.
            let parts: Vec<(Vec<&TensorInfo>, usize)> = if lt.wq.ty == lt.wk.ty && lt.wk.ty == lt.wv.ty {
                vec![(vec![&lt.wq, &lt.wk, &lt.wv], 0)]
            } else {
                vec![(vec![&lt.wq], 0), (vec![&lt.wk], q_dim), (vec![&lt.wv], q_dim + kv_dim)]
            };
            let mut qkv = Vec::new();
            for (p, off) in parts {
                let mat = GpuMatrix::concat(&ctx, g, &p, max_binding);
                qkv.extend(me.matmul(
                    &mat,
                    MatmulIo {
                        x: &me.act.x,
                        y: &me.act.qkv,
                        gamma: Some(&attn_norm),
                        bias: bias.as_ref(),
                        residual: false,
                        swiglu: false,
                        head: false,
                        col_off: off,
                        out_stride: qkv_dim,
                    },
                )?);
            }
            if lt.w_gate.ty != lt.w_up.ty {
                return Err(ShardError::Gpu(format!("{} and {} have different types", lt.w_gate.name, lt.w_up.name)));
            }
            let wo = GpuMatrix::concat(&ctx, g, &[&lt.wo], max_binding);
            let gate_up = GpuMatrix::pair(&ctx, g, &lt.w_gate, &lt.w_up, max_binding);
            let down = GpuMatrix::concat(&ctx, g, &[&lt.w_down], max_binding);
            // Whole layers add the O and down outputs to the residual stream; a tensor-parallel slice keeps its
            // partial sums apart until the stage has added them up, and gemma3 keeps them apart for its post-norm
            // (`norm_add.wgsl`, or on the host after the sum).
            let apart = c.partial_layers || c.post_norms;
            let (out, residual) = if apart { (&me.act.partial, false) } else { (&me.act.x, true) };
            let o = me.matmul(&wo, MatmulIo::output(&me.act.att, out, residual, c.dim))?;
            let gate_up = me.matmul(
                &gate_up,
                MatmulIo {
                    x: &me.act.x,
                    y: &me.act.h,
                    gamma: Some(&ffn_norm),
                    bias: None,
                    residual: false,
                    swiglu: true,
                    head: false,
                    col_off: 0,
                    out_stride: c.ffn_dim,
                },
            )?;
            let down = me.matmul(&down, MatmulIo::output(&me.act.h, out, residual, c.dim))?;
            if let (Some(qn), Some(kn)) = (host(&lt.q_norm), host(&lt.k_norm)) {
                let p = me.pipeline(Kernel::QkNorm, None, vec![]);
                let bg = bind(&ctx, &p, &[&me.step, &qk_params, &me.act.qkv, &storage(&qn), &storage(&kn)]);
                let grid = Grid::Items { items: (c.n_heads + c.n_kv_heads) as u32 };
                qkv.push(Dispatch { pipe: p, narrow: None, bind: bg, grid, weight_bytes: 0 });
            }
            let post = (host(&lt.post_attn_norm), host(&lt.post_ffn_norm));
            let (mut post_attn, mut post_ffn, mut host_post_norms) = (Vec::new(), Vec::new(), None);
            match post {
                (Some(a), Some(f)) if c.partial_layers => host_post_norms = Some((a, f)),
                (Some(a), Some(f)) => {
                    let p = me.pipeline(Kernel::NormAdd, None, vec![]);
                    for (w, list) in [(a, &mut post_attn), (f, &mut post_ffn)] {
                        let bg = bind(&ctx, &p, &[&me.step, &norm_params, &me.act.partial, &storage(&w), &me.act.x]);
                        list.push(Dispatch {
                            pipe: p.clone(),
                            narrow: None,
                            bind: bg,
                            grid: Grid::Tokens,
                            weight_bytes: 0,
                        });
                    }
                }
                _ => {}
            }
            me.layers.push(GpuLayer { qkv, o, gate_up, down, post_attn, post_ffn, host_post_norms });
        }

        if let (Some(norm), Some(out)) = (&t.output_norm, &t.output) {
            let norm = vector(norm);
            let own;
            let head = match &embed_matrix {
                Some(em) if t.embed.as_ref().is_some_and(|e| e.name == out.name) => em,
                _ => {
                    own = GpuMatrix::concat(&ctx, g, &[out], max_binding);
                    &own
                }
            };
            me.head = me.matmul(
                head,
                MatmulIo {
                    x: &me.act.xh,
                    y: &me.act.logits,
                    gamma: Some(&norm),
                    bias: None,
                    residual: false,
                    swiglu: false,
                    head: true,
                    col_off: 0,
                    out_stride: c.vocab,
                },
            )?;
            let p = me.pipeline(Kernel::Argmax, None, vec![]);
            let params = ctx.uniform("argmax", &Params8([c.vocab as u32, 0, 0, 0, 0, 0, 0, 0]));
            let bg = bind(&ctx, &p, &[&me.step, &params, &me.act.logits, &me.act.argmax]);
            me.head.push(Dispatch { pipe: p, narrow: None, bind: bg, grid: Grid::Argmax, weight_bytes: 0 });
        }
        ctx.wait()?;
        ctx.check()?;
        Ok(me)
    }

    pub(super) fn pipeline(
        &self,
        kernel: Kernel,
        quant: Option<crate::quant::GgmlType>,
        consts: Vec<(&'static str, String)>,
    ) -> Arc<Pipeline> {
        self.ctx.pipeline(&PipelineKey { kernel, quant, consts, entry: "main" })
    }

    /// One dispatch per chunk of `mat`.
    fn matmul(&self, mat: &GpuMatrix, io: MatmulIo<'_>) -> Result<Vec<Dispatch>, ShardError> {
        let group_tokens =
            group_tokens(mat.cols as u64, self.ctx.limits.min_uniform_buffer_offset_alignment.max(16) as u64)
                .ok_or_else(|| {
                    ShardError::Gpu(format!("rows of {} floats do not fit a 64 KiB uniform view", mat.cols))
                })?;
        let flag = |b: bool| b.to_string();
        let key = PipelineKey {
            kernel: Kernel::Matmul,
            quant: Some(mat.ty),
            consts: vec![
                ("NORM", flag(io.gamma.is_some())),
                ("BIAS", flag(io.bias.is_some())),
                ("RESIDUAL", flag(io.residual)),
                ("SWIGLU", flag(io.swiglu)),
                ("GELU", flag(io.swiglu && self.cfg.act == Activation::GeluTanh)),
            ],
            entry: "main",
        };
        let p = self.ctx.pipeline(&key);
        let narrow = Arc::new(Narrow {
            gemv: Some(self.ctx.pipeline(&PipelineKey { entry: "gemv", ..key.clone() })),
            pair: Some(self.ctx.pipeline(&PipelineKey { entry: "pair", ..key })),
        });
        Ok(mat
            .chunks
            .iter()
            .map(|ch| {
                let out_rows = if io.swiglu { ch.rows / 2 } else { ch.rows };
                let params = MatParams {
                    group_tokens,
                    _pad: [0; 3],
                    rows: ch.rows as u32,
                    cols: mat.cols as u32,
                    out_rows: out_rows as u32,
                    row_off: (io.col_off + ch.row_start) as u32,
                    out_stride: io.out_stride as u32,
                    head: io.head as u32,
                    eps: self.cfg.rms_eps,
                    bias_off: (io.col_off + ch.row_start) as u32,
                };
                let ub = self.ctx.uniform("matmul", &params);
                let gamma = io.gamma.unwrap_or(&self.act.dummy_view);
                let bias = io.bias.unwrap_or(&self.act.dummy);
                let bg = bind_res(
                    &self.ctx,
                    &p,
                    &[
                        Res::Buf(&self.step),
                        Res::Buf(&ub),
                        Res::View(io.x, UNIFORM_VIEW_BYTES),
                        Res::Tex(&ch.scale),
                        Res::Tex(&ch.quant),
                        Res::View(gamma, UNIFORM_VIEW_BYTES),
                        Res::Buf(bias),
                        Res::Buf(io.y),
                        Res::View(&self.act.groups, 16),
                    ],
                );
                let grid = Grid::Matmul { rows: out_rows as u32, head: io.head, group_tokens, k: mat.cols as u32 };
                let weight_bytes = (ch.rows * mat.ty.row_bytes(mat.cols)) as u64;
                Dispatch { pipe: p.clone(), narrow: Some(narrow.clone()), bind: bg, grid, weight_bytes }
            })
            .collect())
    }

    /// Dispatches recorded for one step of one sequence: (per layer, embedding + head).
    pub fn dispatch_counts(&self) -> (usize, usize) {
        let per_layer = self.layers.first().map_or(0, |l| {
            l.qkv.len() + 2 + l.o.len() + l.post_attn.len() + l.gate_up.len() + l.down.len() + l.post_ffn.len()
        });
        (per_layer, self.embed.iter().count() + self.head.len())
    }

    /// Counts `n` more positions of `seq` as written.
    pub(super) fn advance(&mut self, seq: SeqId, n: usize) -> Result<(), ShardError> {
        let s = self.seqs.get_mut(seq)?;
        s.len += n;
        s.kv.advance(s.len);
        Ok(())
    }
}

/// The shapes a tensor-parallel slice must have for these kernels: the O and down matmuls read their inputs
/// (the slice's heads, its FFN columns) in blocks of 32.
fn check_slice(c: &ModelConfig) -> Result<(), ShardError> {
    let widths = [
        ("output", c.n_heads * c.head_dim, format!("{} query heads of {}", c.n_heads, c.head_dim)),
        ("down", c.ffn_dim, "the FFN columns of the slice".to_string()),
    ];
    for (proj, cols, what) in widths {
        if !cols.is_multiple_of(32) {
            return Err(ShardError::Gpu(format!(
                "unsupported tensor-parallel slice: the {proj} projection's input width {cols} ({what}) is not a \
                 multiple of 32, which the matmul kernels need"
            )));
        }
    }
    Ok(())
}

/// Inputs and outputs of one matmul.
struct MatmulIo<'a> {
    x: &'a wgpu::Buffer,
    y: &'a wgpu::Buffer,
    gamma: Option<&'a wgpu::Buffer>,
    bias: Option<&'a wgpu::Buffer>,
    residual: bool,
    swiglu: bool,
    head: bool,
    /// First output column of this matrix in `y` (q/k/v parts).
    col_off: usize,
    out_stride: usize,
}

impl<'a> MatmulIo<'a> {
    /// A projection back to the model width (O, down): `y (+)= W · x`.
    fn output(x: &'a wgpu::Buffer, y: &'a wgpu::Buffer, residual: bool, out_stride: usize) -> Self {
        MatmulIo { x, y, gamma: None, bias: None, residual, swiglu: false, head: false, col_off: 0, out_stride }
    }
}

impl Shard for GpuShard {
    fn spec(&self) -> ShardSpec {
        self.spec
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn backend_name(&self) -> String {
        format!("wgpu/{}", self.ctx.describe())
    }

    fn open_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), ShardError> {
        self.seqs.check_open(&self.cfg, seq, capacity)?;
        let s = self.new_sequence(capacity)?;
        self.seqs.insert(seq, capacity, s);
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
        if len < s.len {
            s.kv.rewind(len)?;
        }
        self.seqs.truncate(seq, len)
    }

    fn fork(&mut self, from: SeqId, to: SeqId, len: usize) -> Result<(), ShardError> {
        let ctx = self.ctx.clone();
        let kv_dim = self.cfg.kv_dim();
        self.seqs.fork(from, to, len, |f, t| {
            // Queued before any later step of `to`: the queue runs submissions in order.
            let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("fork") });
            f.copy_prefix(t, len, kv_dim, &mut enc)?;
            ctx.submit(enc);
            ctx.check()
        })
    }

    fn forward_reduce(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        want: HeadOutput,
        reduce: &mut dyn Reducer,
    ) -> Result<ShardOutput, ShardError> {
        self.forward_one(seq, input, want, reduce)
    }

    fn batches(&self) -> bool {
        true
    }

    fn forward_batch(&mut self, steps: &[Step<'_>], reduce: &mut dyn Reducer) -> Result<Vec<ShardOutput>, ShardError> {
        self.forward_many(steps, reduce)
    }
}
