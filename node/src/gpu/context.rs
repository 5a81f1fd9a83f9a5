//! The wgpu device: adapter choice, limits, and GPU errors turned into values instead of panics.

use std::sync::{Arc, Mutex};

use crate::shard::ShardError;

use super::kernels::{Pipeline, PipelineCache, PipelineKey};

/// How to install a Vulkan driver when none is found.
pub const NO_ADAPTER_HELP: &str = "no Vulkan adapter found. On Debian/Ubuntu install the CPU implementation \
(lavapipe) with `sudo apt-get install -y mesa-vulkan-drivers libvulkan1` (scripts/setup.sh does this), \
or use `--backend cpu`";

/// Size of the uniform views kernels read shared inputs through (the WebGPU minimum for uniform bindings).
pub const UNIFORM_VIEW_BYTES: u64 = 65536;

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    errors: Arc<Mutex<Vec<String>>>,
    submits: std::sync::atomic::AtomicU64,
    /// Pipelines are per device: every shard and probe on this context shares them (one JIT compile each).
    pipes: PipelineCache,
}

impl GpuContext {
    /// Opens the first Vulkan adapter (a real GPU is preferred over lavapipe).
    pub fn new() -> Result<Arc<GpuContext>, ShardError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|e| ShardError::Gpu(format!("{NO_ADAPTER_HELP} ({e})")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("edge-node"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| ShardError::Gpu(format!("cannot open {}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!(cause = %e, "wgpu error");
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        tracing::info!(adapter = %info.name, backend = ?info.backend, device_type = ?info.device_type, "gpu ready");
        Ok(Arc::new(GpuContext {
            device,
            queue,
            info,
            limits,
            errors,
            submits: Default::default(),
            pipes: Default::default(),
        }))
    }

    /// `adapter name (type)`, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Cpu)`.
    pub fn describe(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.device_type)
    }

    /// Fails with the first GPU error raised since the last check.
    pub fn check(&self) -> Result<(), ShardError> {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_empty() {
            Ok(())
        } else {
            let msg = e.join("; ");
            e.clear();
            Err(ShardError::Gpu(msg))
        }
    }

    /// The pipeline for `key`, compiled once per device.
    pub fn pipeline(&self, key: &PipelineKey) -> Arc<Pipeline> {
        self.pipes.get(self, key)
    }

    /// Submits one command buffer (counted, for the benchmark's submits-per-token figure).
    pub fn submit(&self, enc: wgpu::CommandEncoder) {
        self.submits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queue.submit([enc.finish()]);
    }

    /// Command buffers submitted so far.
    pub fn submits(&self) -> u64 {
        self.submits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seconds per repetition of the work `record` puts in a compute pass: once to warm up (pipelines compile on
    /// first use), then `reps` times in one pass, one submit, timed to completion.
    pub fn time_pass(&self, reps: u32, record: impl Fn(&mut wgpu::ComputePass<'_>)) -> Result<f64, ShardError> {
        let run = |reps: u32| -> Result<f64, ShardError> {
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for _ in 0..reps {
                    record(&mut pass);
                }
            }
            let t = std::time::Instant::now();
            self.submit(enc);
            self.wait()?;
            self.check()?;
            Ok(t.elapsed().as_secs_f64())
        };
        run(1)?;
        let reps = reps.max(1);
        Ok(run(reps)? / reps as f64)
    }

    /// Waits for all submitted work.
    pub fn wait(&self) -> Result<(), ShardError> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| ShardError::Gpu(e.to_string()))?;
        Ok(())
    }

    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A buffer kernels write as storage and later kernels read through 64 KiB uniform views
    /// (see matmul.wgsl): `bytes` plus one view of slack so any view offset inside the data stays in bounds.
    pub fn activation(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes + UNIFORM_VIEW_BYTES).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A read-only vector (norm weights) padded to one 64 KiB uniform view.
    pub fn uniform_view(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: UNIFORM_VIEW_BYTES.max(data.len() as u64),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !data.is_empty() {
            self.queue.write_buffer(&buf, 0, data);
        }
        buf
    }

    /// A `texture_2d_array` of 32-bit texels (`Rgba32Uint` or `R32Uint`) filled with `data` in layer, row,
    /// column order, viewed as an array (also when it has one layer).
    pub fn texture_u32(
        &self,
        label: &str,
        format: wgpu::TextureFormat,
        ext: super::weights::Extent,
        data: &[u32],
    ) -> wgpu::TextureView {
        let texel = format.block_copy_size(None).unwrap_or(4);
        let size = wgpu::Extent3d {
            width: ext.width as u32,
            height: ext.height as u32,
            depth_or_array_layers: ext.layers as u32,
        };
        let tex = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        self.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &tex,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            bytemuck::cast_slice(data),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(ext.width as u32 * texel),
                rows_per_image: Some(ext.height as u32),
            },
            size,
        );
        tex.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(wgpu::TextureViewDimension::D2Array),
            ..Default::default()
        })
    }

    pub fn storage_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let buf = self.storage(label, data.len() as u64);
        if !data.is_empty() {
            let mut padded;
            let bytes = if data.len().is_multiple_of(4) {
                data
            } else {
                padded = data.to_vec();
                padded.resize(data.len().next_multiple_of(4), 0);
                &padded
            };
            self.queue.write_buffer(&buf, 0, bytes);
        }
        buf
    }

    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: std::mem::size_of::<T>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, bytemuck::bytes_of(value));
        buf
    }

    /// Copies `bytes` from `src` into a mappable buffer and reads them back (one submit, one wait).
    pub fn read_back(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, ShardError> {
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| ShardError::Gpu("map callback dropped".into()))?
            .map_err(|e| ShardError::Gpu(format!("map failed: {e}")))?;
        let data = slice.get_mapped_range().map_err(|e| ShardError::Gpu(format!("{e:?}")))?.to_vec();
        staging.unmap();
        self.check()?;
        Ok(data)
    }
}
