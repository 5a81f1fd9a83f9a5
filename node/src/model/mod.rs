//! The model as data: hyper-parameters and the tensors a shard needs.

mod config;
pub mod stage;
mod weights;

pub use config::{Activation, ModelConfig, RopeStyle, SlidingWindow};
pub use weights::{LayerTensors, Matrix, ShardTensors};
