//! The step of a tensor-parallel member on a wgpu device. The member holds a slice of every layer (whole KV-head
//! groups with their query heads, a range of FFN columns), so its O and down matmuls give partial sums of the
//! attention and FFN outputs; the stage adds them up through the [`Reducer`] before each residual add. The
//! residual stream therefore lives on the host between the blocks:
//!
//! - tokens in: the embedding runs on the device and `x` is read back (hidden states in: `x` is the input);
//! - per layer, twice (attention, then FFN): upload `x`, one submit of [norm+QKV, RoPE + KV write, attention,
//!   O -> partial] or [norm+gate/up+SwiGLU, down -> partial], read the partial back, `all_reduce` it and add it
//!   to `x` in f32 (gemma3 RMS-norms the sum first: its post-norm is of the whole output);
//! - the head (if the shard has it): upload `x`, one submit, read back the tokens or logits; else `x` is the
//!   output.
//!
//! That is 2 submits, 2 uploads and 2 readbacks of `(n, dim)` floats per layer, against 1 submit per step for a
//! shard of whole layers: the reduction between blocks is the price of splitting a layer.

use crate::shard::{HeadOutput, Reducer, SeqId, ShardError, ShardInput};

use super::dispatch::{Dispatch, StepDims};
use super::shard::GpuShard;

impl GpuShard {
    /// Runs `n` positions of `seq` through the member's layers (see the module comment); returns the bytes the
    /// whole-layer step would (the head's tokens or logits, or the hidden state of a shard without the head).
    pub(super) fn step_partial(
        &mut self,
        seq: SeqId,
        input: ShardInput<'_>,
        head: Option<HeadOutput>,
        reduce: &mut dyn Reducer,
    ) -> Result<Option<Vec<u8>>, ShardError> {
        let s = self.seqs.get(seq)?;
        let dims = self.begin_step(s.len, input, head);
        let mut x: Vec<f32> = match input {
            ShardInput::Tokens(t) => {
                let embed = self
                    .embed
                    .as_ref()
                    .ok_or_else(|| ShardError::BadInput("this shard takes hidden states, not tokens".into()))?;
                self.ctx.queue.write_buffer(&self.act.tokens, 0, bytemuck::cast_slice(t));
                let bytes = self.submit(dims, [embed], Some(self.hidden_bytes(dims)))?.unwrap_or_default();
                bytemuck::pod_collect_to_vec(&bytes)
            }
            ShardInput::Hidden(h) => h.to_vec(),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let attention = [&s.kv.rope[l], &s.kv.attention[l]];
            let (post_attn, post_ffn) = layer.host_post_norms.as_ref().map(|(a, f)| (a, f)).unzip();
            let block = layer.qkv.iter().chain(attention).chain(&layer.o);
            self.reduced_block(dims, block, post_attn, &mut x, reduce)?;
            self.reduced_block(dims, layer.gate_up.iter().chain(&layer.down), post_ffn, &mut x, reduce)?;
        }
        let out = match head {
            Some(HeadOutput::HiddenSum) => Some(bytemuck::cast_slice(&x).to_vec()),
            Some(want) => {
                self.ctx.queue.write_buffer(&self.act.x, 0, bytemuck::cast_slice(&x));
                self.submit(dims, &self.head, Some(self.head_bytes(want, dims)))?
            }
            None if self.spec.head => None, // an intermediate step of a last-position request
            None => Some(bytemuck::cast_slice(&x).to_vec()),
        };
        self.advance(seq, dims.n_tok as usize)?;
        Ok(out)
    }

    /// One block of a layer: uploads the residual stream `x` `(n, dim)`, runs `dispatches` (ending in a matmul
    /// into the partial buffer) in one submit, reads the partial sums back, has the stage add them up, and adds
    /// the total to `x` (RMS-normed with `post_norm` first, gemma3's post-norm of the whole output).
    fn reduced_block<'d>(
        &self,
        dims: StepDims,
        dispatches: impl IntoIterator<Item = &'d Dispatch>,
        post_norm: Option<&Vec<f32>>,
        x: &mut [f32],
        reduce: &mut dyn Reducer,
    ) -> Result<(), ShardError> {
        self.ctx.queue.write_buffer(&self.act.x, 0, bytemuck::cast_slice(x));
        let read = (&self.act.partial, std::mem::size_of_val(x) as u64);
        let bytes = self.submit(dims, dispatches, Some(read))?.unwrap_or_default();
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
