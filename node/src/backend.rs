//! Choosing a backend (wgpu, the native CPU kernels, the f32 reference, or `auto`) and loading a model as a
//! chain of shards on it.

use std::path::Path;
use std::sync::Arc;

use edge_protocol::ShardSpec;

use crate::cpu::CpuShard;
use crate::gguf::Gguf;
use crate::gpu::{GpuContext, GpuOptions, GpuShard};
use crate::model::ModelConfig;
use crate::reference::ReferenceShard;
use crate::shard::{Shard, ShardError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// wgpu on a real GPU, else the native CPU kernels (see [`Backend::resolve`]).
    Auto,
    /// WGSL compute shaders through wgpu (Vulkan; lavapipe on machines without a GPU).
    Wgpu,
    /// Native SIMD kernels on the CPU's cores.
    Cpu,
    /// The plain f32 forward pass (slow; the correctness oracle).
    Reference,
}

impl Backend {
    /// The name in flags, config files and capability records.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Wgpu => "wgpu",
            Backend::Cpu => "cpu",
            Backend::Reference => "reference",
        }
    }

    /// The concrete backend `auto` stands for on this machine: wgpu when its adapter is a real GPU (integrated,
    /// discrete or virtual), the native CPU kernels otherwise (no adapter, or a CPU one such as lavapipe, which
    /// runs the same work several times slower than the kernels written for the CPU). Others resolve to
    /// themselves. (`edge-node serve` also compares the two speeds; see `serve::measure`.)
    pub fn resolve(self) -> Backend {
        if self != Backend::Auto {
            return self;
        }
        match GpuContext::new() {
            Ok(ctx) if ctx.info.device_type != wgpu::DeviceType::Cpu => Backend::Wgpu,
            _ => Backend::Cpu,
        }
    }
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
        let backend = backend.resolve();
        let ctx = match backend {
            Backend::Wgpu => Some(GpuContext::new()?),
            _ => None,
        };
        specs.into_iter().map(|spec| self.shard(backend, spec, ctx.as_ref(), gpu)).collect()
    }

    /// One shard on `backend` (`ctx`: the GPU context wgpu shards share; made here when `None`).
    pub fn shard(
        &self,
        backend: Backend,
        spec: ShardSpec,
        ctx: Option<&Arc<GpuContext>>,
        gpu: &GpuOptions,
    ) -> Result<Box<dyn Shard>, ShardError> {
        let t0 = std::time::Instant::now();
        let shard: Box<dyn Shard> = match backend.resolve() {
            Backend::Wgpu => {
                let ctx = match ctx {
                    Some(c) => c.clone(),
                    None => GpuContext::new()?,
                };
                Box::new(GpuShard::load(ctx, &self.gguf, &self.config, spec, gpu.clone())?)
            }
            Backend::Reference => Box::new(ReferenceShard::load(&self.gguf, &self.config, spec)?),
            Backend::Cpu | Backend::Auto => Box::new(CpuShard::load(&self.gguf, &self.config, spec)?),
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
