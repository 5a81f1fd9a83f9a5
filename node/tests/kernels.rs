//! Conformance of every WGSL kernel against the CPU reference (`node/src/reference.rs`), on whatever Vulkan device is
//! present (Mesa lavapipe in CI), then whole synthetic models: `GpuShard` against `ReferenceShard`.
//!
//! # Tolerances
//! The GPU decodes the very same GGML bytes as the CPU, and decoding is exact in f32 (f16 -> f32 is exact; the
//! products d·q have at most 11 + 8 significant bits; Q4_1's d·q + m rounds once whether or not it is fused), so
//! the weights are bit-identical on both sides and the tolerance does not depend on the quant type. What differs
//! is only the order of f32 operations: vec4 dot products vs a sequential sum, `Σ(w·x·γ)·inv_rms` vs
//! `Σ(w·(x·inv_rms·γ))`, FMA contraction, and the device's `exp`/`sin`/`cos`/`pow`. Reordering a K-term dot
//! product changes it by ~√K·2⁻²⁴·Σ|w·x| typically (K·2⁻²⁴ at worst), and for these random inputs Σ|w·x| is a
//! small multiple of the largest |y|: ~1e-6 of the output's magnitude for K ≤ 1056 (measured on lavapipe: at most
//! 2e-6 for matmul, 3e-6 for attention, 3.3e-6 for RoPE, 7e-7 for whole models). Everything is held to 1e-4 of
//! the output's magnitude (its largest absolute value): 30-200x above the noise, while any indexing, layout or
//! scaling bug is an O(1) error. Embedding gathers, argmax and the KV copy of v must be exact.
//! `KERNEL_ERRORS=1 cargo test --release -p edge-node --test kernels -- --nocapture` prints every comparison's error.
//!
//! # Speed
//! Every pipeline is a JIT compile on lavapipe (~0.25 s for a matmul variant), cached on disk by Mesa: the suite
//! takes ~5 s with a warm cache and ~35 s with a cold one, almost all of it compiling. Kernel tests share one
//! [`Probe`]; each `GpuShard` builds its own pipelines, so the model tests keep the number of shards small.

use std::sync::{Arc, OnceLock};

use edge_node::gguf::Gguf;
use edge_node::gpu::probe::{AttnShape, MatmulOpts, Probe};
use edge_node::gpu::weights::layout;
use edge_node::gpu::{GpuContext, GpuOptions, GpuShard};
use edge_node::model::{ModelConfig, RopeStyle};
use edge_node::quant::{dequantize_row, quantize_row, GgmlType};
use edge_node::reference::{self, ReferenceShard};
use edge_node::shard::{HeadOutput, Shard, ShardError, ShardInput};
use edge_protocol::ShardSpec;
use proptest::prelude::*;

mod common;
use common::tiny::*;
use proptest::test_runner::RngSeed;

/// Matmul, attention: reordered f32 sums (see the module comment).
const KERNEL_TOL: f32 = 1e-4;
/// RoPE: the device's pow/sin/cos. The angle pos·θ^(-2j/d) reaches ~45 rad here, so a relative error of a few
/// ULP in pow alone moves it by ~1e-5 rad, plus the range reduction of sin/cos (measured on lavapipe: < 4e-6).
/// Vulkan only requires sin/cos to 2^-11 absolute: a driver with fast approximations would need more here.
const ROPE_TOL: f32 = 1e-4;
/// Whole models (3 layers, ~20 positions): every kernel's rounding noise flows through the residual stream and
/// the final norm into the head; measured on lavapipe < 1e-6 of the largest logit.
const MODEL_TOL: f32 = 1e-4;

// ---------------------------------------------------------------------------------------------------------------
// Shared device, data and comparison helpers

/// One device and one pipeline cache for every kernel test.
fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| Probe::new().unwrap_or_else(|e| panic!("{e}")))
}

fn ctx() -> Arc<GpuContext> {
    probe().context().clone()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |a, x| a.max(x.abs()))
}

/// `got` equals `want` within `tol` of `want`'s magnitude (and is free of NaN).
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = max_abs(want).max(1e-6);
    let (i, err) =
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).enumerate().fold((0, 0.0f32), |(bi, be), (i, e)| {
            if e > be || e.is_nan() {
                (i, e)
            } else {
                (bi, be)
            }
        });
    if std::env::var_os("KERNEL_ERRORS").is_some() {
        eprintln!("ERR {:.3e} tol {tol:e} {what}", err / scale);
    }
    assert!(
        err <= tol * scale && !got.iter().any(|v| v.is_nan()),
        "{what}: max error {err:e} at {i} (got {}, want {}) exceeds {tol:e} x magnitude {scale:e}",
        got[i],
        want[i]
    );
}

fn proptest_config() -> ProptestConfig {
    // Deterministic by default (PROPTEST_RNG_SEED=<n> explores other cases); no regression files in the tree.
    let mut c = ProptestConfig::with_cases(24);
    if matches!(c.rng_seed, RngSeed::Random) {
        c.rng_seed = RngSeed::Fixed(0x6b65_726e_656c);
    }
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------------------------------------------------------
// Matmul

#[derive(Debug, Clone, Copy)]
struct Flags {
    norm: bool,
    bias: bool,
    residual: bool,
    swiglu: bool,
    /// With `swiglu`: GeGLU (gemma3's gelu_tanh) instead of SiLU.
    gelu: bool,
}

const fn flags(norm: bool, bias: bool, residual: bool, swiglu: bool) -> Flags {
    Flags { norm, bias, residual, swiglu, gelu: false }
}

/// Fusions tested for every type: the three a llama layer uses (norm + q/k/v or head, residual for o/down, norm +
/// gate/up pair), so the decoder runs with and without norm and SwiGLU's second matrix. The flags act after the
/// decoder, so every other combination is tested for one type (Q8_0, `all_flags`). Each combination is two
/// pipelines (`main`, `gemv`), each a JIT compile of ~0.25 s on lavapipe: that is what bounds these lists.
const TYPE_FLAGS: [Flags; 3] =
    [flags(true, false, false, false), flags(false, false, true, false), flags(true, false, false, true)];

fn flags_for(ty: GgmlType) -> Vec<Flags> {
    if ty == GgmlType::Q8_0 {
        all_flags()
    } else {
        TYPE_FLAGS.to_vec()
    }
}

/// Every combination the kernel supports except bias with SwiGLU (the executor never fuses those: the q/k/v
/// projection has biases, gate/up does not).
fn all_flags() -> Vec<Flags> {
    (0..16u32)
        .map(|i| flags(i & 1 != 0, i & 2 != 0, i & 4 != 0, i & 8 != 0))
        .filter(|f| !(f.bias && f.swiglu))
        .collect()
}

/// The CPU reference of one (possibly fused) matmul, built from the functions `ReferenceShard` uses.
fn reference_matmul(ty: GgmlType, rows: usize, cols: usize, w: &[u8], x: &[f32], o: &MatmulOpts<'_>) -> Vec<f32> {
    let n = x.len() / cols;
    let mut y = Vec::with_capacity(n * rows);
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        let mut xn = xt.to_vec();
        if let Some(g) = o.gamma {
            reference::rmsnorm(&mut xn, xt, g, o.eps);
        }
        let mut a = vec![0.0; rows];
        reference::matvec_bytes(ty, w, cols, &xn, &mut a);
        if let Some(b) = o.bias {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        if let Some(up) = o.swiglu_up {
            let mut u = vec![0.0; rows];
            reference::matvec_bytes(ty, up, cols, &xn, &mut u);
            let act = if o.gelu { reference::gelu_tanh } else { reference::silu };
            a.iter_mut().zip(&u).for_each(|(a, u)| *a = act(*a) * u);
        }
        if let Some(r) = o.residual {
            a.iter_mut().zip(&r[t * rows..(t + 1) * rows]).for_each(|(a, r)| *a += r);
        }
        y.extend(a);
    }
    y
}

/// One matmul on the device against the reference; `chunk_rows` forces chunks of that many rows.
/// `cols` rounded up to whole blocks of `ty` (K-quants: 256 weights), so every shape is valid for every type.
fn fit(ty: GgmlType, cols: usize) -> usize {
    let block = ty.block().0.max(32);
    cols.div_ceil(block) * block
}

fn check_matmul(ty: GgmlType, rows: usize, cols: usize, n: usize, f: Flags, chunk_rows: Option<usize>, seed: u64) {
    let cols = fit(ty, cols);
    let mut rng = Rng(seed);
    let w = quant_matrix(ty, rows, cols, 1.0, &mut rng);
    let up = quant_matrix(ty, rows, cols, 1.0, &mut rng);
    // Activations with a non-zero mean and a spread of magnitudes, like a residual stream.
    let x: Vec<f32> = (0..n * cols).map(|i| rng.f32() * 3.0 + if i % 7 == 0 { 2.0 } else { 0.0 }).collect();
    let gamma: Vec<f32> = (0..cols).map(|_| 1.0 + 0.5 * rng.f32()).collect();
    let bias = rng.vec(rows, 2.0);
    let residual = rng.vec(n * rows, 4.0);
    let l = layout(ty);
    let bytes_per_row = (cols / 32 * (l.texels * 16 + l.scales * 4)) as u64; // quant texels and scale words
    let o = MatmulOpts {
        gamma: f.norm.then_some(&gamma[..]),
        eps: 1e-5,
        bias: f.bias.then_some(&bias[..]),
        residual: f.residual.then_some(&residual[..]),
        swiglu_up: f.swiglu.then_some(&up[..]),
        gelu: f.gelu,
        max_binding: chunk_rows.map(|r| r as u64 * bytes_per_row * if f.swiglu { 2 } else { 1 }),
    };
    let (got, chunks) = probe().matmul_chunks(ty, rows, cols, &w, &x, o).unwrap();
    let want = reference_matmul(ty, rows, cols, &w, &x, &o);
    let what = format!("{ty:?} ({rows}x{cols}) n={n} {f:?} chunk_rows={chunk_rows:?}");
    assert_eq!(chunks, chunk_rows.map_or(1, |c| rows.div_ceil(c)), "{what}: chunk count");
    assert_close(&what, &got, &want, KERNEL_TOL);
}

/// Every type x its fusions (`flags_for`), unchunked and in chunks of 4 rows (37 rows: 10 chunks, the last one
/// short), for one token (the `gemv` entry point), two (`pair`), 9 tokens (`main`), and 33 and 17 tokens of 1056
/// floats (x read through 3 and 2 uniform views; 17 ends in a group of two, `pair`).
#[test]
fn matmul_every_type_and_fusion() {
    let mut seed = 1;
    for ty in GgmlType::SUPPORTED {
        for f in flags_for(ty) {
            for (chunk, n, cols) in [
                (None, 9, 96),
                (Some(4), 9, 96),
                (None, 1, 96),
                (Some(4), 1, 160),
                (None, 2, 96),
                (Some(16), 33, 1056),
                (Some(16), 17, 1056),
            ] {
                seed += 1;
                check_matmul(ty, 37, cols, n, f, chunk, seed);
            }
        }
    }
}

/// gemma3's GeGLU pair (norm + gate/up, gelu_tanh) for the types its FFN uses, one token and nine, whole and in
/// chunks. The activations reach |gate| > 10, where tanh saturates.
#[test]
fn matmul_geglu() {
    let geglu = Flags { gelu: true, ..TYPE_FLAGS[2] };
    for (seed, ty) in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K].into_iter().enumerate() {
        for (chunk, n) in [(None, 1), (None, 9), (Some(4), 9)] {
            check_matmul(ty, 37, 256, n, geglu, chunk, 40 + seed as u64);
        }
    }
}

/// Rows longer than half a uniform view (8,448 floats, like a wide FFN's down projection): one token per group,
/// so prompts run the one-token `gemv` kernel once per token; with and without chunking.
#[test]
fn matmul_rows_too_long_for_two_tokens_per_view() {
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
        for chunk in [None, Some(8)] {
            check_matmul(ty, 37, 8448, 5, TYPE_FLAGS[1], chunk, 7);
        }
    }
}

macro_rules! matmul_props {
    ($($name:ident => $ty:expr),* $(,)?) => {
        proptest! {
            #![proptest_config(proptest_config())]
            $(
                /// Odd shapes, token counts around the 4/8-token tiles, random fusions and chunking.
                #[test]
                fn $name(
                    rows in prop::sample::select(vec![1usize, 7, 37, 65, 130]),
                    cols in prop::sample::select(vec![32usize, 96, 160, 1056]),
                    n in prop::sample::select(vec![1usize, 3, 4, 5, 8, 9, 17, 33]),
                    f in prop::sample::select(flags_for($ty)), // pipelines the sweep above builds anyway
                    chunk in prop::option::of(1usize..48),
                    seed in any::<u64>(),
                ) {
                    check_matmul($ty, rows, cols, n, f, chunk, seed);
                }
            )*
        }
    };
}

matmul_props! {
    matmul_shapes_f32 => GgmlType::F32,
    matmul_shapes_f16 => GgmlType::F16,
    matmul_shapes_q8_0 => GgmlType::Q8_0,
    matmul_shapes_q4_0 => GgmlType::Q4_0,
    matmul_shapes_q4_1 => GgmlType::Q4_1,
    matmul_shapes_q5_0 => GgmlType::Q5_0,
    matmul_shapes_q4_k => GgmlType::Q4K,
    matmul_shapes_q6_k => GgmlType::Q6K,
}

/// Large magnitudes and exact zeros: scales that are f16 subnormals or zero, an all-zero row.
#[test]
fn matmul_extreme_blocks() {
    let mut rng = Rng(99);
    let rows = 5;
    for ty in GgmlType::SUPPORTED {
        let cols = fit(ty, 64);
        let mut m: Vec<f32> = rng.vec(rows * cols, 1.0);
        m[..cols].iter_mut().for_each(|v| *v = 0.0); // zero row: d = 0
        m[cols..2 * cols].iter_mut().for_each(|v| *v *= 1e-6); // tiny scales (f16 subnormal d)
        m[2 * cols..3 * cols].iter_mut().for_each(|v| *v *= 1000.0);
        let w: Vec<u8> = m.chunks(cols).flat_map(|r| quantize_row(ty, r)).collect();
        let x = rng.vec(3 * cols, 1.0);
        let got = probe().matmul(ty, rows, cols, &w, &x, MatmulOpts::default()).unwrap();
        let want = reference_matmul(ty, rows, cols, &w, &x, &MatmulOpts::default());
        // Element by element against Σ|w·x| (the scale of its rounding error): the tiny row must not be judged
        // against the huge one.
        let rb = ty.row_bytes(cols);
        for t in 0..3 {
            for r in 0..rows {
                let mut wr = vec![0.0; cols];
                dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut wr);
                let bound: f32 = wr.iter().zip(&x[t * cols..]).map(|(a, b)| (a * b).abs()).sum();
                let (g, e) = (got[t * rows + r], want[t * rows + r]);
                assert!((g - e).abs() <= KERNEL_TOL * bound, "{ty:?} token {t} row {r}: {g} vs {e} (Σ|w·x| {bound})");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Embedding

/// Gathers are exact: the device decodes the same bytes to the same f32 values.
#[test]
fn embed_every_type_is_exact() {
    let rows = 37;
    let tokens = [0u32, 36, 5, 5, 17, 36, 1, 0, 23];
    for ty in GgmlType::SUPPORTED {
        let cols = fit(ty, 96);
        let table = quant_matrix(ty, rows, cols, 2.0, &mut Rng(ty.id() as u64));
        let got = probe().embed(ty, rows, cols, &table, &tokens).unwrap();
        let rb = ty.row_bytes(cols);
        let mut want = vec![0.0; tokens.len() * cols];
        for (t, &tok) in tokens.iter().enumerate() {
            dequantize_row(ty, &table[tok as usize * rb..][..rb], &mut want[t * cols..(t + 1) * cols]);
        }
        assert_eq!(got, want, "{ty:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE + KV write, attention

const SHAPES: [(usize, usize, usize); 5] = [(3, 1, 32), (4, 2, 64), (9, 3, 32), (4, 2, 16), (2, 2, 128)];

fn shape((n_heads, n_kv_heads, head_dim): (usize, usize, usize)) -> AttnShape {
    AttnShape { n_heads, n_kv_heads, head_dim }
}

#[test]
fn rope_and_kv_write_match_cpu() {
    const SENTINEL: f32 = 7.25;
    let mut rng = Rng(3);
    for s in SHAPES.map(shape) {
        for style in [RopeStyle::Adjacent, RopeStyle::Neox] {
            for (pos0, n, theta) in [(0, 1, 10_000.0), (5, 3, 10_000.0), (37, 8, 1_000_000.0), (0, 9, 500_000.0)] {
                let (q_dim, kv_dim, hd) = (s.q_dim(), s.kv_dim(), s.head_dim);
                let stride = q_dim + 2 * kv_dim;
                let cap = pos0 + n + 2;
                let qkv = rng.vec(n * stride, 2.0);
                let mut k = vec![SENTINEL; cap * kv_dim];
                let mut v = vec![SENTINEL; cap * kv_dim];
                let q = probe().rope_kv(s, (style, theta), pos0, &qkv, &mut k, &mut v).unwrap();

                let what = format!("{s:?} {style:?} pos0={pos0} n={n} theta={theta}");
                let mut want_q = Vec::new();
                let mut want_k = vec![SENTINEL; cap * kv_dim];
                let mut want_v = vec![SENTINEL; cap * kv_dim];
                for t in 0..n {
                    let src = &qkv[t * stride..(t + 1) * stride];
                    let mut qt = src[..q_dim].to_vec();
                    reference::rope(&mut qt, pos0 + t, hd, theta, style);
                    want_q.extend(qt);
                    let row = (pos0 + t) * kv_dim..(pos0 + t + 1) * kv_dim;
                    want_k[row.clone()].copy_from_slice(&src[q_dim..q_dim + kv_dim]);
                    reference::rope(&mut want_k[row.clone()], pos0 + t, hd, theta, style);
                    want_v[row].copy_from_slice(&src[q_dim + kv_dim..]);
                }
                assert_close(&format!("{what} q"), &q, &want_q, ROPE_TOL);
                assert_close(&format!("{what} k"), &k, &want_k, ROPE_TOL);
                assert_eq!(v, want_v, "{what}: v is copied exactly");
                for p in (0..cap).filter(|p| !(pos0..pos0 + n).contains(p)) {
                    assert!(
                        k[p * kv_dim..(p + 1) * kv_dim].iter().all(|&x| x == SENTINEL),
                        "{what}: k position {p} written"
                    );
                }
            }
        }
    }
}

/// The reference: causal GQA exactly as `ReferenceShard::forward_position` does it, one token at a time (with a
/// window: the last `window` positions only).
fn reference_attention(s: AttnShape, window: Option<usize>, pos0: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let (q_dim, kv_dim, hd) = (s.q_dim(), s.kv_dim(), s.head_dim);
    let group = s.n_heads / s.n_kv_heads;
    let n = q.len() / q_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0; n * q_dim];
    for t in 0..n {
        let last = pos0 + t;
        for h in 0..s.n_heads {
            let qh = &q[t * q_dim + h * hd..][..hd];
            let kvh = h / group;
            let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
            let mut scores: Vec<f32> =
                (first..=last).map(|p| reference::dot(qh, &k[p * kv_dim + kvh * hd..][..hd]) * scale).collect();
            reference::softmax(&mut scores);
            let o = &mut out[t * q_dim + h * hd..][..hd];
            for (p, &a) in (first..).zip(&scores) {
                o.iter_mut().zip(&v[p * kv_dim + kvh * hd..][..hd]).for_each(|(o, &vv)| *o += a * vv);
            }
        }
    }
    out
}

/// GQA groups of 3, 2, 3, 2, 1; prefill from 0 and continuation from pos0 > 0; a long context that crosses the
/// kernel's 2048-position tile. Positions after the causal window hold NaN: reading one would poison the output.
#[test]
fn attention_matches_cpu() {
    let mut rng = Rng(4);
    for s in SHAPES.map(shape) {
        for (pos0, n, q_scale) in [(0, 1, 1.0), (0, 5, 1.0), (7, 3, 1.0), (40, 4, 6.0), (2050, 3, 1.0)] {
            let (q_dim, kv_dim) = (s.q_dim(), s.kv_dim());
            let cap = pos0 + n + 3;
            let q = rng.vec(n * q_dim, q_scale); // q_scale 6: peaked softmax
            let mut k = rng.vec(cap * kv_dim, 1.0);
            let mut v = rng.vec(cap * kv_dim, 2.0);
            k[(pos0 + n) * kv_dim..].fill(f32::NAN);
            v[(pos0 + n) * kv_dim..].fill(f32::NAN);
            let got = probe().attention(s, None, pos0, &q, &k, &v).unwrap();
            let want = reference_attention(s, None, pos0, &q, &k, &v);
            assert_close(&format!("{s:?} pos0={pos0} n={n} q_scale={q_scale}"), &got, &want, KERNEL_TOL);
        }
    }
}

/// Sliding-window attention (gemma3's local layers) over a ring cache: position p in row p % ring, the ring just
/// big enough for the window and the step. Rows no attended position lives in hold NaN. Head dims up to 256
/// (gemma3's), one KV head, windows that start inside, at and past the first tile.
#[test]
fn sliding_window_attention_over_a_ring_matches_cpu() {
    let mut rng = Rng(6);
    for s in [(4, 1, 256), (2, 1, 192), (3, 1, 32), (4, 2, 64)].map(shape) {
        for (window, pos0, n) in [(8, 0, 5), (8, 3, 9), (8, 20, 1), (5, 40, 4), (512, 700, 16), (3000, 2900, 2)] {
            let (q_dim, kv_dim) = (s.q_dim(), s.kv_dim());
            let ring = window - 1 + n;
            let q = rng.vec(n * q_dim, 2.0);
            let (k, v) = (rng.vec((pos0 + n) * kv_dim, 1.0), rng.vec((pos0 + n) * kv_dim, 2.0));
            let (mut kr, mut vr) = (vec![f32::NAN; ring * kv_dim], vec![f32::NAN; ring * kv_dim]);
            for p in (pos0 + 1).saturating_sub(window)..pos0 + n {
                let (at, row) = ((p % ring) * kv_dim, p * kv_dim);
                kr[at..at + kv_dim].copy_from_slice(&k[row..row + kv_dim]);
                vr[at..at + kv_dim].copy_from_slice(&v[row..row + kv_dim]);
            }
            let got = probe().attention(s, Some(window), pos0, &q, &kr, &vr).unwrap();
            let want = reference_attention(s, Some(window), pos0, &q, &k, &v);
            assert_close(&format!("{s:?} window={window} pos0={pos0} n={n}"), &got, &want, KERNEL_TOL);
        }
    }
    // A ring that cannot hold the window and the step is refused.
    let s = shape((2, 1, 32));
    let (q, kv) = (vec![0.0; 4 * 64], vec![0.0; 10 * 32]);
    assert!(probe().attention(s, Some(8), 20, &q, &kv, &kv).is_err());
}

// ---------------------------------------------------------------------------------------------------------------
// Argmax

#[test]
fn argmax_ties_and_odd_vocabularies() {
    let mut rng = Rng(5);
    for vocab in [1usize, 7, 255, 256, 300, 769, 1000] {
        let mut rows: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(vocab, 10.0)).collect();
        rows.push(vec![0.5; vocab]); // all equal: index 0
        rows.push((0..vocab).map(|i| i as f32).collect()); // maximum at the last index
        rows.push(vec![-1e30; vocab]); // all very negative
                                       // Ties between invocations of the same workgroup (i, i + 1), across the stride (i, i + 256) and at the end.
        for (a, b) in [(3usize, 4usize), (5, 261), (2, vocab - 1), (vocab - 1, vocab - 1)] {
            if a < vocab && b < vocab {
                let mut r = rng.vec(vocab, 1.0);
                r[a] = 50.0;
                r[b] = 50.0;
                rows.push(r);
            }
        }
        let flat: Vec<f32> = rows.concat();
        let got = probe().argmax(&flat, rows.len(), vocab).unwrap();
        let want: Vec<u32> = rows.iter().map(|r| reference::argmax(r)).collect();
        assert_eq!(got, want, "vocab {vocab}");
    }
}

/// Rows where no logit is larger than any finite value (all -inf, or NaN): the CPU reference answers 0, a
/// valid token id; the device must not answer an id outside the vocabulary.
#[test]
fn argmax_of_non_finite_rows() {
    let vocab = 300;
    let mut rows = vec![vec![f32::NEG_INFINITY; vocab], vec![f32::NAN; vocab], vec![f32::MIN; vocab]];
    let mut r = vec![f32::NEG_INFINITY; vocab];
    r[123] = f32::MIN;
    rows.push(r);
    let got = probe().argmax(&rows.concat(), rows.len(), vocab).unwrap();
    let want: Vec<u32> = rows.iter().map(|r| reference::argmax(r)).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------------------------
// Whole synthetic models: GpuShard against ReferenceShard

const STEPS: usize = 8;

/// GpuShard against ReferenceShard on a whole model: greedy tokens of every prompt position, the last logits after
/// the prompt and after each of `STEPS` greedy decode steps, and the device-side greedy sequence. Returns the
/// GPU logits of every step (prompt, then each decode step) for exact comparisons between GPU configurations.
fn check_model(g: &Gguf, cfg: &ModelConfig, opts: GpuOptions, what: &str) -> Vec<Vec<f32>> {
    let gpu = GpuShard::load(ctx(), g, cfg, ShardSpec::whole(cfg.n_layers as u32), opts).unwrap();
    check_shard(g, cfg, gpu, what)
}

/// [`check_model`] on an already loaded whole-model shard.
fn check_shard(g: &Gguf, cfg: &ModelConfig, mut gpu: GpuShard, what: &str) -> Vec<Vec<f32>> {
    let mut cpu = ReferenceShard::load(g, cfg, ShardSpec::whole(cfg.n_layers as u32)).unwrap();
    let p = prompt(cfg.vocab, 11, 7);
    let cap = p.len() + STEPS + 1;
    for s in [&mut cpu as &mut dyn Shard, &mut gpu] {
        for seq in 1..=3 {
            s.open_sequence(seq, cap).unwrap();
        }
    }

    // Greedy token of every prompt position (ArgmaxAll: the whole prompt through the head).
    let c = tokens(cpu.forward(1, ShardInput::Tokens(&p), HeadOutput::ArgmaxAll).unwrap());
    let d = tokens(gpu.forward(1, ShardInput::Tokens(&p), HeadOutput::ArgmaxAll).unwrap());
    assert_eq!(d, c, "{what}: argmax of every prompt position");

    // Logits after the prompt and after each greedy step, both fed the CPU's greedy token.
    let mut c = logits(cpu.forward(2, ShardInput::Tokens(&p), HeadOutput::LogitsLast).unwrap());
    let mut d = logits(gpu.forward(2, ShardInput::Tokens(&p), HeadOutput::LogitsLast).unwrap());
    let mut all = Vec::new();
    let mut greedy = Vec::new();
    for step in 0..=STEPS {
        assert_close(&format!("{what}: logits at step {step}"), &d, &c, MODEL_TOL);
        let next = reference::argmax(&c);
        assert_eq!(reference::argmax(&d), next, "{what}: greedy token at step {step} (top-2 gap {})", top2_gap(&c));
        all.push(d.clone());
        if step == STEPS {
            break;
        }
        greedy.push(next);
        c = logits(cpu.forward(2, ShardInput::Tokens(&[next]), HeadOutput::LogitsLast).unwrap());
        d = logits(gpu.forward(2, ShardInput::Tokens(&[next]), HeadOutput::LogitsLast).unwrap());
    }

    // The device's own greedy loop (argmax kernel, 4 bytes read back per step) gives the same tokens.
    let mut own = Vec::new();
    let mut input = p.clone();
    for _ in 0..STEPS {
        let t = tokens(gpu.forward(3, ShardInput::Tokens(&input), HeadOutput::ArgmaxLast).unwrap());
        assert_eq!(t.len(), 1);
        own.push(t[0]);
        input = t;
    }
    assert_eq!(own, greedy, "{what}: greedy decode on the device");
    assert_eq!(gpu.sequence_len(3).unwrap(), p.len() + STEPS - 1);
    all
}

macro_rules! model_per_type {
    ($($name:ident => $ty:expr),* $(,)?) => {
        $(
            /// Tiny llama (head tied to the embedding), every matrix of one type.
            #[test]
            fn $name() {
                let (g, cfg) = Tiny::llama(|_, _| $ty).load();
                assert_eq!((cfg.dim, cfg.head_dim, cfg.n_kv_heads, cfg.vocab, cfg.rope), (64, 16, 2, 300, RopeStyle::Adjacent));
                assert!(cfg.tied_embeddings && !cfg.qkv_bias);
                check_model(&g, &cfg, GpuOptions::default(), stringify!($name));
            }
        )*
    };
}

model_per_type! {
    model_llama_f32 => GgmlType::F32,
    model_llama_f16 => GgmlType::F16,
    model_llama_q8_0 => GgmlType::Q8_0,
    model_llama_q4_1 => GgmlType::Q4_1,
}

/// Tiny llama, Q4_0, with a separate `output.weight` of another type (F16) than the embedding.
#[test]
fn model_llama_q4_0_separate_output() {
    let t = Tiny { output: true, ..Tiny::llama(|_, s| if s == "output" { GgmlType::F16 } else { GgmlType::Q4_0 }) };
    let (g, cfg) = t.load();
    assert!(!cfg.tied_embeddings && cfg.rope == RopeStyle::Adjacent);
    check_model(&g, &cfg, GpuOptions::default(), "llama q4_0, separate output");
}

/// qwen2: neox RoPE (θ = 1e6), q/k/v biases, separate output head.
#[test]
fn model_qwen2_bias_neox() {
    let t = Tiny { arch: "qwen2", output: true, ..Tiny::llama(|_, _| GgmlType::Q8_0) };
    let (g, cfg) = t.load();
    assert!(cfg.qkv_bias && !cfg.tied_embeddings && cfg.rope == RopeStyle::Neox);
    check_model(&g, &cfg, GpuOptions::default(), "qwen2");
}

/// qwen2 with the types of a Q4_K_M file (Q5_0 and Q8_0 where rows are not whole 256-blocks in real models,
/// Q4_K and Q6_K elsewhere, a Q6_K head), on a width of whole 256-weight super-blocks.
#[test]
fn model_qwen2_k_quants() {
    let t = Tiny::qwen2_kquants();
    let (g, cfg) = t.load();
    assert!(cfg.qkv_bias && !cfg.tied_embeddings && cfg.rope == RopeStyle::Neox);
    check_model(&g, &cfg, GpuOptions::default(), "qwen2 k-quants");
}

/// gemma3 (see [`Tiny::gemma3`]): heads of 256, QK-norm, post-norms, GeGLU, the scaled embedding and a window of
/// 6 positions that the 11-position prompt and the decode steps run past.
#[test]
fn model_gemma3() {
    let (g, cfg) = Tiny::gemma3().load();
    assert_eq!((cfg.head_dim, cfg.n_kv_heads, cfg.window(0), cfg.window(1)), (256, 1, Some(6), None));
    assert!(cfg.qk_norm && cfg.post_norms && cfg.tied_embeddings && cfg.embed_scale == 16.0);
    let gpu = GpuShard::load(ctx(), &g, &cfg, ShardSpec::whole(4), GpuOptions::default()).unwrap();
    // Layer 0's q, k and v differ in type (three matmuls); QK-norm and the two post-norms add three.
    assert_eq!(gpu.dispatch_counts().0, 3 + 5 + 3, "QK-norm and two post-norms");
    check_shard(&g, &cfg, gpu, "gemma3");
}

/// gemma3 over 700 positions: a local layer's ring (window 6, 32-position steps: 261 rows) wraps twice. Every
/// position's argmax equals the reference's, whether the prompt goes in steps of 32 or 7, and decoding goes on
/// after it. A fork right behind the end continues as the parent; a fork or rewind to positions the ring no longer
/// holds is refused and leaves the sequence usable; a rewind to 0 starts over.
#[test]
fn gemma3_ring_cache_over_a_long_sequence() {
    let (g, cfg) = Tiny::gemma3().load();
    let whole = ShardSpec::whole(4);
    let ids = prompt(cfg.vocab, 700, 9);
    let mut cpu = ReferenceShard::load(&g, &cfg, whole).unwrap();
    cpu.open_sequence(1, 800).unwrap();
    let want = tokens(cpu.forward(1, ShardInput::Tokens(&ids), HeadOutput::ArgmaxAll).unwrap());
    for step in [32, 7] {
        let opts = GpuOptions { max_step_tokens: step, ..GpuOptions::default() };
        let mut gpu = GpuShard::load(ctx(), &g, &cfg, whole, opts).unwrap();
        gpu.open_sequence(1, 800).unwrap();
        let got = tokens(gpu.forward(1, ShardInput::Tokens(&ids), HeadOutput::ArgmaxAll).unwrap());
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        assert_eq!(
            same,
            want.len(),
            "steps of {step}: first difference at {:?}",
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
        if step != 32 {
            continue;
        }
        let last = ids.len() - 1;
        gpu.open_sequence(2, 800).unwrap();
        gpu.fork(1, 2, last).unwrap();
        let out = tokens(gpu.forward(2, ShardInput::Tokens(&ids[last..]), HeadOutput::ArgmaxLast).unwrap());
        assert_eq!(out, vec![want[last]], "fork behind the end");

        gpu.open_sequence(3, 800).unwrap();
        let err = gpu.fork(1, 3, 300).unwrap_err().to_string();
        assert!(err.contains("sliding-window"), "{err}");
        let err = gpu.truncate(1, 300).unwrap_err().to_string();
        assert!(err.contains("sliding-window"), "{err}");
        assert_eq!(gpu.sequence_len(1).unwrap(), ids.len());
        let out = tokens(gpu.forward(1, ShardInput::Tokens(&[want[last]]), HeadOutput::ArgmaxLast).unwrap());
        let cpu_next = tokens(cpu.forward(1, ShardInput::Tokens(&[want[last]]), HeadOutput::ArgmaxLast).unwrap());
        assert_eq!(out, cpu_next, "decoding goes on after a refused rewind");
        gpu.truncate(1, 0).unwrap();
        let out = tokens(gpu.forward(1, ShardInput::Tokens(&ids[..40]), HeadOutput::ArgmaxAll).unwrap());
        assert_eq!(out, want[..40], "a rewind to 0 starts over");
    }
}

/// Types differing inside a layer: in layer 0, q, k and v of three types run as three matmuls, each writing its
/// own column range of the fused qkv buffer with its own slice of the bias; layers 1 and 2 fuse them (one type).
/// F16 embedding, Q4_1 elsewhere and for the separate head. (Few distinct types: each is a pipeline per shard.)
#[test]
fn model_mixed_types() {
    fn ty(layer: Option<usize>, s: &str) -> GgmlType {
        match (layer, s) {
            (None, "token_embd") => GgmlType::F16,
            (Some(0), "attn_q") => GgmlType::Q8_0,
            (Some(0), "attn_k") => GgmlType::Q4_0,
            (Some(0), "attn_v") => GgmlType::F32,
            _ => GgmlType::Q4_1,
        }
    }
    let t = Tiny { arch: "qwen2", output: true, ..Tiny::llama(ty) };
    let (g, cfg) = t.load();
    let gpu = GpuShard::load(ctx(), &g, &cfg, ShardSpec::whole(3), GpuOptions::default()).unwrap();
    assert_eq!(gpu.dispatch_counts().0, 3 + 2 + 3, "layer 0: q, k and v apart");
    check_shard(&g, &cfg, gpu, "mixed types");
}

/// Prompts split into steps of 3 positions and every matrix but the embedding split into row chunks give the very
/// same logits as one step with whole matrices (each output row and position is computed by the same arithmetic),
/// and both match the CPU.
#[test]
fn model_steps_and_chunks_are_exact() {
    // A wide FFN and a small vocabulary so that the largest matrices are not the embedding (which must fit in
    // one binding: chunked gathers are not implemented).
    let ty = GgmlType::Q4_1;
    let (g, cfg) = Tiny { ffn: 256, vocab: 72, ..Tiny::llama(|_, _| GgmlType::Q4_1) }.load();
    let l = layout(ty);
    let embed_bytes = (cfg.vocab * cfg.dim / 32 * (l.texels * 16 + l.scales * 4)) as u64; // the embedding's bytes
    let small = GpuOptions { max_step_tokens: 3, max_binding_bytes: Some(embed_bytes) };
    let whole = ShardSpec::whole(cfg.n_layers as u32);
    let chunked = GpuShard::load(ctx(), &g, &cfg, whole, small).unwrap();
    let plain = GpuShard::load(ctx(), &g, &cfg, whole, GpuOptions::default()).unwrap();
    assert_eq!(plain.dispatch_counts().0, 6, "unchunked: 6 dispatches per layer");
    // qkv: 128 rows in chunks of 72; o: 64 rows; gate/up: 2x256 rows in pairs of 36; down (4x longer rows):
    // chunks of 18 rows; plus RoPE and attention.
    assert_eq!(chunked.dispatch_counts().0, 2 + 1 + 8 + 4 + 2, "chunked");
    let a = check_shard(&g, &cfg, chunked, "steps of 3, chunked");
    let b = check_shard(&g, &cfg, plain, "one step");
    assert_eq!(a, b, "chunked/stepped logits differ from the single-step ones");
}

/// Layers 0..1 (embedding) then 1..3 (head) passing hidden states equal one shard over 0..3: exactly on the GPU
/// (even with the second shard chunked and stepped), within tolerance of the CPU, and mixed (a CPU first shard
/// feeding the GPU second shard, as in a heterogeneous pipeline).
#[test]
fn model_two_shards_equal_one() {
    let (g, cfg) = Tiny { output: true, ..Tiny::llama(|_, _| GgmlType::Q8_0) }.load();
    let parts = ShardSpec::split(3, &[1]);
    let whole = ShardSpec::whole(3);
    let small = GpuOptions { max_step_tokens: 3, max_binding_bytes: Some(1024) };
    let mut one = GpuShard::load(ctx(), &g, &cfg, whole, GpuOptions::default()).unwrap();
    let mut a = GpuShard::load(ctx(), &g, &cfg, parts[0], GpuOptions::default()).unwrap();
    let mut b = GpuShard::load(ctx(), &g, &cfg, parts[1], small).unwrap();
    assert!(b.dispatch_counts().0 > 6 && b.dispatch_counts().1 > 2, "second shard chunked: {:?}", b.dispatch_counts());
    let mut cpu_one = ReferenceShard::load(&g, &cfg, whole).unwrap();
    let mut cpu_a = ReferenceShard::load(&g, &cfg, parts[0]).unwrap();
    let mut cpu_b = ReferenceShard::load(&g, &cfg, parts[1]).unwrap();
    for s in [&mut one as &mut dyn Shard, &mut a, &mut b, &mut cpu_one, &mut cpu_a, &mut cpu_b] {
        s.open_sequence(1, 32).unwrap();
    }
    b.open_sequence(2, 32).unwrap(); // fed by the CPU's first shard
    let mut input = prompt(cfg.vocab, 9, 8);
    for step in 0..6 {
        let want = logits(one.forward(1, ShardInput::Tokens(&input), HeadOutput::LogitsLast).unwrap());
        let h = hidden(a.forward(1, ShardInput::Tokens(&input), HeadOutput::LogitsLast).unwrap());
        assert_eq!(h.len(), input.len() * cfg.dim);
        let got = logits(b.forward(1, ShardInput::Hidden(&h), HeadOutput::LogitsLast).unwrap());
        assert_eq!(got, want, "step {step}: two GPU shards differ from one");

        let ch = hidden(cpu_a.forward(1, ShardInput::Tokens(&input), HeadOutput::ArgmaxLast).unwrap());
        assert_close(&format!("step {step}: hidden after layer 0"), &h, &ch, MODEL_TOL);
        let cpu_split = logits(cpu_b.forward(1, ShardInput::Hidden(&ch), HeadOutput::LogitsLast).unwrap());
        let cpu_whole = logits(cpu_one.forward(1, ShardInput::Tokens(&input), HeadOutput::LogitsLast).unwrap());
        assert_eq!(cpu_split, cpu_whole, "step {step}: two CPU shards differ from one");
        assert_close(&format!("step {step}: GPU vs CPU"), &got, &cpu_whole, MODEL_TOL);
        let mixed = logits(b.forward(2, ShardInput::Hidden(&ch), HeadOutput::LogitsLast).unwrap());
        assert_close(&format!("step {step}: CPU -> GPU"), &mixed, &cpu_whole, MODEL_TOL);

        input = vec![reference::argmax(&want)];
    }
    assert_eq!(b.sequence_len(1).unwrap(), 9 + 5);
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input: the right ShardError, never a panic, and the sequence is left usable

#[test]
fn bad_input_gives_the_right_errors() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q4_0).load();
    let parts = ShardSpec::split(3, &[1]);
    let mut first = GpuShard::load(ctx(), &g, &cfg, parts[0], GpuOptions::default()).unwrap();
    let mut last = GpuShard::load(ctx(), &g, &cfg, parts[1], GpuOptions::default()).unwrap();
    let mut cpu_first = ReferenceShard::load(&g, &cfg, parts[0]).unwrap();
    let mut cpu_last = ReferenceShard::load(&g, &cfg, parts[1]).unwrap();
    let dim = cfg.dim;
    let ok_hidden = vec![0.5f32; 2 * dim];

    for (name, first, last) in [
        ("gpu", &mut first as &mut dyn Shard, &mut last as &mut dyn Shard),
        ("cpu", &mut cpu_first as &mut dyn Shard, &mut cpu_last as &mut dyn Shard),
    ] {
        let want = HeadOutput::LogitsLast;
        first.open_sequence(1, 4).unwrap();
        last.open_sequence(1, 4).unwrap();
        assert!(matches!(first.open_sequence(1, 4), Err(ShardError::SequenceExists(1))), "{name}");

        // Token ids outside the vocabulary, before or after valid ones.
        for bad in [vec![cfg.vocab as u32], vec![1, 2, u32::MAX]] {
            let r = first.forward(1, ShardInput::Tokens(&bad), want);
            assert!(matches!(r, Err(ShardError::BadInput(_))), "{name}: token ids {bad:?}: {r:?}");
        }
        // Hidden states of the wrong size, or the wrong kind of input for the shard.
        for bad in [vec![0.0; dim - 1], vec![0.0; 2 * dim + 1], vec![]] {
            let r = last.forward(1, ShardInput::Hidden(&bad), want);
            assert!(matches!(r, Err(ShardError::BadInput(_))), "{name}: {} floats: {r:?}", bad.len());
        }
        assert!(matches!(last.forward(1, ShardInput::Tokens(&[1]), want), Err(ShardError::BadInput(_))), "{name}");
        assert!(
            matches!(first.forward(1, ShardInput::Hidden(&ok_hidden), want), Err(ShardError::BadInput(_))),
            "{name}"
        );
        assert!(matches!(first.forward(1, ShardInput::Tokens(&[]), want), Err(ShardError::BadInput(_))), "{name}");

        // Unknown sequences.
        assert!(
            matches!(first.forward(9, ShardInput::Tokens(&[1]), want), Err(ShardError::UnknownSequence(9))),
            "{name}"
        );
        assert!(
            matches!(last.forward(9, ShardInput::Hidden(&ok_hidden), want), Err(ShardError::UnknownSequence(9))),
            "{name}"
        );
        assert!(matches!(first.sequence_len(9), Err(ShardError::UnknownSequence(9))), "{name}");
        assert!(matches!(first.truncate(9, 0), Err(ShardError::UnknownSequence(9))), "{name}");
        first.close_sequence(9); // ignored

        // Nothing above moved the sequences.
        assert_eq!((first.sequence_len(1).unwrap(), last.sequence_len(1).unwrap()), (0, 0), "{name}");

        // Context overflow: 5 positions into 4, then 3 + 2 into 4; the sequence stays usable.
        let r = first.forward(1, ShardInput::Tokens(&[1, 2, 3, 4, 5]), want);
        assert!(matches!(r, Err(ShardError::ContextFull { need: 5, capacity: 4 })), "{name}: {r:?}");
        let h = hidden(first.forward(1, ShardInput::Tokens(&[1, 2, 3]), want).unwrap());
        last.forward(1, ShardInput::Hidden(&h), want).unwrap();
        let r = first.forward(1, ShardInput::Tokens(&[4, 5]), want);
        assert!(matches!(r, Err(ShardError::ContextFull { need: 5, capacity: 4 })), "{name}: {r:?}");
        let r = last.forward(1, ShardInput::Hidden(&ok_hidden), want);
        assert!(matches!(r, Err(ShardError::ContextFull { need: 5, capacity: 4 })), "{name}: {r:?}");
        assert_eq!((first.sequence_len(1).unwrap(), last.sequence_len(1).unwrap()), (3, 3), "{name}");
        // Rolling back makes room again.
        first.truncate(1, 2).unwrap();
        let h = hidden(first.forward(1, ShardInput::Tokens(&[4, 5]), want).unwrap());
        assert_eq!(h.len(), 2 * dim);
        first.close_sequence(1);
        assert!(matches!(first.sequence_len(1), Err(ShardError::UnknownSequence(1))), "{name}");
    }

    // A KV cache larger than a storage binding is refused when the sequence is opened.
    let r = first.open_sequence(2, 1 << 40);
    assert!(matches!(r, Err(ShardError::ContextFull { .. })), "{r:?}");
}

/// `capacity · kv_dim · 4` must not wrap around: a capacity whose KV size overflows u64/usize is refused too,
/// instead of opening a sequence backed by a tiny buffer.
#[test]
fn open_sequence_with_an_overflowing_capacity_is_refused() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q8_0).load();
    // An embedding-only shard (no layers: one pipeline to build); the KV size does not depend on the layers.
    let embed_only = ShardSpec { layer_start: 0, layer_end: 0, embed: true, head: false };
    let mut gpu = GpuShard::load(ctx(), &g, &cfg, embed_only, GpuOptions::default()).unwrap();
    // kv_dim 32 -> 128 bytes per position per layer: 2^57 positions wrap to exactly 0 bytes.
    let r = gpu.open_sequence(1, 1 << 57);
    assert!(matches!(r, Err(ShardError::ContextFull { .. })), "{r:?}");
}
