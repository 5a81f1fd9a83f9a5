//! The x86-64 dot-product kernels, written once and compiled per instruction set: `avx2.rs` and `avx512.rs` each
//! expand [`x86_kernels!`] with their target features and their `mul_add` (u8 x i8 products summed in fours into
//! i32 lanes: `maddubs` + `madd` on AVX2, one `vpdpbusd` with AVX-512 VNNI).
//!
//! Block by block, each kernel forms the same integer sums as `generic.rs` (nibbles unpacked to bytes; signed
//! products through the `sign` trick, |x| * sign(y, x), or, for Q4_0 and Q5_0, unsigned weights q + k and an
//! exact `-k Σ y` correction), then adds `d_w d_a * sum` into a float accumulator.
//! Weights are prefetched eight rows ahead (the hardware prefetchers alone stall at every chunk start).

/// Expands the kernels in the invoking module. It must define `mul_add(acc, u8s, i8s) -> acc` and
/// `fifth_bits(u32) -> 32 bytes, 16 where the bit is set` with the same target features, and name the features
/// as the macro's argument.
macro_rules! x86_kernels {
    ($feat:literal, $tile_rows:literal, $tile_tokens:literal) => {
        /// Weight rows of this path's prefill tile.
        pub const TILE_ROWS: usize = $tile_rows;
        /// Tokens of this path's prefill tile.
        pub const TILE_TOKENS: usize = $tile_tokens;

        use std::arch::x86_64::*;

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16(p: *const u8) -> f32 {
            let bits = (p as *const u16).read_unaligned() as i32;
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f32_at(p: *const u8) -> f32 {
            (p as *const f32).read_unaligned()
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn load(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        /// Asks for the block `ahead` bytes on (the same block of a row further down the chunk) to be in L1 by
        /// the time the kernel gets there: the hardware prefetchers alone stall at every chunk and page start.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn prefetch<const BYTES: usize>(p: *const u8) {
            let mut off = 0;
            while off < BYTES {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
                off += 64;
            }
        }

        use super::k4_scales_mins;

        /// 16 bytes of packed nibbles as 32 bytes: low nibbles first, then high nibbles (GGML's order).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            let q = _mm_loadu_si128(p as *const __m128i);
            let m = _mm_set1_epi8(15);
            let lo = _mm_and_si128(q, m);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
            _mm256_set_m128i(hi, lo)
        }

        // Each quantized kernel is written once as a tile: R weight rows x T activation rows (tokens). Each weight
        // block is unpacked once for the T tokens (prefill), each activation block loaded once for the R rows,
        // and the R x T sums are independent chains that hide the instruction latencies. Every (row, token) sum
        // takes the same operations in the same order whatever the tile, so results never depend on it. Exposed
        // as one row (`dot_*`), four rows (`dot4_*`, decode) and the ISA's tile (`tile_*`, prefill).

        /// `-k Σ y` in each i32 lane (over the lane's four bytes): the seed of a block's sums when its weights
        /// are taken as unsigned `u = q + k`, since `Σ u y - k Σ y = Σ q y` exactly, lane by lane. Formed once
        /// per activation block for all the tile's rows; it saves the sign trick's two `sign` per product.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn offset_seed(k: __m256i, y: __m256i) -> __m256i {
            _mm256_sub_epi32(_mm256_setzero_si256(), mul_add(_mm256_setzero_si256(), k, y))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile_q4_0<const R: usize, const T: usize>(
            n: usize,
            w: *const u8,
            stride: usize,
            a: *const u8,
            astr: usize,
        ) -> [[f32; T]; R] {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let eight = _mm256_set1_epi8(8);
            for b in 0..n / 32 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 36 * b));
                let y: [__m256i; T] = std::array::from_fn(|t| load(ab[t].add(4)));
                let seed: [__m256i; T] = std::array::from_fn(|t| offset_seed(eight, y[t]));
                for r in 0..R {
                    let wb = w.add(r * stride + 18 * b);
                    if R > 1 {
                        prefetch::<18>(wb.wrapping_add(2 * R * stride));
                    }
                    // q + 8: the stored nibble.
                    let (u, dw) = (nibbles(wb.add(2)), f16(wb));
                    for t in 0..T {
                        let s = mul_add(seed[t], u, y[t]);
                        acc[r][t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(dw * f32_at(ab[t])), _mm256_cvtepi32_ps(s), acc[r][t]);
                    }
                }
            }
            acc.map(|row| row.map(|v| hsum(v)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile_q4_1<const R: usize, const T: usize>(
            n: usize,
            w: *const u8,
            stride: usize,
            a: *const u8,
            astr: usize,
        ) -> [[f32; T]; R] {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut mins = [[0f32; T]; R];
            for b in 0..n / 32 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 40 * b));
                let y: [__m256i; T] = std::array::from_fn(|t| load(ab[t].add(8)));
                for r in 0..R {
                    let wb = w.add(r * stride + 20 * b);
                    if R > 1 {
                        prefetch::<20>(wb.wrapping_add(2 * R * stride));
                    }
                    let (q, dw, mw) = (nibbles(wb.add(4)), f16(wb), f16(wb.add(2)));
                    for t in 0..T {
                        let s = mul_add(_mm256_setzero_si256(), q, y[t]);
                        acc[r][t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(dw * f32_at(ab[t])), _mm256_cvtepi32_ps(s), acc[r][t]);
                        mins[r][t] += mw * f32_at(ab[t].add(4));
                    }
                }
            }
            let mut out = [[0f32; T]; R];
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = hsum(acc[r][t]) + mins[r][t];
                }
            }
            out
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile_q5_0<const R: usize, const T: usize>(
            n: usize,
            w: *const u8,
            stride: usize,
            a: *const u8,
            astr: usize,
        ) -> [[f32; T]; R] {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let sixteen = _mm256_set1_epi8(16);
            for b in 0..n / 32 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 36 * b));
                let y: [__m256i; T] = std::array::from_fn(|t| load(ab[t].add(4)));
                let seed: [__m256i; T] = std::array::from_fn(|t| offset_seed(sixteen, y[t]));
                for r in 0..R {
                    let wb = w.add(r * stride + 22 * b);
                    if R > 1 {
                        prefetch::<22>(wb.wrapping_add(2 * R * stride));
                    }
                    // q + 16: the nibble with the fifth bit above it.
                    let fifth = fifth_bits((wb.add(2) as *const u32).read_unaligned());
                    let (u, dw) = (_mm256_or_si256(nibbles(wb.add(6)), fifth), f16(wb));
                    for t in 0..T {
                        let s = mul_add(seed[t], u, y[t]);
                        acc[r][t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(dw * f32_at(ab[t])), _mm256_cvtepi32_ps(s), acc[r][t]);
                    }
                }
            }
            acc.map(|row| row.map(|v| hsum(v)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn tile_q8_0<const R: usize, const T: usize>(
            n: usize,
            w: *const u8,
            stride: usize,
            a: *const u8,
            astr: usize,
        ) -> [[f32; T]; R] {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for b in 0..n / 32 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 36 * b));
                let y: [__m256i; T] = std::array::from_fn(|t| load(ab[t].add(4)));
                for r in 0..R {
                    let wb = w.add(r * stride + 34 * b);
                    if R > 1 {
                        prefetch::<34>(wb.wrapping_add(2 * R * stride));
                    }
                    let q = load(wb.add(2));
                    let (ax, dw) = (_mm256_sign_epi8(q, q), f16(wb));
                    for t in 0..T {
                        let s = mul_add(_mm256_setzero_si256(), ax, _mm256_sign_epi8(y[t], q));
                        acc[r][t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(dw * f32_at(ab[t])), _mm256_cvtepi32_ps(s), acc[r][t]);
                    }
                }
            }
            acc.map(|row| row.map(|v| hsum(v)))
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
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut mins_acc = [[0f32; T]; R];
            let m4 = _mm256_set1_epi8(15);
            for b in 0..n / 256 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                // The activation sums of each 32 (pairs of the Q8_K block's sums of 16).
                let pairs: [__m128i; T] = std::array::from_fn(|t| {
                    let bs = ab[t].add(260) as *const __m128i;
                    _mm_hadd_epi16(_mm_loadu_si128(bs), _mm_loadu_si128(bs.add(1)))
                });
                for r in 0..R {
                    let wb = w.add(r * stride + 144 * b);
                    if R > 1 {
                        prefetch::<144>(wb.wrapping_add(2 * R * stride));
                    }
                    let (sc, m) = k4_scales_mins(wb.add(4));
                    let m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
                    let mut sumi = [_mm256_setzero_si256(); T];
                    for j in 0..4 {
                        let (sc0, sc1) = ((sc >> (16 * j)) as u8, (sc >> (16 * j + 8)) as u8);
                        let (sc0, sc1) = (_mm256_set1_epi16(sc0 as i16), _mm256_set1_epi16(sc1 as i16));
                        let q = load(wb.add(16 + 32 * j));
                        let lo = _mm256_and_si256(q, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                        for t in 0..T {
                            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(ab[t].add(4 + 64 * j))), sc0);
                            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(ab[t].add(36 + 64 * j))), sc1);
                            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1));
                        }
                    }
                    let (dw, dmin) = (f16(wb), f16(wb.add(2)));
                    for t in 0..T {
                        let mins = _mm_madd_epi16(m16, pairs[t]);
                        let mins = _mm_add_epi32(mins, _mm_shuffle_epi32(mins, 0b01_00_11_10));
                        let mins = _mm_cvtsi128_si32(_mm_add_epi32(mins, _mm_shuffle_epi32(mins, 0b10_11_00_01)));
                        let da = f32_at(ab[t]);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(da * dw), _mm256_cvtepi32_ps(sumi[t]), acc[r][t]);
                        mins_acc[r][t] += da * dmin * mins as f32;
                    }
                }
            }
            let mut out = [[0f32; T]; R];
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = hsum(acc[r][t]) - mins_acc[r][t];
                }
            }
            out
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
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let (m4, m2) = (_mm256_set1_epi8(15), _mm256_set1_epi8(3));
            for b in 0..n / 256 {
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                for r in 0..R {
                    let wb = w.add(r * stride + 210 * b);
                    if R > 1 {
                        prefetch::<210>(wb.wrapping_add(2 * R * stride));
                    }
                    let sc = wb.add(192) as *const i8;
                    let mut sumi = [_mm256_setzero_si256(); T];
                    for h in 0..2 {
                        let (ql0, ql1, qh) =
                            (load(wb.add(64 * h)), load(wb.add(64 * h + 32)), load(wb.add(128 + 32 * h)));
                        let hi2 = |v: __m256i| _mm256_slli_epi16(_mm256_and_si256(v, m2), 4);
                        let qs = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), hi2(qh)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), hi2(_mm256_srli_epi16(qh, 2))),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                hi2(_mm256_srli_epi16(qh, 4)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                hi2(_mm256_srli_epi16(qh, 6)),
                            ),
                        ];
                        for (k, q) in qs.into_iter().enumerate() {
                            let s = 8 * h + 2 * k;
                            let (s0, s1) = (sc.add(s).read() as i16, sc.add(s + 1).read() as i16);
                            let scale = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                            for t in 0..T {
                                let p = _mm256_maddubs_epi16(q, load(ab[t].add(4 + 128 * h + 32 * k)));
                                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, scale));
                            }
                        }
                    }
                    // The - 32 of every q: 32 Σ_s sc_s Σ a over the sub-blocks of 16, lane-wise.
                    let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
                    let dw = f16(wb.add(208));
                    for t in 0..T {
                        let bsums = ab[t].add(260) as *const __m256i;
                        let offset = _mm256_madd_epi16(_mm256_loadu_si256(bsums), scales16);
                        let sumi = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(offset, 5));
                        acc[r][t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(f32_at(ab[t]) * dw), _mm256_cvtepi32_ps(sumi), acc[r][t]);
                    }
                }
            }
            acc.map(|row| row.map(|v| hsum(v)))
        }

        super::entries!($feat);

        /// # Safety
        /// The CPU has the target features; `w` holds `n` f16 and `a` `n` f32 (n a multiple of 8).
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
            debug_assert!(w.len() >= 2 * n && a.len() >= 4 * n && n % 8 == 0);
            let (w, a) = (w.as_ptr(), a.as_ptr() as *const f32);
            let mut acc = _mm256_setzero_ps();
            for i in (0..n).step_by(8) {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i));
                acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(a.add(i)), acc);
            }
            hsum(acc)
        }

        /// # Safety
        /// The CPU has the target features; `w` and `a` hold `n` f32 (n a multiple of 8).
        #[target_feature(enable = $feat)]
        pub unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
            debug_assert!(w.len() >= 4 * n && a.len() >= 4 * n && n % 8 == 0);
            let (w, a) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
            let mut acc = _mm256_setzero_ps();
            for i in (0..n).step_by(8) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(a.add(i)), acc);
            }
            hsum(acc)
        }

        /// e^x for eight x <= 0 (softmax after subtracting the maximum): 2^k e^r with k = round(x / ln 2),
        /// |r| <= ln 2 / 2, e^r by its Taylor polynomial to r^6 (relative error < 2e-7). x below -87 gives 0.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn exp8(x: __m256) -> __m256 {
            let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
            let k = _mm256_round_ps(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
            let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
            let e = _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
            // Below -87 (e^-87 ~ 1.6e-38) the weight is 0.
            _mm256_and_ps(e, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0), _CMP_GT_OQ))
        }

        /// SwiGLU in place: `g = silu(g) u`, eight at a time. silu(x) = x σ(x), with σ(x) = 1 / (1 + e^-x) for
        /// x >= 0 and e^x / (1 + e^x) below, so exp8 only sees -|x|. The tail goes through the scalar formula.
        ///
        /// # Safety
        /// The CPU has the target features.
        #[target_feature(enable = $feat)]
        pub unsafe fn swiglu(g: &mut [f32], u: &[f32]) {
            assert_eq!(g.len(), u.len());
            let (pg, pu, n) = (g.as_mut_ptr(), u.as_ptr(), g.len());
            let one = _mm256_set1_ps(1.0);
            let mut i = 0;
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pg.add(i));
                let e = exp8(_mm256_or_ps(x, _mm256_set1_ps(-0.0))); // e^-|x|
                let sig = _mm256_div_ps(_mm256_blendv_ps(one, e, x), _mm256_add_ps(one, e));
                _mm256_storeu_ps(pg.add(i), _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(pu.add(i))));
                i += 8;
            }
            super::generic::swiglu(&mut g[i..], &u[i..]);
        }

        /// GeGLU in place: `g = gelu_tanh(g) u`, eight at a time. gelu_tanh(x) = 0.5 x (1 + tanh(y)) = x σ(2y)
        /// with y = sqrt(2/π) (x + 0.044715 x³): the sigmoid of `swiglu` at 2y. The tail goes through the scalar
        /// formula.
        ///
        /// # Safety
        /// The CPU has the target features.
        #[target_feature(enable = $feat)]
        pub unsafe fn geglu(g: &mut [f32], u: &[f32]) {
            assert_eq!(g.len(), u.len());
            let (pg, pu, n) = (g.as_mut_ptr(), u.as_ptr(), g.len());
            let one = _mm256_set1_ps(1.0);
            let (c, c3) = (_mm256_set1_ps(2.0 * 0.797_884_6), _mm256_set1_ps(2.0 * 0.797_884_6 * 0.044_715));
            let mut i = 0;
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pg.add(i));
                let z = _mm256_mul_ps(x, _mm256_fmadd_ps(_mm256_mul_ps(x, x), c3, c)); // 2y
                let e = exp8(_mm256_or_ps(z, _mm256_set1_ps(-0.0))); // e^-|z|
                let sig = _mm256_div_ps(_mm256_blendv_ps(one, e, z), _mm256_add_ps(one, e));
                _mm256_storeu_ps(pg.add(i), _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(pu.add(i))));
                i += 8;
            }
            super::generic::geglu(&mut g[i..], &u[i..]);
        }
    };
}

pub(crate) use x86_kernels;
