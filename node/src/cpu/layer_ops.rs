//! What a layer needs besides the matmuls, on the pool by rows of the step: [`for_rows`] (the shard's per-row jobs:
//! bias, QK-norm, RoPE and the KV write), [`Residual`] (the residual sum made inside the next norm's job) and
//! [`attention`] over each sequence's cache.

use half::f16;

use super::kernels::Kernels;
use super::pool::Pool;
use crate::model::ModelConfig;
use crate::reference::rmsnorm_in_place;

/// A raw pointer the pool's threads write disjoint elements through.
#[derive(Clone, Copy)]
pub(super) struct Out(pub(super) *mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// The same into a KV cache.
#[derive(Clone, Copy)]
pub(super) struct Half(pub(super) *mut f16);
unsafe impl Send for Half {}
unsafe impl Sync for Half {}

/// The residual stream `x` `(rows, dim)` and the output `delta` waiting to be added to it, each row of `delta`
/// RMS-normed with its post-norm first when the model has one (gemma3: after the tensor-parallel sum, as the
/// reference does). The sum is made row by row in the job that norms the rows next: the rows' columns come from
/// every thread's matmul chunks, and one pass over them moves them between cores once.
#[derive(Clone, Copy)]
pub(super) struct Residual<'a> {
    pub x: Out,
    pub delta: Option<(Out, Option<&'a [f32]>)>,
    pub dim: usize,
    pub eps: f32,
}

impl Residual<'_> {
    /// Row `t` of `x`, `delta`'s row added.
    ///
    /// # Safety
    /// No other call touches row `t` of `x` or of `delta` meanwhile; both hold row `t`.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row(&self, t: usize) -> &mut [f32] {
        let xt = std::slice::from_raw_parts_mut(self.x.0.add(t * self.dim), self.dim);
        if let Some((d, post)) = self.delta {
            let dt = std::slice::from_raw_parts_mut(d.0.add(t * self.dim), self.dim);
            if let Some(w) = post {
                rmsnorm_in_place(dt, w, self.eps);
            }
            xt.iter_mut().zip(dt.iter()).for_each(|(a, b)| *a += b);
        }
        xt
    }
}

/// `f(row)` for every row in `0..n` on the pool: a task a row for a decode batch (its rows' inputs come from
/// every thread's matmul chunks, so each thread takes its share), runs of 8 rows for a prompt's; one row here.
pub(super) fn for_rows(pool: &Pool, n: usize, f: impl Fn(usize) + Sync) {
    let run = if n > 32 { 8 } else { 1 };
    if n == 1 {
        return f(0);
    }
    pool.tasks(n.div_ceil(run), || (), |_, task| (task * run..n.min((task + 1) * run)).for_each(&f));
}

/// A layer's cache of one sequence in a batched step (from position `base`), and where its rows are.
pub(super) struct Cache<'a> {
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub base: usize,
    pub pos0: usize,
    pub row0: usize,
}

/// `att (rows, q_dim)`: each row's heads attend over its sequence's cache positions up to its own (causal; the last
/// `window` of them on a sliding-window layer), with grouped K/V heads. `caches` are sorted by `row0`, the first at
/// row 0. A task is one row's K/V head with the query heads that share it, so one thread reads that head's cache
/// once, from its own L2 for the later heads; with fewer such pairs than threads (one decoding row of a model with
/// one KV head, as gemma3) a group's query heads are split over several tasks.
pub(super) fn attention(
    pool: &Pool,
    kern: Kernels,
    c: &ModelConfig,
    window: Option<usize>,
    caches: &[Cache],
    q: &[f32],
    att: &mut [f32],
) {
    let (hd, kv_dim, nh) = (c.head_dim, c.kv_dim(), c.n_heads);
    let n = att.len() / (nh * hd);
    let q_dim = nh * hd;
    let group = nh / c.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let out = Out(att.as_mut_ptr());
    let out = &out;
    let nkv = c.n_kv_heads;
    let parts = if n * nkv < pool.threads() { group.min(pool.threads().div_ceil(n * nkv)) } else { 1 };
    let per = group.div_ceil(parts);
    let job = |scores: &mut Vec<f32>, task: usize| {
        let (t, rest) = (task / (nkv * parts), task % (nkv * parts));
        let (kvh, part) = (rest / parts, rest % parts);
        let g = &caches[caches.partition_point(|g| g.row0 <= t) - 1];
        let last = g.pos0 + (t - g.row0);
        let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
        let h0 = kvh * group + part * per;
        let heads = (h0 + per).min((kvh + 1) * group).saturating_sub(h0);
        if heads == 0 {
            return; // the last part of a group that split unevenly
        }
        let qh = &q[t * q_dim + h0 * hd..][..heads * hd];
        // SAFETY: task (t, heads h0..) alone writes these heads' elements.
        let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(t * q_dim + h0 * hd), heads * hd) };
        let at = (first - g.base) * kv_dim + kvh * hd;
        let (k, v) = (&g.k[at..], &g.v[at..]);
        kern.attend_group(qh, heads, k, v, kv_dim, last + 1 - first, scale, scores, o);
    };
    pool.tasks(n * nkv * parts, Vec::new, job);
}
