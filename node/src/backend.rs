//! Choosing a backend and loading a model as a chain of shards on it.

use std::path::Path;
use std::sync::Arc;

use edge_protocol::ShardSpec;

use crate::cpu::CpuShard;
use crate::gguf::Gguf;
use crate::gpu::{GpuContext, GpuOptions, GpuShard};
use crate::model::ModelConfig;
use crate::shard::{Shard, ShardError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// WGSL compute shaders through wgpu (Vulkan; lavapipe on machines without a GPU).
    Wgpu,
    /// The plain CPU reference (slow; the correctness oracle).
    Cpu,
}

/// A model opened from disk, ready to be sharded.
pub struct LoadedModel {
    /// The file it was opened from.
    pub path: std::path::PathBuf,
    pub gguf: Gguf,
    pub config: ModelConfig,
}

impl LoadedModel {
    /// Opens and checks a model file (missing or wrong-size known models name the fetch command).
    pub fn open(path: &Path) -> anyhow::Result<LoadedModel> {
        crate::setup::check_model(path)?;
        let gguf = Gguf::open(path)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        tracing::info!(
            path = %path.display(),
            arch = %config.arch,
            layers = config.n_layers,
            dim = config.dim,
            vocab = config.vocab,
            bytes = gguf.bytes().len(),
            "model opened"
        );
        Ok(LoadedModel { path: path.to_owned(), gguf, config })
    }

    /// Loads the model as consecutive shards cut at `cuts` (empty: one shard) on one backend.
    pub fn shards(&self, backend: Backend, cuts: &[u32], gpu: &GpuOptions) -> Result<Vec<Box<dyn Shard>>, ShardError> {
        let specs = ShardSpec::split(self.config.n_layers as u32, cuts);
        let ctx = match backend {
            Backend::Wgpu => Some(GpuContext::new()?),
            Backend::Cpu => None,
        };
        specs.into_iter().map(|spec| self.shard(spec, ctx.as_ref(), gpu)).collect()
    }

    /// One shard on the CPU (`ctx` None) or on a GPU context.
    pub fn shard(
        &self,
        spec: ShardSpec,
        ctx: Option<&Arc<GpuContext>>,
        gpu: &GpuOptions,
    ) -> Result<Box<dyn Shard>, ShardError> {
        let t0 = std::time::Instant::now();
        let shard: Box<dyn Shard> = match ctx {
            Some(ctx) => Box::new(GpuShard::load(ctx.clone(), &self.gguf, &self.config, spec, gpu.clone())?),
            None => Box::new(CpuShard::load(&self.gguf, &self.config, spec)?),
        };
        tracing::info!(
            backend = %shard.backend_name(),
            layers = ?(spec.layer_start..spec.layer_end),
            embed = spec.embed,
            head = spec.head,
            ms = t0.elapsed().as_millis() as u64,
            "shard loaded"
        );
        Ok(shard)
    }
}
