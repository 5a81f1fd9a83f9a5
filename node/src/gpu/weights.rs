//! Weight matrices on the GPU, still quantized: GGML blocks repacked into textures the kernels fetch from
//! (see shaders/README.md). On lavapipe a texel fetch is a vectorized gather while a storage-buffer load is a
//! per-lane scalar loop, so weights read ~5x faster from textures; on real GPUs textures are as fast as buffers.
//!
//! A matrix is a `texture_2d_array<u32>` of `Rgba32Uint` texels: row `r` lives at `x = r % W`, layer `r / W`
//! (W at most the device's 2D size limit, so a 49k-row head is one texture), and the `V` texels of block `b`
//! at `y = b * V .. b * V + V`. Per-block scales (GGML's f16 `d`, or the `d, m` pair) sit in an `R32Uint`
//! texture of the same shape with `y = b`. The bytes are GGML's own; only their order changes.

use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

use super::context::GpuContext;

/// (bytes per 32 weights in GGML, scale bytes at their start, 16-byte texels of quants per block).
pub fn layout(ty: GgmlType) -> (usize, usize, usize) {
    match ty {
        GgmlType::F32 => (128, 0, 8),
        GgmlType::F16 => (64, 0, 4),
        GgmlType::Q8_0 => (34, 2, 2),
        GgmlType::Q4_0 => (18, 2, 1),
        GgmlType::Q4_1 => (20, 4, 1),
        other => unreachable!("{other:?} is rejected when the model is loaded"),
    }
}

/// Texture extent of a repacked matrix: width (rows per layer), height (texel rows), layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub width: usize,
    pub height: usize,
    pub layers: usize,
}

/// Repacks rows (each `cols` weights of GGML bytes) into (scale words, quant words, extent), both in texture
/// order: layer, then y, then x (4 words per quant texel, 1 per scale texel).
pub fn repack(ty: GgmlType, cols: usize, rows: &[&[u8]], max_width: usize) -> (Vec<u32>, Vec<u32>, Extent) {
    let (gb, sb, v) = layout(ty);
    let nb = cols / 32;
    let width = rows.len().clamp(1, max_width);
    let ext = Extent { width, height: nb * v, layers: rows.len().div_ceil(width).max(1) };
    let mut quant = vec![0u32; ext.layers * ext.height * width * 4];
    let mut scale = vec![0u32; if sb > 0 { ext.layers * nb * width } else { 0 }];
    for (r, row) in rows.iter().enumerate() {
        debug_assert_eq!(row.len(), nb * gb);
        let (x, l) = (r % width, r / width);
        for b in 0..nb {
            let blk = &row[b * gb..(b + 1) * gb];
            match sb {
                2 => scale[(l * nb + b) * width + x] = u16::from_le_bytes([blk[0], blk[1]]) as u32,
                4 => scale[(l * nb + b) * width + x] = u32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
                _ => {}
            }
            for (k, w) in blk[sb..].chunks_exact(4).enumerate() {
                let y = b * v + k / 4;
                quant[((l * ext.height + y) * width + x) * 4 + k % 4] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
    }
    (scale, quant, ext)
}

/// One row chunk of a matrix, laid out on its own.
pub struct Chunk {
    /// Rows in this chunk.
    pub rows: usize,
    /// First logical row of the chunk (for paired matrices: first row of each half).
    pub row_start: usize,
    pub scale: wgpu::TextureView,
    pub quant: wgpu::TextureView,
    /// Device bytes held.
    pub bytes: u64,
}

pub struct GpuMatrix {
    pub ty: GgmlType,
    pub cols: usize,
    /// Logical rows (for paired matrices: rows of one half).
    pub rows: usize,
    pub chunks: Vec<Chunk>,
}

fn row<'a>(g: &'a Gguf, t: &TensorInfo, r: usize) -> &'a [u8] {
    let rb = t.ty.row_bytes(t.cols() as usize);
    &g.data(t)[r * rb..(r + 1) * rb]
}

/// Rows per chunk: all of them unless `max_chunk_bytes` (of quant texels) says otherwise, and never more than
/// one texture array holds.
fn rows_per_chunk(ctx: &GpuContext, ty: GgmlType, cols: usize, max_chunk_bytes: u64) -> usize {
    let (_, _, v) = layout(ty);
    let bytes_per_row = (cols / 32 * v * 16) as u64;
    let by_bytes = (max_chunk_bytes / bytes_per_row).max(1);
    let by_texture = ctx.limits.max_texture_dimension_2d as u64 * ctx.limits.max_texture_array_layers as u64;
    by_bytes.min(by_texture) as usize
}

impl GpuMatrix {
    /// The row-concatenation of `parts` (same type and width), e.g. q, k and v as one matrix.
    pub fn concat(ctx: &GpuContext, g: &Gguf, parts: &[&TensorInfo], max_chunk_bytes: u64) -> GpuMatrix {
        let (ty, cols) = (parts[0].ty, parts[0].cols() as usize);
        let all: Vec<&[u8]> = parts.iter().flat_map(|t| (0..t.rows() as usize).map(move |r| row(g, t, r))).collect();
        let per = rows_per_chunk(ctx, ty, cols, max_chunk_bytes);
        let chunks =
            all.chunks(per).enumerate().map(|(i, rows)| upload(ctx, &parts[0].name, ty, cols, rows, i * per)).collect();
        GpuMatrix { ty, cols, rows: all.len(), chunks }
    }

    /// Two matrices of the same shape whose rows are used in pairs (gate and up): each chunk holds rows
    /// `[r0, r1)` of `a` followed by the same rows of `b`.
    pub fn pair(ctx: &GpuContext, g: &Gguf, a: &TensorInfo, b: &TensorInfo, max_chunk_bytes: u64) -> GpuMatrix {
        let (ty, cols, n) = (a.ty, a.cols() as usize, a.rows() as usize);
        let per = (rows_per_chunk(ctx, ty, cols, max_chunk_bytes) / 2).max(1);
        let chunks = (0..n)
            .step_by(per)
            .map(|r0| {
                let r1 = (r0 + per).min(n);
                let rows: Vec<&[u8]> = (r0..r1).map(|r| row(g, a, r)).chain((r0..r1).map(|r| row(g, b, r))).collect();
                upload(ctx, &a.name, ty, cols, &rows, r0)
            })
            .collect();
        GpuMatrix { ty, cols, rows: n, chunks }
    }

    /// Bytes of weights held on the device.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }
}

fn upload(ctx: &GpuContext, name: &str, ty: GgmlType, cols: usize, rows: &[&[u8]], row_start: usize) -> Chunk {
    let (scale, quant, ext) = repack(ty, cols, rows, ctx.limits.max_texture_dimension_2d as usize);
    let q = ctx.texture_u32(&format!("{name}/quant"), wgpu::TextureFormat::Rgba32Uint, ext, &quant);
    let s = if scale.is_empty() {
        let one = Extent { width: 1, height: 1, layers: 1 };
        ctx.texture_u32(&format!("{name}/scale"), wgpu::TextureFormat::R32Uint, one, &[0])
    } else {
        ctx.texture_u32(
            &format!("{name}/scale"),
            wgpu::TextureFormat::R32Uint,
            Extent { height: cols / 32, ..ext },
            &scale,
        )
    };
    Chunk { rows: rows.len(), row_start, scale: s, quant: q, bytes: (scale.len() + quant.len()) as u64 * 4 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    /// The repacked words hold exactly the GGML bytes: reassembling block (r, b) gives the original block,
    /// also when the rows fold into several texture layers.
    #[test]
    fn repack_is_a_permutation_of_the_ggml_bytes() {
        for ty in GgmlType::SUPPORTED {
            let (gb, sb, v) = layout(ty);
            let cols = 96;
            let rows: Vec<Vec<u8>> = (0..7)
                .map(|r| {
                    quantize_row(ty, &(0..cols).map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0).collect::<Vec<_>>())
                })
                .collect();
            let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
            let (scale, quant, ext) = repack(ty, cols, &refs, 3);
            assert_eq!(ext, Extent { width: 3, height: cols / 32 * v, layers: 3 });
            for (r, row) in rows.iter().enumerate() {
                let (x, l) = (r % 3, r / 3);
                for b in 0..cols / 32 {
                    let mut blk = Vec::new();
                    let s = scale.get((l * (cols / 32) + b) * 3 + x).copied().unwrap_or(0);
                    blk.extend_from_slice(&s.to_le_bytes()[..sb]);
                    for k in 0..v * 4 {
                        let y = b * v + k / 4;
                        blk.extend_from_slice(&quant[((l * ext.height + y) * 3 + x) * 4 + k % 4].to_le_bytes());
                    }
                    assert_eq!(&blk[..], &row[b * gb..(b + 1) * gb], "{ty:?} row {r} block {b}");
                }
            }
        }
    }
}
