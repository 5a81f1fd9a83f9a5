//! The step of a tensor-parallel member on a wgpu device. The member holds a slice of every layer (whole KV-head
//! groups with their query heads, a range of FFN columns), so its O and down matmuls give partial sums of the
//! attention and FFN outputs; the stage adds them up through the [`Reducer`] before each residual add. The
//! residual stream therefore lives on the host between the blocks:
//!
//! - tokens in: the embedding runs on the device and `x` is read back (hidden states in: `x` is the input);
//! - per layer, twice (attention, then FFN): upload `x`, one submit of [norm+QKV, RoPE + KV write, attention,
//!   O -> partial] or [norm+gate/up+SwiGLU, down -> partial], read the partial back, `all_reduce` it and add it
//!   to `x` in f32 (gemma3 RMS-norms the sum first: its post-norm is of the whole output);
//! - the head (if any step wants logits): upload the wanted rows of `x` to `xh`, one submit, read back the tokens
//!   or logits; else `x` is the output.
//!
//! That is 2 submits, 2 uploads and 2 readbacks of `(n, dim)` floats per layer, against 1 submit per step for a
//! shard of whole layers: the reduction between blocks is the price of splitting a layer. A batch of several
//! sequences' rows (see `batch.rs`) runs the same way, each sequence's attention over its own rows.

use crate::shard::{Reducer, ShardError, ShardInput};

use super::batch::{Readback, Seg};
use super::dispatch::Dispatch;
use super::shard::GpuShard;

impl GpuShard {
    /// Runs the rows of `segs` through the member's layers (see the module comment): what the whole-layer step
    /// reads back (the residual stream after the layers, the head's tokens and logits).
    pub(super) fn run_partial(
        &self,
        segs: &[Seg],
        input: ShardInput<'_>,
        reduce: &mut dyn Reducer,
    ) -> Result<Readback, ShardError> {
        let total = segs.iter().map(|s| s.n).sum::<usize>();
        let dims = self.begin_rows(total, 0);
        let dim = self.cfg.dim;
        let mut x: Vec<f32> = match input {
            ShardInput::Tokens(t) => {
                let embed = self
                    .embed
                    .as_ref()
                    .ok_or_else(|| ShardError::BadInput("this shard takes hidden states, not tokens".into()))?;
                self.ctx.queue.write_buffer(&self.act.tokens, 0, bytemuck::cast_slice(t));
                let bytes =
                    self.submit_read(|pass| embed.record(pass, dims), (&self.act.x, (total * dim * 4) as u64))?;
                bytemuck::pod_collect_to_vec(&bytes)
            }
            ShardInput::Hidden(h) => h.to_vec(),
        };
        let kvs = self.kvs(segs)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let (post_attn, post_ffn) = layer.host_post_norms.as_ref().map(|(a, f)| (a, f)).unzip();
            let attention = |pass: &mut wgpu::ComputePass<'_>| {
                layer.qkv.iter().for_each(|d| d.record(pass, dims));
                self.record_attention(pass, l, segs, &kvs, dims);
                layer.o.iter().for_each(|d| d.record(pass, dims));
            };
            self.reduced_block(attention, post_attn, &mut x, reduce)?;
            let ffn = |pass: &mut wgpu::ComputePass<'_>| {
                layer.gate_up.iter().chain(&layer.down).for_each(|d: &Dispatch| d.record(pass, dims));
            };
            self.reduced_block(ffn, post_ffn, &mut x, reduce)?;
        }
        let head_rows: Vec<usize> = segs.iter().flat_map(|s| s.head_rows()).collect();
        let mut r = Readback { hidden: x, tokens: Vec::new(), logits: Vec::new() };
        if !head_rows.is_empty() {
            let rows: Vec<f32> = head_rows.iter().flat_map(|&i| &r.hidden[i * dim..(i + 1) * dim]).copied().collect();
            self.ctx.queue.write_buffer(&self.act.xh, 0, bytemuck::cast_slice(&rows));
            let dims = self.begin_rows(total, head_rows.len());
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            let mut reads = Vec::new();
            self.record_head(&mut enc, segs, dims, &mut reads);
            let head = self.readback(&self.finish(enc, &reads)?, 0, head_rows.len());
            (r.tokens, r.logits) = (head.tokens, head.logits);
        }
        Ok(r)
    }

    /// Records one pass, submits it and reads back `read` (a buffer and a byte count).
    fn submit_read(
        &self,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
        read: (&wgpu::Buffer, u64),
    ) -> Result<Vec<u8>, ShardError> {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        record(&mut enc.begin_compute_pass(&Default::default()));
        self.finish(enc, &[read])
    }

    /// One block of a layer: uploads the residual stream `x` `(n, dim)`, runs what `record` records (ending in a
    /// matmul into the partial buffer) in one submit, reads the partial sums back, has the stage add them up, and
    /// adds the total to `x` (RMS-normed with `post_norm` first, gemma3's post-norm of the whole output).
    fn reduced_block(
        &self,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
        post_norm: Option<&Vec<f32>>,
        x: &mut [f32],
        reduce: &mut dyn Reducer,
    ) -> Result<(), ShardError> {
        self.ctx.queue.write_buffer(&self.act.x, 0, bytemuck::cast_slice(x));
        let bytes = self.submit_read(record, (&self.act.partial, std::mem::size_of_val(x) as u64))?;
        let mut partial: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        reduce.all_reduce(&mut partial)?;
        if let Some(w) = post_norm {
            for row in partial.chunks_exact_mut(self.cfg.dim) {
                crate::reference::rmsnorm_in_place(row, w, self.cfg.rms_eps);
            }
        }
        x.iter_mut().zip(&partial).for_each(|(a, b)| *a += b);
        Ok(())
    }
}
