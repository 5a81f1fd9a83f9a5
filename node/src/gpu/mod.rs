//! The wgpu backend: WGSL kernels from `shaders/`, weights kept in their quantized GGML blocks.
//!
//! - [`context`]: device and adapter, GPU errors as values, buffer helpers.
//! - [`kernels`]: kernel sources, bind group layouts, the pipeline cache.
//! - [`weights`]: repacking GGML blocks into the kernels' layout, chunked to fit storage bindings.
//! - [`shard`]: [`GpuShard`], the executor.

pub mod context;
pub mod kernels;
pub mod probe;
pub mod shard;
pub mod weights;

pub use context::GpuContext;
pub use shard::{GpuOptions, GpuShard};
