//! Conformance of the native CPU backend against the f32 reference, on every instruction-set path this CPU has
//! (generic everywhere; AVX2 and AVX-512 VNNI on x86-64, NEON and NEON dotprod on aarch64, where the CPU has them).
//!
//! # Tolerances
//! A kernel computes `Σ w · x̂` where `x̂` is the activation row quantized to 8 bits per block (scale
//! `d = max|x| / 127`), so it differs from the reference `Σ w · x` by at most `Σ_blocks d/2 · Σ|w|` (each `x̂` is
//! within `d/2` of `x`), plus f32 rounding of the sums (held to 1e-5 of `Σ|w·x|`). The weights are decoded
//! exactly on both sides. Paths of one CPU form the same integer sums per block and differ only in the float
//! accumulation order: they must agree to 1e-5 of `Σ|w·x̂|`. Whole models are compared through their logits,
//! which the activation rounding moves by a few percent at most, and greedy tokens where the reference's top two
//! logits are clearly apart.

mod common;

use std::sync::Arc;

use common::tiny::*;
use edge_node::cpu::act::ActType;
use edge_node::cpu::kernels::{Isa, Kernels};
use edge_node::cpu::matmul::{act_type, matmul, Acts, Mat};
use edge_node::cpu::pool::{Pool, SPIN};
use edge_node::cpu::CpuShard;
use edge_node::gguf::Gguf;
use edge_node::model::ModelConfig;
use edge_node::quant::{dequantize_row, quantize_row, GgmlType};
use edge_node::reference::{self, ReferenceShard};
use edge_node::shard::{HeadOutput, Shard, ShardInput};
use edge_protocol::ShardSpec;
use proptest::prelude::*;

const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::F16,
    GgmlType::F32,
];

/// Whether this CPU has a SIMD path the tests must cover (x86-64 with AVX2; every aarch64 has NEON).
fn has_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2");
    #[cfg(target_arch = "aarch64")]
    return true;
    #[allow(unreachable_code)]
    false
}

fn every_path() -> Vec<Kernels> {
    Isa::available().into_iter().map(|i| Kernels::new(i).expect("an available path")).collect()
}

/// Elements per block for a type's kernels (F16/F32 rows are whole multiples of 32).
fn block(ty: GgmlType) -> usize {
    ty.block().0.max(32)
}

/// (reference dot in f64, the bound from activation rounding, Σ|w·x|).
fn reference_dot(ty: GgmlType, w: &[u8], x: &[f32]) -> (f64, f64, f64) {
    let mut wf = vec![0.0; x.len()];
    dequantize_row(ty, w, &mut wf);
    let act = act_type(ty).unwrap();
    let ab = act.block().0.max(1);
    let mut bound = 0.0;
    if act != ActType::F32 {
        for (wb, xb) in wf.chunks(ab).zip(x.chunks(ab)) {
            let d = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
            bound += d / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
        }
    }
    let dot = wf.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
    let abs = wf.iter().zip(x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
    (dot, bound, abs)
}

fn kernel_dot(k: Kernels, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    let act = act_type(ty).unwrap();
    let mut a = vec![0u8; act.row_bytes(x.len())];
    act.quantize_row(x, &mut a);
    // SAFETY: `k` is an available path; both rows hold x.len() elements.
    unsafe { k.dot(ty).unwrap()(x.len(), w, &a) }
}

fn check_dot(ty: GgmlType, blocks: usize, w_scale: f32, x_scale: f32, seed: u64) {
    let n = blocks * block(ty);
    let mut rng = Rng(seed);
    let w = quantize_row(ty, &rng.vec(n, w_scale));
    let x = rng.vec(n, x_scale);
    let (want, bound, abs) = reference_dot(ty, &w, &x);
    let generic = kernel_dot(Kernels::new(Isa::Generic).unwrap(), ty, &w, &x);
    for k in every_path() {
        let got = kernel_dot(k, ty, &w, &x);
        let err = (got as f64 - want).abs();
        let tol = bound + 1e-5 * abs + 1e-6;
        assert!(err <= tol, "{ty:?} {:?} n={n}: {got} vs reference {want} (error {err:.3e} > {tol:.3e})", k.isa());
        let diff = (got - generic).abs() as f64;
        assert!(
            diff <= 1e-5 * (abs + bound) + 1e-6,
            "{ty:?} {:?} n={n}: {got} vs the generic path's {generic} ({diff:.3e})",
            k.isa()
        );
    }
}

#[test]
fn every_type_on_every_path_matches_the_reference_dot() {
    let names: Vec<&str> = every_path().iter().map(|k| k.isa().name()).collect();
    assert!(names.len() >= 2 || !has_simd(), "only {names:?}");
    // The aarch64 run under qemu names the paths it must cover (qemu's CPU has them all).
    for want in std::env::var("EDGE_CPU_EXPECT_PATHS").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        assert!(names.contains(&want), "path {want} missing: this CPU has {names:?}");
    }
    for ty in TYPES {
        for blocks in [1, 2, 3, 7] {
            check_dot(ty, blocks, 1.0, 1.0, blocks as u64 * 31 + ty as u64);
        }
    }
}

#[test]
fn extreme_blocks_do_not_saturate() {
    // Every weight and activation at its largest magnitude, with one sign or alternating: the i16 pair sums of
    // `maddubs` stay in range only if the kernels keep q8 activations within ±127.
    for ty in TYPES {
        let n = 2 * block(ty);
        for pattern in 0..3 {
            let x: Vec<f32> = (0..n)
                .map(|i| match pattern {
                    0 => 1.0,
                    1 => -1.0,
                    _ => {
                        if i % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                })
                .collect();
            let w = quantize_row(ty, &x.iter().map(|v| -v * 3.0).collect::<Vec<_>>());
            let (want, bound, abs) = reference_dot(ty, &w, &x);
            for k in every_path() {
                let got = kernel_dot(k, ty, &w, &x) as f64;
                assert!(
                    (got - want).abs() <= bound + 1e-5 * abs + 1e-6,
                    "{ty:?} {:?} pattern {pattern}: {got} vs {want}",
                    k.isa()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_rows_match_the_reference(ti in 0..TYPES.len(), blocks in 1usize..9, seed in any::<u64>(),
                                       w_scale in 0.01f32..20.0, x_scale in 0.001f32..50.0) {
        check_dot(TYPES[ti], blocks, w_scale, x_scale, seed);
    }
}

/// Fused matrices of different weight (and activation) types over the pool, odd row counts: every output equals
/// the single-row kernel's, whatever the thread count.
#[test]
fn matmul_on_the_pool_equals_row_by_row_dots() {
    let pools = [Arc::new(Pool::new(1)), Arc::new(Pool::new(3))];
    for k in every_path() {
        for (ta, tb, cols) in [(GgmlType::Q4K, GgmlType::Q6K, 512), (GgmlType::Q4_1, GgmlType::Q8_0, 96)] {
            for n in [3, 9] {
                // 9 tokens: the prefill tiles and the tokens left over; 3: fewer than a tile.
                let (ra, rb) = (37, 50);
                let mut rng = Rng(7);
                let wa: Vec<u8> = quant_matrix(ta, ra, cols, 1.0, &mut rng);
                let wb: Vec<u8> = quant_matrix(tb, rb, cols, 1.0, &mut rng);
                let mut bytes = wa.clone();
                bytes.extend(&wb);
                let ma = Mat::raw(ta, ra, cols, k).unwrap();
                let mut mb = Mat::raw(tb, rb, cols, k).unwrap();
                mb.range = wa.len()..wa.len() + wb.len();
                let x = rng.vec(n * cols, 2.0);
                let mut acts = Acts::default();
                acts.quantize(&x, cols, &[&ma, &mb]);
                for pool in &pools {
                    let (mut oa, mut ob) = (vec![0.0; n * ra], vec![0.0; n * rb]);
                    matmul(pool, &bytes, &[&ma, &mb], &acts, n, &mut [&mut oa, &mut ob]);
                    for t in 0..n {
                        let xt = &x[t * cols..][..cols];
                        for (r, &got) in oa[t * ra..][..ra].iter().enumerate() {
                            let rb_ = ta.row_bytes(cols);
                            assert_eq!(got, kernel_dot(k, ta, &wa[r * rb_..][..rb_], xt), "{ta:?} row {r} token {t}");
                        }
                        for (r, &got) in ob[t * rb..][..rb].iter().enumerate() {
                            let rb_ = tb.row_bytes(cols);
                            assert_eq!(got, kernel_dot(k, tb, &wb[r * rb_..][..rb_], xt), "{tb:?} row {r} token {t}");
                        }
                    }
                }
            }
        }
    }
}

/// One head's attention over an f16 cache on every path against softmax in f64: head sizes that are and are not multiples of the
/// SIMD widths (8 on x86, 4 on ARM; others take the portable path), position counts around the four-position
/// step and the eight-wide exp, score spreads wide enough that some weights underflow to zero.
#[test]
fn attention_matches_softmax_in_f64() {
    let mut rng = Rng(11);
    for k in every_path() {
        for hd in [4, 8, 12, 64, 72, 6] {
            for n in [1, 3, 4, 9, 37] {
                for spread in [0.1, 10.0] {
                    let stride = hd + 5;
                    let q = rng.vec(hd, spread);
                    // The cache holds f16: the exact softmax below is of the values it holds.
                    let f16s = |v: Vec<f32>| v.into_iter().map(half::f16::from_f32).collect::<Vec<_>>();
                    let (kc, vc) = (f16s(rng.vec(n * stride, 1.0)), f16s(rng.vec(n * stride, 1.0)));
                    let scale = 1.0 / (hd as f32).sqrt();
                    let scores: Vec<f64> = (0..n)
                        .map(|p| (0..hd).map(|i| q[i] as f64 * kc[p * stride + i].to_f64()).sum::<f64>() * scale as f64)
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let (mut out, mut scratch) = (vec![f32::NAN; hd], Vec::new());
                    k.attend(&q, &kc, &vc, stride, n, scale, &mut scratch, &mut out);
                    for (i, &got) in out.iter().enumerate() {
                        let want: f64 = (0..n).map(|p| e[p] / sum * vc[p * stride + i].to_f64()).sum();
                        assert!(
                            (got as f64 - want).abs() <= 1e-5,
                            "{:?} hd={hd} n={n} spread={spread} dim {i}: {got} vs {want}",
                            k.isa()
                        );
                    }
                }
            }
        }
    }
}

/// The query heads of a K/V group attending together (each cached element converted once for all of them)
/// give each head's single-head result bit for bit, on every path: 1 to 11 heads (blocks of eight and a rest),
/// head sizes on and off the SIMD widths and the values' passes of several chunks (40 and 72 leave a chunk
/// over), position counts around the eight-wide exp.
#[test]
fn grouped_attention_equals_each_head_alone() {
    let mut rng = Rng(12);
    let f16s = |v: Vec<f32>| v.into_iter().map(half::f16::from_f32).collect::<Vec<_>>();
    for k in every_path() {
        for (g, hd, n) in [
            (1, 64, 9),
            (3, 64, 37),
            (7, 64, 130),
            (4, 256, 17),
            (11, 8, 8),
            (2, 12, 5),
            (5, 72, 1),
            (3, 40, 11),
            (2, 72, 6),
        ] {
            let stride = 3 * hd + 5;
            let q = rng.vec(g * hd, 3.0);
            let (kc, vc) = (f16s(rng.vec(n * stride, 1.0)), f16s(rng.vec(n * stride, 1.0)));
            let scale = 1.0 / (hd as f32).sqrt();
            let (mut got, mut scratch) = (vec![f32::NAN; g * hd], Vec::new());
            k.attend_group(&q, g, &kc, &vc, stride, n, scale, &mut scratch, &mut got);
            for h in 0..g {
                let mut want = vec![f32::NAN; hd];
                k.attend(&q[h * hd..][..hd], &kc, &vc, stride, n, scale, &mut scratch, &mut want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got[h * hd..][..hd]), bits(&want), "{:?} g={g} hd={hd} n={n} head {h}", k.isa());
            }
        }
    }
}

#[test]
fn the_pool_runs_every_task_once_sleeps_between_jobs_and_survives_a_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let pool = Pool::new(3);
    let caller = std::thread::current().id();
    let mut workers_joined = false;
    for round in 0..200 {
        let n = 1 + round % 37;
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let threads = Mutex::new(std::collections::HashSet::new());
        let scratches = AtomicUsize::new(0);
        pool.tasks(
            n,
            || {
                scratches.fetch_add(1, Ordering::Relaxed);
                std::thread::current().id()
            },
            |me, i| {
                assert_eq!(*me, std::thread::current().id(), "scratch belongs to the thread");
                hits[i].fetch_add(1, Ordering::Relaxed);
                threads.lock().unwrap().insert(*me);
                if round % 4 == 0 {
                    std::thread::sleep(SPIN); // long enough tasks that the workers join
                }
            },
        );
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}: every task exactly once");
        let threads = threads.into_inner().unwrap();
        assert_eq!(scratches.load(Ordering::Relaxed), threads.len(), "one scratch per thread that took part");
        assert!(threads.len() <= 3);
        workers_joined |= threads.iter().any(|&t| t != caller);
        if round % 10 == 0 {
            std::thread::sleep(SPIN * 20); // workers go to sleep and must wake for the next job
        }
    }
    assert!(workers_joined, "the workers take tasks too");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.tasks(64, || (), |_, i| assert!(i != 40, "task 40 fails"))
    }));
    assert!(r.is_err(), "a task's panic reaches the caller");
    let count = AtomicUsize::new(0);
    pool.tasks(
        100,
        || (),
        |_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        },
    );
    assert_eq!(count.load(Ordering::Relaxed), 100, "the pool still works after a panic");
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |a, x| a.max(x.abs()))
}

/// The CPU shard on every path against the reference: logits within a few percent (activation rounding through
/// every layer), greedy tokens wherever the reference's top two are apart, and the paths within 1e-4 of the
/// generic one.
fn check_model(g: &Gguf, cfg: &ModelConfig, what: &str) {
    let whole = ShardSpec::whole(cfg.n_layers as u32);
    let p = prompt(cfg.vocab, 9, 3);
    let mut reference = ReferenceShard::load(g, cfg, whole).unwrap();
    reference.open_sequence(1, 64).unwrap();
    let want = logits(reference.forward(1, ShardInput::Tokens(&p), HeadOutput::LogitsLast).unwrap());
    let mut generic: Option<Vec<f32>> = None;
    for k in every_path() {
        let mut cpu = CpuShard::load_with(g, cfg, whole, k, Arc::new(Pool::new(2))).unwrap();
        cpu.open_sequence(1, 64).unwrap();
        let got = logits(cpu.forward(1, ShardInput::Tokens(&p), HeadOutput::LogitsLast).unwrap());
        let scale = max_abs(&want);
        let err = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(err <= 0.05 * scale, "{what} {:?}: logits differ by {err} (scale {scale})", k.isa());
        if top2_gap(&want) > 0.1 * scale {
            assert_eq!(reference::argmax(&got), reference::argmax(&want), "{what} {:?}: greedy token", k.isa());
        }
        match &generic {
            None => generic = Some(got),
            Some(gen) => {
                let d = got.iter().zip(gen).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(d <= 1e-4 * scale, "{what} {:?}: {d} from the generic path", k.isa());
            }
        }
    }
}

#[test]
fn models_of_every_type_match_the_reference() {
    let (g, c) = Tiny::llama(|_, _| GgmlType::Q4_0).load();
    check_model(&g, &c, "llama q4_0");
    let mixed = Tiny::llama(|l, s| match (l, s) {
        (_, "token_embd") => GgmlType::Q8_0,
        (Some(0), _) => GgmlType::Q4_1,
        (Some(1), "ffn_down") => GgmlType::Q5_0,
        (Some(1), _) => GgmlType::F16,
        _ => GgmlType::F32,
    });
    let (g, c) = mixed.load();
    check_model(&g, &c, "llama mixed");
    let (g, c) = Tiny::qwen2_kquants().load();
    check_model(&g, &c, "qwen2 k-quants");
}

/// Prefill in one step, in pieces, and as a pipeline of two shards: bit-identical logits (every output element
/// is one thread's fixed-order sum, whatever the step size and the thread count). Recovery and distributed runs
/// rely on this.
#[test]
fn steps_threads_and_shards_do_not_change_a_bit() {
    let (g, cfg) = Tiny::llama(|_, _| GgmlType::Q4_1).load();
    let p = prompt(cfg.vocab, 10, 5);
    let k = Kernels::detect();
    let run = |threads: usize, pieces: &[usize]| -> Vec<f32> {
        let mut s = CpuShard::load_with(&g, &cfg, ShardSpec::whole(3), k, Arc::new(Pool::new(threads))).unwrap();
        s.open_sequence(1, 32).unwrap();
        let mut at = 0;
        let mut out = vec![];
        for &len in pieces {
            out = logits(s.forward(1, ShardInput::Tokens(&p[at..at + len]), HeadOutput::LogitsLast).unwrap());
            at += len;
        }
        out
    };
    let one = run(1, &[10]);
    assert_eq!(run(3, &[10]), one, "thread count");
    assert_eq!(run(2, &[4, 1, 5]), one, "step sizes");
    let specs = ShardSpec::split(3, &[1]);
    let pool = Arc::new(Pool::new(2));
    let mut a = CpuShard::load_with(&g, &cfg, specs[0], k, pool.clone()).unwrap();
    let mut b = CpuShard::load_with(&g, &cfg, specs[1], k, pool).unwrap();
    a.open_sequence(1, 32).unwrap();
    b.open_sequence(1, 32).unwrap();
    let h = hidden(a.forward(1, ShardInput::Tokens(&p), HeadOutput::LogitsLast).unwrap());
    assert_eq!(logits(b.forward(1, ShardInput::Hidden(&h), HeadOutput::LogitsLast).unwrap()), one, "two shards");
}

/// GeGLU (gemma3) on every path against `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) * u` in f64: both signs,
/// large magnitudes, zero, and lengths that leave a scalar tail.
#[test]
fn geglu_matches_f64_on_every_path() {
    let mut rng = Rng(6);
    for k in every_path() {
        for len in [1, 7, 8, 13, 64, 100] {
            for spread in [0.5, 4.0, 200.0] {
                let mut g = rng.vec(len, spread);
                g[0] = 0.0;
                let u = rng.vec(len, 2.0);
                let gelu = |x: f64| {
                    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
                };
                let want: Vec<f64> = g.iter().zip(&u).map(|(&x, &u)| gelu(x as f64) * u as f64).collect();
                k.geglu(&mut g, &u);
                for (i, (&got, &want)) in g.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - want).abs() <= 2e-6 * want.abs().max(1.0),
                        "{:?} len={len} spread={spread} [{i}]: {got} vs {want}",
                        k.isa()
                    );
                }
            }
        }
    }
}

/// SwiGLU on every path against `x / (1 + e^-x) * u` in f64: both signs, large magnitudes (where e^-|x| underflows),
/// zero, and lengths that leave a scalar tail.
#[test]
fn swiglu_matches_f64_on_every_path() {
    let mut rng = Rng(5);
    for k in every_path() {
        for len in [1, 7, 8, 13, 64, 100] {
            for spread in [0.5, 8.0, 200.0] {
                let mut g = rng.vec(len, spread);
                g[0] = 0.0;
                let u = rng.vec(len, 2.0);
                let want: Vec<f64> =
                    g.iter().zip(&u).map(|(&x, &u)| x as f64 / (1.0 + (-(x as f64)).exp()) * u as f64).collect();
                k.swiglu(&mut g, &u);
                for (i, (&got, &want)) in g.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{:?} len={len} spread={spread} [{i}]: {got} vs {want}",
                        k.isa()
                    );
                }
            }
        }
    }
}
