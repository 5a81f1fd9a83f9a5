//! Kernel timings for `edge-node bench`: each kind of dispatch of a loaded shard, repeated in one submit in the
//! decode shape (one token), and a copy kernel's bandwidth on the same adapter as the yardstick.

use std::time::Instant;

use crate::shard::{HeadOutput, SeqId, Shard, ShardError, ShardInput};

use super::context::GpuContext;
use super::dispatch::{Dispatch, StepDims, StepParams};
use super::kernels::{bind, Kernel, PipelineKey};
use super::shard::GpuShard;

/// One kind of dispatch, timed.
#[derive(Debug, Clone)]
pub struct KernelTiming {
    pub kernel: &'static str,
    /// Dispatches of this kind in one decode step of the shard.
    pub dispatches: usize,
    /// Weight bytes they read per step.
    pub weight_bytes: u64,
    /// Time per step, in microseconds.
    pub micros: f64,
}

impl KernelTiming {
    /// Weight bytes per second, in GB/s (0 for kernels that read no weights).
    pub fn gbps(&self) -> f64 {
        self.weight_bytes as f64 / (self.micros * 1e3)
    }
}

const PROFILE_SEQ: SeqId = u64::MAX;

impl GpuShard {
    /// Times every kind of dispatch of this shard for one decode token at position `pos`, `reps` times each.
    pub fn profile(&mut self, pos: usize, reps: u32) -> Result<Vec<KernelTiming>, ShardError> {
        self.open_sequence(PROFILE_SEQ, pos + 1)?;
        let result = self.profile_open(pos, reps);
        self.close_sequence(PROFILE_SEQ);
        result
    }

    fn profile_open(&mut self, pos: usize, reps: u32) -> Result<Vec<KernelTiming>, ShardError> {
        // Fill the KV cache up to `pos` so attention reads a realistic context.
        if pos > 0 {
            let tokens = vec![1u32; pos];
            let hidden = vec![0.0f32; pos * self.cfg.dim];
            let input = if self.spec.embed { ShardInput::Tokens(&tokens) } else { ShardInput::Hidden(&hidden) };
            self.forward(PROFILE_SEQ, input, HeadOutput::ArgmaxLast)?;
        }
        let params = StepParams { n_tok: 1, pos0: pos as u32, head_n: 1, head_row0: 0 };
        self.ctx.queue.write_buffer(&self.step, 0, bytemuck::bytes_of(&params));
        let dims = StepDims {
            n_tok: 1,
            head_n: 1,
            head_row0: 0,
            align: self.ctx.limits.min_uniform_buffer_offset_alignment.max(16),
        };
        let seq = &self.seqs.get(PROFILE_SEQ)?.kv;
        let kinds: Vec<(&'static str, Vec<&Dispatch>)> = vec![
            ("embed", self.embed.iter().collect()),
            ("norm+qkv matmul", self.layers.iter().flat_map(|l| &l.qkv).collect()),
            ("rope+kv write", seq.rope.iter().collect()),
            ("attention", seq.attention.iter().collect()),
            ("o matmul+residual", self.layers.iter().flat_map(|l| &l.o).collect()),
            ("norm+gate/up+swiglu", self.layers.iter().flat_map(|l| &l.gate_up).collect()),
            ("down matmul+residual", self.layers.iter().flat_map(|l| &l.down).collect()),
            ("norm+head matmul", self.head.iter().filter(|d| d.weight_bytes > 0).collect()),
            ("argmax", self.head.iter().filter(|d| d.weight_bytes == 0).collect()),
        ];
        let mut out = Vec::new();
        for (kernel, ds) in kinds.into_iter().filter(|(_, ds)| !ds.is_empty()) {
            let secs = self.ctx.time_pass(reps, |pass| ds.iter().for_each(|d| d.record(pass, dims)))?;
            out.push(KernelTiming {
                kernel,
                dispatches: ds.len(),
                weight_bytes: ds.iter().map(|d| d.weight_bytes).sum(),
                micros: secs * 1e6,
            });
        }
        Ok(out)
    }
}

/// Bytes read per second by a plain copy kernel (`shaders/copy.wgsl`) over `bytes` bytes, in GB/s: what the
/// adapter can stream, the yardstick for the GEMV kernels.
pub fn copy_bandwidth(ctx: &GpuContext, bytes: u64, reps: u32) -> Result<f64, ShardError> {
    let bytes = bytes.next_multiple_of(16);
    let src = ctx.storage("copy src", bytes);
    let dst = ctx.storage("copy dst", bytes);
    let p = ctx.pipeline(&PipelineKey { kernel: Kernel::Copy, quant: None, consts: vec![], entry: "main" });
    let bg = bind(ctx, &p, &[&src, &dst]);
    let groups = (bytes / 16).div_ceil(64) as u32;
    let (x, y) = (groups.min(1024), groups.div_ceil(1024));
    let secs = ctx.time_pass(reps, |pass| {
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
    })?;
    Ok(bytes as f64 / secs / 1e9)
}

/// What a node measures about its device at start: GEMV bandwidth on Q4_1 matrices (wgpu: one the size of a large
/// layer projection; the CPU backends: see [`self_benchmark_cpu`]), what each further row of a batched matmul
/// costs, and the cost of one (tiny) dispatch. wgpu's is cached in the node's data directory per adapter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelfBench {
    pub adapter: String,
    pub runtime: String,
    pub gemv_gbps: f32,
    pub dispatch_us: f32,
    /// G multiply-adds/s each row after the first adds to a batched matmul (0: batches run row by row).
    #[serde(default)]
    pub row_gmacs: f32,
}

fn bench_matrix(rows: usize, cols: usize) -> Vec<u8> {
    let row: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    (0..rows).flat_map(|_| crate::quant::quantize_row(crate::quant::GgmlType::Q4_1, &row)).collect()
}

/// Measures this GPU (a few hundred milliseconds, most of it pipeline compiles).
pub fn self_benchmark(ctx: &std::sync::Arc<GpuContext>) -> Result<SelfBench, ShardError> {
    use crate::quant::GgmlType;
    let probe = super::probe::Probe::with_context(ctx.clone());
    let (rows, cols) = (4096, 1024);
    let w = bench_matrix(rows, cols);
    let x = vec![0.5f32; BATCH_ROWS * cols];
    let secs = probe.time_matmul(GgmlType::Q4_1, rows, cols, &w, &x[..cols], Default::default(), 20)?;
    let batch = probe.time_matmul(GgmlType::Q4_1, rows, cols, &w, &x, Default::default(), 10)?;
    let tiny = bench_matrix(32, 32);
    let dispatch = probe.time_matmul(GgmlType::Q4_1, 32, 32, &tiny, &x[..32], Default::default(), 200)?;
    Ok(SelfBench {
        adapter: ctx.describe(),
        runtime: format!("edge-node/{}", env!("CARGO_PKG_VERSION")),
        gemv_gbps: (GgmlType::Q4_1.row_bytes(cols) * rows) as f32 / secs as f32 / 1e9,
        dispatch_us: dispatch as f32 * 1e6,
        row_gmacs: row_gmacs(rows * cols, secs, batch) as f32,
    })
}

/// G multiply-adds/s each row after the first adds, from the seconds of one row and of [`BATCH_ROWS`] rows
/// through a matrix of `macs` weights. A noisy machine can time the batch at or under one row: each extra row
/// counts as at least a tenth of the first.
fn row_gmacs(macs: usize, one: f64, batch: f64) -> f64 {
    let extra = (batch - one).max(one / 10.0) / (BATCH_ROWS - 1) as f64;
    macs as f64 / extra / 1e9
}

/// The same measurement for the CPU backends (no dispatches): the native kernels on the process-wide pool, or
/// the f32 reference (one matrix, row by row: no batched rate).
///
/// The native backend times what a decode step does with a model's weights: matrices in the interleaved layout
/// of its packed kernels, one after another, more of them than the caches hold ([`STREAM_BYTES`], at most an
/// eighth of `memory`, the bytes the node may use: `--memory`, else what the system reports free; 0: unknown),
/// for one row; then one of them, in the caches, for one row and for a batch of
/// [`BATCH_ROWS`] (what each row after the first costs is its `row_gmacs`, the planner's cost of a batched step).
/// Each time is the best of three trials: a busy moment of a shared machine only ever slows a trial. (One matrix
/// of 2.5 MiB in GGML's layout, timed once, put the predictions a third under the measured rates: a layout no shard
/// of a packed type runs, read from the caches; and one slow trial could halve the rate.)
pub fn self_benchmark_cpu(reference: bool, memory: u64) -> SelfBench {
    use crate::cpu::{kernels::Kernels, matmul};
    use crate::quant::GgmlType;
    let (rows, cols) = (4096, 1024);
    let w = bench_matrix(rows, cols);
    let x: Vec<f32> = (0..BATCH_ROWS * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 14.0).collect();
    let mut y = vec![0.0f32; BATCH_ROWS * rows];
    let kernels = Kernels::detect();
    let pool = crate::cpu::pool::global();
    // Seconds per call of `f`: the best of three trials of `reps` calls, after one warm-up call.
    let time = |reps: usize, f: &mut dyn FnMut()| {
        f();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let runtime = format!("edge-node/{}", env!("CARGO_PKG_VERSION"));
    if reference {
        let secs = time(5, &mut || {
            crate::reference::matvec_bytes(GgmlType::Q4_1, &w, cols, &x[..cols], &mut y[..rows]);
        });
        return SelfBench {
            adapter: "cpu reference (f32)".into(),
            runtime,
            gemv_gbps: w.len() as f32 / secs as f32 / 1e9,
            dispatch_us: 0.0,
            row_gmacs: 0.0,
        };
    }
    let budget = match memory {
        0 => STREAM_BYTES,
        free => STREAM_BYTES.min(free / 8),
    };
    let count = (budget / w.len() as u64).clamp(2, 256) as usize;
    let mut mats: Vec<matmul::Mat> = (0..count)
        .map(|_| {
            matmul::Mat::raw(GgmlType::Q4_1, rows, cols, kernels).expect("Q4_1 has a kernel").repacked(&w, kernels)
        })
        .collect();
    // A path without the interleaved layout (NEON without dotprod; or no memory for a copy) reads the matrices in
    // the model's bytes: each gets its own, else the stream would read one matrix from the caches.
    let copies = if mats[0].is_packed() { 1 } else { count };
    let model = w.repeat(copies);
    for (i, m) in mats.iter_mut().enumerate().take(copies) {
        m.range = i * w.len()..(i + 1) * w.len();
    }
    let mut acts = matmul::Acts::default();
    let mut pass = |mats: &[matmul::Mat], n: usize| {
        acts.quantize(&x[..n * cols], cols, &[&mats[0]]);
        for m in mats {
            matmul::matmul(&pool, &model, &[m], &acts, n, &mut [&mut y[..n * rows]]);
        }
    };
    let stream = time(2, &mut || pass(&mats, 1));
    // The further rows' multiply-adds on one matrix in the caches: the kernels' own rate, which a stream from
    // memory would hide under the weights' reads of the first row.
    let one = time(20, &mut || pass(&mats[..1], 1));
    let batch = time(20, &mut || pass(&mats[..1], BATCH_ROWS));
    SelfBench {
        adapter: format!("cpu ({}, {} threads)", kernels.isa().name(), pool.threads()),
        runtime,
        gemv_gbps: (count * w.len()) as f32 / stream as f32 / 1e9,
        dispatch_us: 0.0,
        row_gmacs: row_gmacs(rows * cols, one, batch) as f32,
    }
}

/// Weight bytes the CPU self-benchmark streams per pass: more than the last-level cache of the machines it runs
/// on, as a model's weights are.
pub const STREAM_BYTES: u64 = 256 << 20;

/// Rows of the batched step the CPU self-benchmark times.
pub const BATCH_ROWS: usize = 8;

#[cfg(test)]
mod tests {
    /// Within a small memory budget (two matrices) the native self-benchmark still gives rates the planner can
    /// use; the reference reports no batched rate.
    #[test]
    fn the_cpu_self_benchmark_reports_usable_rates_in_little_memory() {
        let b = super::self_benchmark_cpu(false, 24 << 20);
        assert!(b.gemv_gbps.is_finite() && b.gemv_gbps > 0.1, "{b:?}");
        assert!(b.row_gmacs.is_finite() && b.row_gmacs > 0.0, "{b:?}");
        assert!(b.adapter.starts_with("cpu ("), "{b:?}");
        let r = super::self_benchmark_cpu(true, 0);
        assert!(r.gemv_gbps > 0.0 && r.row_gmacs == 0.0, "{r:?}");
    }
}
