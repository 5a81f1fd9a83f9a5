//! The x86-64 kernels of the K-quants' interleaved layout ([`crate::cpu::repack`]), written once and compiled per
//! instruction set: `avx2.rs` and `avx512.rs` expand [`x86_packed_k!`] after [`super::x86::x86_kernels!`] (whose
//! `load`, `f32_at`, `prefetch` and the module's `mul_add` they use). Each super-block asks for the one two ahead.
//!
//! Per 256-weight super-block of eight rows: each 32-byte chunk gives two vectors of eight rows x four weights (the
//! nibbles; Q6_K's two high bits shifted in from its `qh` chunk), and one `mul_add` per vector and token, with the
//! token's four Q8_K bytes broadcast, adds to the eight rows' sums of a sub-block. A sub-block's sums are scaled
//! by its eight 6-bit (Q4_K) or 8-bit (Q6_K) scales with one 32-bit multiply; the super-block ends with the float
//! operations of `generic::dot_q4_k` / `dot_q6_k` in the same order, so every row equals the GGML-layout kernel
//! bit for bit. A tile holds up to `$tokens` tokens while the unpacked weights serve all of them.

/// Expands `gemm8_q4_k` and `gemm8_q6_k` in the invoking module with `$tokens` tokens per tile.
macro_rules! x86_packed_k {
    ($feat:literal, $tokens:literal) => {
        /// Q8_K block sum `i` (of 16 activations) of the block at `ab`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bsum16(ab: *const u8, i: usize) -> i32 {
            (ab.add(260 + 2 * i) as *const i16).read_unaligned() as i32
        }

        /// Four activation bytes from `p`, in every 32-bit lane.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn four(p: *const u8) -> __m256i {
            _mm256_set1_epi32((p as *const i32).read_unaligned())
        }

        /// Eight bytes from `p` as eight 32-bit lanes, zero- (`signed = false`) or sign-extended.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bytes8(p: *const u8, signed: bool) -> __m256i {
            let v = _mm_loadl_epi64(p as *const __m128i);
            if signed {
                _mm256_cvtepi8_epi32(v)
            } else {
                _mm256_cvtepu8_epi32(v)
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q4k_tile<const T: usize>(
            blocks: usize,
            w: *const u8,
            a: *const u8,
            astr: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let m4 = _mm256_set1_epi8(15);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                let wb = w.add(b * 1184);
                prefetch::<1184>(wb.wrapping_add(2 * 1184));
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                let mut sum = [_mm256_setzero_si256(); T];
                for k in 0..4 {
                    // Sub-blocks 2k (low nibbles) and 2k + 1 (high).
                    let (mut dl, mut dh) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
                    for j in 0..8 {
                        let p = load(wb.add(160 + 32 * (8 * k + j)));
                        let (lo, hi) = (_mm256_and_si256(p, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(p), m4));
                        for t in 0..T {
                            let y = ab[t].add(4 + 64 * k + 4 * j);
                            dl[t] = mul_add(dl[t], lo, four(y));
                            dh[t] = mul_add(dh[t], hi, four(y.add(32)));
                        }
                    }
                    let (sl, sh) = (bytes8(wb.add(32 + 16 * k), false), bytes8(wb.add(40 + 16 * k), false));
                    for t in 0..T {
                        let s = _mm256_add_epi32(_mm256_mullo_epi32(sl, dl[t]), _mm256_mullo_epi32(sh, dh[t]));
                        sum[t] = _mm256_add_epi32(sum[t], s);
                    }
                }
                let mut mins = [_mm256_setzero_si256(); T];
                for s in 0..8 {
                    let m = bytes8(wb.add(96 + 8 * s), false);
                    for t in 0..T {
                        let bs = _mm256_set1_epi32(bsum16(ab[t], 2 * s) + bsum16(ab[t], 2 * s + 1));
                        mins[t] = _mm256_add_epi32(mins[t], _mm256_mullo_epi32(m, bs));
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(wb as *const __m128i));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(wb.add(16) as *const __m128i));
                for t in 0..T {
                    // acc = fma(da d, sum, acc), then fma(-(da dmin), mins, acc), as dot_q4_k.
                    let da = _mm256_set1_ps(f32_at(ab[t]));
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(da, d), _mm256_cvtepi32_ps(sum[t]), acc[t]);
                    acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(da, dmin), _mm256_cvtepi32_ps(mins[t]), acc[t]);
                }
            }
            for t in 0..T {
                _mm256_storeu_ps(out.add(t * ostr), acc[t]);
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6k_tile<const T: usize>(
            blocks: usize,
            w: *const u8,
            a: *const u8,
            astr: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let (m4, m30) = (_mm256_set1_epi8(15), _mm256_set1_epi8(0x30));
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..blocks {
                let wb = w.add(b * 1680);
                prefetch::<1680>(wb.wrapping_add(2 * 1680));
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                let mut sum = [_mm256_setzero_si256(); T];
                for half in 0..2 {
                    for part in 0..2 {
                        for kk in 0..2 {
                            // The runs kk and kk + 2 of 32 in this half, weights 16 part.. of each: sub-blocks of
                            // 16 8 half + 2k + part for k = kk, kk + 2 (two at a time keep 2 T sums in registers).
                            let mut dk = [[_mm256_setzero_si256(); T]; 2];
                            for j in 4 * part..4 * part + 4 {
                                let h = load(wb.add(1168 + 32 * (8 * half + j)));
                                let l = load(wb.add(144 + 32 * (8 * (2 * half + kk) + j)));
                                let (lo, hi) =
                                    (_mm256_and_si256(l, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(l), m4));
                                // qh bits 2k, 2k + 1 to bits 4, 5 (16-bit shifts bring no other byte's bits there).
                                let up = _mm256_sll_epi16(h, _mm_cvtsi32_si128(4 - 2 * kk as i32));
                                let down = _mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * kk as i32));
                                let qa = _mm256_or_si256(lo, _mm256_and_si256(up, m30));
                                let qb = _mm256_or_si256(hi, _mm256_and_si256(down, m30));
                                for t in 0..T {
                                    let y = ab[t].add(4 + 128 * half + 4 * j);
                                    dk[0][t] = mul_add(dk[0][t], qa, four(y.add(32 * kk)));
                                    dk[1][t] = mul_add(dk[1][t], qb, four(y.add(32 * (kk + 2))));
                                }
                            }
                            for (i, dk) in dk.iter().enumerate() {
                                let s = 8 * half + 2 * (kk + 2 * i) + part;
                                let sc = bytes8(wb.add(16 + 8 * s), true);
                                for t in 0..T {
                                    let off = _mm256_set1_epi32(32 * bsum16(ab[t], s));
                                    let x = _mm256_mullo_epi32(sc, _mm256_sub_epi32(dk[t], off));
                                    sum[t] = _mm256_add_epi32(sum[t], x);
                                }
                            }
                        }
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(wb as *const __m128i));
                for t in 0..T {
                    // acc = fma(da d, sum, acc), as dot_q6_k.
                    let da = _mm256_set1_ps(f32_at(ab[t]));
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(da, d), _mm256_cvtepi32_ps(sum[t]), acc[t]);
                }
            }
            for t in 0..T {
                _mm256_storeu_ps(out.add(t * ostr), acc[t]);
            }
        }

        macro_rules! packed_k_entry {
            ($name:ident, $tile:ident, $gb:literal) => {
                /// All `n` tokens in tiles of `$tokens`, then of 4 (when `$tokens` is more), 2 and 1 (a token's result is
                /// the same in any).
                ///
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
                    let blocks = cols / 256;
                    assert!(w.len() >= blocks * $gb);
                    assert!(n == 0 || a.len() >= (n - 1) * astr + blocks * 292);
                    let (w, a) = (w.as_ptr(), a.as_ptr());
                    let mut t = 0;
                    while n - t >= $tokens {
                        $tile::<$tokens>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += $tokens;
                    }
                    if $tokens > 4 && n - t >= 4 {
                        $tile::<4>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 4;
                    }
                    if n - t >= 2 {
                        $tile::<2>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 2;
                    }
                    if n - t == 1 {
                        $tile::<1>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                    }
                }
            };
        }
        packed_k_entry!(gemm8_q4_k, q4k_tile, 1184);
        packed_k_entry!(gemm8_q6_k, q6k_tile, 1680);
    };
}

pub(crate) use x86_packed_k;
