//! The models the simulator plans: the real SmolLM2-135M file's sizes, and larger llama-style shapes built with
//! [`ModelDescription::synthetic`] (per-layer bytes, KV cache and hidden-state sizes are all the planner and the
//! simulator need).

use edge_coord::model_desc::ModelShape;
use edge_coord::ModelDescription;
use edge_node::quant::GgmlType;

/// Names accepted by `--model`.
pub const MODELS: [&str; 4] = ["smollm2", "qwen2.5-0.5b", "llama-7b-q4", "llama-70b-q4"];

/// Qwen2.5-0.5B: 24 layers, d=896, 14 q / 2 kv heads of 64, FFN 4864, vocab 151936 (tied embeddings).
pub const QWEN25_05B: ModelShape = ModelShape {
    n_layers: 24,
    dim: 896,
    n_heads: 14,
    n_kv_heads: 2,
    head_dim: 64,
    ffn_dim: 4864,
    vocab: 151_936,
    context: 32_768,
};

/// Llama-2-7B: 32 layers, d=4096, 32 heads (no GQA) of 128, FFN 11008, vocab 32000.
pub const LLAMA_7B: ModelShape = ModelShape {
    n_layers: 32,
    dim: 4096,
    n_heads: 32,
    n_kv_heads: 32,
    head_dim: 128,
    ffn_dim: 11_008,
    vocab: 32_000,
    context: 4096,
};

/// Llama-2-70B: 80 layers, d=8192, 64 q / 8 kv heads of 128, FFN 28672, vocab 32000.
pub const LLAMA_70B: ModelShape = ModelShape {
    n_layers: 80,
    dim: 8192,
    n_heads: 64,
    n_kv_heads: 8,
    head_dim: 128,
    ffn_dim: 28_672,
    vocab: 32_000,
    context: 4096,
};

/// SmolLM2-135M-Instruct Q4_1 as the real file holds it: Q4_1 layers (byte for byte what
/// [`ModelDescription::synthetic`] gives) and a Q8_0 embedding, tied to the head (README kernel table: the head
/// reads 28.7 MiB).
pub fn smollm2() -> ModelDescription {
    let mut m = ModelDescription::synthetic(ModelShape::SMOLLM2_135M, GgmlType::Q4_1);
    let s = ModelShape::SMOLLM2_135M;
    let (per_block, block_bytes) = GgmlType::Q8_0.block();
    m.embed_bytes = (s.vocab * s.dim).div_ceil(per_block) as u64 * block_bytes as u64;
    m.head_bytes = m.embed_bytes + s.dim as u64 * 4;
    m
}

/// A llama-style model with its own output matrix (not tied to the embedding).
fn untied(shape: ModelShape, weights: GgmlType) -> ModelDescription {
    let mut m = ModelDescription::synthetic(shape, weights);
    m.tied_embeddings = false;
    m
}

/// The model called `name` (one of [`MODELS`]).
pub fn model(name: &str) -> Option<ModelDescription> {
    Some(match name {
        "smollm2" => smollm2(),
        "qwen2.5-0.5b" => {
            let mut m = ModelDescription::synthetic(QWEN25_05B, GgmlType::Q4_0);
            m.arch = "qwen2".into();
            m
        }
        "llama-7b-q4" => untied(LLAMA_7B, GgmlType::Q4_0),
        "llama-70b-q4" => untied(LLAMA_70B, GgmlType::Q4_0),
        _ => return None,
    })
}
