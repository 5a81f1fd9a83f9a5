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

/// The activation of the gated feed-forward block: `act(W_gate·x) * (W_up·x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (llama, qwen2): silu(x) = x / (1 + e^-x).
    Silu,
    /// GeGLU with the tanh approximation of GELU (gemma3): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    GeluTanh,
}

/// Sliding-window attention (gemma3): local layers attend to the last `window` positions (their own included),
/// with their own RoPE base; every `period`-th layer (counted from 1) is global.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    pub window: usize,
    /// Layers `l` with `l % period < period - 1` are local (llama.cpp's `set_swa_pattern`).
    pub period: usize,
    /// RoPE base of the local layers (`rope.freq_base_swa`, default 10000).
    pub rope_theta: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`: `llama`, `qwen2` or `gemma3`.
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
    /// The token embedding is multiplied by this (gemma3: sqrt(dim); 1 otherwise).
    pub embed_scale: f32,
    pub act: Activation,
    /// Each head's query and key are RMS-normed before RoPE (`attn_q_norm`, `attn_k_norm`; gemma3).
    pub qk_norm: bool,
    /// The attention and FFN outputs are RMS-normed before the residual add (`post_attention_norm`,
    /// `post_ffw_norm`; gemma3). In a tensor-parallel stage the norm applies to the summed output.
    pub post_norms: bool,
    /// Sliding-window attention on the local layers (gemma3), indexed by absolute layer.
    pub sliding: Option<SlidingWindow>,
}

impl ModelConfig {
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig, GgufError> {
        let arch = g.get_str("general.architecture")?.to_string();
        let rope = match arch.as_str() {
            "llama" => RopeStyle::Adjacent,
            "qwen2" | "gemma3" => RopeStyle::Neox,
            other => {
                return Err(GgufError::Corrupt(format!(
                    "architecture {other:?} is not supported (llama, qwen2, gemma3)"
                )))
            }
        };
        let gemma = arch == "gemma3";
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
        let sliding = match g.get(&key("attention.sliding_window")).and_then(|v| v.as_u64()) {
            Some(window) if gemma && window > 0 => {
                if g.has(&key("rope.scaling.type")) {
                    return bad("gemma3 files with RoPE scaling are not supported".into());
                }
                // llama.cpp's gemma3 period is 6 unless the file says otherwise (one integer: every `period`-th
                // layer is global); a per-layer list is not a gemma3 layout.
                let period = match g.get(&key("attention.sliding_window_pattern")) {
                    None => 6,
                    Some(v) => match v.as_u64() {
                        Some(p) if (2..=n_layers as u64).contains(&p) => p as usize,
                        _ => {
                            return bad(format!(
                                "gemma3 sliding_window_pattern {v:?} (an integer from 2 to {n_layers})"
                            ))
                        }
                    },
                };
                let rope_theta = g.get(&key("rope.freq_base_swa")).and_then(|v| v.as_f64()).unwrap_or(10_000.0) as f32;
                Some(SlidingWindow { window: window as usize, period, rope_theta })
            }
            _ => None,
        };
        if gemma && g.has(&key("final_logit_softcapping")) {
            return bad("gemma3 files with final logit soft-capping are not supported".into());
        }
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
            embed_scale: if gemma { (dim as f32).sqrt() } else { 1.0 },
            act: if gemma { Activation::GeluTanh } else { Activation::Silu },
            qk_norm: gemma,
            post_norms: gemma,
            sliding,
        })
    }

    /// The window of absolute layer `layer` when it is a local (sliding-window) layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding.filter(|s| layer % s.period < s.period - 1).map(|s| s.window)
    }

    /// RoPE base of absolute layer `layer`.
    pub fn rope_theta_of(&self, layer: usize) -> f32 {
        match self.sliding {
            Some(s) if self.window(layer).is_some() => s.rope_theta,
            _ => self.rope_theta,
        }
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
