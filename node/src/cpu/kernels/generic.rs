//! Portable dot products: plain Rust every machine runs, and the path every SIMD kernel is tested against.
//! Each computes the same integer sums per block as the SIMD kernels; only the float accumulation order differs.
//!
//! Every kernel takes `n` (elements, a multiple of the weight's block), one weight row in its GGML bytes and one
//! activation row in the form [`super::super::act`] documents.

use half::f16;

use crate::cpu::repack;
use crate::quant::{f16_at, k4_scale_min, GgmlType};

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&q| q as i8 as i32)
}

/// Q4_0 weights x Q8_0 activations.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0;
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(36)).take(n / 32) {
        let qa = &ab[4..];
        let mut s = 0;
        for j in 0..16 {
            s += ((wb[2 + j] & 15) as i32 - 8) * qa[j] as i8 as i32;
            s += ((wb[2 + j] >> 4) as i32 - 8) * qa[j + 16] as i8 as i32;
        }
        acc += f16_at(wb, 0) * f32_at(ab, 0) * s as f32;
    }
    acc
}

/// Q4_1 weights x Q8_1 activations: `Σ d_w d_a Σ q_w q_a + m_w s_a`.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0;
    for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(40)).take(n / 32) {
        let qa = &ab[8..];
        let mut s = 0;
        for j in 0..16 {
            s += (wb[4 + j] & 15) as i32 * qa[j] as i8 as i32;
            s += (wb[4 + j] >> 4) as i32 * qa[j + 16] as i8 as i32;
        }
        acc += f16_at(wb, 0) * f32_at(ab, 0) * s as f32 + f16_at(wb, 2) * f32_at(ab, 4);
    }
    acc
}

/// Q5_0 weights x Q8_0 activations.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0;
    for (wb, ab) in w.chunks_exact(22).zip(a.chunks_exact(36)).take(n / 32) {
        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
        let qa = &ab[4..];
        let mut s = 0;
        for j in 0..16 {
            let lo = ((wb[6 + j] & 15) as u32 | ((qh >> j) & 1) << 4) as i32 - 16;
            let hi = ((wb[6 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16;
            s += lo * qa[j] as i8 as i32 + hi * qa[j + 16] as i8 as i32;
        }
        acc += f16_at(wb, 0) * f32_at(ab, 0) * s as f32;
    }
    acc
}

/// Q8_0 weights x Q8_0 activations.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0;
    for (wb, ab) in w.chunks_exact(34).zip(a.chunks_exact(36)).take(n / 32) {
        let s: i32 = i8s(&wb[2..34]).zip(i8s(&ab[4..36])).map(|(x, y)| x * y).sum();
        acc += f16_at(wb, 0) * f32_at(ab, 0) * s as f32;
    }
    acc
}

/// Q4_K weights x Q8_K activations: `d_a (d Σ_s sc_s Σ q a - dmin Σ_s m_s Σ a)`, the activation sums of each
/// 32 taken from the Q8_K block's sums of 16.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0;
    for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(292)).take(n / 256) {
        let (scales, qs, qa) = (&wb[4..16], &wb[16..144], &ab[4..260]);
        let (mut sum, mut mins) = (0i32, 0i32);
        for s in 0..8 {
            let (sc, m) = k4_scale_min(s, scales);
            let shift = 4 * (s % 2);
            let q = &qs[32 * (s / 2)..][..32];
            let dot: i32 = q.iter().zip(i8s(&qa[32 * s..][..32])).map(|(&q, y)| ((q >> shift) & 15) as i32 * y).sum();
            sum += sc as i32 * dot;
            mins += m as i32 * (bsum(ab, 2 * s) + bsum(ab, 2 * s + 1));
        }
        // Two fused multiply-adds per super-block, as the packed kernels do on every path.
        let da = f32_at(ab, 0);
        acc = (da * f16_at(wb, 0)).mul_add(sum as f32, acc);
        acc = (-(da * f16_at(wb, 2))).mul_add(mins as f32, acc);
    }
    acc
}

/// Q6_K weights x Q8_K activations: `d_a d Σ_s sc_s (Σ q a - 32 Σ a)` over 16 sub-blocks of 16, with q unsigned
/// (0..64); the `- 32` comes from the Q8_K block sums.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0;
    for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)).take(n / 256) {
        let (ql, qh, sc) = (&wb[..128], &wb[128..192], &wb[192..208]);
        let qa = &ab[4..260];
        let mut sum = 0i32;
        for half in 0..2 {
            let (ql, qh, qa) = (&ql[64 * half..], &qh[32 * half..], &qa[128 * half..]);
            for k in 0..4 {
                for part in 0..2 {
                    let mut dot = 0i32;
                    for l in 16 * part..16 * part + 16 {
                        let low = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 15;
                        let q = (low | ((qh[l] >> (2 * k)) & 3) << 4) as i32;
                        dot += q * qa[32 * k + l] as i8 as i32;
                    }
                    let s = 8 * half + 2 * k + part; // sub-block of 16
                    sum += sc[s] as i8 as i32 * (dot - 32 * bsum(ab, s));
                }
            }
        }
        acc = (f32_at(ab, 0) * f16_at(wb, 208)).mul_add(sum as f32, acc);
    }
    acc
}

/// The Q8_K block's sum of its 16 q's number `i`.
fn bsum(ab: &[u8], i: usize) -> i32 {
    i16::from_le_bytes([ab[260 + 2 * i], ab[261 + 2 * i]]) as i32
}

/// F16 weights x F32 activations.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (wc, ac)) in w.chunks_exact(2).zip(a.chunks_exact(4)).take(n).enumerate() {
        acc[i % 8] += f16_at(wc, 0) * f32_at(ac, 0);
    }
    acc.iter().sum()
}

/// F32 weights x F32 activations.
///
/// # Safety
/// Safe to call; `unsafe` only to share the kernel table's signature.
pub unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (wc, ac)) in w.chunks_exact(4).zip(a.chunks_exact(4)).take(n).enumerate() {
        acc[i % 8] += f32_at(wc, 0) * f32_at(ac, 0);
    }
    acc.iter().sum()
}

/// Dot product of f32 queries and f16 keys (attention scores).
pub fn dot(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y.to_f32()).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l].to_f32();
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y += a * x with f16 values (attention's weighted sum).
pub fn axpy(y: &mut [f32], a: f32, x: &[f16]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x.to_f32());
}

/// SwiGLU in place: `g = silu(g) u` (the reference's formula).
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    g.iter_mut().zip(u).for_each(|(g, u)| *g = crate::reference::silu(*g) * u);
}

/// GeGLU in place: `g = gelu_tanh(g) u` (the reference's formula; gemma3).
pub fn geglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    g.iter_mut().zip(u).for_each(|(g, u)| *g = crate::reference::gelu_tanh(*g) * u);
}

/// One head's attention over `n` f16 cache positions: `out (hd) = Σ_p softmax(scale q·k_p) v_p`, with `k_p`, `v_p`
/// at `p * stride` in `k`, `v`; `scores` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    stride: usize,
    n: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    scores.clear();
    scores.extend((0..n).map(|p| dot(q, &k[p * stride..][..hd]) * scale));
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (p, &a) in scores.iter().enumerate() {
        axpy(out, a / sum, &v[p * stride..][..hd]);
    }
}

/// Eight interleaved rows of `ty` (one group of [`crate::cpu::repack`]'s layout, `cols / 32` blocks) times `n`
/// Q8_1 activation rows `astride` bytes apart: row `r` x token `t` goes to `out[t * ostride + r]`. The
/// definition every SIMD path's packed kernel equals bit for bit: per block, the exact integer sum `S` of each
/// row, then `acc = fma(d_w d_a, S, acc)` and `acc = fma(m, s_a, acc)` with `m` the row's min (`-k d_w` for the
/// types whose min is a fixed multiple of `d`: a product by a power of two, exact; Q8_0 has none).
///
/// # Safety
/// `out` points at `n` rows of `ostride` floats, of which this writes the first eight of each.
#[allow(clippy::too_many_arguments)]
unsafe fn packed(
    ty: GgmlType,
    cols: usize,
    w: &[u8],
    a: &[u8],
    astride: usize,
    n: usize,
    out: *mut f32,
    ostride: usize,
) {
    let (gb, qo) = (repack::group_block(ty).expect("a packed type"), repack::qs_offset(ty));
    for t in 0..n {
        let mut acc = [0f32; 8];
        for b in 0..cols / 32 {
            let wb = &w[b * gb..][..gb];
            let ab = &a[t * astride + 40 * b..][..40];
            let (da, sa, y) = (f32_at(ab, 0), f32_at(ab, 4), &ab[8..]);
            for r in 0..8 {
                let mut s = 0;
                for j in 0..8 {
                    for i in 0..4 {
                        let q = if ty == GgmlType::Q8_0 {
                            wb[qo + 32 * j + 4 * r + i] as i8 as i32
                        } else {
                            let byte = wb[qo + 32 * (j % 4) + 4 * r + i];
                            let mut u = if j < 4 { byte & 15 } else { byte >> 4 };
                            if ty == GgmlType::Q5_0 {
                                u |= (wb[16 + 4 * r + i] >> j & 1) << 4;
                            }
                            u as i32
                        };
                        s += q * y[4 * j + i] as i8 as i32;
                    }
                }
                let d = f16_at(wb, 2 * r);
                acc[r] = (d * da).mul_add(s as f32, acc[r]);
                let m = match (ty, repack::offset(ty)) {
                    (GgmlType::Q8_0, _) => continue,
                    (_, Some(k)) => d * -k,
                    (_, None) => f16_at(wb, 16 + 2 * r),
                };
                acc[r] = m.mul_add(sa, acc[r]);
            }
        }
        for (r, &v) in acc.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(t * ostride + r) = v };
        }
    }
}

macro_rules! packed_entries {
    ($($name:ident: $ty:ident),*) => {$(
        /// [`packed`] for one weight type (the kernel table's signature).
        ///
        /// # Safety
        /// As [`packed`].
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(cols: usize, w: &[u8], a: &[u8], astride: usize, n: usize, out: *mut f32, ostride: usize) {
            unsafe { packed(GgmlType::$ty, cols, w, a, astride, n, out, ostride) }
        }
    )*};
}

packed_entries!(gemm8_q4_0: Q4_0, gemm8_q4_1: Q4_1, gemm8_q5_0: Q5_0, gemm8_q8_0: Q8_0);

/// Q4_K in the interleaved layout (eight rows, `cols / 256` super-blocks of [`crate::cpu::repack`]) times `n` Q8_K
/// activation rows `astride` bytes apart: row `r` x token `t` to `out[t * ostride + r]`, each equal to
/// [`dot_q4_k`] of the row bit for bit (the same integer sums, the same float operations).
///
/// # Safety
/// `out` points at `n` rows of `ostride` floats, of which this writes the first eight of each.
pub unsafe fn gemm8_q4_k(cols: usize, w: &[u8], a: &[u8], astride: usize, n: usize, out: *mut f32, ostride: usize) {
    for t in 0..n {
        let mut acc = [0f32; 8];
        for b in 0..cols / 256 {
            let (wb, ab) = (&w[1184 * b..][..1184], &a[t * astride + 292 * b..][..292]);
            let qa = &ab[4..260];
            for (r, acc) in acc.iter_mut().enumerate() {
                let (mut sum, mut mins) = (0i32, 0i32);
                for s in 0..8 {
                    let (k, shift) = (s / 2, 4 * (s % 2));
                    let mut dot = 0i32;
                    for j in 0..8 {
                        for i in 0..4 {
                            let q = (wb[160 + 32 * (8 * k + j) + 4 * r + i] >> shift) & 15;
                            dot += q as i32 * qa[32 * s + 4 * j + i] as i8 as i32;
                        }
                    }
                    sum += wb[32 + 8 * s + r] as i32 * dot;
                    mins += wb[96 + 8 * s + r] as i32 * (bsum(ab, 2 * s) + bsum(ab, 2 * s + 1));
                }
                let da = f32_at(ab, 0);
                *acc = (da * f16_at(wb, 2 * r)).mul_add(sum as f32, *acc);
                *acc = (-(da * f16_at(wb, 16 + 2 * r))).mul_add(mins as f32, *acc);
            }
        }
        for (r, &v) in acc.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(t * ostride + r) = v };
        }
    }
}

/// Q6_K in the interleaved layout times `n` Q8_K activation rows, as [`gemm8_q4_k`]; each equal to [`dot_q6_k`]
/// of the row bit for bit.
///
/// # Safety
/// `out` points at `n` rows of `ostride` floats, of which this writes the first eight of each.
pub unsafe fn gemm8_q6_k(cols: usize, w: &[u8], a: &[u8], astride: usize, n: usize, out: *mut f32, ostride: usize) {
    // Byte `i` of a row's GGML array that starts at `at` in the packed block, row `r`.
    let byte = |wb: &[u8], at: usize, r: usize, i: usize| wb[at + 32 * (i / 4) + 4 * r + i % 4];
    for t in 0..n {
        let mut acc = [0f32; 8];
        for b in 0..cols / 256 {
            let (wb, ab) = (&w[1680 * b..][..1680], &a[t * astride + 292 * b..][..292]);
            let qa = &ab[4..260];
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut sum = 0i32;
                for half in 0..2 {
                    for k in 0..4 {
                        for part in 0..2 {
                            let mut dot = 0i32;
                            for l in 16 * part..16 * part + 16 {
                                let low = (byte(wb, 144, r, 64 * half + l + 32 * (k % 2)) >> (4 * (k / 2))) & 15;
                                let q = (low | ((byte(wb, 1168, r, 32 * half + l) >> (2 * k)) & 3) << 4) as i32;
                                dot += q * qa[128 * half + 32 * k + l] as i8 as i32;
                            }
                            let s = 8 * half + 2 * k + part;
                            sum += wb[16 + 8 * s + r] as i8 as i32 * (dot - 32 * bsum(ab, s));
                        }
                    }
                }
                *acc = (f32_at(ab, 0) * f16_at(wb, 2 * r)).mul_add(sum as f32, *acc);
            }
        }
        for (r, &v) in acc.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(t * ostride + r) = v };
        }
    }
}
