//! Weight matrices on the GPU, still quantized: GGML blocks repacked into the block-column-major layout the
//! kernels read (see shaders/README.md), split into row chunks that each fit one storage binding.
//! Quant words of block `b` of row `r` start at word `(b * rows + r) * WPB`, so one `vec4<u32>` load fetches
//! a whole Q4 block and adjacent rows (adjacent invocations) read adjacent memory.

use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

use super::context::GpuContext;

/// (bytes per 32 weights, scale bytes at the start of those bytes, quant words per 32 weights).
pub fn layout(ty: GgmlType) -> (usize, usize, usize) {
    match ty {
        GgmlType::F32 => (128, 0, 32),
        GgmlType::F16 => (64, 0, 16),
        GgmlType::Q8_0 => (34, 2, 8),
        GgmlType::Q4_0 => (18, 2, 4),
        GgmlType::Q4_1 => (20, 4, 4),
        other => unreachable!("{other:?} is rejected when the model is loaded"),
    }
}

/// Repacks rows (each `cols` weights of GGML bytes) into (scale words, quant words).
pub fn repack(ty: GgmlType, cols: usize, rows: &[&[u8]]) -> (Vec<u32>, Vec<u32>) {
    let (gb, sb, wpb) = layout(ty);
    let (nb, n) = (cols / 32, rows.len());
    let mut quant = vec![0u32; nb * wpb * n];
    let mut scale16 = vec![0u16; if sb == 2 { (nb * n).next_multiple_of(2) } else { 0 }];
    let mut scale32 = vec![0u32; if sb == 4 { nb * n } else { 0 }];
    for (r, row) in rows.iter().enumerate() {
        debug_assert_eq!(row.len(), nb * gb);
        for b in 0..nb {
            let blk = &row[b * gb..(b + 1) * gb];
            match sb {
                2 => scale16[b * n + r] = u16::from_le_bytes([blk[0], blk[1]]),
                4 => scale32[b * n + r] = u32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
                _ => {}
            }
            for (k, w) in blk[sb..].chunks_exact(4).enumerate() {
                quant[(b * n + r) * wpb + k] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
    }
    let scale = if sb == 2 { bytemuck::cast_slice(&scale16).to_vec() } else { scale32 };
    (scale, quant)
}

/// One row chunk of a matrix, laid out on its own.
pub struct Chunk {
    /// Rows in this chunk (the layout stride).
    pub rows: usize,
    /// First logical row of the chunk (for paired matrices: first row of each half).
    pub row_start: usize,
    pub scale: wgpu::Buffer,
    pub quant: wgpu::Buffer,
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

fn rows_per_chunk(ty: GgmlType, cols: usize, max_binding: u64) -> usize {
    let (_, _, wpb) = layout(ty);
    let bytes_per_row = (cols / 32 * wpb * 4) as u64;
    (max_binding / bytes_per_row).max(1) as usize
}

impl GpuMatrix {
    /// The row-concatenation of `parts` (same type and width), e.g. q, k and v as one matrix.
    pub fn concat(ctx: &GpuContext, g: &Gguf, parts: &[&TensorInfo], max_binding: u64) -> GpuMatrix {
        let (ty, cols) = (parts[0].ty, parts[0].cols() as usize);
        let all: Vec<&[u8]> = parts.iter().flat_map(|t| (0..t.rows() as usize).map(move |r| row(g, t, r))).collect();
        let per = rows_per_chunk(ty, cols, max_binding);
        let chunks = all
            .chunks(per)
            .enumerate()
            .map(|(i, rows)| upload(ctx, &parts[0].name, ty, cols, rows, i * per))
            .collect();
        GpuMatrix { ty, cols, rows: all.len(), chunks }
    }

    /// Two matrices of the same shape whose rows are used in pairs (gate and up): each chunk holds rows
    /// `[r0, r1)` of `a` followed by the same rows of `b`.
    pub fn pair(ctx: &GpuContext, g: &Gguf, a: &TensorInfo, b: &TensorInfo, max_binding: u64) -> GpuMatrix {
        let (ty, cols, n) = (a.ty, a.cols() as usize, a.rows() as usize);
        let per = (rows_per_chunk(ty, cols, max_binding) / 2).max(1);
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
        self.chunks.iter().map(|c| c.scale.size() + c.quant.size()).sum()
    }
}

fn upload(ctx: &GpuContext, name: &str, ty: GgmlType, cols: usize, rows: &[&[u8]], row_start: usize) -> Chunk {
    let (scale, quant) = repack(ty, cols, rows);
    Chunk {
        rows: rows.len(),
        row_start,
        scale: ctx.storage_init(&format!("{name}/scale"), bytemuck::cast_slice(&scale)),
        quant: ctx.storage_init(&format!("{name}/quant"), bytemuck::cast_slice(&quant)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;

    /// The repacked words hold exactly the GGML bytes: reassembling block (r, b) gives the original block.
    #[test]
    fn repack_is_a_permutation_of_the_ggml_bytes() {
        for ty in GgmlType::SUPPORTED {
            let (gb, sb, wpb) = layout(ty);
            let cols = 96;
            let rows: Vec<Vec<u8>> =
                (0..5).map(|r| quantize_row(ty, &(0..cols).map(|i| ((i * 7 + r * 13) % 23) as f32 - 11.0).collect::<Vec<_>>())).collect();
            let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
            let (scale, quant) = repack(ty, cols, &refs);
            let sbytes: &[u8] = bytemuck::cast_slice(&scale);
            for (r, row) in rows.iter().enumerate() {
                for b in 0..cols / 32 {
                    let mut blk = Vec::new();
                    let s = b * rows.len() + r;
                    blk.extend_from_slice(&sbytes[s * sb..s * sb + sb]);
                    for k in 0..wpb {
                        blk.extend_from_slice(&quant[(b * rows.len() + r) * wpb + k].to_le_bytes());
                    }
                    assert_eq!(&blk[..], &row[b * gb..(b + 1) * gb], "{ty:?} row {r} block {b}");
                }
            }
        }
    }
}
