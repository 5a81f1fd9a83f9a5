//! Synthetic models and test data shared by the kernel tests (WGSL and native CPU): a SplitMix64 generator, random
//! quantized matrices, and tiny GGUF models laid out as llama.cpp's converter writes them.
#![allow(dead_code)]

use edge_node::gguf::{parse_bytes, Gguf, Value};
use edge_node::gguf_writer::GgufWriter;
use edge_node::model::ModelConfig;
use edge_node::quant::{quantize_row, GgmlType};
use edge_node::shard::ShardOutput;

/// SplitMix64: deterministic test data without depending on a rand version.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random `(rows, cols)` matrix quantized row by row.
pub fn quant_matrix(ty: GgmlType, rows: usize, cols: usize, scale: f32, rng: &mut Rng) -> Vec<u8> {
    (0..rows).flat_map(|_| quantize_row(ty, &rng.vec(cols, scale))).collect()
}

#[derive(Clone)]
pub struct Tiny {
    pub arch: &'static str,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub layers: usize,
    /// `attention.key_length`, when the head dim is not `dim / n_heads` (gemma3).
    pub head_dim: Option<usize>,
    pub context: usize,
    /// Type of a weight matrix, by layer and GGUF name suffix (`attn_q`, ..., `token_embd`, `output`).
    pub ty: fn(Option<usize>, &str) -> GgmlType,
    /// Write a separate `output.weight` (else the head is tied to the embedding).
    pub output: bool,
    pub seed: u64,
}

impl Tiny {
    pub fn llama(ty: fn(Option<usize>, &str) -> GgmlType) -> Tiny {
        Tiny {
            arch: "llama",
            dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn: 96,
            vocab: 300,
            layers: 3,
            head_dim: None,
            context: 256,
            ty,
            output: false,
            seed: 11,
        }
    }

    /// A qwen2 model (biases, a separate head) wide enough for K-quants, with Qwen2.5's mix of types.
    pub fn qwen2_kquants() -> Tiny {
        Tiny { arch: "qwen2", output: true, dim: 256, n_heads: 4, ffn: 512, ..Tiny::llama(qwen_types) }
    }

    /// A gemma3 model: heads of 256 (wider than dim / n_heads), one KV head, QK-norm and post-norms, GeGLU, a
    /// scaled tied embedding, and a sliding window of 6 positions on every other layer (1 and 3 are global).
    pub fn gemma3() -> Tiny {
        Tiny {
            arch: "gemma3",
            dim: 256,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: Some(256),
            ffn: 512,
            layers: 4,
            context: 1024,
            ..Tiny::llama(qwen_types)
        }
    }

    /// A GGUF image as llama.cpp's converter would lay it out (qwen2: neox RoPE and qkv biases; gemma3: see
    /// [`Tiny::gemma3`]).
    pub fn gguf(&self) -> Vec<u8> {
        let mut rng = Rng(self.seed);
        let a = self.arch;
        let gemma = a == "gemma3";
        let hd = self.head_dim.unwrap_or(self.dim / self.n_heads);
        let (q, kv) = (self.n_heads * hd, self.n_kv_heads * hd);
        let mut w = GgufWriter::new()
            .kv("general.architecture", Value::Str(a.into()))
            .kv("general.name", Value::Str("tiny test model".into()))
            .kv(format!("{a}.block_count"), Value::U32(self.layers as u32))
            .kv(format!("{a}.embedding_length"), Value::U32(self.dim as u32))
            .kv(format!("{a}.attention.head_count"), Value::U32(self.n_heads as u32))
            .kv(format!("{a}.attention.head_count_kv"), Value::U32(self.n_kv_heads as u32))
            .kv(format!("{a}.feed_forward_length"), Value::U32(self.ffn as u32))
            .kv(format!("{a}.context_length"), Value::U32(self.context as u32))
            .kv(format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
            .kv(format!("{a}.rope.freq_base"), Value::F32(if a == "llama" { 10_000.0 } else { 1_000_000.0 }));
        if let Some(k) = self.head_dim {
            w = w.kv(format!("{a}.attention.key_length"), Value::U32(k as u32));
            w = w.kv(format!("{a}.attention.value_length"), Value::U32(k as u32));
        }
        if gemma {
            w = w.kv(format!("{a}.attention.sliding_window"), Value::U32(6));
            w = w.kv(format!("{a}.attention.sliding_window_pattern"), Value::U32(2));
        }
        let mut matrix = |w: GgufWriter<'static>,
                          name: String,
                          layer: Option<usize>,
                          suffix: &str,
                          rows: usize,
                          cols: usize,
                          scale: f32| {
            let ty = (self.ty)(layer, suffix);
            w.tensor(name, &[cols as u64, rows as u64], ty, quant_matrix(ty, rows, cols, scale, &mut rng))
        };
        w = matrix(w, "token_embd.weight".into(), None, "token_embd", self.vocab, self.dim, 1.0);
        let mut vectors = Vec::new();
        for l in 0..self.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let (d, f) = (self.dim, self.ffn);
            let s_in = 1.0 / (d as f32).sqrt() * 1.7; // keeps activations O(1) through the layers
            w = matrix(w, p("attn_q"), Some(l), "attn_q", q, d, s_in);
            w = matrix(w, p("attn_k"), Some(l), "attn_k", kv, d, s_in);
            w = matrix(w, p("attn_v"), Some(l), "attn_v", kv, d, s_in);
            w = matrix(w, p("attn_output"), Some(l), "attn_output", d, q, 1.0 / (q as f32).sqrt());
            w = matrix(w, p("ffn_gate"), Some(l), "ffn_gate", f, d, s_in);
            w = matrix(w, p("ffn_up"), Some(l), "ffn_up", f, d, s_in);
            w = matrix(w, p("ffn_down"), Some(l), "ffn_down", d, f, 1.0 / (f as f32).sqrt());
            vectors.push((p("attn_norm"), d, 1.0, 0.3));
            vectors.push((p("ffn_norm"), d, 1.0, 0.3));
            if gemma {
                vectors.push((p("attn_q_norm"), hd, 1.0, 0.3));
                vectors.push((p("attn_k_norm"), hd, 1.0, 0.3));
                vectors.push((p("post_attention_norm"), d, 1.0, 0.3));
                vectors.push((p("post_ffw_norm"), d, 1.0, 0.3));
            }
            if a == "qwen2" {
                vectors.push((format!("blk.{l}.attn_q.bias"), q, 0.0, 0.5));
                vectors.push((format!("blk.{l}.attn_k.bias"), kv, 0.0, 0.5));
                vectors.push((format!("blk.{l}.attn_v.bias"), kv, 0.0, 0.5));
            }
        }
        if self.output {
            w = matrix(w, "output.weight".into(), None, "output", self.vocab, self.dim, 1.0);
        }
        vectors.push(("output_norm.weight".into(), self.dim, 1.0, 0.3));
        for (name, n, base, spread) in vectors {
            let v: Vec<f32> = (0..n).map(|_| base + spread * rng.f32()).collect();
            w = w.tensor(name, &[n as u64], GgmlType::F32, quantize_row(GgmlType::F32, &v));
        }
        w.to_bytes().unwrap()
    }

    pub fn load(&self) -> (Gguf, ModelConfig) {
        let g = parse_bytes(&self.gguf()).unwrap();
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        (g, cfg)
    }
}

pub fn logits(o: ShardOutput) -> Vec<f32> {
    match o {
        ShardOutput::Logits(l) => l,
        other => panic!("expected logits, got {other:?}"),
    }
}

pub fn tokens(o: ShardOutput) -> Vec<u32> {
    match o {
        ShardOutput::Tokens(t) => t,
        other => panic!("expected tokens, got {other:?}"),
    }
}

pub fn hidden(o: ShardOutput) -> Vec<f32> {
    match o {
        ShardOutput::Hidden(h) => h,
        other => panic!("expected hidden states, got {other:?}"),
    }
}

pub fn prompt(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// The gap between the two largest logits (how robust a greedy comparison is).
pub fn top2_gap(l: &[f32]) -> f32 {
    let mut s = l.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s.get(1).copied().unwrap_or(f32::NEG_INFINITY)
}

/// Qwen2.5's mix of types in a synthetic qwen2 model: Q/K/V of three types (Q5_0, Q8_0 in layer 0, Q6_K),
/// K-quants elsewhere, a Q4_K embedding and a Q6_K head.
pub fn qwen_types(layer: Option<usize>, s: &str) -> GgmlType {
    match (layer, s) {
        (None, "token_embd") => GgmlType::Q4K,
        (None, _) => GgmlType::Q6K,
        (Some(_), "attn_q" | "attn_k") => GgmlType::Q5_0,
        (Some(0), "attn_v") => GgmlType::Q8_0,
        (Some(_), "attn_v") => GgmlType::Q6K,
        (Some(l), "ffn_down") if l % 2 == 0 => GgmlType::Q6K,
        _ => GgmlType::Q4K,
    }
}
