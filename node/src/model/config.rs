//! Model hyper-parameters, read from GGUF metadata (`{arch}.*` keys, as llama.cpp names them).

use crate::gguf::{Gguf, GgufError};

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// `llama` GGUFs (Q/K pre-permuted by the converter): rotate adjacent pairs (x[2i], x[2i+1]).
    Adjacent,
    /// `qwen2` (GPT-NeoX style): rotate the two halves (x[i], x[i + head_dim/2]).
    Neox,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`: `llama` or `qwen2`.
    pub arch: String,
    pub n_layers: usize,
    /// Model width (hidden size).
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// FFN inner width.
    pub ffn_dim: usize,
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope: RopeStyle,
    /// Attention projections carry biases (qwen2).
    pub qkv_bias: bool,
    /// The output head shares the token embedding matrix.
    pub tied_embeddings: bool,
    /// The file holds a tensor-parallel slice of every layer (`edge.partial_layers`): the attention and FFN
    /// outputs are partial sums that the members of the stage add up (see [`crate::shard::Reducer`]).
    pub partial_layers: bool,
}

impl ModelConfig {
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig, GgufError> {
        let arch = g.get_str("general.architecture")?.to_string();
        let rope = match arch.as_str() {
            "llama" => RopeStyle::Adjacent,
            "qwen2" => RopeStyle::Neox,
            other => return Err(GgufError::Corrupt(format!("architecture {other:?} is not supported (llama, qwen2)"))),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let n_layers = g.get_u64(&key("block_count"))? as usize;
        let dim = g.get_u64(&key("embedding_length"))? as usize;
        let n_heads = g.get_u64(&key("attention.head_count"))? as usize;
        let n_kv_heads =
            g.get(&key("attention.head_count_kv")).and_then(|v| v.as_u64()).unwrap_or(n_heads as u64) as usize;
        let ffn_dim = g.get_u64(&key("feed_forward_length"))? as usize;
        let context = g.get_u64(&key("context_length"))? as usize;
        let rms_eps = g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let rope_theta = g.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0) as f32;
        let vocab = match g.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g.info("token_embd.weight")?.rows() as usize,
        };
        let bad = |what: String| Err(GgufError::Corrupt(what));
        if n_layers == 0 || n_layers > 1024 || dim == 0 || dim > 65536 || ffn_dim == 0 || ffn_dim > 1 << 20 {
            return bad(format!("implausible shape: {n_layers} layers, dim {dim}, ffn {ffn_dim}"));
        }
        // `attention.key_length` (llama.cpp's name) when set: a tensor-parallel slice holds fewer heads than
        // dim / head_dim.
        let key_length = g.get(&key("attention.key_length")).and_then(|v| v.as_u64());
        if n_heads == 0
            || n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
            || (key_length.is_none() && !dim.is_multiple_of(n_heads))
        {
            return bad(format!("{n_heads} heads / {n_kv_heads} kv heads do not divide dim {dim}"));
        }
        let head_dim = key_length.map_or(dim / n_heads, |k| k as usize);
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > 256 {
            return bad(format!("head dim {head_dim} (must be even, at most 256)"));
        }
        let tied_embeddings = !g.has("output.weight");
        // Any layer: a pipeline stage's file starts at its first layer, not at blk.0.
        let qkv_bias = g.tensors.iter().any(|t| t.name.ends_with(".attn_q.bias"));
        let partial_layers = g.get("edge.partial_layers").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(ModelConfig {
            arch,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab,
            context,
            rms_eps,
            rope_theta,
            rope,
            qkv_bias,
            tied_embeddings,
            partial_layers,
        })
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
