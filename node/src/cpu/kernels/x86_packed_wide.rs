//! Two groups of the interleaved layout ([`crate::cpu::repack`]) at once in 512-bit vectors, for AVX-512 VNNI:
//! `avx512.rs` expands [`x86_packed_wide!`] after [`super::x86_packed::x86_packed!`] and
//! [`super::x86_packed_k::x86_packed_k!`] (whose `P_*` type numbers, `PREFETCH_BLOCKS` and `bsum16` it uses, and
//! `x86_kernels!`'s `load` and `f32_at`).
//!
//! A 512-bit vector holds a 32-byte chunk of group `g` in its low half and the same chunk of group `g + 1` in its
//! high half, so one `vpdpbusd` with the token's four activation bytes broadcast to all sixteen lanes adds to
//! sixteen rows' sums, and the unpacking and each block's conversion and FMAs serve sixteen rows. On CPUs with
//! two 512-bit multiply-add units (Xeon Sapphire Rapids and later) this doubles the multiply-adds per cycle of
//! the 256-bit kernel, which a batch of decode tokens or a prefill is bound by; on CPUs that split a 512-bit
//! operation in two (Zen 4) it halves the instructions. Each thread also reads two streams of weights at once,
//! which one token's decode, bound by memory, gains from as much (measured on a 2-core Xeon: Qwen2.5 decode
//! 23 -> 15 ms per token).
//!
//! The K-quants' super-blocks pair the same way (their scales and mins widened from both groups' bytes). Every
//! lane runs the operations of the one-group tile for its row in the same order (`x86_packed.rs` with its
//! unsigned Q8_0 activations, `x86_packed_k.rs`), so the rows equal the one-group kernels', and the portable
//! kernels', bit for bit.

/// Expands `gemm16_q4_0`, `gemm16_q4_1`, `gemm16_q5_0`, `gemm16_q8_0`, `gemm16_q4_k` and `gemm16_q6_k` (the
/// `two` of [`super::Packed`]) with `$tokens` tokens per tile.
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

        /// The eight bytes at `p` (low lanes) and the eight at `p + gbytes` as sixteen 32-bit lanes, zero-
        /// (`signed = false`) or sign-extended.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn bytes16(p: *const u8, gbytes: usize, signed: bool) -> __m512i {
            let (lo, hi) = (_mm_loadl_epi64(p as *const __m128i), _mm_loadl_epi64(p.add(gbytes) as *const __m128i));
            let v = _mm_unpacklo_epi64(lo, hi);
            if signed {
                _mm512_cvtepi8_epi32(v)
            } else {
                _mm512_cvtepu8_epi32(v)
            }
        }

        /// Four activation bytes from `p`, in every 32-bit lane.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn four16(p: *const u8) -> __m512i {
            _mm512_set1_epi32((p as *const i32).read_unaligned())
        }

        /// Asks for block `b + dist` of the pair of groups at `w` (`blocks` blocks of `gb` bytes, `gbytes` a
        /// group), both streams; past the pair's end, that block of the next pair (the next group alone would be
        /// this pair's second: rows of a few blocks would find the next pair's second group never asked for).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn prefetch_pair(w: *const u8, b: usize, dist: usize, blocks: usize, gb: usize, gbytes: usize) {
            let ahead = match b + dist {
                p if p < blocks => w.wrapping_add(p * gb),
                p => w.wrapping_add(2 * gbytes + (p - blocks) * gb),
            };
            for g in [ahead, ahead.wrapping_add(gbytes)] {
                for line in 0..gb.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(g.wrapping_add(64 * line) as *const i8);
                }
            }
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
            for b in 0..blocks {
                let wb = w.add(b * gb);
                prefetch_pair(w, b, PREFETCH_BLOCKS, blocks, gb, gbytes);
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
                        s[c][t] = _mm512_dpbusd_epi32(s[c][t], four16(ab[t].add(8 + 4 * j)), q);
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
                        s[0][t] = _mm512_dpbusd_epi32(s[0][t], lo, four16(y));
                        s[c][t] = _mm512_dpbusd_epi32(s[c][t], hi, four16(y.add(16)));
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

        /// The `T` Q8_K tokens at `a` against the Q4_K groups at `w` and `w + gbytes`, as `q4k_tile` against each
        /// (`_TY` unused: the entries call every pair tile with a type number).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q4k_pair<const _TY: u8, const T: usize>(
            blocks: usize,
            w: *const u8,
            gbytes: usize,
            a: *const u8,
            astr: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let m4 = _mm512_set1_epi8(15);
            let mut acc = [_mm512_setzero_ps(); T];
            for b in 0..blocks {
                let wb = w.add(b * 1184);
                prefetch_pair(w, b, 2, blocks, 1184, gbytes);
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                let mut sum = [_mm512_setzero_si512(); T];
                for k in 0..4 {
                    let (mut dl, mut dh) = ([_mm512_setzero_si512(); T], [_mm512_setzero_si512(); T]);
                    for j in 0..8 {
                        let p = load2(wb.add(160 + 32 * (8 * k + j)), gbytes);
                        let (lo, hi) = (_mm512_and_si512(p, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4));
                        for t in 0..T {
                            let y = ab[t].add(4 + 64 * k + 4 * j);
                            dl[t] = _mm512_dpbusd_epi32(dl[t], lo, four16(y));
                            dh[t] = _mm512_dpbusd_epi32(dh[t], hi, four16(y.add(32)));
                        }
                    }
                    let (sl, sh) =
                        (bytes16(wb.add(32 + 16 * k), gbytes, false), bytes16(wb.add(40 + 16 * k), gbytes, false));
                    for t in 0..T {
                        let s = _mm512_add_epi32(_mm512_mullo_epi32(sl, dl[t]), _mm512_mullo_epi32(sh, dh[t]));
                        sum[t] = _mm512_add_epi32(sum[t], s);
                    }
                }
                let mut mins = [_mm512_setzero_si512(); T];
                for s in 0..8 {
                    let m = bytes16(wb.add(96 + 8 * s), gbytes, false);
                    for t in 0..T {
                        let bs = _mm512_set1_epi32(bsum16(ab[t], 2 * s) + bsum16(ab[t], 2 * s + 1));
                        mins[t] = _mm512_add_epi32(mins[t], _mm512_mullo_epi32(m, bs));
                    }
                }
                let (d, dmin) = (halfs2(wb, gbytes), halfs2(wb.add(16), gbytes));
                for t in 0..T {
                    let da = _mm512_set1_ps(f32_at(ab[t]));
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(da, d), _mm512_cvtepi32_ps(sum[t]), acc[t]);
                    acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(da, dmin), _mm512_cvtepi32_ps(mins[t]), acc[t]);
                }
            }
            for t in 0..T {
                _mm512_storeu_ps(out.add(t * ostr), acc[t]);
            }
        }

        /// The `T` Q8_K tokens at `a` against the Q6_K groups at `w` and `w + gbytes`, as `q6k_tile` against each.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn q6k_pair<const _TY: u8, const T: usize>(
            blocks: usize,
            w: *const u8,
            gbytes: usize,
            a: *const u8,
            astr: usize,
            out: *mut f32,
            ostr: usize,
        ) {
            let (m4, m30) = (_mm512_set1_epi8(15), _mm512_set1_epi8(0x30));
            let mut acc = [_mm512_setzero_ps(); T];
            for b in 0..blocks {
                let wb = w.add(b * 1680);
                prefetch_pair(w, b, 2, blocks, 1680, gbytes);
                let ab: [*const u8; T] = std::array::from_fn(|t| a.add(t * astr + 292 * b));
                let mut sum = [_mm512_setzero_si512(); T];
                for half in 0..2 {
                    for part in 0..2 {
                        for kk in 0..2 {
                            let mut dk = [[_mm512_setzero_si512(); T]; 2];
                            for j in 4 * part..4 * part + 4 {
                                let h = load2(wb.add(1168 + 32 * (8 * half + j)), gbytes);
                                let l = load2(wb.add(144 + 32 * (8 * (2 * half + kk) + j)), gbytes);
                                let (lo, hi) =
                                    (_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4));
                                let up = _mm512_sll_epi16(h, _mm_cvtsi32_si128(4 - 2 * kk as i32));
                                let down = _mm512_srl_epi16(h, _mm_cvtsi32_si128(2 * kk as i32));
                                let qa = _mm512_or_si512(lo, _mm512_and_si512(up, m30));
                                let qb = _mm512_or_si512(hi, _mm512_and_si512(down, m30));
                                for t in 0..T {
                                    let y = ab[t].add(4 + 128 * half + 4 * j);
                                    dk[0][t] = _mm512_dpbusd_epi32(dk[0][t], qa, four16(y.add(32 * kk)));
                                    dk[1][t] = _mm512_dpbusd_epi32(dk[1][t], qb, four16(y.add(32 * (kk + 2))));
                                }
                            }
                            for (i, dk) in dk.iter().enumerate() {
                                let s = 8 * half + 2 * (kk + 2 * i) + part;
                                let sc = bytes16(wb.add(16 + 8 * s), gbytes, true);
                                for t in 0..T {
                                    let off = _mm512_set1_epi32(32 * bsum16(ab[t], s));
                                    let x = _mm512_mullo_epi32(sc, _mm512_sub_epi32(dk[t], off));
                                    sum[t] = _mm512_add_epi32(sum[t], x);
                                }
                            }
                        }
                    }
                }
                let d = halfs2(wb, gbytes);
                for t in 0..T {
                    let da = _mm512_set1_ps(f32_at(ab[t]));
                    acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(da, d), _mm512_cvtepi32_ps(sum[t]), acc[t]);
                }
            }
            for t in 0..T {
                _mm512_storeu_ps(out.add(t * ostr), acc[t]);
            }
        }

        macro_rules! pair_entry {
            ($name:ident, $tile:ident, $ty:expr, $bl:literal, $gb:expr, $ab:literal) => {
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
                    let blocks = cols / $bl;
                    let gbytes = blocks * $gb;
                    assert!(w.len() >= 2 * gbytes);
                    assert!(n == 0 || a.len() >= (n - 1) * astr + blocks * $ab);
                    let (w, a) = (w.as_ptr(), a.as_ptr());
                    let mut t = 0;
                    while n - t >= $tokens {
                        $tile::<{ $ty }, $tokens>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += $tokens;
                    }
                    if n - t >= 4 {
                        $tile::<{ $ty }, 4>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 4;
                    }
                    if n - t >= 2 {
                        $tile::<{ $ty }, 2>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                        t += 2;
                    }
                    if n - t == 1 {
                        $tile::<{ $ty }, 1>(blocks, w, gbytes, a.add(t * astr), astr, out.add(t * ostr), ostr);
                    }
                }
            };
        }
        pair_entry!(gemm16_q4_0, pair_tile, P_Q4_0, 32, crate::cpu::repack::layout(P_Q4_0).0, 40);
        pair_entry!(gemm16_q4_1, pair_tile, P_Q4_1, 32, crate::cpu::repack::layout(P_Q4_1).0, 40);
        pair_entry!(gemm16_q5_0, pair_tile, P_Q5_0, 32, crate::cpu::repack::layout(P_Q5_0).0, 40);
        pair_entry!(gemm16_q8_0, pair_tile, P_Q8_0, 32, crate::cpu::repack::layout(P_Q8_0).0, 40);
        pair_entry!(gemm16_q4_k, q4k_pair, 0, 256, 1184, 292);
        pair_entry!(gemm16_q6_k, q6k_pair, 0, 256, 1680, 292);
    };
}

pub(crate) use x86_packed_wide;
