//! Which GGUF tensors a shard needs, checked for shape and type before any backend touches them.
//! Both backends (CPU reference and wgpu) load from this description.

use edge_protocol::ShardSpec;

use crate::gguf::{Gguf, GgufError, TensorInfo};
use crate::model::ModelConfig;

/// A weight matrix `[rows, cols]` (GGUF dims `[cols, rows]`), row-major in GGML blocks.
pub type Matrix = TensorInfo;

/// The tensors of one transformer layer.
#[derive(Debug, Clone)]
pub struct LayerTensors {
    pub attn_norm: TensorInfo,  // (dim)
    pub wq: Matrix,             // (n_heads * head_dim, dim)
    pub wk: Matrix,             // (kv_dim, dim)
    pub wv: Matrix,             // (kv_dim, dim)
    pub bq: Option<TensorInfo>, // (n_heads * head_dim)
    pub bk: Option<TensorInfo>, // (kv_dim)
    pub bv: Option<TensorInfo>, // (kv_dim)
    pub wo: Matrix,             // (dim, n_heads * head_dim)
    pub ffn_norm: TensorInfo,   // (dim)
    pub w_gate: Matrix,         // (ffn_dim, dim)
    pub w_up: Matrix,           // (ffn_dim, dim)
    pub w_down: Matrix,         // (dim, ffn_dim)
    /// gemma3: per-head norms of query and key `(head_dim)`, and the norms of the attention and FFN outputs
    /// `(dim)` (all four or none, with [`ModelConfig::qk_norm`] and [`ModelConfig::post_norms`]).
    pub q_norm: Option<TensorInfo>,
    pub k_norm: Option<TensorInfo>,
    pub post_attn_norm: Option<TensorInfo>,
    pub post_ffn_norm: Option<TensorInfo>,
}

impl LayerTensors {
    /// The norm vectors a tensor-parallel member holds whole, besides `attn_norm` and `ffn_norm`.
    pub fn extra_norms(&self) -> impl Iterator<Item = &TensorInfo> {
        [&self.q_norm, &self.k_norm, &self.post_attn_norm, &self.post_ffn_norm].into_iter().flatten()
    }
}

/// Every tensor a shard reads.
#[derive(Debug, Clone)]
pub struct ShardTensors {
    pub spec: ShardSpec,
    /// Token embedding `(vocab, dim)`: first shard only.
    pub embed: Option<Matrix>,
    pub layers: Vec<LayerTensors>,
    /// Final norm `(dim)`: last shard only.
    pub output_norm: Option<TensorInfo>,
    /// Output head `(vocab, dim)` (the embedding matrix when tied): last shard only.
    pub output: Option<Matrix>,
}

impl ShardTensors {
    /// Resolves and checks the tensors for `spec`.
    pub fn resolve(g: &Gguf, cfg: &ModelConfig, spec: ShardSpec) -> Result<ShardTensors, GgufError> {
        spec.validate(cfg.n_layers as u32).map_err(GgufError::Corrupt)?;
        let (d, q, kv, f, v) = (cfg.dim, cfg.n_heads * cfg.head_dim, cfg.kv_dim(), cfg.ffn_dim, cfg.vocab);
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, GgufError> {
            let t = g.info(name)?;
            check(t, &[cols, rows])?;
            let block = t.ty.block().0.max(32);
            if !cols.is_multiple_of(block) {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: row length {cols} is not a multiple of {block} ({:?} blocks)",
                    t.ty
                )));
            }
            Ok(t.clone())
        };
        let vector = |name: &str, n: usize| -> Result<TensorInfo, GgufError> {
            let t = g.info(name)?;
            check(t, &[n])?;
            if t.ty != crate::quant::GgmlType::F32 {
                return Err(GgufError::UnsupportedType {
                    tensor: name.into(),
                    ty: format!("{:?} (norms and biases must be F32)", t.ty),
                });
            }
            Ok(t.clone())
        };
        let optional = |name: &str, n: usize| -> Result<Option<TensorInfo>, GgufError> {
            if g.has(name) {
                vector(name, n).map(Some)
            } else {
                Ok(None)
            }
        };
        let required = |name: &str, n: usize, on: bool| -> Result<Option<TensorInfo>, GgufError> {
            if on {
                vector(name, n).map(Some)
            } else {
                Ok(None)
            }
        };
        let hd = cfg.head_dim;
        let mut layers = Vec::with_capacity(spec.n_layers() as usize);
        for l in spec.layer_start..spec.layer_end {
            let p = |s: &str| format!("blk.{l}.{s}");
            layers.push(LayerTensors {
                attn_norm: vector(&p("attn_norm.weight"), d)?,
                wq: matrix(&p("attn_q.weight"), q, d)?,
                wk: matrix(&p("attn_k.weight"), kv, d)?,
                wv: matrix(&p("attn_v.weight"), kv, d)?,
                bq: optional(&p("attn_q.bias"), q)?,
                bk: optional(&p("attn_k.bias"), kv)?,
                bv: optional(&p("attn_v.bias"), kv)?,
                wo: matrix(&p("attn_output.weight"), d, q)?,
                ffn_norm: vector(&p("ffn_norm.weight"), d)?,
                w_gate: matrix(&p("ffn_gate.weight"), f, d)?,
                w_up: matrix(&p("ffn_up.weight"), f, d)?,
                w_down: matrix(&p("ffn_down.weight"), d, f)?,
                q_norm: required(&p("attn_q_norm.weight"), hd, cfg.qk_norm)?,
                k_norm: required(&p("attn_k_norm.weight"), hd, cfg.qk_norm)?,
                post_attn_norm: required(&p("post_attention_norm.weight"), d, cfg.post_norms)?,
                post_ffn_norm: required(&p("post_ffw_norm.weight"), d, cfg.post_norms)?,
            });
        }
        let embed = if spec.embed { Some(matrix("token_embd.weight", v, d)?) } else { None };
        let (output_norm, output) = if spec.head {
            let head = if g.has("output.weight") { "output.weight" } else { "token_embd.weight" };
            (Some(vector("output_norm.weight", d)?), Some(matrix(head, v, d)?))
        } else {
            (None, None)
        };
        Ok(ShardTensors { spec, embed, layers, output_norm, output })
    }

    /// Every tensor of the shard, each once (a tied head is the embedding).
    pub fn all(&self) -> Vec<&TensorInfo> {
        let mut v: Vec<&TensorInfo> = Vec::new();
        v.extend(self.embed.iter());
        for l in &self.layers {
            v.extend([&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down]);
            v.extend(l.bq.iter().chain(&l.bk).chain(&l.bv));
            v.extend(l.extra_norms());
        }
        v.extend(self.output_norm.iter());
        if let Some(o) = &self.output {
            if self.embed.as_ref().is_none_or(|e| e.name != o.name) {
                v.push(o);
            }
        }
        v
    }

    /// Bytes of weights this shard holds.
    pub fn weight_bytes(&self) -> u64 {
        self.all().iter().map(|t| t.size).sum()
    }
}

fn check(t: &TensorInfo, dims: &[usize]) -> Result<(), GgufError> {
    let want: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
    if t.dims != want {
        return Err(GgufError::Corrupt(format!("tensor {} has shape {:?}, expected {:?}", t.name, t.dims, want)));
    }
    if !t.ty.is_supported() {
        return Err(GgufError::UnsupportedType { tensor: t.name.clone(), ty: format!("{:?}", t.ty) });
    }
    Ok(())
}
