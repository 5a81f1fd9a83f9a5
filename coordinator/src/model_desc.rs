//! What the planner needs to know about a model: how big each layer is, what a token costs in KV cache and
//! compute, how big the hidden state is that crosses a pipeline hop, and the shapes a tensor-parallel split
//! follows. Built from the GGUF header alone ([`ModelDescription::from_gguf`]), or from a shape for tests and the
//! simulator ([`ModelDescription::synthetic`]).

use edge_node::gguf::Gguf;
use edge_node::model::{ModelConfig, ShardTensors};
use edge_node::quant::GgmlType;
use edge_protocol::ShardSpec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDescription {
    pub arch: String,
    pub n_layers: usize,
    /// Model width (hidden size).
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// FFN inner width (columns of the down projection).
    pub ffn_dim: usize,
    pub vocab: usize,
    /// Granularity of a tensor-parallel FFN column split: the GGML block size of the FFN down matrix's type, at
    /// least 32 (32 for Q4_0/Q4_1/Q8_0, 256 for K-quants).
    pub ffn_block: usize,
    /// Weight bytes of each transformer layer as a wgpu node holds them (quantized, repacked: at least the file's).
    pub layer_weight_bytes: Vec<u64>,
    /// Token embedding table (first stage).
    pub embed_bytes: u64,
    /// Final norm and output head (last stage). When tied, the head *is* the embedding table: the last stage
    /// holds a copy, but the file stores it once.
    pub head_bytes: u64,
    pub tied_embeddings: bool,
    /// All layers' weight bytes as the file stores them: what a node of the cpu backend reads, whose kernels take
    /// every GGUF type in its own blocks (0: unknown, taken as the counts above). See
    /// [`ModelDescription::native_layer_ratio`].
    #[serde(default)]
    pub native_layer_bytes: u64,
    /// The head's (final norm and output matrix) as the file stores them (0: unknown).
    #[serde(default)]
    pub native_head_bytes: u64,
    /// KV cache bytes per token per layer (f32 keys and values, as the wgpu backend holds them; the cpu backend
    /// holds f16, half of this: for its nodes the memory check is conservative, the read time halved).
    pub kv_bytes_per_token_per_layer: u64,
    /// Per layer, the positions its attention reads when it is a sliding-window layer (gemma3's local layers,
    /// whose KV cache a node bounds by the window); empty when every layer reads every position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_windows: Vec<Option<usize>>,
    /// Hidden state bytes per token sent between pipeline stages (f32).
    pub activation_bytes_per_token: u64,
    /// Multiply-adds x 2 per token per layer for the projections (attention scores excluded).
    pub flops_per_token_per_layer: u64,
    pub context: usize,
}

impl ModelDescription {
    pub fn from_gguf(g: &Gguf, cfg: &ModelConfig) -> Result<ModelDescription, edge_node::gguf::GgufError> {
        let all = ShardTensors::resolve(g, cfg, ShardSpec::whole(cfg.n_layers as u32))?;
        // Matrices as a wgpu node holds them (repacked into textures: never less than the file, up to ~1.8x for
        // Q4_K), or as the file stores them (what a cpu node reads); norms and biases as stored.
        type Size<'t> = &'t dyn Fn(&edge_node::gguf::TensorInfo) -> u64;
        let device: Size = &|t| edge_node::gpu::weights::device_bytes(t.ty, t.rows() as usize, t.cols() as usize);
        let file: Size = &|t| t.size;
        let layer = |l: &edge_node::model::LayerTensors, matrix: Size| {
            let mut b = [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].map(matrix).iter().sum::<u64>();
            b += l.attn_norm.size + l.ffn_norm.size;
            b += [&l.bq, &l.bk, &l.bv].iter().filter_map(|t| t.as_ref()).map(|t| t.size).sum::<u64>();
            b += l.extra_norms().map(|t| t.size).sum::<u64>();
            b
        };
        let head =
            |matrix: Size| all.output_norm.as_ref().map_or(0, |t| t.size) + all.output.as_ref().map_or(0, matrix);
        let layer_weight_bytes = all.layers.iter().map(|l| layer(l, device)).collect();
        let embed_bytes = all.embed.as_ref().map_or(0, device);
        let head_bytes = head(device);
        let native_layer_bytes = all.layers.iter().map(|l| layer(l, file)).sum();
        let native_head_bytes = head(file);
        let q = cfg.n_heads * cfg.head_dim;
        let params = cfg.dim * (q + 2 * cfg.kv_dim()) + q * cfg.dim + 3 * cfg.dim * cfg.ffn_dim;
        let ffn_block = all.layers.first().map_or(32, |l| l.w_down.ty.block().0.max(32));
        Ok(ModelDescription {
            arch: cfg.arch.clone(),
            n_layers: cfg.n_layers,
            dim: cfg.dim,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            ffn_dim: cfg.ffn_dim,
            vocab: cfg.vocab,
            ffn_block,
            layer_weight_bytes,
            embed_bytes,
            head_bytes,
            tied_embeddings: cfg.tied_embeddings,
            native_layer_bytes,
            native_head_bytes,
            kv_bytes_per_token_per_layer: (2 * cfg.kv_dim() * 4) as u64,
            layer_windows: match cfg.sliding {
                Some(_) => (0..cfg.n_layers).map(|l| cfg.window(l)).collect(),
                None => Vec::new(),
            },
            activation_bytes_per_token: (cfg.dim * 4) as u64,
            flops_per_token_per_layer: 2 * params as u64,
            context: cfg.context,
        })
    }

    /// A llama-style model of the given shape with every matrix (embedding included) stored as `weights` and f32
    /// norms, tied embeddings and no biases: what [`ModelDescription::from_gguf`] would report for such a file.
    /// With `ModelShape::SMOLLM2_135M` and `GgmlType::Q4_1` the layers match the real SmolLM2 file byte for byte
    /// (its embedding is Q8_0 there). Fields are public: tests adjust them by hand.
    pub fn synthetic(shape: ModelShape, weights: GgmlType) -> ModelDescription {
        let s = shape;
        let (per_block, block_bytes) = weights.block();
        let bytes = |n: usize| (n.div_ceil(per_block) * block_bytes) as u64;
        let (q, kv) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let layer =
            bytes(s.dim * (q + 2 * kv)) + bytes(q * s.dim) + bytes(3 * s.ffn_dim * s.dim) + 2 * s.dim as u64 * 4;
        let embed = bytes(s.vocab * s.dim);
        let params = s.dim * (q + 2 * kv) + q * s.dim + 3 * s.dim * s.ffn_dim;
        ModelDescription {
            arch: "llama".into(),
            n_layers: s.n_layers,
            dim: s.dim,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            ffn_dim: s.ffn_dim,
            vocab: s.vocab,
            ffn_block: per_block.max(32),
            layer_weight_bytes: vec![layer; s.n_layers],
            embed_bytes: embed,
            head_bytes: embed + s.dim as u64 * 4,
            tied_embeddings: true,
            // The counts above are the file's.
            native_layer_bytes: 0,
            native_head_bytes: 0,
            kv_bytes_per_token_per_layer: (2 * kv * 4) as u64,
            layer_windows: Vec::new(),
            activation_bytes_per_token: (s.dim * 4) as u64,
            flops_per_token_per_layer: 2 * params as u64,
            context: s.context,
        }
    }

    /// Width of the query projection (`n_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the key (and of the value) projection (`n_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The attention projections' share of a layer's weights (q, k, v, o against gate, up, down), by parameter
    /// count; what a tensor-parallel member holding some heads and some FFN columns reads is estimated with it.
    pub fn attention_weight_fraction(&self) -> f64 {
        let (q, kv) = (self.q_dim() as f64, self.kv_dim() as f64);
        let d = self.dim as f64;
        let attn = d * (q + 2.0 * kv) + q * d;
        let ffn = 3.0 * d * self.ffn_dim as f64;
        if attn + ffn > 0.0 {
            attn / (attn + ffn)
        } else {
            0.5
        }
    }

    /// What a node of the cpu backend reads of the layers' weights for each byte the description counts (the
    /// file's bytes over a wgpu node's, which holds K-quants widened: 1.00 for SmolLM2's Q4_1, 0.69 and 0.68 for
    /// the Q4_K_M files of Qwen2.5 and gemma3); 1 when unknown.
    pub fn native_layer_ratio(&self) -> f64 {
        ratio(self.native_layer_bytes, self.layer_weight_bytes.iter().sum())
    }

    /// The same for the head (0.94 for the Q8_0 heads of all three: wgpu holds their scales as f32).
    pub fn native_head_ratio(&self) -> f64 {
        ratio(self.native_head_bytes, self.head_bytes)
    }

    /// Bytes of distinct weights (a tied head counted once).
    pub fn total_weight_bytes(&self) -> u64 {
        let head = if self.tied_embeddings { self.head_bytes - self.embed_bytes } else { self.head_bytes };
        self.layer_weight_bytes.iter().sum::<u64>() + self.embed_bytes + head
    }
}

/// `native / counted`, or 1 when either is unknown.
fn ratio(native: u64, counted: u64) -> f64 {
    if native == 0 || counted == 0 {
        1.0
    } else {
        native as f64 / counted as f64
    }
}

/// The shape of a llama-style model, for [`ModelDescription::synthetic`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub context: usize,
}

impl ModelShape {
    /// SmolLM2-135M: 30 layers, d=576, 9 q / 3 kv heads of 64, FFN 1536, vocab 49152, context 8192.
    pub const SMOLLM2_135M: ModelShape = ModelShape {
        n_layers: 30,
        dim: 576,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        ffn_dim: 1536,
        vocab: 49152,
        context: 8192,
    };

    /// Gemma-3-270M: 18 layers, d=640, 4 q / 1 kv head of 256, FFN 2048, vocab 262144, context 32768.
    pub const GEMMA3_270M: ModelShape = ModelShape {
        n_layers: 18,
        dim: 640,
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 256,
        ffn_dim: 2048,
        vocab: 262_144,
        context: 32_768,
    };
}
