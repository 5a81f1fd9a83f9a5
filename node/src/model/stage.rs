//! What a node is sent for one stage of a plan: the tensors of its layer range (for a member of a
//! tensor-parallel stage, the rows and columns of its heads and FFN columns) and the metadata that makes them a
//! self-describing GGUF again. The node rebuilds the file with [`StageImage::writer`] and loads it like any model.
//!
//! Slicing keeps GGML blocks whole: rows of a matrix are contiguous, and a column range (the output projection's
//! heads, the down projection's FFN columns) must start and end on a block boundary.

use std::borrow::Cow;

use edge_protocol::{LayerSlice, ShardSpec};

use crate::gguf::{Gguf, GgufError, TensorInfo, Value};
use crate::gguf_writer::GgufWriter;
use crate::model::{ModelConfig, ShardTensors};
use crate::quant::GgmlType;

/// One tensor of a stage, as it will appear in the rebuilt file.
#[derive(Debug, Clone)]
pub struct StageTensor<'a> {
    pub name: String,
    /// Innermost first, as GGUF stores them.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: Cow<'a, [u8]>,
}

/// The metadata and tensors of one stage.
#[derive(Debug, Clone)]
pub struct StageImage<'a> {
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<StageTensor<'a>>,
}

impl StageImage<'_> {
    /// A GGUF writer holding the image (tensor data borrowed).
    pub fn writer(&self) -> GgufWriter<'_> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.kv {
            w = w.kv(k.clone(), v.clone());
        }
        for t in &self.tensors {
            w = w.tensor(t.name.clone(), &t.dims, t.ty, &t.data[..]);
        }
        w
    }

    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.data.len() as u64).sum()
    }
}

/// The GGML block size of the FFN down projection: FFN column slices must be multiples of it.
pub fn ffn_block(g: &Gguf) -> Result<u32, GgufError> {
    Ok(g.info("blk.0.ffn_down.weight")?.ty.block().0.max(32) as u32)
}

/// Builds the image of stage `spec` of the model in `g`, sliced for a tensor-parallel member when `slice` is set.
pub fn stage_image<'a>(
    g: &'a Gguf,
    cfg: &ModelConfig,
    spec: ShardSpec,
    slice: Option<LayerSlice>,
) -> Result<StageImage<'a>, GgufError> {
    let t = ShardTensors::resolve(g, cfg, spec)?;
    let arch = cfg.arch.clone();
    let key = |k: &str| format!("{arch}.{k}");

    // Scalars of the architecture (arrays are the tokenizer's: the coordinator tokenizes).
    let mut kv: Vec<(String, Value)> = vec![("general.architecture".into(), Value::Str(arch.clone()))];
    kv.extend(
        g.metadata
            .iter()
            .filter(|(k, v)| k.starts_with(&format!("{arch}.")) && !matches!(v, Value::Array(_)))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let mut set = |k: String, v: Value| match kv.iter_mut().find(|(key, _)| *key == k) {
        Some(slot) => slot.1 = v,
        None => kv.push((k, v)),
    };
    // A middle stage has no embedding table to count the vocabulary from.
    set(key("vocab_size"), Value::U32(cfg.vocab as u32));

    let whole = |info: &TensorInfo| StageTensor {
        name: info.name.clone(),
        dims: info.dims.clone(),
        ty: info.ty,
        data: Cow::Borrowed(g.data(info)),
    };
    let mut tensors: Vec<StageTensor<'a>> = Vec::new();
    tensors.extend(t.embed.as_ref().map(whole));

    let Some(s) = slice else {
        for l in &t.layers {
            for info in [&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down] {
                tensors.push(whole(info));
            }
            tensors.extend([&l.bq, &l.bk, &l.bv].into_iter().flatten().map(whole));
            tensors.extend(l.extra_norms().map(whole));
        }
        push_head(&t, &mut tensors, whole);
        return Ok(StageImage { kv, tensors });
    };

    s.validate(cfg.n_heads as u32, cfg.n_kv_heads as u32, cfg.ffn_dim as u32, ffn_block(g)?)
        .map_err(GgufError::Corrupt)?;
    let hd = cfg.head_dim;
    let group = cfg.n_heads / cfg.n_kv_heads;
    let (k0, k1) = (s.kv_heads.0 as usize, s.kv_heads.1 as usize);
    let (f0, f1) = (s.ffn.0 as usize, s.ffn.1 as usize);
    // Query heads: those of the kv heads, or a range inside the one kv head (which the member holds whole).
    let (h0, h1) = s.q_heads.map_or((k0 * group, k1 * group), |(a, b)| (a as usize, b as usize));
    let q_rows = (h0 * hd, h1 * hd);
    let kv_rows = (k0 * hd, k1 * hd);
    for l in &t.layers {
        tensors.push(whole(&l.attn_norm));
        tensors.push(rows(g, &l.wq, q_rows));
        tensors.push(rows(g, &l.wk, kv_rows));
        tensors.push(rows(g, &l.wv, kv_rows));
        tensors.push(cols(g, &l.wo, q_rows)?);
        tensors.push(whole(&l.ffn_norm));
        tensors.push(rows(g, &l.w_gate, (f0, f1)));
        tensors.push(rows(g, &l.w_up, (f0, f1)));
        tensors.push(cols(g, &l.w_down, (f0, f1))?);
        for (b, r) in [(&l.bq, q_rows), (&l.bk, kv_rows), (&l.bv, kv_rows)] {
            tensors.extend(b.as_ref().map(|b| rows(g, b, r)));
        }
        tensors.extend(l.extra_norms().map(whole));
    }
    push_head(&t, &mut tensors, whole);
    set(key("attention.head_count"), Value::U32((h1 - h0) as u32));
    set(key("attention.head_count_kv"), Value::U32((k1 - k0) as u32));
    set(key("attention.key_length"), Value::U32(hd as u32));
    set(key("attention.value_length"), Value::U32(hd as u32));
    set(key("feed_forward_length"), Value::U32((f1 - f0) as u32));
    set("edge.partial_layers".into(), Value::Bool(true));
    Ok(StageImage { kv, tensors })
}

fn push_head<'a>(t: &ShardTensors, out: &mut Vec<StageTensor<'a>>, whole: impl Fn(&TensorInfo) -> StageTensor<'a>) {
    out.extend(t.output_norm.as_ref().map(&whole));
    if let Some(o) = &t.output {
        // A tied head is the embedding table: sent once when the stage also embeds.
        if t.embed.as_ref().is_none_or(|e| e.name != o.name) {
            out.push(whole(o));
        }
    }
}

/// Rows `[r0, r1)` of a matrix (or elements of a vector).
fn rows<'a>(g: &'a Gguf, info: &TensorInfo, (r0, r1): (usize, usize)) -> StageTensor<'a> {
    let rb = info.ty.row_bytes(info.cols() as usize);
    let (data, dims) = if info.dims.len() == 1 {
        let eb = rb / info.cols() as usize; // F32 vector: 4 bytes an element
        (&g.data(info)[r0 * eb..r1 * eb], vec![(r1 - r0) as u64])
    } else {
        (&g.data(info)[r0 * rb..r1 * rb], vec![info.cols(), (r1 - r0) as u64])
    };
    StageTensor { name: info.name.clone(), dims, ty: info.ty, data: Cow::Borrowed(data) }
}

/// Columns `[c0, c1)` of every row of a matrix; both ends on block boundaries.
fn cols<'a>(g: &Gguf, info: &TensorInfo, (c0, c1): (usize, usize)) -> Result<StageTensor<'a>, GgufError> {
    let (block, block_bytes) = info.ty.block();
    let n = info.cols() as usize;
    if c0 % block != 0 || (c1 % block != 0 && c1 != n) {
        return Err(GgufError::Corrupt(format!(
            "tensor {}: columns {c0}..{c1} are not on {block}-element block boundaries",
            info.name
        )));
    }
    let rb = info.ty.row_bytes(n);
    let (b0, b1) = (c0 / block * block_bytes, c1.div_ceil(block) * block_bytes);
    let mut data = Vec::with_capacity(info.rows() as usize * (b1 - b0));
    for row in g.data(info).chunks_exact(rb) {
        data.extend_from_slice(&row[b0..b1]);
    }
    Ok(StageTensor {
        name: info.name.clone(),
        dims: vec![(c1 - c0) as u64, info.rows()],
        ty: info.ty,
        data: Cow::Owned(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::parse_bytes;

    /// A tiny model in memory: 2 layers, dim 64, 4 heads / 2 kv heads of 16, ffn 96, vocab 40. `qwen2` adds q/k/v
    /// biases and a separate output head.
    fn tiny_arch(arch: &str) -> Vec<u8> {
        let (d, hd, nh, nkv, f, v) = (64u64, 16u64, 4u64, 2u64, 96u64, 40u64);
        let k = |s: &str| format!("{arch}.{s}");
        let mut w = GgufWriter::new()
            .kv("general.architecture", Value::Str(arch.into()))
            .kv(k("block_count"), Value::U32(2))
            .kv(k("embedding_length"), Value::U32(d as u32))
            .kv(k("attention.head_count"), Value::U32(nh as u32))
            .kv(k("attention.head_count_kv"), Value::U32(nkv as u32))
            .kv(k("feed_forward_length"), Value::U32(f as u32))
            .kv(k("context_length"), Value::U32(64))
            .kv(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
            .kv("tokenizer.ggml.tokens", Value::Array(vec![Value::Str("a".into())]));
        let mut seed = 1u32;
        let mut mat = |rows: u64, cols: u64| -> Vec<u8> {
            (0..rows * cols)
                .flat_map(|_| {
                    seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                    ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5).to_le_bytes()
                })
                .collect()
        };
        w = w.tensor("token_embd.weight", &[d, v], GgmlType::F32, mat(v, d));
        for l in 0..2 {
            let p = |s: &str| format!("blk.{l}.{s}");
            w = w
                .tensor(p("attn_norm.weight"), &[d], GgmlType::F32, mat(1, d))
                .tensor(p("attn_q.weight"), &[d, nh * hd], GgmlType::F32, mat(nh * hd, d))
                .tensor(p("attn_k.weight"), &[d, nkv * hd], GgmlType::F32, mat(nkv * hd, d))
                .tensor(p("attn_v.weight"), &[d, nkv * hd], GgmlType::F32, mat(nkv * hd, d))
                .tensor(p("attn_output.weight"), &[nh * hd, d], GgmlType::F32, mat(d, nh * hd))
                .tensor(p("ffn_norm.weight"), &[d], GgmlType::F32, mat(1, d))
                .tensor(p("ffn_gate.weight"), &[d, f], GgmlType::F32, mat(f, d))
                .tensor(p("ffn_up.weight"), &[d, f], GgmlType::F32, mat(f, d))
                .tensor(p("ffn_down.weight"), &[f, d], GgmlType::F32, mat(d, f));
            if arch == "qwen2" {
                w = w
                    .tensor(p("attn_q.bias"), &[nh * hd], GgmlType::F32, mat(1, nh * hd))
                    .tensor(p("attn_k.bias"), &[nkv * hd], GgmlType::F32, mat(1, nkv * hd))
                    .tensor(p("attn_v.bias"), &[nkv * hd], GgmlType::F32, mat(1, nkv * hd));
            }
        }
        if arch == "qwen2" {
            w = w.tensor("output.weight", &[d, v], GgmlType::F32, mat(v, d));
        }
        w = w.tensor("output_norm.weight", &[d], GgmlType::F32, mat(1, d));
        w.to_bytes().unwrap()
    }

    fn tiny() -> Vec<u8> {
        tiny_arch("llama")
    }

    /// A qwen2 stage that does not start at layer 0 still knows the model has q/k/v biases.
    #[test]
    fn later_qwen2_stages_keep_their_biases() {
        let g = parse_bytes(&tiny_arch("qwen2")).unwrap();
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        assert!(cfg.qkv_bias && !cfg.tied_embeddings);
        let last = ShardSpec { layer_start: 1, layer_end: 2, embed: false, head: true };
        let img = stage_image(&g, &cfg, last, None).unwrap();
        let rebuilt = parse_bytes(&img.writer().to_bytes().unwrap()).unwrap();
        assert!(rebuilt.has("blk.1.attn_v.bias") && rebuilt.has("output.weight"));
        assert_eq!(ModelConfig::from_gguf(&rebuilt).unwrap(), cfg, "the last stage describes the same model");
    }

    #[test]
    fn pipeline_stages_rebuild_as_models() {
        let g = parse_bytes(&tiny()).unwrap();
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        let mid = ShardSpec { layer_start: 1, layer_end: 2, embed: false, head: false };
        let img = stage_image(&g, &cfg, mid, None).unwrap();
        let rebuilt = parse_bytes(&img.writer().to_bytes().unwrap()).unwrap();
        assert!(!rebuilt.has("token_embd.weight") && !rebuilt.has("blk.0.attn_q.weight"));
        assert!(rebuilt.get("tokenizer.ggml.tokens").is_none(), "the tokenizer stays with the coordinator");
        let c2 = ModelConfig::from_gguf(&rebuilt).unwrap();
        assert_eq!(c2, cfg, "a middle stage describes the same model");
        let info = rebuilt.info("blk.1.ffn_down.weight").unwrap();
        assert_eq!(rebuilt.data(info), g.data(g.info("blk.1.ffn_down.weight").unwrap()));
        // The last stage of a tied model carries the embedding table as its head.
        let last = ShardSpec { layer_start: 2, layer_end: 2, embed: false, head: true };
        let img = stage_image(&g, &cfg, last, None).unwrap();
        let names: Vec<&str> = img.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["output_norm.weight", "token_embd.weight"]);
    }

    #[test]
    fn slices_hold_their_heads_and_columns() {
        let g = parse_bytes(&tiny()).unwrap();
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        let spec = ShardSpec::whole(2);
        let slice = LayerSlice { kv_heads: (1, 2), ffn: (32, 96), q_heads: None };
        let img = stage_image(&g, &cfg, spec, Some(slice)).unwrap();
        let s = parse_bytes(&img.writer().to_bytes().unwrap()).unwrap();
        let c = ModelConfig::from_gguf(&s).unwrap();
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.dim), (2, 1, 16, 64, 64));
        assert!(c.partial_layers && !cfg.partial_layers);
        // attn_q rows 32..64 (heads 2 and 3), attn_output columns 32..64 of every row, ffn_down columns 32..96.
        let f32s = |g: &Gguf, name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(g.data(g.info(name).unwrap())) };
        let (q, q_full) = (f32s(&s, "blk.0.attn_q.weight"), f32s(&g, "blk.0.attn_q.weight"));
        assert_eq!(q, q_full[32 * 64..64 * 64]);
        let (o, o_full) = (f32s(&s, "blk.1.attn_output.weight"), f32s(&g, "blk.1.attn_output.weight"));
        assert_eq!(o.len(), 64 * 32);
        for r in 0..64 {
            assert_eq!(o[r * 32..(r + 1) * 32], o_full[r * 64 + 32..r * 64 + 64]);
        }
        let (dn, dn_full) = (f32s(&s, "blk.1.ffn_down.weight"), f32s(&g, "blk.1.ffn_down.weight"));
        for r in 0..64 {
            assert_eq!(dn[r * 64..(r + 1) * 64], dn_full[r * 96 + 32..r * 96 + 96]);
        }
        // Off-block and out-of-range slices are refused.
        let bad = LayerSlice { kv_heads: (0, 1), ffn: (16, 96), q_heads: None };
        assert!(stage_image(&g, &cfg, spec, Some(bad)).is_err());
        let bad = LayerSlice { kv_heads: (1, 3), ffn: (0, 96), q_heads: None };
        assert!(stage_image(&g, &cfg, spec, Some(bad)).is_err());
    }
}
