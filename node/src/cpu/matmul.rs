//! Matrix products on the pool: `out (n, rows) = x (n, cols) · Wᵀ` for weight matrices in GGML blocks, with the
//! activations quantized once (by the caller) and shared by every thread.
//!
//! Several matrices that read the same input (Q, K and V; gate and up) run as one job, so a layer has few
//! synchronisation points. Threads take chunks of rows from one atomic counter (a busy core takes fewer); each
//! weight row is loaded once for all `n` tokens of a step (prefill reuses it from L1 for every token). Whether a
//! row goes through the four-row or the one-row kernel depends only on its place in its chunk, and both give
//! the same bits, so results never depend on the thread count.
//!
//! Matrices of the types the path repacks ([`super::repack`]) are held in the interleaved layout, eight rows per
//! kernel call for all the step's tokens; the others are read in place in the model file.

use std::ops::Range;
use std::sync::Arc;

use super::act::{ActType, QuantizedRows};
use super::kernels::{Dot4Fn, DotFn, Kernels, Packed, TileFn};
use super::pool::Pool;
use super::repack;
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

/// Fewest rows per chunk (a multiple of the four-row kernels' four and of two packed groups of eight).
const MIN_CHUNK_ROWS: usize = 16;

/// Rows per chunk of a matrix: about two chunks per thread. Long runs of rows let each thread stream its rows
/// with the prefetchers running ahead (chunks of 16 rows read DRAM at half the speed); two per thread still lets
/// a thread that runs ahead (the other's core is busy) take over the rest. Whole pairs of groups, for the
/// kernels that take two at once.
fn chunk_rows(rows: usize, threads: usize) -> usize {
    rows.div_ceil(2 * threads).next_multiple_of(2 * repack::ROWS).max(MIN_CHUNK_ROWS)
}

/// A weight matrix `(rows, cols)` in the model's bytes, with its kernel.
#[derive(Debug, Clone)]
pub struct Mat {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Byte range of the tensor in the model file (`Gguf::bytes`).
    pub range: Range<usize>,
    pub act: ActType,
    dot: DotFn,
    dot4: Option<Dot4Fn>,
    tile: Option<(TileFn, usize, usize)>,
    /// The weights in the interleaved layout with their kernel, when the path has one for the type. They live in
    /// pages of their own (an anonymous mapping), not on the heap: a node loads and frees whole stages as plans
    /// come and go, and a heap keeps what it once held (each thread's arena), so its resident memory would grow.
    packed: Option<(Arc<memmap2::Mmap>, Packed)>,
}

impl Mat {
    /// The matrix of a tensor of `g`, with `kernels`' dot product for its type (`None`: no kernel for it).
    pub fn new(g: &Gguf, info: &TensorInfo, kernels: Kernels) -> Option<Mat> {
        let act = act_type(info.ty)?;
        let start = g.data(info).as_ptr() as usize - g.bytes().as_ptr() as usize;
        let mat = Mat {
            ty: info.ty,
            rows: info.rows() as usize,
            cols: info.cols() as usize,
            range: start..start + info.size as usize,
            act,
            dot: kernels.dot(info.ty)?,
            dot4: kernels.dot4(info.ty),
            tile: kernels.tile(info.ty),
            packed: None,
        };
        Some(mat.repacked(g.data(info), kernels))
    }

    /// This matrix (whose bytes are `w`) in the interleaved layout when `kernels` has a kernel for its type and
    /// its rows fill whole groups; else unchanged.
    pub fn repacked(self, w: &[u8], kernels: Kernels) -> Mat {
        let (Some(kernel), Some(len)) = (kernels.packed(self.ty), repack::packed_len(self.ty, self.rows, self.cols))
        else {
            return self;
        };
        let pages = memmap2::MmapMut::map_anon(len).and_then(|mut m| {
            repack::repack_into(self.ty, self.rows, self.cols, w, &mut m);
            m.make_read_only()
        });
        match pages {
            Ok(pages) => Mat { act: kernels.packed_act(self.ty), packed: Some((Arc::new(pages), kernel)), ..self },
            // No memory for a copy: the kernels read the GGML layout in place.
            Err(_) => self,
        }
    }

    /// Whether the weights are held in the interleaved layout.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// A matrix of `rows` rows of type `ty` at the start of a byte buffer (benchmarks and tests).
    pub fn raw(ty: GgmlType, rows: usize, cols: usize, kernels: Kernels) -> Option<Mat> {
        let range = 0..ty.row_bytes(cols) * rows;
        let (dot, dot4, tile) = (kernels.dot(ty)?, kernels.dot4(ty), kernels.tile(ty));
        Some(Mat { ty, rows, cols, range, act: act_type(ty)?, dot, dot4, tile, packed: None })
    }

    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }
}

/// The activation form each weight type's integer dot product takes (ggml's `vec_dot_type`).
pub fn act_type(ty: GgmlType) -> Option<ActType> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => ActType::Q8_0,
        GgmlType::Q4_1 => ActType::Q8_1,
        GgmlType::Q4K | GgmlType::Q6K => ActType::Q8K,
        GgmlType::F16 | GgmlType::F32 => ActType::F32,
        _ => return None,
    })
}

/// Activations of one input, quantized for each activation type the matrices reading it need.
#[derive(Default)]
pub struct Acts {
    slots: Vec<QuantizedRows>,
}

impl Acts {
    /// One slot per activation type the matrices in `mats` take, with room for `n` rows of `cols`; returns the
    /// types in slot order.
    fn prepare(&mut self, n: usize, cols: usize, mats: &[&Mat]) -> Vec<ActType> {
        let mut types: Vec<ActType> = Vec::with_capacity(mats.len());
        for m in mats {
            if !types.contains(&m.act) {
                types.push(m.act);
            }
        }
        self.slots.resize_with(types.len().max(1), QuantizedRows::default);
        for (slot, &ty) in self.slots.iter_mut().zip(&types) {
            slot.reset(ty, n, cols);
        }
        types
    }

    /// Quantizes `x` `(n, cols)` for every type in `mats`, on the calling thread.
    pub fn quantize(&mut self, x: &[f32], cols: usize, mats: &[&Mat]) {
        let types = self.prepare(x.len() / cols, cols, mats);
        for (slot, ty) in self.slots.iter_mut().zip(types) {
            for (xr, o) in x.chunks_exact(cols).zip(slot.data.chunks_exact_mut(slot.row_bytes)) {
                ty.quantize_row(xr, o);
            }
        }
    }

    /// For every token row `t` of `x` `(n, cols)`: `form(t, row)` writes the row in place (a norm, SwiGLU, or
    /// nothing), then it is quantized for every matrix in `mats`. With several rows (prefill) the rows are
    /// spread over the pool; each row takes the same operations either way, so the bits never depend on it.
    pub fn form_and_quantize(
        &mut self,
        pool: &Pool,
        x: &mut [f32],
        cols: usize,
        mats: &[&Mat],
        form: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        let n = x.len() / cols;
        let types = self.prepare(n, cols, mats);
        let xs = Out(x.as_mut_ptr());
        let outs: Vec<(ActType, usize, Bytes)> =
            self.slots.iter_mut().zip(&types).map(|(s, &ty)| (ty, s.row_bytes, Bytes(s.data.as_mut_ptr()))).collect();
        let (xs, outs, form) = (&xs, &outs, &form);
        let row = move |t: usize| {
            // SAFETY: row t of x and of every slot (sized above) is touched by this call only.
            let xr = unsafe { std::slice::from_raw_parts_mut(xs.0.add(t * cols), cols) };
            form(t, xr);
            for &(ty, rb, ref o) in outs {
                ty.quantize_row(xr, unsafe { std::slice::from_raw_parts_mut(o.0.add(t * rb), rb) });
            }
        };
        if n == 1 {
            row(0);
        } else {
            pool.tasks(n, || (), |_, t| row(t));
        }
    }

    fn get(&self, act: ActType) -> &QuantizedRows {
        self.slots.iter().find(|s| s.ty == Some(act)).expect("activations quantized for every matrix")
    }
}

/// A raw output pointer shared by the pool's threads; each writes disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// The same for quantized rows.
struct Bytes(*mut u8);
unsafe impl Send for Bytes {}
unsafe impl Sync for Bytes {}

/// Runs `outs[i] (n, mats[i].rows) = x · mats[i]ᵀ` for every matrix as one pool job. `model` is the bytes the
/// matrices' ranges index; `acts` holds `x` quantized for each of them (see [`Acts::quantize`]).
pub fn matmul(pool: &Pool, model: &[u8], mats: &[&Mat], acts: &Acts, n: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(mats.len(), outs.len());
    let mut starts = Vec::with_capacity(mats.len() + 1); // first chunk of each matrix
    starts.push(0);
    let chunks: Vec<usize> = mats.iter().map(|m| chunk_rows(m.rows, pool.threads())).collect();
    for ((m, o), chunk) in mats.iter().zip(outs.iter()).zip(&chunks) {
        assert_eq!(o.len(), n * m.rows, "matmul output shape");
        assert!(m.range.end <= model.len());
        starts.push(starts.last().unwrap() + m.rows.div_ceil(*chunk));
    }
    let total = *starts.last().unwrap();
    let ptrs: Vec<Out> = outs.iter_mut().map(|o| Out(o.as_mut_ptr())).collect();
    let job = |_: &mut (), c: usize| {
        let mi = starts.partition_point(|&s| s <= c) - 1;
        let (m, out) = (mats[mi], ptrs[mi]);
        let a = acts.get(m.act);
        let w = &model[m.range.clone()];
        let rb = m.row_bytes();
        let r0 = (c - starts[mi]) * chunks[mi];
        let r1 = (r0 + chunks[mi]).min(m.rows);
        if let Some((bytes, kernel)) = &m.packed {
            let gbytes = bytes.len() / (m.rows / repack::ROWS);
            // SAFETY: a detected path's kernels; whole groups of `cols` and `n` activation rows; rows r0..r1 of
            // every token are written by this chunk only (chunks are whole groups).
            unsafe {
                let groups = r0 / repack::ROWS..r1 / repack::ROWS;
                kernel.groups(m.cols, bytes, gbytes, groups, &a.data, a.row_bytes, n, out.0, m.rows)
            };
            return;
        }
        let mut r = r0;
        match m.tile {
            // Prefill: tiles of rows x tokens; the tokens left over row by row.
            Some((tile, tr, tt)) if n >= tt => {
                let mut sums = [0f32; 64];
                while r + tr <= r1 {
                    let wr = &w[r * rb..(r + tr) * rb];
                    let mut t = 0;
                    while t + tt <= n {
                        let ar = &a.data[t * a.row_bytes..(t + tt) * a.row_bytes];
                        // SAFETY: a detected path's kernel; `tr` rows and `tt` activation rows of `cols`.
                        unsafe { tile(m.cols, wr, rb, ar, a.row_bytes, &mut sums) };
                        for (i, row) in sums.chunks_exact(tt).take(tr).enumerate() {
                            for (j, &v) in row.iter().enumerate() {
                                // SAFETY: (t + j, r + i) is written by this chunk only.
                                unsafe { *out.0.add((t + j) * m.rows + r + i) = v };
                            }
                        }
                        t += tt;
                    }
                    for i in r..r + tr {
                        for t in t..n {
                            // SAFETY: as below, one row.
                            unsafe { *out.0.add(t * m.rows + i) = (m.dot)(m.cols, &w[i * rb..(i + 1) * rb], a.row(t)) };
                        }
                    }
                    r += tr;
                }
            }
            _ => {}
        }
        if let Some(dot4) = m.dot4 {
            while r + 4 <= r1 {
                let wr = &w[r * rb..(r + 4) * rb];
                for t in 0..n {
                    // SAFETY: a detected path's kernel; four rows of `cols` and one activation row of `cols`;
                    // (t, r..r + 4) is written by this chunk only.
                    let v = unsafe { dot4(m.cols, wr, rb, a.row(t)) };
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out.0.add(t * m.rows + r), 4) };
                }
                r += 4;
            }
        }
        for r in r..r1 {
            let wr = &w[r * rb..(r + 1) * rb];
            for t in 0..n {
                // SAFETY: as above, one row.
                unsafe { *out.0.add(t * m.rows + r) = (m.dot)(m.cols, wr, a.row(t)) };
            }
        }
    };
    pool.tasks(total, || (), job);
}
