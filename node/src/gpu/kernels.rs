//! Kernel sources, bind group layouts and the pipeline cache. A pipeline is built from a header of constants,
//! one quant decoder and one kernel file, and cached by that key (each costs a JIT compile on lavapipe).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::quant::GgmlType;

use super::context::GpuContext;

/// A kernel file and the bindings it declares, in order: `u` uniform, `U` uniform with a dynamic offset,
/// `r` read-only storage, `w` read-write storage, `T` a `texture_2d_array<u32>` (weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Matmul,
    Embed,
    RopeKv,
    QkNorm,
    NormAdd,
    Attention,
    Argmax,
    Copy,
}

impl Kernel {
    fn source(self) -> &'static str {
        match self {
            Kernel::Matmul => include_str!("../../../shaders/matmul.wgsl"),
            Kernel::Embed => include_str!("../../../shaders/embed.wgsl"),
            Kernel::RopeKv => include_str!("../../../shaders/rope_kv.wgsl"),
            Kernel::QkNorm => include_str!("../../../shaders/qk_norm.wgsl"),
            Kernel::NormAdd => include_str!("../../../shaders/norm_add.wgsl"),
            Kernel::Attention => include_str!("../../../shaders/attention.wgsl"),
            Kernel::Argmax => include_str!("../../../shaders/argmax.wgsl"),
            Kernel::Copy => include_str!("../../../shaders/copy.wgsl"),
        }
    }
    fn bindings(self) -> &'static str {
        match self {
            Kernel::Matmul => "uuUTTurwU",
            Kernel::Embed => "uurTTw",
            Kernel::RopeKv => "uurwww",
            Kernel::QkNorm => "uuwrr",
            Kernel::NormAdd => "uurrw",
            Kernel::Attention => "uurrrw",
            Kernel::Argmax => "uurw",
            Kernel::Copy => "rw",
        }
    }
}

/// The WGSL decoder for a weight type.
pub fn quant_source(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => include_str!("../../../shaders/quant_f32.wgsl"),
        GgmlType::F16 => include_str!("../../../shaders/quant_f16.wgsl"),
        GgmlType::Q8_0 => include_str!("../../../shaders/quant_q8_0.wgsl"),
        GgmlType::Q4_0 => include_str!("../../../shaders/quant_q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../../shaders/quant_q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("../../../shaders/quant_q5_0.wgsl"),
        GgmlType::Q4K => include_str!("../../../shaders/quant_q4_k.wgsl"),
        GgmlType::Q6K => include_str!("../../../shaders/quant_q6_k.wgsl"),
        other => unreachable!("{other:?} is rejected when the model is loaded"),
    }
}

/// Everything that makes one pipeline different from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub kernel: Kernel,
    pub quant: Option<GgmlType>,
    /// Header constants, e.g. `("NORM", "true")`.
    pub consts: Vec<(&'static str, String)>,
    /// Entry point (`main` unless a kernel file has several).
    pub entry: &'static str,
}

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines by key; every pipeline of one kernel file shares one bind group layout, so a bind group serves
/// all of that file's entry points and variants.
#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<PipelineKey, std::sync::Arc<Pipeline>>>,
    layouts: Mutex<HashMap<Kernel, wgpu::BindGroupLayout>>,
}

impl PipelineCache {
    /// The pipeline for `key`, compiled on first use. Compiles run outside the lock, so different pipelines
    /// compile in parallel; if two threads race on one key, the first result is kept.
    pub fn get(&self, ctx: &GpuContext, key: &PipelineKey) -> std::sync::Arc<Pipeline> {
        if let Some(p) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return p.clone();
        }
        let layout = {
            let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
            layouts.entry(key.kernel).or_insert_with(|| layout(ctx, key.kernel)).clone()
        };
        let p = std::sync::Arc::new(build(ctx, key, layout));
        self.map.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_insert(p).clone()
    }
}

/// The full WGSL text of a pipeline.
pub fn source(key: &PipelineKey) -> String {
    let mut s = String::new();
    for (name, value) in &key.consts {
        let ty = if value == "true" || value == "false" { "bool" } else { "u32" };
        s.push_str(&format!("const {name}: {ty} = {value};\n"));
    }
    if let Some(q) = key.quant {
        s.push_str(include_str!("../../../shaders/quant_common.wgsl"));
        s.push_str(quant_source(q));
    }
    s.push_str(key.kernel.source());
    s
}

fn layout(ctx: &GpuContext, kernel: Kernel) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .chars()
        .enumerate()
        .map(|(i, c)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: if c == 'T' {
                wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Uint,
                    view_dimension: wgpu::TextureViewDimension::D2Array,
                    multisampled: false,
                }
            } else {
                wgpu::BindingType::Buffer {
                    ty: match c {
                        'u' | 'U' => wgpu::BufferBindingType::Uniform,
                        'r' => wgpu::BufferBindingType::Storage { read_only: true },
                        _ => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: c == 'U',
                    min_binding_size: None,
                }
            },
            count: None,
        })
        .collect();
    let label = format!("{kernel:?}");
    ctx.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries })
}

fn build(ctx: &GpuContext, key: &PipelineKey, layout: wgpu::BindGroupLayout) -> Pipeline {
    let d = &ctx.device;
    let label = format!("{:?}/{:?}/{}", key.kernel, key.quant, key.entry);
    let pl = d.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let desc =
        wgpu::ShaderModuleDescriptor { label: Some(&label), source: wgpu::ShaderSource::Wgsl(source(key).into()) };
    let module = d.create_shader_module(desc);
    let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(key.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline { pipeline, layout }
}

/// What one binding of a bind group points at.
#[derive(Clone, Copy)]
pub enum Res<'a> {
    /// A whole buffer.
    Buf(&'a wgpu::Buffer),
    /// The first `bytes` of a buffer (or `bytes` from the dynamic offset).
    View(&'a wgpu::Buffer, u64),
    /// A texture (weights).
    Tex(&'a wgpu::TextureView),
}

/// A bind group over whole `buffers` in binding order.
pub fn bind(ctx: &GpuContext, p: &Pipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
    let res: Vec<Res> = buffers.iter().map(|b| Res::Buf(b)).collect();
    bind_res(ctx, p, &res)
}

/// A bind group over `res` in binding order.
pub fn bind_res(ctx: &GpuContext, p: &Pipeline, res: &[Res<'_>]) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = res
        .iter()
        .enumerate()
        .map(|(i, r)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: match *r {
                Res::Buf(b) => b.as_entire_binding(),
                Res::View(b, bytes) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b,
                    offset: 0,
                    size: wgpu::BufferSize::new(bytes),
                }),
                Res::Tex(t) => wgpu::BindingResource::TextureView(t),
            },
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &p.layout, entries: &entries })
}
