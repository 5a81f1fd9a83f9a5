//! Two groups of the interleaved layout ([`crate::cpu::repack`]) at once in 512-bit vectors, for AVX-512 VNNI:
//! `avx512.rs` expands [`x86_packed_wide!`] after [`super::x86_packed::x86_packed!`] (whose `P_*` type numbers and
//! `PREFETCH_BLOCKS` it uses, and `x86_kernels!`'s `load` and `f32_at`).
//!
//! A 512-bit vector holds a 32-byte chunk of group `g` in its low half and the same chunk of group `g + 1` in its
//! high half, so one `vpdpbusd` with the token's four activation bytes broadcast to all sixteen lanes adds to
//! sixteen rows' sums, and the unpacking and each block's conversion and FMAs serve sixteen rows. On CPUs with
//! two 512-bit multiply-add units (Xeon Sapphire Rapids and later) this doubles the multiply-adds per cycle of
//! the 256-bit kernel, which a batch of decode tokens or a prefill is bound by; on CPUs that split a 512-bit
//! operation in two (Zen 4) it halves the instructions.
//!
//! Every lane runs the operations of `x86_packed.rs`'s tile for its row in the same order (with its unsigned Q8_0
//! activations), so the rows equal the one-group kernel's, and the portable kernel's, bit for bit.

/// Expands `gemm16_q4_0`, `gemm16_q4_1`, `gemm16_q5_0` and `gemm16_q8_0` (see [`super::Kernels::packed_pair`]) with
/// `$tokens` tokens per tile.
macro_rules! x86_packed_wide {
    ($feat:literal, $tokens:literal) => {
        /// The 32 bytes at `p` (low half) and at `p + gbytes` (high half).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn load2(p: *const u8, gbytes: usize) -> __m512i {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load(p)), load(p.add(gbytes)))
        }

        /// The eight f16 at `p` and the eight at `p + gbytes` as sixteen floats.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn halfs2(p: *const u8, gbytes: usize) -> __m512 {
            let lo = _mm_loadu_si128(p as *const __m128i);
            let hi = _mm_loadu_si128(p.add(gbytes) as *const __m128i);
            _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi))
        }

        /// The `T` tokens at `a` against the groups at `w` and `w + gbytes`, as `packed_tile` against each.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn pair_tile<const TY: u8, const T: usize>(
            blocks: usize,
            w: *const u8,
            gbytes: usize,
            a: *const u8,
            astr: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let (gb, qo) = crate::cpu::repack::layout(TY);
            let (m4, b4) = (_mm512_set1_epi8(15), _mm512_set1_epi8(16));
            let mut acc = [_mm512_setzero_ps(); T];
            // As `packed_tile`: two chains per token for up to two tokens.
            const fn chains(t: usize) -> usize {
                if t <= 2 {
                    2
                } else {
                    1
                }
            }
            let four = |p: *const u8| _mm512_set1_epi32((p as *const i32).read_unaligned());
            for b in 0..blocks {
                let wb = w.add(b * gb);
                // Block PREFETCH_BLOCKS on of both groups; past their end, that block of the next pair (the next
                // group alone would be the second of this pair: rows of a few blocks would find the next pair's
                // second group never asked for).
                let ahead = match b + PREFETCH_BLOCKS {
                    p if p < blocks => w.wrapping_add(p * gb),
                    p => w.wrapping_add(2 * gbytes + (p - blocks) * gb),
                };
                for g in [ahead, ahead.wrapping_add(gbytes)] {
                    for line in 0..gb.div_ceil(64) {
                        _mm_prefetch::<_MM_HINT_T0>(g.wrapping_add(64 * line) as *const i8);
                    }
                }
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 40 * b));
                let mut s = [[_mm512_setzero_si512(); T]; 2];
                let qh = if TY == P_Q5_0 { load2(wb.add(16), gbytes) } else { _mm512_setzero_si512() };
                // Q8_0: the biased activations (Q8_1U) times the signed weights, and the weights' sums.
                let mut wsum = _mm512_setzero_si512();
                for j in 0..if TY == P_Q8_0 { 8 } else { 0 } {
                    let q = load2(wb.add(qo + 32 * j), gbytes);
                    wsum = _mm512_dpbusd_epi32(wsum, _mm512_set1_epi8(1), q);
                    for t in 0..T {
                        let c = (chains(T) - 1) * (j & 1);
                        s[c][t] = _mm512_dpbusd_epi32(s[c][t], four(ab[t].add(8 + 4 * j)), q);
                    }
                }
                let bias = _mm512_slli_epi32::<7>(wsum);
                for k in 0..if TY == P_Q8_0 { 0 } else { 4 } {
                    let p = load2(wb.add(qo + 32 * k), gbytes);
                    let mut lo = _mm512_and_si512(p, m4);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4);
                    if TY == P_Q5_0 {
                        let up = _mm512_sll_epi16(qh, _mm_cvtsi32_si128(4 - k as i32));
                        let down = _mm512_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
                        lo = _mm512_or_si512(lo, _mm512_and_si512(up, b4));
                        hi = _mm512_or_si512(hi, _mm512_and_si512(down, b4));
                    }
                    for t in 0..T {
                        let (y, c) = (ab[t].add(8 + 4 * k), chains(T) - 1);
                        s[0][t] = _mm512_dpbusd_epi32(s[0][t], lo, four(y));
                        s[c][t] = _mm512_dpbusd_epi32(s[c][t], hi, four(y.add(16)));
                    }
                }
                let d = halfs2(wb, gbytes);
                let m = match TY {
                    P_Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                    P_Q5_0 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
                    P_Q4_1 => halfs2(wb.add(16), gbytes),
                    _ => d, // unused: Q8_0 has no min
                };
                for t in 0..T {
                    let st = if chains(T) == 2 { _mm512_add_epi32(s[0][t], s[1][t]) } else { s[0][t] };
                    let st = if TY == P_Q8_0 { _mm512_sub_epi32(st, bias) } else { st };
                    let da = _mm512_set1_ps(f32_at(ab[t]));
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(st), acc[t]);
                    if TY != P_Q8_0 {
                        acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(f32_at(ab[t].add(4))), acc[t]);
                    }
                }
            }
            for t in 0..T {
                _mm512_storeu_ps(out.add(t * ostr), acc[t]);
            }
        }

        macro_rules! pair_entry {
            ($name:ident, $ty:ident) => {
                /// Two groups side by side (the second's bytes right after the first's) times `n` tokens: rows
                /// `0..16` of each token's output. Tiles of `$tokens` tokens, then of 4, 2 and 1.
                ///
                /// # Safety
                /// The CPU has the target features; see [`super::PackedFn`], for sixteen rows.
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
                    let gbytes = blocks * crate::cpu::repack::layout($ty).0;
                    assert!(w.len() >= 2 * gbytes);
                    assert!(n == 0 || a.len() >= (n - 1) * astr + blocks * 40);
                    let (w, a) = (w.as_ptr(), a.as_ptr());
                    let mut t = 0;
                    while n - t >= $tokens {
                        pair_tile::<$ty, $tokens>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += $tokens;
                    }
                    if n - t >= 4 {
                        pair_tile::<$ty, 4>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 4;
                    }
                    if n - t >= 2 {
                        pair_tile::<$ty, 2>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 2;
                    }
                    if n - t == 1 {
                        pair_tile::<$ty, 1>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                    }
                }
            };
        }
        pair_entry!(gemm16_q4_0, P_Q4_0);
        pair_entry!(gemm16_q4_1, P_Q4_1);
        pair_entry!(gemm16_q5_0, P_Q5_0);
        pair_entry!(gemm16_q8_0, P_Q8_0);
    };
}

pub(crate) use x86_packed_wide;
