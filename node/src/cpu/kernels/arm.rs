//! The aarch64 dot-product kernels, written once and compiled per instruction set: `neon.rs` (every aarch64 CPU:
//! Pi 4, older phones) and `dotprod.rs` (ARMv8.2 dot product: Pi 5, Jetson Orin, recent phones) each expand
//! [`arm_kernels!`] with their target features and their `dot16` (sixteen i8 x i8 products summed in fours
//! into i32 lanes: `smull` + `sadalp` on plain NEON, one `sdot` with the dot-product extension).
//!
//! Block by block, each kernel forms the same integer sums as `generic.rs` (nibbles unpacked to signed bytes,
//! which `sdot` multiplies directly), then adds `d_w d_a * sum` into a float accumulator. As on x86, each kernel
//! is a tile of R weight rows x T tokens whose every (row, token) sum takes the same operations whatever the
//! tile, exposed as one row, four rows and the prefill tile.

/// Expands the kernels in the invoking module. It must define `dot16(acc, i8s, i8s) -> acc` with the same target
/// features, and name the features as the macro's argument.
macro_rules! arm_kernels {
    ($feat:literal, $tile_rows:literal, $tile_tokens:literal) => {
        /// Weight rows of this path's prefill tile.
        pub const TILE_ROWS: usize = $tile_rows;
        /// Tokens of this path's prefill tile.
        pub const TILE_TOKENS: usize = $tile_tokens;

        use std::arch::aarch64::*;
        use std::arch::asm;

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16(p: *const u8) -> f32 {
            let bits = (p as *const i16).read_unaligned();
            let r: f32;
            asm!("fcvt {0:s}, {1:h}", out(vreg) r, in(vreg) bits, options(pure, nomem, nostack));
            r
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f32_at(p: *const u8) -> f32 {
            (p as *const f32).read_unaligned()
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn load(p: *const u8) -> int8x16_t {
            vld1q_s8(p as *const i8)
        }

        /// Asks for the block `ahead` bytes on to be in L1 by the time the kernel gets there (`prfm` never
        /// faults, so the address may lie past the matrix).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn prefetch<const BYTES: usize>(p: *const u8) {
            let mut off = 0;
            while off < BYTES {
                asm!("prfm pldl1keep, [{0}]", in(reg) p.wrapping_add(off), options(nostack, preserves_flags));
                off += 64;
            }
        }

        /// 16 bytes of packed nibbles as two vectors: the low nibbles (elements 0..16), the high (16..32).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
            let q = vld1q_u8(p);
            (vandq_u8(q, vdupq_n_u8(15)), vshrq_n_u8::<4>(q))
        }

        /// 32 bits as 32 bytes in two vectors: 0xFF where the bit is set.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bits_to_bytes(x: u32) -> (uint8x16_t, uint8x16_t) {
            let v = vreinterpretq_u8_u32(vdupq_n_u32(x));
            let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
            let lo = vqtbl1q_u8(v, vcombine_u8(vdup_n_u8(0), vdup_n_u8(1)));
            let hi = vqtbl1q_u8(v, vcombine_u8(vdup_n_u8(2), vdup_n_u8(3)));
            (vtstq_u8(lo, bit), vtstq_u8(hi, bit))
        }

        /// The sum of 32 i8 x i8 products (two pairs of vectors) in four i32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dot32(w: (int8x16_t, int8x16_t), a: *const u8) -> int32x4_t {
            dot16(dot16(vdupq_n_s32(0), w.0, load(a)), w.1, load(a.add(16)))
        }

        /// The tile of a 32-element block type whose weights unpack to 32 signed bytes and whose activations are
        /// Q8_0/Q8_1 blocks (`abytes` long, q's at `aq`): `sum_r_t += d_w d_a Σ q_w q_a`, plus `m_w s_a` when the
        /// type has a min (Q4_1).
        macro_rules! block32_tile {
            ($name:ident, $wbytes:literal, $abytes:literal, $aq:literal, $min:expr, |$wb:ident| $unpack:expr) => {
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn $name<const R: usize, const T: usize>(
                    n: usize,
                    w: *const u8,
                    stride: usize,
                    a: *const u8,
                    astr: usize,
                ) -> [[f32; T]; R] {
                    let mut acc = [[vdupq_n_f32(0.0); T]; R];
                    let mut mins = [[0f32; T]; R];
                    for b in 0..n / 32 {
                        let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + $abytes * b));
                        for r in 0..R {
                            let $wb = w.add(r * stride + $wbytes * b);
                            if R > 1 {
                                prefetch::<$wbytes>($wb.wrapping_add(2 * R * stride));
                            }
                            let q: (int8x16_t, int8x16_t) = $unpack;
                            let dw = f16($wb);
                            for t in 0..T {
                                let s = dot32(q, ab[t].add($aq));
                                acc[r][t] = vfmaq_f32(acc[r][t], vcvtq_f32_s32(s), vdupq_n_f32(dw * f32_at(ab[t])));
                                if $min {
                                    mins[r][t] += f16($wb.add(2)) * f32_at(ab[t].add(4));
                                }
                            }
                        }
                    }
                    let mut out = [[0f32; T]; R];
                    for r in 0..R {
                        for t in 0..T {
                            out[r][t] = vaddvq_f32(acc[r][t]) + mins[r][t];
                        }
                    }
                    out
                }
            };
        }

        block32_tile!(tile_q4_0, 18, 36, 4, false, |wb| {
            let (lo, hi) = nibbles(wb.add(2));
            let eight = vdupq_n_s8(8);
            (vsubq_s8(vreinterpretq_s8_u8(lo), eight), vsubq_s8(vreinterpretq_s8_u8(hi), eight))
        });
        block32_tile!(tile_q4_1, 20, 40, 8, true, |wb| {
            let (lo, hi) = nibbles(wb.add(4));
            (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
        });
        // Where the fifth bit is clear, q - 16 is the nibble with its top four bits set.
        block32_tile!(tile_q5_0, 22, 36, 4, false, |wb| {
            let (lo, hi) = nibbles(wb.add(6));
            let (hlo, hhi) = bits_to_bytes((wb.add(2) as *const u32).read_unaligned());
            let f0 = vdupq_n_u8(0xF0);
            (vreinterpretq_s8_u8(vorrq_u8(lo, vbicq_u8(f0, hlo))), vreinterpretq_s8_u8(vorrq_u8(hi, vbicq_u8(f0, hhi))))
        });
        block32_tile!(tile_q8_0, 34, 36, 4, false, |wb| (load(wb.add(2)), load(wb.add(18))));

        /// The Q8_K block's sums of its 16 q's, as two vectors of eight.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bsums(ab: *const u8) -> (int16x8_t, int16x8_t) {
            let p = ab.add(260) as *const i16;
            (vld1q_s16(p), vld1q_s16(p.add(8)))
        }

        /// Σ x_i y_i over eight i16 pairs (exact in i32).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dot_i16(x: int16x8_t, y: int16x8_t) -> i32 {
            vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(x), vget_low_s16(y)), x, y))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile_q4_k<const R: usize, const T: usize>(
            n: usize,
            w: *const u8,
            stride: usize,
            a: *const u8,
            astr: usize,
        ) -> [[f32; T]; R] {
            let mut acc = [[0f32; T]; R];
            let m4 = vdupq_n_u8(15);
            for b in 0..n / 256 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                // The activation sums of each 32 (pairs of the Q8_K block's sums of 16).
                let pairs: [int16x8_t; T] = std::array::from_fn(|t| {
                    let (lo, hi) = bsums(ab[t]);
                    vpaddq_s16(lo, hi)
                });
                for r in 0..R {
                    let wb = w.add(r * stride + 144 * b);
                    if R > 1 {
                        prefetch::<144>(wb.wrapping_add(2 * R * stride));
                    }
                    let (sc, m) = super::k4_scales_mins(wb.add(4));
                    let m16 = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(m)));
                    let mut sumi = [vdupq_n_s32(0); T];
                    for j in 0..4 {
                        let (sc0, sc1) = ((sc >> (16 * j)) as u8 as i32, (sc >> (16 * j + 8)) as u8 as i32);
                        let (q0, q1) = (vld1q_u8(wb.add(16 + 32 * j)), vld1q_u8(wb.add(32 + 32 * j)));
                        let lo = (vreinterpretq_s8_u8(vandq_u8(q0, m4)), vreinterpretq_s8_u8(vandq_u8(q1, m4)));
                        let hi = (vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1)));
                        for t in 0..T {
                            let p0 = dot32(lo, ab[t].add(4 + 64 * j));
                            let p1 = dot32(hi, ab[t].add(36 + 64 * j));
                            sumi[t] = vmlaq_n_s32(vmlaq_n_s32(sumi[t], p0, sc0), p1, sc1);
                        }
                    }
                    let (dw, dmin) = (f16(wb), f16(wb.add(2)));
                    for t in 0..T {
                        let da = f32_at(ab[t]);
                        let mins = dot_i16(m16, pairs[t]);
                        acc[r][t] += da * dw * vaddvq_s32(sumi[t]) as f32 - da * dmin * mins as f32;
                    }
                }
            }
            acc
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile_q6_k<const R: usize, const T: usize>(
            n: usize,
            w: *const u8,
            stride: usize,
            a: *const u8,
            astr: usize,
        ) -> [[f32; T]; R] {
            let mut acc = [[0f32; T]; R];
            let (m4, m3) = (vdupq_n_u8(15), vdupq_n_u8(3));
            for b in 0..n / 256 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                for r in 0..R {
                    let wb = w.add(r * stride + 210 * b);
                    if R > 1 {
                        prefetch::<210>(wb.wrapping_add(2 * R * stride));
                    }
                    let sc = wb.add(192) as *const i8;
                    let mut sumi = [vdupq_n_s32(0); T];
                    for h in 0..2 {
                        for part in 0..2 {
                            let ql0 = vld1q_u8(wb.add(64 * h + 16 * part));
                            let ql1 = vld1q_u8(wb.add(64 * h + 32 + 16 * part));
                            let qh = vld1q_u8(wb.add(128 + 32 * h + 16 * part));
                            let hi2 = |shift: i8| vshlq_n_u8::<4>(vandq_u8(vshlq_u8(qh, vdupq_n_s8(-shift)), m3));
                            let qs = [
                                vorrq_u8(vandq_u8(ql0, m4), hi2(0)),
                                vorrq_u8(vandq_u8(ql1, m4), hi2(2)),
                                vorrq_u8(vshrq_n_u8::<4>(ql0), hi2(4)),
                                vorrq_u8(vshrq_n_u8::<4>(ql1), hi2(6)),
                            ];
                            for (k, q) in qs.into_iter().enumerate() {
                                let s = 8 * h + 2 * k + part; // sub-block of 16
                                let (q, scale) = (vreinterpretq_s8_u8(q), sc.add(s).read() as i32);
                                for t in 0..T {
                                    let y = load(ab[t].add(4 + 128 * h + 32 * k + 16 * part));
                                    sumi[t] = vmlaq_n_s32(sumi[t], dot16(vdupq_n_s32(0), q, y), scale);
                                }
                            }
                        }
                    }
                    // The - 32 of every q: 32 Σ_s sc_s Σ a over the sub-blocks of 16.
                    let s8 = vld1q_s8(sc);
                    let (slo, shi) = (vmovl_s8(vget_low_s8(s8)), vmovl_high_s8(s8));
                    let dw = f16(wb.add(208));
                    for t in 0..T {
                        let (blo, bhi) = bsums(ab[t]);
                        let offset = dot_i16(slo, blo) + dot_i16(shi, bhi);
                        acc[r][t] += f32_at(ab[t]) * dw * (vaddvq_s32(sumi[t]) - (offset << 5)) as f32;
                    }
                }
            }
            acc
        }

        super::entries!($feat);

        /// Four f16 as f32 (`fcvtl`; Rust's f16 vector types are not stable yet).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16x4(p: *const u8) -> float32x4_t {
            let h = vld1_u16(p as *const u16);
            let r: float32x4_t;
            asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack));
            r
        }

        /// # Safety
        /// The CPU has the target features; `w` holds `n` f16 and `a` `n` f32.
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
            assert!(w.len() >= 2 * n && a.len() >= 4 * n);
            let (pw, pa) = (w.as_ptr(), a.as_ptr() as *const f32);
            let mut acc = [vdupq_n_f32(0.0); 2];
            let mut i = 0;
            while i + 8 <= n {
                acc[0] = vfmaq_f32(acc[0], f16x4(pw.add(2 * i)), vld1q_f32(pa.add(i)));
                acc[1] = vfmaq_f32(acc[1], f16x4(pw.add(2 * i + 8)), vld1q_f32(pa.add(i + 4)));
                i += 8;
            }
            let tail: f32 = (i..n).map(|j| f16(pw.add(2 * j)) * pa.add(j).read_unaligned()).sum();
            vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail
        }

        /// # Safety
        /// The CPU has the target features; `w` and `a` hold `n` f32.
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
            assert!(w.len() >= 4 * n && a.len() >= 4 * n);
            let (pw, pa) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
            let mut acc = [vdupq_n_f32(0.0); 2];
            let mut i = 0;
            while i + 8 <= n {
                acc[0] = vfmaq_f32(acc[0], vld1q_f32(pw.add(i)), vld1q_f32(pa.add(i)));
                acc[1] = vfmaq_f32(acc[1], vld1q_f32(pw.add(i + 4)), vld1q_f32(pa.add(i + 4)));
                i += 8;
            }
            let tail: f32 = (i..n).map(|j| pw.add(j).read_unaligned() * pa.add(j).read_unaligned()).sum();
            vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail
        }

        /// e^x for four x <= 0 (softmax after subtracting the maximum), as `exp8` on x86: 2^k e^r with
        /// k = round(x / ln 2), e^r by its Taylor polynomial to r^6. x below -87 gives 0.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn exp4(x: float32x4_t) -> float32x4_t {
            let x = vmaxq_f32(x, vdupq_n_f32(-87.0));
            let k = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
            let r = vfmsq_f32(x, k, vdupq_n_f32(0.693_359_4));
            let r = vfmsq_f32(r, k, vdupq_n_f32(-2.121_944_4e-4));
            let mut p = vdupq_n_f32(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = vfmaq_f32(vdupq_n_f32(c), p, r);
            }
            let scale = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)));
            let e = vmulq_f32(p, vreinterpretq_f32_s32(scale));
            let keep = vcgtq_f32(x, vdupq_n_f32(-87.0));
            vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), keep))
        }

        /// SwiGLU in place: `g = silu(g) u`, four at a time. silu(x) = x σ(x), with σ(x) = 1 / (1 + e^-x) for
        /// x >= 0 and e^x / (1 + e^x) below, so exp4 only sees -|x|. The tail goes through the scalar formula.
        ///
        /// # Safety
        /// The CPU has the target features.
        #[target_feature(enable = $feat)]
        pub unsafe fn swiglu(g: &mut [f32], u: &[f32]) {
            assert_eq!(g.len(), u.len());
            let (pg, pu, n) = (g.as_mut_ptr(), u.as_ptr(), g.len());
            let one = vdupq_n_f32(1.0);
            let mut i = 0;
            while i + 4 <= n {
                let x = vld1q_f32(pg.add(i));
                let e = exp4(vnegq_f32(vabsq_f32(x))); // e^-|x|
                let num = vbslq_f32(vcltzq_f32(x), e, one);
                let sig = vdivq_f32(num, vaddq_f32(one, e));
                vst1q_f32(pg.add(i), vmulq_f32(vmulq_f32(x, sig), vld1q_f32(pu.add(i))));
                i += 4;
            }
            super::generic::swiglu(&mut g[i..], &u[i..]);
        }

        /// GeGLU in place: `g = gelu_tanh(g) u`, four at a time. gelu_tanh(x) = 0.5 x (1 + tanh(y)) = x σ(2y)
        /// with y = sqrt(2/π) (x + 0.044715 x³): the sigmoid of `swiglu` at 2y. The tail goes through the scalar
        /// formula.
        ///
        /// # Safety
        /// The CPU has the target features.
        #[target_feature(enable = $feat)]
        pub unsafe fn geglu(g: &mut [f32], u: &[f32]) {
            assert_eq!(g.len(), u.len());
            let (pg, pu, n) = (g.as_mut_ptr(), u.as_ptr(), g.len());
            let one = vdupq_n_f32(1.0);
            let (c, c3) = (vdupq_n_f32(2.0 * 0.797_884_6), vdupq_n_f32(2.0 * 0.797_884_6 * 0.044_715));
            let mut i = 0;
            while i + 4 <= n {
                let x = vld1q_f32(pg.add(i));
                let z = vmulq_f32(x, vfmaq_f32(c, vmulq_f32(x, x), c3)); // 2y
                let e = exp4(vnegq_f32(vabsq_f32(z))); // e^-|z|
                let num = vbslq_f32(vcltzq_f32(z), e, one);
                let sig = vdivq_f32(num, vaddq_f32(one, e));
                vst1q_f32(pg.add(i), vmulq_f32(vmulq_f32(x, sig), vld1q_f32(pu.add(i))));
                i += 4;
            }
            super::generic::geglu(&mut g[i..], &u[i..]);
        }

        /// One head's attention over `n` f16 cache positions: `out (hd) = Σ_p softmax(scale q·k_p) v_p`, with
        /// `k_p`, `v_p` at `p * stride` in `k`, `v`; `scores` is scratch for `n` values. `hd` a multiple of 4.
        ///
        /// # Safety
        /// The CPU has the target features; `k` and `v` hold `n` rows of `stride`, `q` and `out` `hd` floats.
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn attend(
            q: &[f32],
            k: &[half::f16],
            v: &[half::f16],
            stride: usize,
            n: usize,
            scale: f32,
            scores: &mut Vec<f32>,
            out: &mut [f32],
        ) {
            let hd = q.len();
            assert!(hd % 4 == 0 && out.len() == hd && n >= 1);
            assert!(k.len() >= (n - 1) * stride + hd && v.len() >= (n - 1) * stride + hd);
            scores.clear();
            scores.reserve(n);
            let (pq, pk, pv) = (q.as_ptr(), k.as_ptr() as *const u8, v.as_ptr() as *const u8);
            let mut max = f32::NEG_INFINITY;
            // Scores four positions at a time: four independent FMA chains share each load of q.
            let mut p = 0;
            while p < n {
                let m = (n - p).min(4);
                let mut acc = [vdupq_n_f32(0.0); 4];
                let mut i = 0;
                while i < hd {
                    let qv = vld1q_f32(pq.add(i));
                    for (j, acc) in acc.iter_mut().enumerate().take(m) {
                        *acc = vfmaq_f32(*acc, qv, f16x4(pk.add(2 * ((p + j) * stride + i))));
                    }
                    i += 4;
                }
                for acc in acc.iter().take(m) {
                    let s = vaddvq_f32(*acc) * scale;
                    max = max.max(s);
                    scores.push(s);
                }
                p += m;
            }
            let (ps, mx) = (scores.as_mut_ptr(), vdupq_n_f32(max));
            let mut sums = vdupq_n_f32(0.0);
            let mut p = 0;
            while p + 4 <= n {
                let e = exp4(vsubq_f32(vld1q_f32(ps.add(p)), mx));
                vst1q_f32(ps.add(p), e);
                sums = vaddq_f32(sums, e);
                p += 4;
            }
            let mut sum = vaddvq_f32(sums);
            for s in &mut scores[p..] {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            // The weighted sum of the values, 64 floats (16 registers) of the head at a time, kept in registers
            // over all positions.
            let po = out.as_mut_ptr();
            let mut i = 0;
            while i < hd {
                let w = (hd - i).min(64) / 4;
                let mut acc = [vdupq_n_f32(0.0); 16];
                for (p, &a) in scores.iter().enumerate() {
                    let (a, row) = (vdupq_n_f32(a * inv), pv.add(2 * (p * stride + i)));
                    for (j, acc) in acc.iter_mut().enumerate().take(w) {
                        *acc = vfmaq_f32(*acc, a, f16x4(row.add(8 * j)));
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(w) {
                    vst1q_f32(po.add(i + 4 * j), *acc);
                }
                i += 4 * w;
            }
        }
    };
}

pub(crate) use arm_kernels;
