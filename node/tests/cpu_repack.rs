//! The interleaved weight layout (`cpu::repack`) and its kernels on every path this CPU has that repacks: each
//! row x token against the f32 reference (the activation-rounding bound of `cpu_kernels.rs`), every SIMD path
//! bit-identical to the portable kernel, and a token's result the same whatever tokens share its call (the
//! token tiles of 8, 4, 2 and 1), whatever thread runs its rows, and whether its group runs alone or in a pair
//! (AVX-512 VNNI's 512-bit kernels).

mod common;

use std::sync::Arc;

use common::tiny::*;
use edge_node::cpu::act::ActType;
use edge_node::cpu::kernels::{Isa, Kernels};
use edge_node::cpu::matmul::{matmul, Acts, Mat};
use edge_node::cpu::pool::Pool;
use edge_node::cpu::repack::{self, ROWS};
use edge_node::quant::{dequantize_row, quantize_row, GgmlType};
use proptest::prelude::*;

const TYPES: [GgmlType; 4] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0];

/// Every path of this CPU with a packed kernel for `ty`, the portable one first.
fn packing_paths(ty: GgmlType) -> Vec<Kernels> {
    Isa::available().into_iter().map(|i| Kernels::new(i).unwrap()).filter(|k| k.packed(ty).is_some()).collect()
}

/// `x` `(n, cols)` as rows of activation type `act`.
fn quantized(act: ActType, x: &[f32], cols: usize) -> Vec<u8> {
    let rb = act.row_bytes(cols);
    let mut a = vec![0u8; x.len() / cols * rb];
    for (xr, o) in x.chunks_exact(cols).zip(a.chunks_exact_mut(rb)) {
        act.quantize_row(xr, o);
    }
    a
}

/// The packed kernel of `k` over all groups of `packed` for the `n` tokens of `x`, quantized as the kernel takes
/// them: `(n, rows)`.
fn run(k: Kernels, ty: GgmlType, rows: usize, cols: usize, packed: &[u8], x: &[f32], n: usize) -> Vec<f32> {
    let kernels = k.packed(ty).unwrap();
    let a = quantized(k.packed_act(ty), x, cols);
    let (groups, rb) = (rows / ROWS, k.packed_act(ty).row_bytes(cols));
    let mut out = vec![f32::NAN; n * rows];
    // SAFETY: an available path; whole groups of `cols`, `n` activation rows; `out` holds n rows of `rows`.
    unsafe { kernels.groups(cols, packed, packed.len() / groups, 0..groups, &a, rb, n, out.as_mut_ptr(), rows) };
    out
}

/// Random `rows x cols` weights of `ty` and `n` tokens through every packing path: within the activation-rounding
/// bound of the f32 reference, equal to the portable kernel, and equal to each token run alone.
fn check(ty: GgmlType, rows: usize, blocks: usize, n: usize, w_scale: f32, x_scale: f32, seed: u64) {
    let cols = 32 * blocks;
    let mut rng = Rng(seed);
    let w = quant_matrix(ty, rows, cols, w_scale, &mut rng);
    let x = rng.vec(n * cols, x_scale);
    let packed = repack::repack(ty, rows, cols, &w).expect("whole groups of a packed type");
    assert_eq!(packed.len(), w.len(), "the layout takes the bytes GGML's does");
    let row_bytes = ty.row_bytes(cols);
    let mut wf = vec![0.0; cols];
    let paths = packing_paths(ty);
    assert_eq!(paths[0].isa(), Isa::Generic, "the portable path packs every packed type");
    let portable = run(paths[0], ty, rows, cols, &packed, &x, n);
    for &k in &paths {
        let got = run(k, ty, rows, cols, &packed, &x, n);
        for r in 0..rows {
            dequantize_row(ty, &w[r * row_bytes..][..row_bytes], &mut wf);
            for t in 0..n {
                let xt = &x[t * cols..][..cols];
                let (mut want, mut bound, mut abs) = (0f64, 0f64, 0f64);
                for (wb, xb) in wf.chunks(32).zip(xt.chunks(32)) {
                    let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    bound += d / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>();
                    want += wb.iter().zip(xb).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
                    abs += wb.iter().zip(xb).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>();
                }
                let v = got[t * rows + r];
                let tol = bound + 1e-5 * abs + 1e-6;
                assert!((v as f64 - want).abs() <= tol, "{ty:?} {:?} row {r} token {t}: {v} vs {want}", k.isa());
                assert_eq!(v.to_bits(), portable[t * rows + r].to_bits(), "{ty:?} {:?} row {r} token {t}", k.isa());
            }
        }
        for t in 0..n {
            let alone = run(k, ty, rows, cols, &packed, &x[t * cols..(t + 1) * cols], 1);
            assert_eq!(alone, got[t * rows..(t + 1) * rows], "{ty:?} {:?} token {t} alone vs among {n}", k.isa());
        }
    }
}

#[test]
fn packed_kernels_match_the_reference_and_the_portable_kernel_on_every_path() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        assert!(TYPES.iter().all(|&ty| packing_paths(ty).len() >= 2), "the SIMD paths pack");
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        assert!(TYPES.iter().all(|&ty| packing_paths(ty).len() >= 2), "the dotprod path packs");
    }
    for (i, ty) in TYPES.into_iter().enumerate() {
        // 16 rows: one pair of groups (AVX-512 VNNI takes two at once); 24: a pair and one alone.
        for (rows, blocks, n) in [(16, 1, 1), (24, 2, 3), (16, 3, 9), (24, 7, 13), (16, 28, 17)] {
            check(ty, rows, blocks, n, 1.0, 1.0, (i * 100 + blocks) as u64);
        }
    }
}

#[test]
fn extreme_blocks_do_not_overflow() {
    // Largest weights and activations with one sign or alternating: Q5_0's sums reach 31 x 127 x 32 and the
    // i16 pair sums of AVX2's `maddubs` 2 x 31 x 127.
    for ty in TYPES {
        let cols = 64;
        for pattern in 0..3 {
            let x: Vec<f32> =
                (0..cols).map(|i| if pattern == 0 || (pattern == 2 && i % 2 == 0) { 1.0 } else { -1.0 }).collect();
            let row = quantize_row(ty, &x.iter().map(|v| -v * 3.0).collect::<Vec<_>>());
            let w: Vec<u8> = (0..ROWS).flat_map(|_| row.clone()).collect();
            let packed = repack::repack(ty, ROWS, cols, &w).unwrap();
            let mut wf = vec![0.0; cols];
            dequantize_row(ty, &row, &mut wf);
            let want: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            for k in packing_paths(ty) {
                for v in run(k, ty, ROWS, cols, &packed, &x, 1) {
                    assert!(
                        (v as f64 - want).abs() <= 1e-3 * want.abs(),
                        "{ty:?} {:?} {pattern}: {v} vs {want}",
                        k.isa()
                    );
                }
            }
        }
    }
}

#[test]
fn only_whole_groups_of_the_packed_types_are_repacked() {
    let w = vec![0u8; 12 * GgmlType::Q4_0.row_bytes(64)];
    assert!(repack::repack(GgmlType::Q4_0, 12, 64, &w).is_none(), "12 rows are not whole groups");
    assert!(repack::repack(GgmlType::F16, 8, 256, &vec![0u8; 8 * 512]).is_none(), "no layout for F16");
    let mat = Mat::raw(GgmlType::Q4K, 8, 256, k0()).unwrap().repacked(&vec![0u8; 8 * 144], k0());
    assert!(mat.is_packed() && mat.act == ActType::Q8K, "the K-quants keep their Q8_K activations");
    let k = Kernels::new(Isa::Generic).unwrap();
    let mat = Mat::raw(GgmlType::Q4_0, 8, 64, k).unwrap().repacked(&w[..8 * 36], k);
    assert!(mat.is_packed() && mat.act == ActType::Q8_1);
    let mat = Mat::raw(GgmlType::Q4_0, 12, 64, k).unwrap().repacked(&w, k);
    assert!(!mat.is_packed() && mat.act == ActType::Q8_0);
}

/// Packed and GGML-layout matrices in one job over pools of 1 and 3 threads, several token counts: every output
/// equals the packed kernel on its own group with that token alone.
#[test]
fn packed_matmul_on_the_pool_equals_each_group_alone() {
    let pools = [Arc::new(Pool::new(1)), Arc::new(Pool::new(3))];
    for k in packing_paths(GgmlType::Q5_0) {
        let (cols, ra, rb) = (96, 40, 24);
        let mut rng = Rng(3);
        let wa = quant_matrix(GgmlType::Q5_0, ra, cols, 1.0, &mut rng);
        let wb = quant_matrix(GgmlType::Q8_0, rb, cols, 1.0, &mut rng);
        let mut bytes = wa.clone();
        bytes.extend(&wb);
        let ma = Mat::raw(GgmlType::Q5_0, ra, cols, k).unwrap().repacked(&wa, k);
        let mut mb = Mat::raw(GgmlType::Q8_0, rb, cols, k).unwrap().repacked(&wb, k);
        mb.range = wa.len()..wa.len() + wb.len();
        assert!(ma.is_packed() && mb.is_packed());
        let (pa, pb) = (repack::repack(ma.ty, ra, cols, &wa).unwrap(), repack::repack(mb.ty, rb, cols, &wb).unwrap());
        for n in [1, 5, 12] {
            let x = rng.vec(n * cols, 2.0);
            let mut acts = Acts::default();
            acts.quantize(&x, cols, &[&ma, &mb]);
            for pool in &pools {
                let (mut oa, mut ob) = (vec![0.0; n * ra], vec![0.0; n * rb]);
                matmul(pool, &bytes, &[&ma, &mb], &acts, n, &mut [&mut oa, &mut ob]);
                for t in 0..n {
                    let at = &x[t * cols..(t + 1) * cols];
                    assert_eq!(oa[t * ra..][..ra], run(k, ma.ty, ra, cols, &pa, at, 1), "{:?} n={n} t={t}", k.isa());
                    assert_eq!(ob[t * rb..][..rb], run(k, mb.ty, rb, cols, &pb, at, 1), "{:?} n={n} t={t}", k.isa());
                }
            }
        }
    }
}

fn k0() -> Kernels {
    Kernels::new(Isa::Generic).unwrap()
}

/// `x` `(n, cols)` as Q8_K rows.
fn q8_k(x: &[f32], cols: usize) -> Vec<u8> {
    let rb = ActType::Q8K.row_bytes(cols);
    let mut a = vec![0u8; x.len() / cols * rb];
    for (xr, o) in x.chunks_exact(cols).zip(a.chunks_exact_mut(rb)) {
        ActType::Q8K.quantize_row(xr, o);
    }
    a
}

/// The K-quants' packed kernels on every path that has them, against the GGML-layout kernel of the portable path
/// (which `cpu_kernels.rs` checks against the f32 reference): every row x token bit for bit, and each token the
/// same alone as among `n`. `w` is `rows x cols` weights of `ty`, `x` the `n` tokens.
fn check_k(ty: GgmlType, rows: usize, cols: usize, w: &[u8], x: &[f32], n: usize) {
    let a = q8_k(x, cols);
    let (arb, wrb) = (a.len() / n, ty.row_bytes(cols));
    let packed = repack::repack(ty, rows, cols, w).expect("whole groups of a packed type");
    let dot = k0().dot(ty).unwrap();
    let paths = packing_paths(ty);
    assert_eq!(paths[0].isa(), Isa::Generic, "the portable path packs the K-quants");
    for &k in &paths {
        let kernels = k.packed(ty).unwrap();
        let groups = rows / ROWS;
        let run = |a: &[u8], n: usize| {
            let mut out = vec![f32::NAN; n * rows];
            // SAFETY: an available path; whole groups of `cols`, `n` Q8_K rows; `out` holds n rows of `rows`.
            unsafe {
                kernels.groups(cols, &packed, packed.len() / groups, 0..groups, a, arb, n, out.as_mut_ptr(), rows)
            };
            out
        };
        let got = run(&a, n);
        for r in 0..rows {
            for t in 0..n {
                // SAFETY: one row and one activation row of `cols`.
                let want = unsafe { dot(cols, &w[r * wrb..][..wrb], &a[t * arb..][..arb]) };
                assert_eq!(got[t * rows + r].to_bits(), want.to_bits(), "{ty:?} {:?} row {r} token {t}", k.isa());
            }
        }
        for t in 0..n {
            let alone = run(&a[t * arb..(t + 1) * arb], 1);
            assert_eq!(alone, got[t * rows..(t + 1) * rows], "{ty:?} {:?} token {t} alone vs among {n}", k.isa());
        }
    }
}

#[test]
fn k_quant_packed_kernels_equal_the_ggml_layout_kernel_on_every_path() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        assert!(packing_paths(GgmlType::Q4K).len() >= 2 && packing_paths(GgmlType::Q6K).len() >= 2);
    }
    for (i, ty) in [GgmlType::Q4K, GgmlType::Q6K].into_iter().enumerate() {
        for (rows, blocks, n) in [(8, 1, 1), (16, 2, 3), (8, 3, 5), (24, 19, 9), (8, 1, 17)] {
            let cols = 256 * blocks;
            let mut rng = Rng((i * 100 + blocks) as u64);
            let (w, x) = (quant_matrix(ty, rows, cols, 1.0, &mut rng), rng.vec(n * cols, 2.0));
            check_k(ty, rows, cols, &w, &x, n);
        }
        // The largest weights and activations, of one sign or alternating: the sums reach 63 x 127 x 256 and
        // AVX2's i16 pair sums 2 x 63 x 127.
        for pattern in 0..3 {
            let x: Vec<f32> =
                (0..256).map(|i| if pattern == 0 || (pattern == 2 && i % 2 == 0) { 1.0 } else { -1.0 }).collect();
            let row = quantize_row(ty, &x.iter().map(|v| -v * 3.0).collect::<Vec<_>>());
            let w: Vec<u8> = (0..ROWS).flat_map(|_| row.clone()).collect();
            check_k(ty, ROWS, 256, &w, &x, 1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_groups_match_the_reference(ti in 0..TYPES.len(), groups in 1usize..4, blocks in 1usize..6,
                                         n in 1usize..12, seed in any::<u64>(),
                                         w_scale in 0.01f32..20.0, x_scale in 0.001f32..50.0) {
        check(TYPES[ti], groups * ROWS, blocks, n, w_scale, x_scale, seed);
    }

    #[test]
    fn random_k_quant_groups_equal_the_ggml_layout_kernel(q6 in any::<bool>(), groups in 1usize..3,
                                                          blocks in 1usize..4, n in 1usize..10, seed in any::<u64>(),
                                                          w_scale in 0.01f32..20.0, x_scale in 0.001f32..50.0) {
        let ty = if q6 { GgmlType::Q6K } else { GgmlType::Q4K };
        let (rows, cols, mut rng) = (groups * ROWS, 256 * blocks, Rng(seed));
        let (w, x) = (quant_matrix(ty, rows, cols, w_scale, &mut rng), rng.vec(n * cols, x_scale));
        check_k(ty, rows, cols, &w, &x, n);
    }
}
