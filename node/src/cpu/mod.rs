//! The native CPU backend (`--backend cpu`): the forward pass on the machine's own cores with hand-written SIMD
//! integer dot products, for the many edge devices without a GPU that helps.
//!
//! # Layout (as ggml-cpu is laid out)
//! - [`act`]: activations quantized once per matmul (Q8_0 / Q8_1 / Q8_K, as ggml forms them).
//! - [`matmul`]: the weight-type table (activation type and dot kernel of each GGML type) and the matrix
//!   products that run on the pool.
//! - [`kernels`]: one file of dot products per instruction set (generic, AVX2, AVX-512 VNNI), picked at run time.
//! - [`kv`]: a sequence's KV cache, sliding-window layers bounded by their window.
//! - [`layer_ops`]: a layer's row jobs on the pool, the residual sum inside the next norm, attention.
//! - [`pool`]: the persistent thread pool (spin briefly, then sleep).
//! - [`repack`]: weights of the 32-weight block types interleaved eight rows at a time at load.
//! - [`rope`]: rotary embedding from a table of the step's sines and cosines.
//! - [`shard`]: [`CpuShard`], the backend's [`crate::shard::Shard`].
//!
//! Every kernel is tested against the f32 reference ([`crate::reference`]) on every path this CPU has.

pub mod act;
pub mod kernels;
pub mod kv;
pub mod layer_ops;
pub mod matmul;
pub mod pool;
pub mod repack;
pub mod rope;
pub mod shard;

pub use shard::CpuShard;
