//! One recorded kernel launch: its pipeline, bind group and how many workgroups it needs for a step, and the
//! uniform parameter blocks the kernels read (layouts match the WGSL structs).

use std::sync::Arc;

use super::context::UNIFORM_VIEW_BYTES;
use super::kernels::Pipeline;

/// Tokens per matmul invocation (TB in matmul.wgsl).
const TOKENS_PER_INVOCATION: u32 = 4;

/// Per-step values shared by every dispatch (one uniform write per step).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct StepParams {
    pub(super) n_tok: u32,
    pub(super) pos0: u32,
    pub(super) head_n: u32,
    pub(super) head_row0: u32,
}

/// One sequence's rows of a step (rope_kv.wgsl, attention.wgsl): `n_tok` rows from row `row0` of the step's
/// activations, at positions `pos0..pos0 + n_tok` of the sequence. A step of several sequences (a batch) writes
/// one block per sequence; the matmuls between run over all rows at once.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct SeqParams {
    pub(super) n_tok: u32,
    pub(super) pos0: u32,
    pub(super) row0: u32,
    pub(super) _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct MatParams {
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) out_rows: u32,
    pub(super) row_off: u32,
    pub(super) out_stride: u32,
    pub(super) head: u32,
    pub(super) eps: f32,
    pub(super) bias_off: u32,
    pub(super) group_tokens: u32,
    pub(super) _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Params8(pub [u32; 8]);

/// How many workgroups a dispatch needs for a step.
#[derive(Clone, Copy)]
pub(super) enum Grid {
    /// 4 output rows x 4 tokens per invocation, 64 rows per workgroup (`head`: tokens of the head step), one
    /// dispatch per group of `group_tokens` tokens whose inputs fit one uniform view of `k` floats per token.
    Matmul {
        rows: u32,
        head: bool,
        group_tokens: u32,
        k: u32,
    },
    Embed {
        blocks: u32,
    },
    /// One invocation per item and token, 64 per workgroup (RoPE pairs, QK-norm heads).
    Items {
        items: u32,
    },
    /// One workgroup per token (post-norm + residual).
    Tokens,
    Attention {
        heads: u32,
    },
    Argmax,
}

/// A matmul's variants for few tokens (matmul.wgsl's `gemv` and `pair` entry points); the executor builds both,
/// the kernel probe only those its step uses (each is a JIT compile on lavapipe).
pub(super) struct Narrow {
    /// One token: 8 rows per invocation.
    pub(super) gemv: Option<Arc<Pipeline>>,
    /// Up to 2 tokens per invocation (`main` takes 4).
    pub(super) pair: Option<Arc<Pipeline>>,
}

pub(super) struct Dispatch {
    pub(super) pipe: Arc<Pipeline>,
    /// Matmuls only: the variants for few tokens.
    pub(super) narrow: Option<Arc<Narrow>>,
    pub(super) bind: wgpu::BindGroup,
    pub(super) grid: Grid,
    /// Weight bytes the dispatch reads (matmuls; 0 otherwise), for bandwidth figures.
    pub(super) weight_bytes: u64,
}

/// Rows per workgroup of the `gemv` entry point (32 invocations x GEMV_ROWS = 4).
const GEMV_ROWS_PER_GROUP: u32 = 128;

/// The sizes of one step, as the dispatches need them.
#[derive(Clone, Copy)]
pub(super) struct StepDims {
    pub(super) n_tok: u32,
    pub(super) head_n: u32,
    pub(super) head_row0: u32,
    /// Stride of the entries of the group-index buffer (the device's uniform offset alignment).
    pub(super) align: u32,
}

impl Dispatch {
    /// One of the matmul's variants for few tokens, if it has it.
    fn variant(&self, which: impl Fn(&Narrow) -> &Option<Arc<Pipeline>>) -> Option<&Arc<Pipeline>> {
        self.narrow.as_deref().and_then(|n| which(n).as_ref())
    }

    pub(super) fn record(&self, pass: &mut wgpu::ComputePass<'_>, s: StepDims) {
        let (n_tok, head_n) = (s.n_tok, s.head_n);
        let tiles = |n: u32| n.div_ceil(TOKENS_PER_INVOCATION);
        pass.set_pipeline(&self.pipe.pipeline);
        if let Grid::Matmul { rows, head, group_tokens, k } = self.grid {
            let (n, row0) = if head { (head_n, s.head_row0) } else { (n_tok, 0) };
            if let (1, Some(gemv)) = (n, self.variant(|v| &v.gemv)) {
                pass.set_pipeline(&gemv.pipeline);
                pass.set_bind_group(0, &self.bind, &[row0 * k * 4, 0]);
                pass.dispatch_workgroups(rows.div_ceil(GEMV_ROWS_PER_GROUP), 1, 1);
                return;
            }
            // Rows too long for two tokens in one uniform view (e.g. a wide FFN's down projection): every group is
            // one token, so the one-token kernel (8 rows per invocation sharing x) beats `main` (1 row, 1 token).
            let (gemv, pair) = (self.variant(|v| &v.gemv), self.variant(|v| &v.pair));
            for g in 0..n.div_ceil(group_tokens) {
                let count = group_tokens.min(n - g * group_tokens);
                let x_off = (row0 + g * group_tokens) * k * 4;
                pass.set_bind_group(0, &self.bind, &[x_off, g * s.align]);
                match (gemv, pair) {
                    (Some(gemv), _) if group_tokens == 1 => {
                        pass.set_pipeline(&gemv.pipeline);
                        pass.dispatch_workgroups(rows.div_ceil(GEMV_ROWS_PER_GROUP), 1, 1);
                    }
                    (_, Some(pair)) if count <= 2 => {
                        pass.set_pipeline(&pair.pipeline);
                        pass.dispatch_workgroups(rows.div_ceil(64), 1, 1);
                    }
                    _ => {
                        pass.set_pipeline(&self.pipe.pipeline);
                        pass.dispatch_workgroups(rows.div_ceil(64), tiles(count), 1);
                    }
                }
            }
            return;
        }
        let (x, y) = match self.grid {
            Grid::Matmul { .. } => unreachable!(),
            Grid::Embed { blocks } => (blocks.div_ceil(64), n_tok),
            Grid::Items { items } => (items.div_ceil(64), n_tok),
            Grid::Tokens => (1, n_tok),
            Grid::Attention { heads } => (heads, n_tok),
            Grid::Argmax => (head_n, 1),
        };
        pass.set_bind_group(0, &self.bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}

/// Tokens per matmul dispatch: as many rows of `k` floats as fit one uniform view, rounded so that every
/// group's byte offset is a multiple of the device's uniform offset alignment.
pub(super) fn group_tokens(k: u64, align: u64) -> Option<u32> {
    let row = k * 4;
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let step = align / gcd(row, align);
    let fit = UNIFORM_VIEW_BYTES / row;
    let g = fit / step * step;
    (g > 0).then_some(g as u32)
}
