//! Device, link and model profiles: what a node of each kind reports to the planner (memory, GEMV GB/s, dispatch
//! cost), how fast it is beyond what the planner models (prefill FLOPS, calibration, threads), how reliable it is,
//! and what its network link looks like.
//!
//! Only `lavapipe-2core` and `loopback` are measured (on this project's 2-core machines, README "Performance");
//! every other number is an assumption from public hardware figures, written next to the constant. The runtime's
//! kernels reach ~40-75% of the copy bandwidth on lavapipe; for GPUs the profiles assume a GEMV at 60-70% of the
//! memory's peak bandwidth and a prefill at ~30% of the FP32 peak (the runtime has no tiled prefill GEMM yet).

use serde::Serialize;

const GB: u64 = 1_000_000_000;

/// A kind of device running `edge-node`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceProfile {
    pub name: &'static str,
    pub label: &'static str,
    /// Memory the node reports as available (the planner uses 90% of it).
    pub memory_bytes: u64,
    /// What the node's self-benchmark would report: Q4_1 GEMV bandwidth (GB/s).
    pub gemv_gbps: f64,
    /// What the self-benchmark would report: one dispatch (us).
    pub dispatch_us: f64,
    /// What the self-benchmark would report for a batched step: G multiply-adds/s each row after the first adds
    /// (0: the node's backend runs a batch row by row, as wgpu does; its stages then take one step at a time).
    pub row_gmacs: f64,
    /// The node's backend reads the weights as the file stores them and an f16 KV cache (the cpu backend; the
    /// planner's [`edge_coord::plan::NodeProfile::native_weights`]).
    pub native_weights: bool,
    /// Effective FLOPS of a prefill batch (GFLOPS): a chunk of `T` tokens takes at least
    /// `T x FLOPs per token / prefill_gflops`, whatever the planner's (bandwidth) formula says.
    pub prefill_gflops: f64,
    /// Measured token time / the planner's predicted token time on this device: multiplies every compute term
    /// (1.0: uncalibrated, the planner's own number).
    pub calibration: f64,
    /// Compute threads a step uses (only matters when several nodes share a host, see [`crate::cluster::Host`]).
    pub threads: u32,
    /// Threads at which `gemv_gbps` and `calibration` were measured.
    pub reference_threads: u32,
    /// Speed with `t` threads is `t ^ thread_scaling` times the speed with one.
    pub thread_scaling: f64,
    /// Reading a stage's tensors from local storage when it is loaded (MB/s).
    pub storage_mbps: f64,
    /// Mean time between failures (or departures) when churn follows the profiles (s).
    pub mtbf_s: f64,
    /// Where the numbers come from.
    pub source: &'static str,
}

impl DeviceProfile {
    /// Speed with `t` threads relative to one thread.
    pub fn speedup(&self, threads: u32) -> f64 {
        (threads.max(1) as f64).powf(self.thread_scaling)
    }

    /// Dedicated compute time multiplier: calibration, and the thread count against the measured one.
    pub fn time_factor(&self) -> f64 {
        self.calibration * self.speedup(self.reference_threads) / self.speedup(self.threads)
    }
}

/// This project's machine (2 cores, Mesa lavapipe 22.3), calibrated on README "Distributed decode": one node
/// decodes SmolLM2-135M Q4_1 at 17.7 tok/s (56.3 ms/token) with default lavapipe threads (2) and 11.5 tok/s
/// (87.0 ms) with one (`LP_NUM_THREADS=1`); prefill 26.2 tok/s on a 128-token prompt (README "Performance").
pub const LAVAPIPE_2CORE: DeviceProfile = DeviceProfile {
    name: "lavapipe-2core",
    label: "lavapipe, 2 cores (this machine)",
    memory_bytes: 20 * GB,
    // The self-benchmark of the nodes in the benchmark run: 2.97 GB/s, 42 us (node log); other runs here
    // measured 2.9-4.3 GB/s and 29-52 us (~35 us per dispatch, ENVIRONMENT.md).
    gemv_gbps: 2.9,
    dispatch_us: 35.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // 128 tokens x 216.7 MFLOP (30 layers x 2 x 3.54 M params + attention) / (128 / 26.2 tok/s) = 5.7 GFLOPS.
    prefill_gflops: 5.7,
    // The planner predicts 40.4 ms per token for one node with the numbers above (see the validation test);
    // measured 56.3 ms: 1.39x. The planner leaves out attention, RoPE, the argmax and lavapipe's scalar loads.
    calibration: 1.39,
    threads: 2,
    reference_threads: 2,
    // 87.0 / 56.3 = 1.545 = 2 ^ 0.628: two threads are 1.55x one.
    thread_scaling: 0.628,
    storage_mbps: 1000.0,
    mtbf_s: 86_400.0,
    source: "measured on this machine (README: Performance, Distributed decode)",
};

/// Raspberry Pi 5, 8 GB.
pub const PI5: DeviceProfile = DeviceProfile {
    name: "pi5",
    label: "Raspberry Pi 5 8 GB",
    memory_bytes: 7 * GB,
    // LPDDR4X-4267 on a 32-bit bus: 17 GB/s peak, ~10 GB/s in copy benchmarks; GEMV through Mesa v3dv at ~60%.
    gemv_gbps: 6.0,
    dispatch_us: 50.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // VideoCore VII: ~50 GFLOPS FP32 peak, half of it.
    prefill_gflops: 25.0,
    calibration: 1.0,
    threads: 4,
    reference_threads: 4,
    thread_scaling: 0.8,
    // A2 microSD card.
    storage_mbps: 90.0,
    mtbf_s: 86_400.0,
    source: "assumed: 17 GB/s LPDDR4X peak, ~50 GFLOPS GPU",
};

/// NVIDIA Jetson Orin Nano 8 GB.
pub const JETSON_ORIN_NANO: DeviceProfile = DeviceProfile {
    name: "jetson-orin-nano",
    label: "Jetson Orin Nano 8 GB",
    // 8 GB shared by the OS and the GPU.
    memory_bytes: 6_500_000_000,
    // LPDDR5 128-bit: 68 GB/s peak; GEMV at 60%.
    gemv_gbps: 40.0,
    dispatch_us: 15.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // 1024 CUDA cores at 625 MHz: 1.28 TFLOPS FP32; 30%.
    prefill_gflops: 400.0,
    calibration: 1.0,
    threads: 6,
    reference_threads: 6,
    thread_scaling: 0.8,
    storage_mbps: 1500.0,
    mtbf_s: 86_400.0,
    source: "assumed: 68 GB/s LPDDR5 peak, 1.28 TFLOPS FP32",
};

/// A mid-range Android phone (Snapdragon 7-class, Adreno 7xx, 8 GB LPDDR5).
pub const PHONE: DeviceProfile = DeviceProfile {
    name: "phone",
    label: "mid-range Android phone",
    // Android lets a foreground app use ~3 GB of 8 GB before the low-memory killer steps in.
    memory_bytes: 3 * GB,
    // LPDDR5 ~25-40 GB/s peak, shared with the display and the CPU; thermal limits.
    gemv_gbps: 15.0,
    dispatch_us: 40.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // Adreno 710-class ~0.8 TFLOPS FP32; 30%.
    prefill_gflops: 250.0,
    calibration: 1.0,
    threads: 4,
    reference_threads: 4,
    thread_scaling: 0.8,
    storage_mbps: 1000.0,
    // Owners pick their phones up, batteries run low: a departure an hour.
    mtbf_s: 3_600.0,
    source: "assumed: 25-40 GB/s LPDDR5, ~0.8 TFLOPS GPU, 3 GB for one app",
};

/// A laptop with an integrated GPU (Intel Iris Xe, 96 EU, 16 GB DDR4-3200 dual channel).
pub const LAPTOP_IGPU: DeviceProfile = DeviceProfile {
    name: "laptop-igpu",
    label: "laptop, Intel Iris Xe iGPU",
    memory_bytes: 8 * GB,
    // DDR4-3200 dual channel: 51.2 GB/s peak; GEMV at 60%.
    gemv_gbps: 30.0,
    dispatch_us: 20.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // 2.2 TFLOPS FP32; ~28%.
    prefill_gflops: 600.0,
    calibration: 1.0,
    threads: 8,
    reference_threads: 8,
    thread_scaling: 0.8,
    storage_mbps: 2000.0,
    // Lids close.
    mtbf_s: 14_400.0,
    source: "assumed: 51 GB/s DDR4 peak, 2.2 TFLOPS iGPU",
};

/// Apple M2 (10-core GPU), 16 GB unified memory.
pub const M2: DeviceProfile = DeviceProfile {
    name: "m2",
    label: "Apple M2, 16 GB",
    // Metal's recommended working set is ~2/3 of the RAM.
    memory_bytes: 10_500_000_000,
    // LPDDR5: 100 GB/s peak; GEMV at 70%.
    gemv_gbps: 70.0,
    dispatch_us: 10.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // 3.6 TFLOPS FP32; ~28%.
    prefill_gflops: 1000.0,
    calibration: 1.0,
    threads: 8,
    reference_threads: 8,
    thread_scaling: 0.8,
    storage_mbps: 3000.0,
    mtbf_s: 28_800.0,
    source: "assumed: 100 GB/s unified memory, 3.6 TFLOPS GPU",
};

/// A desktop with an NVIDIA RTX 4070 (12 GB GDDR6X).
pub const RTX4070: DeviceProfile = DeviceProfile {
    name: "rtx4070",
    label: "desktop, RTX 4070 12 GB",
    // The GPU's memory (a correct node reports VRAM for a discrete GPU).
    memory_bytes: 11_500_000_000,
    // GDDR6X: 504 GB/s peak; GEMV at 70%.
    gemv_gbps: 350.0,
    dispatch_us: 5.0,
    row_gmacs: 0.0, // the wgpu backend: a batch runs row by row
    native_weights: false,
    // 29 TFLOPS FP32; ~28%.
    prefill_gflops: 8000.0,
    calibration: 1.0,
    threads: 8,
    reference_threads: 8,
    thread_scaling: 0.8,
    storage_mbps: 3000.0,
    mtbf_s: 86_400.0,
    source: "assumed: 504 GB/s GDDR6X, 29 TFLOPS FP32",
};

/// This project's machine on the native CPU backend (AVX2 path, 2 threads; 2026-12-04): `edge-node serve`'s
/// self-benchmark 15.0-15.7 GB/s GEMV and 88-93 G multiply-adds/s per batched row; SmolLM2-135M Q4_1 prefill
/// 618 tok/s on a 128-token prompt and decode 7.7 ms/token in `edge-node bench` (README "Performance"). Those
/// came from the self-benchmark of that day (one matrix in GGML's layout, from the caches) and a planner that read
/// a cpu node's KV cache as f32; the profile keeps them as measured then (not re-derived since).
pub const CPU_2CORE: DeviceProfile = DeviceProfile {
    name: "cpu-2core",
    label: "CPU backend, 2 cores (this machine)",
    memory_bytes: 20 * GB,
    gemv_gbps: 15.0,
    dispatch_us: 0.0,
    row_gmacs: 90.0,
    native_weights: true,
    // 618 tok/s x 216.7 MFLOP per token.
    prefill_gflops: 134.0,
    // The planner predicts 7.05 ms per token for one node with the numbers above; measured 7.7 ms.
    calibration: 1.09,
    threads: 2,
    reference_threads: 2,
    // One thread per node 92.3 tok/s against 115.8 with two (README "Distributed decode"): 1.25 = 2 ^ 0.33.
    thread_scaling: 0.33,
    storage_mbps: 1000.0,
    mtbf_s: 86_400.0,
    source: "measured on this machine (edge-node serve's self-benchmark, edge-node bench; 2026-12-04)",
};

pub const DEVICES: [&DeviceProfile; 8] =
    [&LAVAPIPE_2CORE, &PI5, &JETSON_ORIN_NANO, &PHONE, &LAPTOP_IGPU, &M2, &RTX4070, &CPU_2CORE];

pub fn device(name: &str) -> Option<&'static DeviceProfile> {
    DEVICES.iter().copied().find(|d| d.name == name)
}

/// A node's link to the switch (or access point, or cell): the star topology of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinkSpec {
    pub name: &'static str,
    /// Fixed one-way latency node <-> switch, protocol stack included (us).
    pub latency_us: f64,
    /// Mean of an exponential extra delay on every message (us).
    pub jitter_us: f64,
    /// MB/s.
    pub bandwidth_mbps: f64,
    /// Probability that a packet (1448 bytes of payload) is lost and must be resent.
    pub loss: f64,
    /// Nodes sharing one medium (a Wi-Fi access point's airtime): every message to or from any of them is sent
    /// one at a time. `None`: the node's link is its own (full duplex).
    pub shared_by: Option<usize>,
}

impl LinkSpec {
    /// The planner's view: latency as a ping measures it on average, bandwidth as measured.
    pub fn planner_latency_us(&self) -> f64 {
        self.latency_us + self.jitter_us
    }

    /// The same link without randomness (jitter and loss off).
    pub fn steady(self) -> LinkSpec {
        LinkSpec { jitter_us: 0.0, loss: 0.0, ..self }
    }
}

/// 127.0.0.1 on this machine: each pipeline hop adds 0.28-0.33 ms over libp2p (README "Distributed decode":
/// token time minus the stages' compute), i.e. 0.15 ms per link term; a 4 MiB request takes 8-12 ms.
pub const LOOPBACK: LinkSpec =
    LinkSpec { name: "loopback", latency_us: 150.0, jitter_us: 0.0, bandwidth_mbps: 400.0, loss: 0.0, shared_by: None };

/// Gigabit Ethernet through one switch: 0.1-0.2 ms one way with the stack, ~110 MB/s of TCP payload.
pub const ETHERNET: LinkSpec = LinkSpec {
    name: "ethernet",
    latency_us: 130.0,
    jitter_us: 20.0,
    bandwidth_mbps: 110.0,
    loss: 0.0,
    shared_by: None,
};

/// 5 GHz Wi-Fi (802.11ac) to one access point per 32 nodes: 2-5 ms one way, 30-60 MB/s of airtime shared by
/// the nodes of an access point, 0.2% packet loss left after the link layer's own retries.
pub const WIFI: LinkSpec = LinkSpec {
    name: "wifi",
    latency_us: 2000.0,
    jitter_us: 1500.0,
    bandwidth_mbps: 40.0,
    loss: 0.002,
    shared_by: Some(32),
};

/// 5G (sub-6 GHz): 10-20 ms one way, 20-50 MB/s, 0.1% loss.
pub const FIVE_G: LinkSpec = LinkSpec {
    name: "5g",
    latency_us: 11_000.0,
    jitter_us: 4000.0,
    bandwidth_mbps: 30.0,
    loss: 0.001,
    shared_by: None,
};

/// Nodes in different places over the internet: 20-50 ms one way, 5-20 MB/s, 0.5% loss.
pub const WAN: LinkSpec = LinkSpec {
    name: "wan",
    latency_us: 25_000.0,
    jitter_us: 8000.0,
    bandwidth_mbps: 10.0,
    loss: 0.005,
    shared_by: None,
};

pub const LINKS: [&LinkSpec; 5] = [&LOOPBACK, &ETHERNET, &WIFI, &FIVE_G, &WAN];

pub fn link(name: &str) -> Option<LinkSpec> {
    LINKS.iter().find(|l| l.name == name).map(|l| **l)
}
