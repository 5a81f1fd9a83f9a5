//! Weight matrices on the GPU, still quantized: GGML blocks repacked into textures the kernels fetch from
//! (see shaders/README.md). On lavapipe a texel fetch is a vectorized gather while a storage-buffer load is a
//! per-lane scalar loop, so weights read ~5x faster from textures; on real GPUs textures are as fast as buffers.
//!
//! A matrix is a `texture_2d_array<u32>` of `Rgba32Uint` texels: row `r` lives at `x = r % W`, layer `r / W`
//! (W at most the device's 2D size limit, so a 49k-row head is one texture), and the `V` texels of block `b`
//! at `y = b * V .. b * V + V`. Per-block scale words (GGML's f16 `d`, the `d, m` pair, …) sit in an `R32Uint`
//! texture of the same width and layers with `y = b * S ..`. For the 32-weight types the bytes are GGML's own,
//! only their order changes; K-quant super-blocks are cut into their 32-weight sub-blocks (see [`block32`]).

use crate::gguf::{Gguf, TensorInfo};
use crate::quant::{f16_at, k4_scale_min, q6k_at, GgmlType};

use super::context::GpuContext;

/// How a type is laid out per block of 32 weights: `scales` 32-bit words in the scale texture (at
/// `y = b * scales ..`) and `texels` 16-byte quant texels (at `y = b * texels ..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub scales: usize,
    pub texels: usize,
}

pub fn layout(ty: GgmlType) -> Layout {
    let (scales, texels) = match ty {
        GgmlType::F32 => (0, 8),
        GgmlType::F16 => (0, 4),
        GgmlType::Q8_0 => (1, 2),
        GgmlType::Q4_0 => (1, 1),
        GgmlType::Q4_1 => (1, 1),
        // The types with more than one scale word carry them in a second quant texel: on lavapipe one texel fetch
        // costs about what one scale-word fetch does, so 2 texels beat 1 texel + 2..4 words.
        GgmlType::Q5_0 => (0, 2),
        GgmlType::Q4K => (0, 2),
        GgmlType::Q6K => (0, 2),
        other => unreachable!("{other:?} is rejected when the model is loaded"),
    };
    Layout { scales, texels }
}

/// Bytes a `(rows, cols)` matrix of `ty` takes on a wgpu device once repacked (never less than in the file).
pub fn device_bytes(ty: GgmlType, rows: usize, cols: usize) -> u64 {
    let Layout { scales, texels } = layout(ty);
    (rows * (cols / 32) * (texels * 16 + scales * 4)) as u64
}

/// Block `b` (32 weights) of a row of GGML bytes as (scale words, quant words), in the shapes [`layout`] gives:
/// - F32, F16, Q8_0, Q4_0, Q4_1: GGML's own bytes; the f16 scale (Q4_1: the `d, m` pair) is one scale word.
/// - Q5_0: texel 0 the nibbles `qs`, texel 1 `(d, qh, 0, 0)`.
/// - Q4_K: texel 0 the 32 nibbles of the sub-block in Q4_0's order (byte j: weight j low, weight j + 16 high),
///   texel 1 `(d * sc, dmin * m, 0, 0)` as f32 bits (the products ggml forms, so the kernel computes exactly what
///   ggml does).
/// - Q6_K: texel 0 the low 4 bits of the 32 weights in Q4_0's order, texel 1 their high 2 bits (weight j at bits
///   2j of word 0 for j < 16, of word 1 for the rest) and `d * sc` of the two 16-weight halves as f32 bits.
pub fn block32(ty: GgmlType, row: &[u8], b: usize) -> (Vec<u32>, Vec<u32>) {
    let words = |bytes: &[u8]| -> Vec<u32> {
        bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
    };
    let half = |blk: &[u8]| u16::from_le_bytes([blk[0], blk[1]]) as u32;
    let nibbles = |q: &dyn Fn(usize) -> u8| -> Vec<u32> {
        let bytes: Vec<u8> = (0..16).map(|j| q(j) | q(j + 16) << 4).collect();
        words(&bytes)
    };
    match ty {
        GgmlType::F32 => (vec![], words(&row[b * 128..][..128])),
        GgmlType::F16 => (vec![], words(&row[b * 64..][..64])),
        GgmlType::Q8_0 => {
            let blk = &row[b * 34..][..34];
            (vec![half(blk)], words(&blk[2..]))
        }
        GgmlType::Q4_0 => {
            let blk = &row[b * 18..][..18];
            (vec![half(blk)], words(&blk[2..]))
        }
        GgmlType::Q4_1 => {
            let blk = &row[b * 20..][..20];
            (words(&blk[..4]), words(&blk[4..]))
        }
        GgmlType::Q5_0 => {
            let blk = &row[b * 22..][..22];
            (vec![], [words(&blk[6..]), vec![half(blk), words(&blk[2..6])[0], 0, 0]].concat())
        }
        GgmlType::Q4K => {
            let (blk, s) = (&row[b / 8 * 144..][..144], b % 8);
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let (sc, m) = k4_scale_min(s, &blk[4..16]);
            let qs = &blk[16 + 32 * (s / 2)..][..32];
            let quant = nibbles(&|l| (qs[l] >> (4 * (s % 2))) & 15);
            (vec![], [quant, vec![(d * sc as f32).to_bits(), (dmin * m as f32).to_bits(), 0, 0]].concat())
        }
        GgmlType::Q6K => {
            let (blk, s) = (&row[b / 8 * 210..][..210], b % 8);
            let (ql, qh, sc, d) = (&blk[..128], &blk[128..192], &blk[192..208], f16_at(blk, 208));
            let q = |l: usize| (q6k_at(ql, qh, sc, s, l).0 + 32) as u8;
            let quant = nibbles(&|l| q(l) & 15);
            let high = |h: usize| (0..16).fold(0u32, |acc, j| acc | ((q(16 * h + j) >> 4) as u32) << (2 * j));
            let scale = |h: usize| (d * q6k_at(ql, qh, sc, s, 16 * h).1 as f32).to_bits();
            (vec![], [quant, vec![high(0), high(1), scale(0), scale(1)]].concat())
        }
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

/// Repacks rows (each `cols` weights of GGML bytes) into (scale words, quant words, extent of the quant texture),
/// both in texture order: layer, then y, then x (4 words per quant texel, 1 per scale texel). The scale texture
/// has the same width and layers and `cols / 32 * layout.scales` rows.
pub fn repack(ty: GgmlType, cols: usize, rows: &[&[u8]], max_width: usize) -> (Vec<u32>, Vec<u32>, Extent) {
    let Layout { scales: sw, texels: v } = layout(ty);
    let nb = cols / 32;
    let width = rows.len().clamp(1, max_width);
    let ext = Extent { width, height: nb * v, layers: rows.len().div_ceil(width).max(1) };
    let mut quant = vec![0u32; ext.layers * ext.height * width * 4];
    let mut scale = vec![0u32; ext.layers * nb * sw * width];
    for (r, row) in rows.iter().enumerate() {
        debug_assert_eq!(row.len(), ty.row_bytes(cols));
        let (x, l) = (r % width, r / width);
        for b in 0..nb {
            let (s, q) = block32(ty, row, b);
            for (i, w) in s.into_iter().enumerate() {
                scale[((l * nb * sw) + b * sw + i) * width + x] = w;
            }
            for (k, w) in q.into_iter().enumerate() {
                let y = b * v + k / 4;
                quant[((l * ext.height + y) * width + x) * 4 + k % 4] = w;
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
    let Layout { scales, texels } = layout(ty);
    let bytes_per_row = (cols / 32 * (texels * 16 + scales * 4)) as u64;
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
            Extent { height: cols / 32 * layout(ty).scales, ..ext },
            &scale,
        )
    };
    Chunk { rows: rows.len(), row_start, scale: s, quant: q, bytes: (scale.len() + quant.len()) as u64 * 4 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row};

    /// What the WGSL decoders compute from a block's words (quant_*.wgsl), written out in Rust.
    fn decode(ty: GgmlType, s: &[u32], q: &[u32]) -> Vec<f32> {
        let h = |w: u32, i: usize| half::f16::from_bits((w >> (16 * i)) as u16).to_f32();
        let byte = |k: usize| (q[k / 4] >> (8 * (k % 4))) as u8;
        let nib = |j: usize| if j < 16 { byte(j) & 15 } else { byte(j - 16) >> 4 } as f32;
        (0..32)
            .map(|j| match ty {
                GgmlType::F32 => f32::from_bits(q[j]),
                GgmlType::F16 => h(q[j / 2], j % 2),
                GgmlType::Q8_0 => h(s[0], 0) * byte(j) as i8 as f32,
                GgmlType::Q4_0 => h(s[0], 0) * (nib(j) - 8.0),
                GgmlType::Q4_1 => h(s[0], 0) * nib(j) + h(s[0], 1),
                GgmlType::Q5_0 => h(q[4], 0) * ((nib(j) as u32 | ((q[5] >> j) & 1) << 4) as f32 - 16.0),
                GgmlType::Q4K => f32::from_bits(q[4]) * nib(j) - f32::from_bits(q[5]),
                GgmlType::Q6K => {
                    let high = (q[4 + j / 16] >> (2 * (j % 16))) & 3;
                    f32::from_bits(q[6 + j / 16]) * ((nib(j) as u32 | high << 4) as f32 - 32.0)
                }
                _ => unreachable!(),
            })
            .collect()
    }

    /// Reading the repacked textures the way the kernels do gives exactly the CPU reference's weights, for every
    /// type, also when the rows fold into several texture layers.
    #[test]
    fn repacked_blocks_decode_to_the_reference_weights() {
        for ty in GgmlType::SUPPORTED {
            let Layout { scales: sw, texels: v } = layout(ty);
            let cols = 512;
            let nb = cols / 32;
            let rows: Vec<Vec<u8>> = (0..7)
                .map(|r| {
                    quantize_row(ty, &(0..cols).map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0).collect::<Vec<_>>())
                })
                .collect();
            let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
            let (scale, quant, ext) = repack(ty, cols, &refs, 3);
            assert_eq!(ext, Extent { width: 3, height: nb * v, layers: 3 });
            for (r, row) in rows.iter().enumerate() {
                let (x, l) = (r % 3, r / 3);
                let mut want = vec![0.0; cols];
                dequantize_row(ty, row, &mut want);
                for b in 0..nb {
                    let s: Vec<u32> = (0..sw).map(|i| scale[((l * nb * sw) + b * sw + i) * 3 + x]).collect();
                    let q: Vec<u32> =
                        (0..v * 4).map(|k| quant[((l * ext.height + b * v + k / 4) * 3 + x) * 4 + k % 4]).collect();
                    assert_eq!(decode(ty, &s, &q), want[b * 32..][..32], "{ty:?} row {r} block {b}");
                }
            }
        }
    }
}
