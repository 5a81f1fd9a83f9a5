//! A sequence's KV cache on a wgpu device (one K and one V buffer per layer) and the RoPE and attention
//! dispatches that write and read it.
//!
//! A global layer's buffers hold every position (`capacity` rows). A sliding-window layer (gemma3's local layers)
//! holds a ring of `window - 1 + step` rows, `step` the most positions one submit writes: position `p` lives in
//! row `p % ring` (rope_kv.wgsl writes it there, attention.wgsl reads it there). While a step writes its
//! positions, its first row still reads the `window - 1` before them, and the ring has room for both. So memory is
//! bounded by the window, and the rows are those the cpu backend holds ([`kv::rows`]) and the planner counts.
//!
//! Once the sequence has held `written` positions, those below `written - ring` are gone from the ring: a rewind or
//! a fork whose next row would read them is refused.

use crate::cpu::kv;
use crate::model::RopeStyle;
use crate::shard::ShardError;

use super::dispatch::{Dispatch, Grid, Params8, SeqParams};
use super::kernels::{bind, Kernel};
use super::shard::GpuShard;

struct LayerKv {
    /// `(ring, kv_dim)` f32 each.
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    window: Option<usize>,
    ring: usize,
}

pub(super) struct GpuSeq {
    /// Which rows of the step are this sequence's, at which positions ([`SeqParams`]): written before each submit.
    rows: wgpu::Buffer,
    pub(super) rope: Vec<Dispatch>,      // per layer
    pub(super) attention: Vec<Dispatch>, // per layer
    layers: Vec<LayerKv>,
    /// The most positions the sequence has held since it was opened or rewound to 0.
    written: usize,
}

/// Rows a layer with `window` keeps for a sequence of `capacity` positions written at most `step` at a time.
pub fn ring_rows(window: Option<usize>, capacity: usize, step: usize) -> usize {
    let rows = kv::rows(window, capacity);
    window.map_or(rows, |w| rows.max(capacity.min(w.saturating_sub(1) + step)))
}

impl GpuSeq {
    /// Makes the sequence's dispatches of the next submit take `n` rows from `row0`, at positions from `pos0`.
    pub(super) fn set_rows(&self, queue: &wgpu::Queue, n: usize, pos0: usize, row0: usize) {
        let p = SeqParams { n_tok: n as u32, pos0: pos0 as u32, row0: row0 as u32, _pad: 0 };
        queue.write_buffer(&self.rows, 0, bytemuck::bytes_of(&p));
    }

    /// The oldest position some layer still holds, when the row after `len` positions reads an older one.
    fn lost(&self, len: usize) -> Option<usize> {
        let oldest = |l: &LayerKv| self.written.saturating_sub(l.ring);
        let lost = |l: &&LayerKv| len > 0 && kv::first_read(l.window, len) < oldest(l);
        self.layers.iter().filter(lost).map(oldest).max()
    }

    /// Checks that the sequence can go on after its first `len` positions; back at zero it starts over.
    pub(super) fn rewind(&mut self, len: usize) -> Result<(), ShardError> {
        if len == 0 {
            self.written = 0;
        } else if let Some(oldest) = self.lost(len) {
            return Err(ShardError::BadInput(format!(
                "cannot go back to {len} positions: a sliding-window layer no longer holds those before {oldest}"
            )));
        }
        Ok(())
    }

    /// Records that positions up to `end` were written.
    pub(super) fn advance(&mut self, end: usize) {
        self.written = self.written.max(end);
    }

    /// Records the copies into `to` (empty) of what the row after `len` positions reads: every position of a
    /// global layer, the last `window - 1` of a sliding-window layer (ring rows may differ between the two).
    pub(super) fn copy_prefix(
        &self,
        to: &mut GpuSeq,
        len: usize,
        kv_dim: usize,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<(), ShardError> {
        if let Some(oldest) = self.lost(len) {
            return Err(ShardError::BadInput(format!(
                "cannot fork {len} positions: a sliding-window layer no longer holds those before {oldest}"
            )));
        }
        let row = (kv_dim * 4) as u64;
        for (f, t) in self.layers.iter().zip(&to.layers) {
            let mut p = kv::first_read(f.window, len);
            while p < len {
                let (a, b) = (p % f.ring, p % t.ring);
                let n = (len - p).min(f.ring - a).min(t.ring - b);
                let (src, dst, bytes) = (a as u64 * row, b as u64 * row, n as u64 * row);
                enc.copy_buffer_to_buffer(&f.k, src, &t.k, dst, bytes);
                enc.copy_buffer_to_buffer(&f.v, src, &t.v, dst, bytes);
                p += n;
            }
        }
        to.written = len;
        Ok(())
    }
}

impl GpuShard {
    /// The KV buffers of a new sequence of `capacity` positions and the dispatches that use them.
    pub(super) fn new_sequence(&self, capacity: usize) -> Result<GpuSeq, ShardError> {
        let c = &self.cfg;
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let limit = self.ctx.limits.max_storage_buffer_binding_size;
        let per_pos = kv_dim as u64 * 4;
        if (capacity as u64).checked_mul(per_pos).is_none_or(|b| b > limit) {
            return Err(ShardError::ContextFull { need: capacity, capacity: (limit / per_pos) as usize });
        }
        let rope = self.pipeline(Kernel::RopeKv, None, vec![("NEOX", (c.rope == RopeStyle::Neox).to_string())]);
        let att = self.pipeline(Kernel::Attention, None, vec![("HD", c.head_dim.to_string())]);
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let step = self.opts.max_step_tokens.max(1);
        let rows = self.ctx.uniform("rows", &SeqParams { n_tok: 0, pos0: 0, row0: 0, _pad: 0 });
        let mut s = GpuSeq { rows, rope: Vec::new(), attention: Vec::new(), layers: Vec::new(), written: 0 };
        // Parameter blocks by window: local and global layers differ in rope base, window and ring.
        let mut params: Vec<(Option<usize>, wgpu::Buffer, wgpu::Buffer)> = Vec::new();
        for l in 0..self.layers.len() {
            let layer = self.spec.layer_start as usize + l; // the window pattern counts absolute layers
            let window = c.window(layer);
            let ring = ring_rows(window, capacity, step);
            if !params.iter().any(|p| p.0 == window) {
                let theta = c.rope_theta_of(layer).to_bits();
                let r =
                    Params8([q_dim as u32, kv_dim as u32, c.head_dim as u32, qkv_dim as u32, theta, ring as u32, 0, 0]);
                let (nh, nkv, w) = (c.n_heads as u32, c.n_kv_heads as u32, window.unwrap_or(0) as u32);
                let a = Params8([nh, nkv, q_dim as u32, kv_dim as u32, scale.to_bits(), w, ring as u32, 0]);
                params.push((window, self.ctx.uniform("rope", &r), self.ctx.uniform("attention", &a)));
            }
            let (_, rope_params, att_params) = params.iter().find(|p| p.0 == window).expect("pushed above");
            let bytes = ring as u64 * per_pos;
            let k = self.ctx.storage(&format!("k{l}"), bytes);
            let v = self.ctx.storage(&format!("v{l}"), bytes);
            let bg = bind(&self.ctx, &rope, &[&s.rows, rope_params, &self.act.qkv, &self.act.q, &k, &v]);
            s.rope.push(Dispatch {
                pipe: rope.clone(),
                narrow: None,
                bind: bg,
                grid: Grid::Items { items: (q_dim / 2 + kv_dim / 2 + kv_dim) as u32 },
                weight_bytes: 0,
            });
            let bg = bind(&self.ctx, &att, &[&s.rows, att_params, &self.act.q, &k, &v, &self.act.att]);
            s.attention.push(Dispatch {
                pipe: att.clone(),
                narrow: None,
                bind: bg,
                grid: Grid::Attention { heads: c.n_heads as u32 },
                weight_bytes: 0,
            });
            s.layers.push(LayerKv { k, v, window, ring });
        }
        self.ctx.check()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::ring_rows;

    #[test]
    fn a_window_layer_keeps_the_window_and_one_step() {
        assert_eq!(ring_rows(None, 5000, 256), 5000);
        assert_eq!(ring_rows(Some(512), 5000, 256), 767);
        assert_eq!(ring_rows(Some(512), 5000, 32), 767, "never fewer rows than the cpu backend and the planner count");
        assert_eq!(ring_rows(Some(512), 5000, 1024), 1535);
        assert_eq!(ring_rows(Some(512), 600, 256), 600);
    }
}
