//! The x86-64 kernels of the interleaved layout ([`crate::cpu::repack`]), written once and compiled per
//! instruction set like `x86.rs`: `avx2.rs` and `avx512.rs` expand [`x86_packed!`] after [`super::x86::x86_kernels!`]
//! (whose `load`, `f32_at` and the module's `mul_add` they use).
//!
//! For each block of a group: the 128 bytes of nibbles in four loads, each giving the vectors of weights `4k..`
//! (low nibbles) and `4k + 16..` (high), Q5_0's fifth bits shifted in from the 32 `qh` bytes; per token, eight
//! `mul_add` with the token's activation bytes broadcast four at a time give the eight rows' integer sums in one
//! register; then one conversion and two FMAs (see `generic::packed`, which this equals bit for bit). A tile
//! holds up to `TOKENS` tokens' sums and accumulators in registers while the unpacked weights serve all of them.

/// Expands `gemm8_q4_0`, `gemm8_q4_1`, `gemm8_q5_0` and `gemm8_q8_0` in the invoking module with `$tokens` tokens per tile.
///
/// With `$unsigned_q8` (a `mul_add` that takes u8 x i8 without saturation: VNNI), `gemm8_q8_0` takes `Q8_1U`
/// activations (`q + 128` as unsigned bytes) straight against the signed weights, `Σ (a + 128) w = Σ a w +
/// 128 Σ w`, with the weights' sums formed once per chunk for all the tile's tokens (one `mul_add` by ones): the
/// signed path's `vpsignb` per token and chunk, as many as its multiply-adds, is gone. The integer sums are the
/// same, so are the results.
macro_rules! x86_packed {
    ($feat:literal, $tokens:literal, $unsigned_q8:literal) => {
        /// The packed kernels' const parameter: the index of the type in `repack::TYPES`.
        const P_Q4_0: u8 = 0;
        const P_Q4_1: u8 = 1;
        const P_Q5_0: u8 = 2;
        const P_Q8_0: u8 = 3;
        /// How many blocks ahead the packed kernels prefetch.
        const PREFETCH_BLOCKS: usize = 16;

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
            let (m4, b4) = (_mm256_set1_epi8(15), _mm256_set1_epi8(16));
            let mut acc = [_mm256_setzero_ps(); T];
            // Up to two tokens, each token's sums run in two chains (weights 0..16 and 16..32): integer sums are
            // exact in any order, and eight dependent multiply-adds per block would leave decode waiting on them.
            const fn chains(t: usize) -> usize {
                if t <= 2 {
                    2
                } else {
                    1
                }
            }
            for b in 0..blocks {
                let wb = w.add(b * gb);
                // The block PREFETCH_BLOCKS on (this chunk's next group past the end): the prefetchers alone
                // leave a batch's tile waiting on DRAM.
                let ahead = wb.wrapping_add(PREFETCH_BLOCKS * gb);
                for line in 0..gb.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
                }
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 40 * b));
                let mut s = [[_mm256_setzero_si256(); T]; 2];
                let qh = if TY == P_Q5_0 { load(wb.add(16)) } else { _mm256_setzero_si256() };
                // Q8_0: eight chunks of signed weights, |w| times the activations with w's sign (`maddubs` takes
                // unsigned x signed; 2 x 128 x 127 fits its i16 pairs); or, unsigned, the biased activations times
                // w, and the weights' sums.
                let mut wsum = _mm256_setzero_si256();
                for j in 0..if TY == P_Q8_0 { 8 } else { 0 } {
                    let q = load(wb.add(qo + 32 * j));
                    if $unsigned_q8 {
                        wsum = mul_add(wsum, _mm256_set1_epi8(1), q);
                    }
                    let u = _mm256_abs_epi8(q);
                    for t in 0..T {
                        let y = _mm256_set1_epi32((ab[t].add(8 + 4 * j) as *const i32).read_unaligned());
                        let c = (chains(T) - 1) * (j & 1);
                        s[c][t] = match $unsigned_q8 {
                            true => mul_add(s[c][t], y, q),
                            false => mul_add(s[c][t], u, _mm256_sign_epi8(y, q)),
                        };
                    }
                }
                let bias = _mm256_slli_epi32::<7>(wsum);
                for k in 0..if TY == P_Q8_0 { 0 } else { 4 } {
                    let p = load(wb.add(qo + 32 * k));
                    let mut lo = _mm256_and_si256(p, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), m4);
                    if TY == P_Q5_0 {
                        // Bit k (weights 4k..) and bit k + 4 (4k + 16..) of each qh byte to bit 4; a 16-bit
                        // shift by at most 4 brings no other byte's bit to bit 4.
                        let up = _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - k as i32));
                        let down = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
                        lo = _mm256_or_si256(lo, _mm256_and_si256(up, b4));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(down, b4));
                    }
                    for t in 0..T {
                        let y = ab[t].add(8 + 4 * k);
                        let c = chains(T) - 1;
                        s[0][t] = mul_add(s[0][t], lo, _mm256_set1_epi32((y as *const i32).read_unaligned()));
                        s[c][t] = mul_add(s[c][t], hi, _mm256_set1_epi32((y.add(16) as *const i32).read_unaligned()));
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(wb as *const __m128i));
                let m = match TY {
                    P_Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
                    P_Q5_0 => _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
                    P_Q4_1 => _mm256_cvtph_ps(_mm_loadu_si128(wb.add(16) as *const __m128i)),
                    _ => d, // unused: Q8_0 has no min
                };
                for t in 0..T {
                    let st = if chains(T) == 2 { _mm256_add_epi32(s[0][t], s[1][t]) } else { s[0][t] };
                    let st = if $unsigned_q8 && TY == P_Q8_0 { _mm256_sub_epi32(st, bias) } else { st };
                    let da = _mm256_set1_ps(f32_at(ab[t]));
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(st), acc[t]);
                    if TY != P_Q8_0 {
                        acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(f32_at(ab[t].add(4))), acc[t]);
                    }
                }
            }
            for t in 0..T {
                _mm256_storeu_ps(out.add(t * ostr), acc[t]);
            }
        }

        /// All `n` tokens: tiles of `$tokens`, then of 4, 2 and 1 (a token's result is the same in any).
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn packed_rows<const TY: u8>(
            cols: usize,
            w: &[u8],
            a: &[u8],
            astr: usize,
            n: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let blocks = cols / 32;
            assert!(w.len() >= blocks * crate::cpu::repack::layout(TY).0);
            assert!(n == 0 || a.len() >= (n - 1) * astr + blocks * 40);
            let (w, a) = (w.as_ptr(), a.as_ptr());
            let mut t = 0;
            while n - t >= $tokens {
                packed_tile::<TY, $tokens>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                t += $tokens;
            }
            if n - t >= 4 {
                packed_tile::<TY, 4>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                t += 4;
            }
            if n - t >= 2 {
                packed_tile::<TY, 2>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
                t += 2;
            }
            if n - t == 1 {
                packed_tile::<TY, 1>(blocks, w, a.add(t * astr), astr, out.add(t * ostr), ostr);
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
                    packed_rows::<$ty>(cols, w, a, astr, n, out, ostr)
                }
            };
        }
        packed_entry!(gemm8_q4_0, P_Q4_0);
        packed_entry!(gemm8_q4_1, P_Q4_1);
        packed_entry!(gemm8_q5_0, P_Q5_0);
        packed_entry!(gemm8_q8_0, P_Q8_0);
    };
}

pub(crate) use x86_packed;
