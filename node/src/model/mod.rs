//! The model as data: hyper-parameters and the tensors a shard needs.

mod config;
pub mod stage;
mod weights;

pub use config::{ModelConfig, RopeStyle};
pub use weights::{LayerTensors, Matrix, ShardTensors};
