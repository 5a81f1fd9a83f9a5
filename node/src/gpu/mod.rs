//! The wgpu backend: WGSL kernels from `shaders/`, weights kept in their quantized GGML blocks.
//!
//! - [`context`]: device and adapter, GPU errors as values, buffer helpers.
//! - `dispatch`: one recorded kernel launch and the uniform blocks kernels read.
//! - [`kernels`]: kernel sources, bind group layouts, the pipeline cache.
//! - [`weights`]: repacking GGML blocks into the kernels' layout, chunked to fit storage bindings.
//! - [`profile`]: kernel timings and the copy-bandwidth yardstick for `edge-node bench`.
//! - [`shard`]: [`GpuShard`], the executor: loading, the per-layer dispatches.
//! - `batch`: a step of one or several sequences' rows in one submit (continuous batching).
//! - `tensor_parallel`: the step of a tensor-parallel member (partial sums reduced between the blocks of a layer).

mod batch;
pub mod context;
mod dispatch;
pub mod kernels;
mod kv;
pub mod probe;
pub mod profile;
pub mod shard;
mod tensor_parallel;
pub mod weights;

pub use context::GpuContext;
pub use shard::{GpuOptions, GpuShard};
