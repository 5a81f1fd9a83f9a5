//! Single-kernel runners for conformance tests and benchmarks. Each one builds its pipeline with the executor's
//! [`PipelineCache`], uploads weights through the executor's [`GpuMatrix`] (so repacking and row chunking are the
//! real ones), records the executor's [`Dispatch`]es (same uniform blocks, same grids), submits once and reads
//! the result back. Nothing here is on the hot path.
//!
//! Not shared with the executor yet: which pipeline key and which buffers a matmul binds ([`Probe::matmul_chunks`]
//! repeats `GpuShard::matmul`, which is a method over the shard's own activation buffers).

use std::sync::Arc;

use crate::gguf::{parse_bytes, Gguf};
use crate::gguf_writer::GgufWriter;
use crate::model::RopeStyle;
use crate::quant::GgmlType;
use crate::shard::ShardError;

use super::context::{GpuContext, UNIFORM_VIEW_BYTES};
use super::dispatch::{group_tokens, Dispatch, Grid, MatParams, Narrow, Params8, SeqParams, StepDims, StepParams};
use super::kernels::{bind, bind_res, Kernel, Pipeline, PipelineKey, Res};
use super::weights::GpuMatrix;

/// Optional parts of a matmul (all off by default).
#[derive(Debug, Default, Clone, Copy)]
pub struct MatmulOpts<'a> {
    /// Fused RMSNorm of each `x` row with this weight `(cols)` and `eps`.
    pub gamma: Option<&'a [f32]>,
    pub eps: f32,
    /// Added to each output row `(rows)` (before SwiGLU's activation, as the kernel does).
    pub bias: Option<&'a [f32]>,
    /// `(n, rows)`: the output is `residual + result`.
    pub residual: Option<&'a [f32]>,
    /// GGML bytes of the "up" matrix (same type and shape): the output is `silu(W·x) * (up·x)`.
    pub swiglu_up: Option<&'a [u8]>,
    /// With `swiglu_up`: `gelu_tanh(W·x) * (up·x)` (GeGLU, gemma3) instead.
    pub gelu: bool,
    /// Largest storage binding for the weights (defaults to the device limit); small values force row chunks.
    pub max_binding: Option<u64>,
}

/// Head geometry for RoPE and attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

pub struct Probe {
    ctx: Arc<GpuContext>,
}

fn bad(msg: String) -> ShardError {
    ShardError::BadInput(msg)
}

impl Probe {
    /// Opens the default device (see [`GpuContext::new`]).
    pub fn new() -> Result<Probe, ShardError> {
        Ok(Self::with_context(GpuContext::new()?))
    }

    pub fn with_context(ctx: Arc<GpuContext>) -> Probe {
        Probe { ctx }
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    fn pipeline(&self, kernel: Kernel, quant: Option<GgmlType>, consts: Vec<(&'static str, String)>) -> Arc<Pipeline> {
        self.ctx.pipeline(&PipelineKey { kernel, quant, consts, entry: "main" })
    }

    fn floats(&self, label: &str, v: &[f32]) -> wgpu::Buffer {
        self.ctx.storage_init(label, bytemuck::cast_slice(v))
    }

    fn step(&self, n_tok: usize, pos0: usize, head_n: usize) -> wgpu::Buffer {
        let p = StepParams { n_tok: n_tok as u32, pos0: pos0 as u32, head_n: head_n as u32, head_row0: 0 };
        self.ctx.uniform("step", &p)
    }

    /// The rows of one sequence from the step's first row (rope_kv, attention).
    fn seq_step(&self, n_tok: usize, pos0: usize) -> wgpu::Buffer {
        let p = SeqParams { n_tok: n_tok as u32, pos0: pos0 as u32, row0: 0, _pad: 0 };
        self.ctx.uniform("rows", &p)
    }

    /// The uniform offset alignment: the stride of matmul's group-index entries.
    fn align(&self) -> u32 {
        self.ctx.limits.min_uniform_buffer_offset_alignment.max(16)
    }

    fn dispatch(&self, pipe: Arc<Pipeline>, bind: wgpu::BindGroup, grid: Grid) -> Dispatch {
        Dispatch { pipe, narrow: None, bind, grid, weight_bytes: 0 }
    }

    /// Records `dispatches` for a step of `n_tok` tokens (`head_n` rows for argmax) in one pass, copies `outputs`
    /// to one staging buffer, submits once and reads them back.
    fn run(
        &self,
        dispatches: &[Dispatch],
        n_tok: usize,
        head_n: usize,
        outputs: &[&wgpu::Buffer],
    ) -> Result<Vec<Vec<u8>>, ShardError> {
        let total: u64 = outputs.iter().map(|b| b.size()).sum();
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("probe staging"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dims = StepDims { n_tok: n_tok as u32, head_n: head_n as u32, head_row0: 0, align: self.align() };
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("probe") });
        {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("probe"), timestamp_writes: None });
            dispatches.iter().for_each(|d| d.record(&mut pass, dims));
        }
        let mut off = 0;
        for b in outputs {
            enc.copy_buffer_to_buffer(b, 0, &staging, off, b.size());
            off += b.size();
        }
        self.ctx.queue.submit([enc.finish()]);
        let data = self.ctx.read_back(&staging, total)?;
        let mut parts = Vec::new();
        let mut off = 0;
        for b in outputs {
            parts.push(data[off..off + b.size() as usize].to_vec());
            off += b.size() as usize;
        }
        Ok(parts)
    }

    /// Uploads `(rows, cols)` matrices of GGML bytes the way the executor does (a GGUF image read by
    /// [`GpuMatrix::concat`], or [`GpuMatrix::pair`] for a gate/up pair).
    fn matrix(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        a: &[u8],
        b: Option<&[u8]>,
        max_binding: u64,
    ) -> Result<GpuMatrix, ShardError> {
        let want = ty.row_bytes(cols) * rows;
        if !ty.is_supported() || !cols.is_multiple_of(32) || a.len() != want || b.is_some_and(|b| b.len() != want) {
            return Err(bad(format!("{ty:?} matrix ({rows}, {cols}) needs {want} bytes and cols a multiple of 32")));
        }
        let dims = [cols as u64, rows as u64];
        let mut w = GgufWriter::new().tensor("a", &dims, ty, a);
        if let Some(b) = b {
            w = w.tensor("b", &dims, ty, b);
        }
        let bytes = w.to_bytes().map_err(|e| bad(e.to_string()))?;
        let g: Gguf = parse_bytes(&bytes)?;
        let ta = g.info("a")?;
        Ok(match b {
            None => GpuMatrix::concat(&self.ctx, &g, &[ta], max_binding),
            Some(_) => GpuMatrix::pair(&self.ctx, &g, ta, g.info("b")?, max_binding),
        })
    }

    /// `y = W·x` for `x` `(n, cols)` and `W` `(rows, cols)` GGML bytes: `(n, rows)`. See [`MatmulOpts`].
    pub fn matmul(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        weights: &[u8],
        x: &[f32],
        opts: MatmulOpts<'_>,
    ) -> Result<Vec<f32>, ShardError> {
        self.matmul_chunks(ty, rows, cols, weights, x, opts).map(|(y, _)| y)
    }

    /// [`Probe::matmul`], also returning how many row chunks (dispatches) the matrix was split into.
    pub fn matmul_chunks(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        weights: &[u8],
        x: &[f32],
        o: MatmulOpts<'_>,
    ) -> Result<(Vec<f32>, usize), ShardError> {
        self.matmul_with(ty, rows, cols, weights, x, o, |d, n, y| {
            let out = self.run(d, n, 0, &[y])?;
            Ok(to_f32(&out[0], n * rows))
        })
    }

    /// Seconds per run of a matmul, its dispatches recorded `reps` times in one submit after a warm-up run
    /// (the self-benchmark a node advertises; [`Probe::matmul`] checks the same dispatches' results).
    #[allow(clippy::too_many_arguments)]
    pub fn time_matmul(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        weights: &[u8],
        x: &[f32],
        o: MatmulOpts<'_>,
        reps: u32,
    ) -> Result<f64, ShardError> {
        let (secs, _) = self.matmul_with(ty, rows, cols, weights, x, o, |d, n, _| {
            let dims = StepDims { n_tok: n as u32, head_n: 0, head_row0: 0, align: self.align() };
            self.ctx.time_pass(reps, |pass| d.iter().for_each(|d| d.record(pass, dims)))
        })?;
        Ok(secs)
    }

    /// Builds a matmul's dispatches (as `GpuShard::matmul` does) and hands them, the token count and the output
    /// buffer to `run`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_with<R>(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        weights: &[u8],
        x: &[f32],
        o: MatmulOpts<'_>,
        run: impl FnOnce(&[Dispatch], usize, &wgpu::Buffer) -> Result<R, ShardError>,
    ) -> Result<(R, usize), ShardError> {
        let n = x.len() / cols.max(1);
        if n == 0 || x.len() != n * cols {
            return Err(bad(format!("x has {} floats, not a positive multiple of {cols}", x.len())));
        }
        let lens_ok = o.gamma.is_none_or(|g| g.len() == cols)
            && o.bias.is_none_or(|b| b.len() == rows)
            && o.residual.is_none_or(|r| r.len() == n * rows);
        if !lens_ok {
            return Err(bad("gamma, bias or residual has the wrong length".into()));
        }
        let max_binding = o.max_binding.unwrap_or(u64::MAX);
        let mat = self.matrix(ty, rows, cols, weights, o.swiglu_up, max_binding)?;
        let swiglu = o.swiglu_up.is_some();
        // As GpuShard::matmul: x and gamma are read through 64 KiB uniform views, x in groups of `group_tokens`
        // tokens, each group's index read from its entry of `groups`; a single token runs the `gemv` entry point,
        // a group of one or two tokens `pair`.
        let align = self.align();
        let group_tokens = group_tokens(cols as u64, align as u64)
            .ok_or_else(|| bad(format!("rows of {cols} floats do not fit a 64 KiB uniform view")))?;
        let flag = |b: bool| b.to_string();
        let key = PipelineKey {
            kernel: Kernel::Matmul,
            quant: Some(ty),
            consts: vec![
                ("NORM", flag(o.gamma.is_some())),
                ("BIAS", flag(o.bias.is_some())),
                ("RESIDUAL", flag(o.residual.is_some())),
                ("SWIGLU", flag(swiglu)),
                ("GELU", flag(swiglu && o.gelu)),
            ],
            entry: "main",
        };
        // Only the entry points used are built (each is a JIT compile); the executor builds all three.
        let gt = group_tokens as usize;
        let few = n >= 2 && (0..n.div_ceil(gt)).any(|g| gt.min(n - g * gt) <= 2);
        let narrow = Narrow {
            gemv: (n == 1 || gt == 1).then(|| self.ctx.pipeline(&PipelineKey { entry: "gemv", ..key.clone() })),
            pair: few.then(|| self.ctx.pipeline(&PipelineKey { entry: "pair", ..key.clone() })),
        };
        let pipe = if n == 1 { narrow.gemv.clone().expect("built") } else { self.ctx.pipeline(&key) };
        let narrow = Some(Arc::new(narrow));

        let step = self.step(n, 0, 0);
        let xb = self.ctx.activation("x", (n * cols * 4) as u64);
        self.ctx.queue.write_buffer(&xb, 0, bytemuck::cast_slice(x));
        let gamma = self.ctx.uniform_view("gamma", o.gamma.map_or(&[][..], bytemuck::cast_slice));
        let bias = self.floats("bias", o.bias.unwrap_or(&[]));
        let y = match o.residual {
            Some(r) => self.floats("y", r),
            None => self.ctx.storage("y", (n * rows * 4) as u64),
        };
        let n_groups = n.div_ceil(group_tokens as usize);
        let mut entries = vec![0u8; (n_groups + 1) * align as usize];
        for g in 0..=n_groups {
            entries[g * align as usize..][..4].copy_from_slice(&(g as u32).to_le_bytes());
        }
        let groups = self.ctx.uniform_view("groups", &entries);
        let view = UNIFORM_VIEW_BYTES;
        let dispatches: Vec<Dispatch> = mat
            .chunks
            .iter()
            .map(|ch| {
                let out_rows = if swiglu { ch.rows / 2 } else { ch.rows };
                let params = MatParams {
                    rows: ch.rows as u32,
                    cols: cols as u32,
                    out_rows: out_rows as u32,
                    row_off: ch.row_start as u32,
                    out_stride: rows as u32,
                    head: 0,
                    eps: o.eps,
                    bias_off: ch.row_start as u32,
                    group_tokens,
                    _pad: [0; 3],
                };
                let ub = self.ctx.uniform("matmul", &params);
                let res = [
                    Res::Buf(&step),
                    Res::Buf(&ub),
                    Res::View(&xb, view),
                    Res::Tex(&ch.scale),
                    Res::Tex(&ch.quant),
                    Res::View(&gamma, view),
                    Res::Buf(&bias),
                    Res::Buf(&y),
                    Res::View(&groups, 16),
                ];
                let bind = bind_res(&self.ctx, &pipe, &res);
                let grid = Grid::Matmul { rows: out_rows as u32, head: false, group_tokens, k: cols as u32 };
                let weight_bytes = (ch.rows * ty.row_bytes(cols)) as u64;
                Dispatch { pipe: pipe.clone(), narrow: narrow.clone(), bind, grid, weight_bytes }
            })
            .collect();
        Ok((run(&dispatches, n, &y)?, mat.chunks.len()))
    }

    /// Embedding rows of `tokens` from a `(rows, cols)` table of GGML bytes: `(tokens, cols)`.
    pub fn embed(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        table: &[u8],
        tokens: &[u32],
    ) -> Result<Vec<f32>, ShardError> {
        if tokens.is_empty() || tokens.iter().any(|&t| t as usize >= rows) {
            return Err(bad(format!("tokens must be non-empty and below {rows}")));
        }
        let mat = self.matrix(ty, rows, cols, table, None, u64::MAX)?;
        let n = tokens.len();
        let pipe = self.pipeline(Kernel::Embed, Some(ty), vec![]);
        let step = self.step(n, 0, 0);
        let params = self.ctx.uniform("embed", &Params8([rows as u32, cols as u32, 1f32.to_bits(), 0, 0, 0, 0, 0]));
        let tok = self.ctx.storage_init("tokens", bytemuck::cast_slice(tokens));
        let x = self.ctx.storage("x", (n * cols * 4) as u64);
        let ch = &mat.chunks[0];
        let bg = bind_res(
            &self.ctx,
            &pipe,
            &[
                Res::Buf(&step),
                Res::Buf(&params),
                Res::Buf(&tok),
                Res::Tex(&ch.scale),
                Res::Tex(&ch.quant),
                Res::Buf(&x),
            ],
        );
        let d = self.dispatch(pipe, bg, Grid::Embed { blocks: (cols / 32) as u32 });
        let out = self.run(&[d], n, 0, &[&x])?;
        Ok(to_f32(&out[0], n * cols))
    }

    /// RoPE of the fused projection `qkv` `(n, q_dim + 2 kv_dim)` at positions `pos0..pos0 + n`: returns the
    /// rotated q `(n, q_dim)` and writes rotated k and plain v into the caches `(capacity, kv_dim)` in place.
    pub fn rope_kv(
        &self,
        s: AttnShape,
        (style, theta): (RopeStyle, f32),
        pos0: usize,
        qkv: &[f32],
        k_cache: &mut [f32],
        v_cache: &mut [f32],
    ) -> Result<Vec<f32>, ShardError> {
        let (q_dim, kv_dim) = (s.q_dim(), s.kv_dim());
        let stride = q_dim + 2 * kv_dim;
        let n = qkv.len() / stride;
        let cap = k_cache.len() / kv_dim.max(1);
        if n == 0
            || qkv.len() != n * stride
            || v_cache.len() != k_cache.len()
            || pos0 + n > cap
            || !s.head_dim.is_multiple_of(2)
        {
            return Err(bad(format!("rope_kv: {} floats of qkv, caches of {} positions from {pos0}", qkv.len(), cap)));
        }
        let pipe = self.pipeline(Kernel::RopeKv, None, vec![("NEOX", (style == RopeStyle::Neox).to_string())]);
        let step = self.seq_step(n, pos0);
        let params =
            Params8([q_dim as u32, kv_dim as u32, s.head_dim as u32, stride as u32, theta.to_bits(), cap as u32, 0, 0]);
        let params = self.ctx.uniform("rope", &params);
        let src = self.floats("qkv", qkv);
        let q = self.ctx.storage("q", (n * q_dim * 4) as u64);
        let (k, v) = (self.floats("k", k_cache), self.floats("v", v_cache));
        let bg = bind(&self.ctx, &pipe, &[&step, &params, &src, &q, &k, &v]);
        let items = (q_dim / 2 + kv_dim / 2 + kv_dim) as u32;
        let out = self.run(&[self.dispatch(pipe, bg, Grid::Items { items })], n, 0, &[&q, &k, &v])?;
        k_cache.copy_from_slice(&to_f32(&out[1], k_cache.len()));
        v_cache.copy_from_slice(&to_f32(&out[2], v_cache.len()));
        Ok(to_f32(&out[0], n * q_dim))
    }

    /// Causal grouped-query attention of `q` `(n, q_dim)` at positions `pos0..pos0 + n` over the caches
    /// `(ring, kv_dim)`, scale `1/sqrt(head_dim)`: `(n, q_dim)`. Position `p` is in row `p % ring`; with a
    /// `window`, each row attends to the last `window` positions only (and the ring may be shorter than the
    /// sequence, as long as it holds the window and the step).
    pub fn attention(
        &self,
        s: AttnShape,
        window: Option<usize>,
        pos0: usize,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
    ) -> Result<Vec<f32>, ShardError> {
        let (q_dim, kv_dim) = (s.q_dim(), s.kv_dim());
        let n = q.len() / q_dim.max(1);
        let ring = k_cache.len() / kv_dim.max(1);
        let held = ring >= pos0 + n || window.is_some_and(|w| w > 0 && ring >= w - 1 + n);
        let ok = n > 0
            && q.len() == n * q_dim
            && k_cache.len() == v_cache.len()
            && k_cache.len() == ring * kv_dim
            && held
            && s.n_kv_heads > 0
            && s.n_heads.is_multiple_of(s.n_kv_heads);
        if !ok {
            return Err(bad(format!(
                "attention: q of {} floats, caches of {} floats from {pos0}",
                q.len(),
                k_cache.len()
            )));
        }
        let pipe = self.pipeline(Kernel::Attention, None, vec![("HD", s.head_dim.to_string())]);
        let step = self.seq_step(n, pos0);
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let (nh, nkv, w) = (s.n_heads as u32, s.n_kv_heads as u32, window.unwrap_or(0) as u32);
        let params = Params8([nh, nkv, q_dim as u32, kv_dim as u32, scale.to_bits(), w, ring as u32, 0]);
        let params = self.ctx.uniform("attention", &params);
        let (qb, k, v) = (self.floats("q", q), self.floats("k", k_cache), self.floats("v", v_cache));
        let out = self.ctx.storage("att", (n * q_dim * 4) as u64);
        let bg = bind(&self.ctx, &pipe, &[&step, &params, &qb, &k, &v, &out]);
        let d = self.dispatch(pipe, bg, Grid::Attention { heads: s.n_heads as u32 });
        let res = self.run(&[d], n, 0, &[&out])?;
        Ok(to_f32(&res[0], n * q_dim))
    }

    /// Greedy token of each row of `logits` `(n_rows, vocab)`.
    pub fn argmax(&self, logits: &[f32], n_rows: usize, vocab: usize) -> Result<Vec<u32>, ShardError> {
        if n_rows == 0 || vocab == 0 || logits.len() != n_rows * vocab {
            return Err(bad(format!("argmax: {} logits for {n_rows} rows of {vocab}", logits.len())));
        }
        let pipe = self.pipeline(Kernel::Argmax, None, vec![]);
        let step = self.step(0, 0, n_rows);
        let params = self.ctx.uniform("argmax", &Params8([vocab as u32, 0, 0, 0, 0, 0, 0, 0]));
        let l = self.floats("logits", logits);
        let out = self.ctx.storage("argmax", (n_rows * 4) as u64);
        let bg = bind(&self.ctx, &pipe, &[&step, &params, &l, &out]);
        let res = self.run(&[self.dispatch(pipe, bg, Grid::Argmax)], 0, n_rows, &[&out])?;
        Ok(bytemuck::pod_collect_to_vec::<u8, u32>(&res[0][..n_rows * 4]))
    }
}

fn to_f32(bytes: &[u8], n: usize) -> Vec<f32> {
    bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..n * 4])
}
