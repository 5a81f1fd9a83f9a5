//! What the planner needs to know about a model: how big each layer is, what a token costs in KV cache and
//! compute, and how big the hidden state is that crosses a pipeline hop. Built from the GGUF header alone.

use edge_node::gguf::Gguf;
use edge_node::model::{ModelConfig, ShardTensors};
use edge_protocol::ShardSpec;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelDescription {
    pub arch: String,
    pub n_layers: usize,
    /// Weight bytes of each transformer layer, as stored (quantized).
    pub layer_weight_bytes: Vec<u64>,
    /// Token embedding table (first stage).
    pub embed_bytes: u64,
    /// Final norm and output head (last stage). When tied, the head *is* the embedding table: the last stage
    /// holds a copy, but the file stores it once.
    pub head_bytes: u64,
    pub tied_embeddings: bool,
    /// KV cache bytes per token per layer (f32 keys and values).
    pub kv_bytes_per_token_per_layer: u64,
    /// Hidden state bytes per token sent between pipeline stages (f32).
    pub activation_bytes_per_token: u64,
    /// Multiply-adds x 2 per token per layer for the projections (attention scores excluded).
    pub flops_per_token_per_layer: u64,
    pub context: usize,
}

impl ModelDescription {
    pub fn from_gguf(g: &Gguf, cfg: &ModelConfig) -> Result<ModelDescription, edge_node::gguf::GgufError> {
        let all = ShardTensors::resolve(g, cfg, ShardSpec::whole(cfg.n_layers as u32))?;
        let layer_weight_bytes = all
            .layers
            .iter()
            .map(|l| {
                let mut b = [&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down]
                    .map(|t| t.size)
                    .iter()
                    .sum::<u64>();
                b += [&l.bq, &l.bk, &l.bv].iter().filter_map(|t| t.as_ref()).map(|t| t.size).sum::<u64>();
                b
            })
            .collect();
        let embed_bytes = all.embed.as_ref().map_or(0, |t| t.size);
        let head_bytes = all.output_norm.as_ref().map_or(0, |t| t.size) + all.output.as_ref().map_or(0, |t| t.size);
        let q = cfg.n_heads * cfg.head_dim;
        let params = cfg.dim * (q + 2 * cfg.kv_dim()) + q * cfg.dim + 3 * cfg.dim * cfg.ffn_dim;
        Ok(ModelDescription {
            arch: cfg.arch.clone(),
            n_layers: cfg.n_layers,
            layer_weight_bytes,
            embed_bytes,
            head_bytes,
            tied_embeddings: cfg.tied_embeddings,
            kv_bytes_per_token_per_layer: (2 * cfg.kv_dim() * 4) as u64,
            activation_bytes_per_token: (cfg.dim * 4) as u64,
            flops_per_token_per_layer: 2 * params as u64,
            context: cfg.context,
        })
    }

    /// Bytes of distinct weights (a tied head counted once).
    pub fn total_weight_bytes(&self) -> u64 {
        let head = if self.tied_embeddings { self.head_bytes - self.embed_bytes } else { self.head_bytes };
        self.layer_weight_bytes.iter().sum::<u64>() + self.embed_bytes + head
    }
}
