//! The CPU reference forward pass: plain, readable Rust in the style of llama2.c's `run.c`. It is the oracle every
//! WGSL kernel and every distributed run is checked against, so clarity beats speed here. Weights are read from
//! the memory-mapped GGUF one quantized block at a time (never dequantized as a whole).

use edge_protocol::ShardSpec;

use crate::cpu::kv::SeqKv;
use crate::gguf::{Gguf, TensorInfo};
use crate::model::{Activation, ModelConfig, RopeStyle, ShardTensors};
use crate::quant::{dequantize_row, GgmlType};
use crate::shard::{
    check_input, normed_sum, HeadOutput, Reducer, SeqId, Sequences, Shard, ShardError, ShardInput, ShardOutput,
};

/// Per-layer vectors, read once at load (a few KiB each).
struct LayerVectors {
    attn_norm: Vec<f32>,              // (dim)
    ffn_norm: Vec<f32>,               // (dim)
    bias_q: Option<Vec<f32>>,         // (n_heads * head_dim)
    bias_k: Option<Vec<f32>>,         // (kv_dim)
    bias_v: Option<Vec<f32>>,         // (kv_dim)
    q_norm: Option<Vec<f32>>,         // (head_dim) gemma3
    k_norm: Option<Vec<f32>>,         // (head_dim) gemma3
    post_attn_norm: Option<Vec<f32>>, // (dim) gemma3
    post_ffn_norm: Option<Vec<f32>>,  // (dim) gemma3
}

pub struct ReferenceShard {
    w: Weights,
    /// Per layer K and V rows; a sliding-window layer holds its window and a step (`cpu::kv`, shared with the cpu
    /// backend).
    seqs: Sequences<SeqKv>,
}

/// What the forward pass reads: the memory-mapped model and the small vectors copied out of it.
struct Weights {
    gguf: Gguf,
    cfg: ModelConfig,
    t: ShardTensors,
    vectors: Vec<LayerVectors>,
    output_norm: Option<Vec<f32>>, // (dim)
}

impl ReferenceShard {
    pub fn load(gguf: &Gguf, cfg: &ModelConfig, spec: ShardSpec) -> Result<ReferenceShard, ShardError> {
        let t = ShardTensors::resolve(gguf, cfg, spec)?;
        let read = |info: &TensorInfo| read_f32(gguf, info);
        let vectors = t
            .layers
            .iter()
            .map(|l| LayerVectors {
                attn_norm: read(&l.attn_norm),
                ffn_norm: read(&l.ffn_norm),
                bias_q: l.bq.as_ref().map(read),
                bias_k: l.bk.as_ref().map(read),
                bias_v: l.bv.as_ref().map(read),
                q_norm: l.q_norm.as_ref().map(read),
                k_norm: l.k_norm.as_ref().map(read),
                post_attn_norm: l.post_attn_norm.as_ref().map(read),
                post_ffn_norm: l.post_ffn_norm.as_ref().map(read),
            })
            .collect();
        let output_norm = t.output_norm.as_ref().map(read);
        let w = Weights { gguf: gguf.clone(), cfg: cfg.clone(), t, vectors, output_norm };
        Ok(ReferenceShard { w, seqs: Sequences::default() })
    }
}

impl Weights {
    /// Positions `pos0 .. pos0 + n` through the shard's layers, layer by layer. `x` `(n, dim)` is the residual
    /// stream, updated in place. Each sub-block's output goes to `delta` `(n, dim)` first: a tensor-parallel slice
    /// adds the other members' partial sums to it through `reduce` (twice per layer, as the trait says) before
    /// the residual add. gemma3 norms the summed output (`post_*_norm`) before adding it.
    fn forward_layers(
        &self,
        kv: &mut SeqKv,
        pos0: usize,
        x: &mut [f32],
        reduce: &mut dyn Reducer,
    ) -> Result<(), ShardError> {
        let dim = self.cfg.dim;
        kv.make_room(pos0, x.len() / dim)?;
        let mut delta = vec![0.0; x.len()]; // (n, dim)
        for li in 0..self.t.layers.len() {
            // Attention: x += Wo · attention(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x)). Positions go in
            // order, so each one attends to the K/V the earlier ones just wrote.
            for (i, (xi, di)) in x.chunks_exact(dim).zip(delta.chunks_exact_mut(dim)).enumerate() {
                self.attention(li, kv, pos0 + i, xi, di);
            }
            reduce.all_reduce(&mut delta)?;
            self.add_residual(x, &mut delta, &self.vectors[li].post_attn_norm);

            // Feed-forward: x += W_down · (act(W_gate·norm(x)) * (W_up·norm(x)))
            for (xi, di) in x.chunks_exact(dim).zip(delta.chunks_exact_mut(dim)) {
                self.ffn(li, xi, di);
            }
            reduce.all_reduce(&mut delta)?;
            self.add_residual(x, &mut delta, &self.vectors[li].post_ffn_norm);
        }
        Ok(())
    }

    /// x += delta, each row of `delta` RMS-normed with `post_norm` first when the model has one.
    fn add_residual(&self, x: &mut [f32], delta: &mut [f32], post_norm: &Option<Vec<f32>>) {
        if let Some(w) = post_norm {
            for d in delta.chunks_exact_mut(self.cfg.dim) {
                let raw = d.to_vec();
                rmsnorm(d, &raw, w, self.cfg.rms_eps);
            }
        }
        x.iter_mut().zip(&*delta).for_each(|(a, b)| *a += b);
    }

    /// The attention block of layer `li` for one position: writes the position's K and V to the cache and
    /// `out` (dim) = Wo · attention. Query and output widths are `n_heads * head_dim`, which for a tensor-parallel
    /// slice is less than `dim`.
    fn attention(&self, li: usize, kv: &mut SeqKv, pos: usize, x: &[f32], out: &mut [f32]) {
        let (c, lt, lv) = (&self.cfg, &self.t.layers[li], &self.vectors[li]);
        let (hd, kv_dim, q_dim) = (c.head_dim, c.kv_dim(), c.n_heads * c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let mut xb = vec![0.0; c.dim]; // (dim) normed input
        let mut q = vec![0.0; q_dim]; // (n_heads * head_dim)
        let mut k = vec![0.0; kv_dim]; // (kv_dim)
        let mut v = vec![0.0; kv_dim]; // (kv_dim)
        let mut att = vec![0.0; q_dim]; // (n_heads * head_dim) attention output

        // The absolute layer: the sliding-window pattern counts from 0. A local layer attends to the last `window`
        // positions, its own included (llama.cpp's is_masked_swa).
        let layer = self.t.spec.layer_start as usize + li;
        let first = c.window(layer).map_or(0, |w| (pos + 1).saturating_sub(w));
        let mut scores = vec![0.0; pos + 1 - first]; // (positions attended)

        rmsnorm(&mut xb, x, &lv.attn_norm, c.rms_eps);
        matvec(&self.gguf, &lt.wq, &xb, &mut q);
        matvec(&self.gguf, &lt.wk, &xb, &mut k);
        matvec(&self.gguf, &lt.wv, &xb, &mut v);
        add_bias(&mut q, &lv.bias_q);
        add_bias(&mut k, &lv.bias_k);
        add_bias(&mut v, &lv.bias_v);
        if let (Some(qn), Some(kn)) = (&lv.q_norm, &lv.k_norm) {
            head_norm(&mut q, qn, c.rms_eps);
            head_norm(&mut k, kn, c.rms_eps);
        }
        let theta = c.rope_theta_of(layer);
        rope(&mut q, pos, hd, theta, c.rope);
        rope(&mut k, pos, hd, theta, c.rope);

        let (k_row, v_row) = kv.row_mut(li, pos);
        k_row.copy_from_slice(&k);
        v_row.copy_from_slice(&v);
        let (k_cache, v_cache, base) = kv.layer(li); // row r holds position base + r

        let scale = 1.0 / (hd as f32).sqrt();
        for h in 0..c.n_heads {
            let qh = &q[h * hd..(h + 1) * hd];
            let kvh = h / group; // grouped-query attention: heads share K/V
            for (t, s) in (first..).zip(scores.iter_mut()) {
                let kt = &k_cache[(t - base) * kv_dim + kvh * hd..][..hd];
                *s = dot(qh, kt) * scale;
            }
            softmax(&mut scores);
            let o = &mut att[h * hd..(h + 1) * hd];
            o.fill(0.0);
            for (t, &a) in (first..).zip(&scores) {
                let vt = &v_cache[(t - base) * kv_dim + kvh * hd..][..hd];
                o.iter_mut().zip(vt).for_each(|(o, &vv)| *o += a * vv);
            }
        }
        matvec(&self.gguf, &lt.wo, &att, out);
    }

    /// The gated feed-forward block (SwiGLU, or GeGLU for gemma3) of layer `li` for one position:
    /// `out` (dim) = W_down · (act(W_gate·norm(x)) * (W_up·norm(x))). The inner width is the shard's `ffn_dim`
    /// (a tensor-parallel slice holds some of the columns).
    fn ffn(&self, li: usize, x: &[f32], out: &mut [f32]) {
        let (c, lt, lv) = (&self.cfg, &self.t.layers[li], &self.vectors[li]);
        let mut xb = vec![0.0; c.dim]; // (dim) normed input
        let mut gate = vec![0.0; c.ffn_dim]; // (ffn_dim)
        let mut up = vec![0.0; c.ffn_dim]; // (ffn_dim)
        rmsnorm(&mut xb, x, &lv.ffn_norm, c.rms_eps);
        matvec(&self.gguf, &lt.w_gate, &xb, &mut gate);
        matvec(&self.gguf, &lt.w_up, &xb, &mut up);
        let act = match c.act {
            Activation::Silu => silu,
            Activation::GeluTanh => gelu_tanh,
        };
        gate.iter_mut().zip(&up).for_each(|(g, u)| *g = act(*g) * u);
        matvec(&self.gguf, &lt.w_down, &gate, out);
    }

    /// Final norm and output head: logits (vocab) for one position.
    fn head(&self, x: &[f32]) -> Vec<f32> {
        let (norm, out) = (self.output_norm.as_ref().expect("head shard"), self.t.output.as_ref().expect("head shard"));
        let mut xb = vec![0.0; self.cfg.dim];
        rmsnorm(&mut xb, x, norm, self.cfg.rms_eps);
        let mut logits = vec![0.0; self.cfg.vocab];
        matvec(&self.gguf, out, &xb, &mut logits);
        logits
    }

    /// Embedding row of a token (dim).
    fn embed(&self, token: u32) -> Vec<f32> {
        let e = self.t.embed.as_ref().expect("embedding shard");
        let mut x = vec![0.0; self.cfg.dim];
        let rb = e.ty.row_bytes(self.cfg.dim);
        dequantize_row(e.ty, &self.gguf.data(e)[token as usize * rb..][..rb], &mut x);
        x.iter_mut().for_each(|v| *v *= self.cfg.embed_scale);
        x
    }
}

impl Shard for ReferenceShard {
    fn spec(&self) -> ShardSpec {
        self.w.t.spec
    }
    fn config(&self) -> &ModelConfig {
        &self.w.cfg
    }
    fn backend_name(&self) -> String {
        "reference (f32)".into()
    }
    fn open_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), ShardError> {
        self.seqs.check_open(&self.w.cfg, seq, capacity)?;
        let spec = self.w.t.spec;
        let windows = (spec.layer_start..spec.layer_end).map(|l| self.w.cfg.window(l as usize));
        self.seqs.insert(seq, capacity, SeqKv::alloc(windows, capacity, self.w.cfg.kv_dim())?);
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

    fn forward_reduce(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        want: HeadOutput,
        reduce: &mut dyn Reducer,
    ) -> Result<ShardOutput, ShardError> {
        let w = &self.w;
        let spec = w.t.spec;
        let n = check_input(&spec, &w.cfg, &input)?;
        let dim = w.cfg.dim;
        let s = self.seqs.with_room(seq, n)?;
        let mut x = match input {
            ShardInput::Tokens(t) => t.iter().flat_map(|&t| w.embed(t)).collect(),
            ShardInput::Hidden(h) => h.to_vec(),
        }; // (n, dim)
        w.forward_layers(&mut s.kv, s.len, &mut x, reduce)?;
        s.len += n;
        let mut tokens = Vec::new();
        let mut logits = Vec::new();
        if spec.head {
            for (i, xi) in x.chunks_exact(dim).enumerate() {
                let last = i == n - 1;
                match want {
                    HeadOutput::ArgmaxAll => tokens.push(argmax(&w.head(xi))),
                    HeadOutput::ArgmaxLast if last => tokens.push(argmax(&w.head(xi))),
                    HeadOutput::LogitsLast if last => logits = w.head(xi),
                    _ => {}
                }
            }
        }
        Ok(if !spec.head {
            ShardOutput::Hidden(x)
        } else if want == HeadOutput::HiddenSum {
            ShardOutput::HiddenSum(normed_sum(&x, w.output_norm.as_ref().expect("head shard"), w.cfg.rms_eps))
        } else if want == HeadOutput::LogitsLast {
            ShardOutput::Logits(logits)
        } else {
            ShardOutput::Tokens(tokens)
        })
    }
}

/// Reads a small F32 tensor (norm weights, biases).
pub fn read_f32(g: &Gguf, info: &TensorInfo) -> Vec<f32> {
    let mut v = vec![0.0; info.n_elements() as usize];
    dequantize_row(info.ty, g.data(info), &mut v);
    v
}

/// out = W · x for a `(rows, cols)` matrix in any supported GGML type, one quantized block at a time.
/// Rows are split over the machine's cores (each row is independent).
pub fn matvec(g: &Gguf, w: &TensorInfo, x: &[f32], out: &mut [f32]) {
    let (rows, cols) = (w.rows() as usize, w.cols() as usize);
    assert_eq!((x.len(), out.len()), (cols, rows), "matvec shape of {}", w.name);
    let data = g.data(w);
    matvec_bytes(w.ty, data, cols, x, out);
}

/// [`matvec`] over raw GGML bytes.
pub fn matvec_bytes(ty: GgmlType, data: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let row_bytes = ty.row_bytes(cols);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = out.len().div_ceil(threads).max(64);
    std::thread::scope(|s| {
        for (ci, o) in out.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let (block, block_bytes) = ty.block();
                let block = block.max(32); // F32/F16: process 32 elements at a time
                let block_bytes = block_bytes * (block / ty.block().0);
                let mut w = vec![0.0f32; block];
                for (i, o) in o.iter_mut().enumerate() {
                    let r = ci * chunk + i;
                    let row = &data[r * row_bytes..(r + 1) * row_bytes];
                    let mut acc = 0.0f32;
                    for (b, xb) in x.chunks_exact(block).enumerate() {
                        dequantize_row(ty, &row[b * block_bytes..(b + 1) * block_bytes], &mut w);
                        acc += dot(&w, xb);
                    }
                    *o = acc;
                }
            });
        }
    });
}

pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * scale * wi;
    }
}

/// Rotary position embedding over every head of `x` (n_heads * head_dim) at position `pos`.
pub fn rope(x: &mut [f32], pos: usize, head_dim: usize, theta: f32, style: RopeStyle) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let freq = theta.powf(-2.0 * i as f32 / head_dim as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            rotate_pair(head, i, style, sin, cos);
        }
    }
}

/// Rotates pair `i` of one head (`head.len()` = the head dimension) by the angle whose sine and cosine are given:
/// dimensions `2i, 2i + 1` (adjacent) or `i, i + half` (neox).
#[inline]
pub fn rotate_pair(head: &mut [f32], i: usize, style: RopeStyle, sin: f32, cos: f32) {
    let (a, b) = match style {
        RopeStyle::Adjacent => (2 * i, 2 * i + 1),
        RopeStyle::Neox => (i, i + head.len() / 2),
    };
    let (x0, x1) = (head[a], head[b]);
    head[a] = x0 * cos - x1 * sin;
    head[b] = x0 * sin + x1 * cos;
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// RMS-norms each `weight.len()`-wide head of `x` in place with the shared `weight` (gemma3's QK-norm).
pub fn head_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    for h in x.chunks_exact_mut(weight.len()) {
        rmsnorm_in_place(h, weight, eps);
    }
}

/// [`rmsnorm`] of `x` into itself, with the same arithmetic.
pub fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (xi, &wi) in x.iter_mut().zip(weight) {
        *xi = *xi * scale * wi;
    }
}

/// GELU, tanh approximation (as ggml's and PyTorch's `gelu(approximate="tanh")`).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add_bias(x: &mut [f32], bias: &Option<Vec<f32>>) {
    if let Some(b) = bias {
        x.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
}

/// Index of the largest value (the first one on ties, as llama.cpp's greedy sampler; NaNs never win, and a NaN
/// first value is kept, as a running `v > best` scan does).
///
/// Two passes a compiler vectorizes, where the running scan's compare with the best so far is one dependent
/// chain per value (150k values per token for a 150k vocabulary): the largest value in eight lanes, then the
/// first index holding it.
pub fn argmax(x: &[f32]) -> u32 {
    let Some(&x0) = x.first() else { return 0 };
    if x0.is_nan() {
        return 0;
    }
    let mut lanes = [x0; 8];
    let chunks = x.chunks_exact(8);
    for &v in chunks.remainder() {
        lanes[0] = if v > lanes[0] { v } else { lanes[0] };
    }
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let top = lanes.iter().fold(x0, |m, &v| if v > m { v } else { m });
    x.iter().position(|&v| v == top).unwrap_or(0) as u32
}

/// The running scan [`argmax`] equals.
#[cfg(test)]
fn argmax_scan(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    /// The two-pass argmax picks the running scan's index: ties (first wins), ±0, infinities, NaNs anywhere
    /// (a first NaN included), every length around the eight lanes.
    #[test]
    fn argmax_is_the_running_scan() {
        let mut seed = 3u64;
        let mut next = |k: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % k
        };
        let pool = [0.0, -0.0, 1.0, -1.0, 2.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 2.5, -3.0];
        for case in 0..4000 {
            let len = if case % 10 == 0 { 1000 } else { next(41) as usize };
            let kinds = if case % 3 == 0 { 5 } else { pool.len() as u64 };
            let x: Vec<f32> = (0..len).map(|_| pool[next(kinds) as usize]).collect();
            assert_eq!(super::argmax(&x), super::argmax_scan(&x), "{x:?}");
        }
        let x: Vec<f32> = (0..151_936).map(|i| ((i * 7919) % 10007) as f32).collect();
        assert_eq!(super::argmax(&x), super::argmax_scan(&x));
    }
}
