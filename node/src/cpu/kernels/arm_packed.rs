//! The aarch64 kernels of the interleaved layout ([`crate::cpu::repack`]), for the dot-product path only:
//! `dotprod.rs` expands [`arm_packed!`] after [`super::arm::arm_kernels!`] (whose `load`, `f16x4`, `f32_at` and
//! the module's `dot16` they use). `sdot` sums each lane's four byte products, so with the token's four
//! activation bytes in every lane one `sdot` adds to four rows' sums (two for the group's eight rows). Plain
//! NEON's `dot16` pairs other bytes into its lanes, so that path keeps GGML's layout.
//!
//! Both operands of `sdot` are signed: the 4-bit types' unsigned nibbles (at most 31) and Q8_0's weights go in as
//! they are. The float steps are those of `generic::packed`, which this equals bit for bit.

/// Expands `gemm8_q4_0`, `gemm8_q4_1`, `gemm8_q5_0` and `gemm8_q8_0` in the invoking module.
macro_rules! arm_packed {
    ($feat:literal) => {
        /// The packed kernels' const parameter: the index of the type in `repack::TYPES`.
        const P_Q4_0: u8 = 0;
        const P_Q4_1: u8 = 1;
        const P_Q5_0: u8 = 2;
        const P_Q8_0: u8 = 3;

        /// Four activation bytes in every lane.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bcast4(p: *const u8) -> int8x16_t {
            vreinterpretq_s8_s32(vdupq_n_s32((p as *const i32).read_unaligned()))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn packed_tile<const TY: u8, const T: usize>(
            blocks: usize,
            w: *const u8,
            a: *const u8,
            astr: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let (gb, qo) = crate::cpu::repack::layout(TY);
            let (m4, b4) = (vdupq_n_u8(15), vdupq_n_u8(16));
            // Rows 0..4 and 4..8 of each token.
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            for b in 0..blocks {
                let wb = w.add(b * gb);
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 40 * b));
                let mut s = [[vdupq_n_s32(0); 2]; T];
                for j in 0..if TY == P_Q8_0 { 8 } else { 0 } {
                    let q = [load(wb.add(qo + 32 * j)), load(wb.add(qo + 32 * j + 16))];
                    for t in 0..T {
                        let y = bcast4(ab[t].add(8 + 4 * j));
                        for h in 0..2 {
                            s[t][h] = dot16(s[t][h], q[h], y);
                        }
                    }
                }
                for k in 0..if TY == P_Q8_0 { 0 } else { 4 } {
                    let mut lo = [vdupq_n_u8(0); 2];
                    let mut hi = [vdupq_n_u8(0); 2];
                    for h in 0..2 {
                        let p = vld1q_u8(wb.add(qo + 32 * k + 16 * h));
                        lo[h] = vandq_u8(p, m4);
                        hi[h] = vshrq_n_u8::<4>(p);
                        if TY == P_Q5_0 {
                            // Bit k (weights 4k..) and bit k + 4 (4k + 16..) of each qh byte to bit 4.
                            let qh = vld1q_u8(wb.add(16 + 16 * h));
                            let up = vshlq_u8(qh, vdupq_n_s8(4 - k as i8));
                            let down = vshlq_u8(qh, vdupq_n_s8(-(k as i8)));
                            lo[h] = vorrq_u8(lo[h], vandq_u8(up, b4));
                            hi[h] = vorrq_u8(hi[h], vandq_u8(down, b4));
                        }
                    }
                    for t in 0..T {
                        let (ylo, yhi) = (bcast4(ab[t].add(8 + 4 * k)), bcast4(ab[t].add(24 + 4 * k)));
                        for h in 0..2 {
                            s[t][h] = dot16(s[t][h], vreinterpretq_s8_u8(lo[h]), ylo);
                            s[t][h] = dot16(s[t][h], vreinterpretq_s8_u8(hi[h]), yhi);
                        }
                    }
                }
                let d = [f16x4(wb), f16x4(wb.add(8))];
                let m = match TY {
                    P_Q4_0 => [vmulq_n_f32(d[0], -8.0), vmulq_n_f32(d[1], -8.0)],
                    P_Q5_0 => [vmulq_n_f32(d[0], -16.0), vmulq_n_f32(d[1], -16.0)],
                    P_Q4_1 => [f16x4(wb.add(16)), f16x4(wb.add(24))],
                    _ => d, // unused: Q8_0 has no min
                };
                for t in 0..T {
                    let (da, sa) = (vdupq_n_f32(f32_at(ab[t])), vdupq_n_f32(f32_at(ab[t].add(4))));
                    for h in 0..2 {
                        acc[t][h] = vfmaq_f32(acc[t][h], vmulq_f32(d[h], da), vcvtq_f32_s32(s[t][h]));
                        if TY != P_Q8_0 {
                            acc[t][h] = vfmaq_f32(acc[t][h], m[h], sa);
                        }
                    }
                }
            }
            for t in 0..T {
                vst1q_f32(out.add(t * ostr), acc[t][0]);
                vst1q_f32(out.add(t * ostr + 4), acc[t][1]);
            }
        }

        macro_rules! packed_entry {
            ($name:ident, $ty:ident) => {
                /// # Safety
                /// The CPU has the target features; see [`super::PackedFn`].
                #[target_feature(enable = $feat)]
                pub unsafe fn $name(
                    cols: usize,
                    w: &[u8],
                    a: &[u8],
                    astr: usize,
                    n: usize,
                    out: *mut f32,
                    ostr: usize,
                ) {
                    let blocks = cols / 32;
                    assert!(w.len() >= blocks * crate::cpu::repack::layout($ty).0);
                    assert!(n == 0 || a.len() >= (n - 1) * astr + blocks * 40);
                    let (w, a) = (w.as_ptr(), a.as_ptr());
                    let mut t = 0;
                    while n - t >= 4 {
                        packed_tile::<$ty, 4>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 4;
                    }
                    if n - t >= 2 {
                        packed_tile::<$ty, 2>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 2;
                    }
                    if n - t == 1 {
                        packed_tile::<$ty, 1>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                    }
                }
            };
        }
        packed_entry!(gemm8_q4_0, P_Q4_0);
        packed_entry!(gemm8_q4_1, P_Q4_1);
        packed_entry!(gemm8_q5_0, P_Q5_0);
        packed_entry!(gemm8_q8_0, P_Q8_0);
    };
}

pub(crate) use arm_packed;
