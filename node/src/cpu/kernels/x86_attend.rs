//! The x86-64 attention kernels (one head, or the query heads sharing a K/V head) over the f16 KV cache,
//! written once and compiled per instruction set: `avx2.rs` and `avx512.rs` expand [`x86_attend!`] after
//! [`super::x86::x86_kernels!`], whose `hsum` and `exp8` they use.

/// Expands `attend` and `attend_group` in the invoking module with the target features `$feat`.
macro_rules! x86_attend {
    ($feat:literal) => {
        /// Each score `s` of `row` to `exp(s - max)`, eight at a time, then the rest one by one; their sum.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn exp_sum(row: &mut [f32], max: f32) -> f32 {
            let (ps, mx) = (row.as_mut_ptr(), _mm256_set1_ps(max));
            let mut sums = _mm256_setzero_ps();
            let mut p = 0;
            while p + 8 <= row.len() {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(ps.add(p)), mx));
                _mm256_storeu_ps(ps.add(p), e);
                sums = _mm256_add_ps(sums, e);
                p += 8;
            }
            let mut sum = hsum(sums);
            for s in &mut row[p..] {
                *s = (*s - max).exp();
                sum += *s;
            }
            sum
        }

        /// One head's attention over `n` f16 cache positions: `out (hd) = Σ_p softmax(scale q·k_p) v_p`, with
        /// `k_p`, `v_p` at `p * stride` in `k`, `v`; `scores` is scratch for `n` values. `hd` a multiple of 8.
        /// Eight f16 become eight f32 in one F16C instruction, so the cache reads half the bytes at the same
        /// arithmetic.
        ///
        /// # Safety
        /// The CPU has the target features; `k` and `v` hold `n` rows of `stride`, `q` and `out` `hd` floats.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
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
            assert!(hd % 8 == 0 && out.len() == hd && n >= 1);
            assert!(k.len() >= (n - 1) * stride + hd && v.len() >= (n - 1) * stride + hd);
            scores.clear();
            scores.reserve(n);
            let (pq, pk, pv) = (q.as_ptr(), k.as_ptr() as *const u16, v.as_ptr() as *const u16);
            let half8 = |p: *const u16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            let mut max = f32::NEG_INFINITY;
            // Scores four positions at a time: four independent FMA chains share each load of q.
            let mut p = 0;
            while p < n {
                let m = (n - p).min(4);
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                while i < hd {
                    let qv = _mm256_loadu_ps(pq.add(i));
                    if m == 4 {
                        // Unrolled, no per-position test: the common case.
                        for (j, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(qv, half8(pk.add((p + j) * stride + i)), *acc);
                        }
                    } else {
                        for (j, acc) in acc.iter_mut().enumerate().take(m) {
                            *acc = _mm256_fmadd_ps(qv, half8(pk.add((p + j) * stride + i)), *acc);
                        }
                    }
                    i += 8;
                }
                for acc in acc.iter().take(m) {
                    let s = hsum(*acc) * scale;
                    max = max.max(s);
                    scores.push(s);
                }
                p += m;
            }
            let inv = 1.0 / exp_sum(scores, max);
            // The weighted sum of the values, 64 floats (eight registers) of the head at a time, kept in
            // registers over all positions.
            let po = out.as_mut_ptr();
            let mut i = 0;
            while i < hd {
                let w = (hd - i).min(64) / 8;
                let mut acc = [_mm256_setzero_ps(); 8];
                for (p, &a) in scores.iter().enumerate() {
                    let (a, row) = (_mm256_set1_ps(a * inv), pv.add(p * stride + i));
                    if w == 8 {
                        for (j, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(a, half8(row.add(8 * j)), *acc);
                        }
                    } else {
                        for (j, acc) in acc.iter_mut().enumerate().take(w) {
                            *acc = _mm256_fmadd_ps(a, half8(row.add(8 * j)), *acc);
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(w) {
                    _mm256_storeu_ps(po.add(i + 8 * j), *acc);
                }
                i += 8 * w;
            }
        }

        /// The `g` query heads in `q` (`g * hd` floats) that share one K/V head attend over its `n` positions
        /// into `out` (`g * hd`): each head's result equals [`attend`] on it alone bit for bit (per head the same
        /// operations in the same order), while each K and V element is converted from f16 once for up to eight
        /// heads, not once per head. `scores` is scratch for `g * n` values.
        ///
        /// # Safety
        /// As [`attend`], with `g` heads in `q` and `out`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        pub unsafe fn attend_group(
            q: &[f32],
            g: usize,
            k: &[half::f16],
            v: &[half::f16],
            stride: usize,
            n: usize,
            scale: f32,
            scores: &mut Vec<f32>,
            out: &mut [f32],
        ) {
            let hd = q.len() / g.max(1);
            assert!(g >= 1 && hd % 8 == 0 && q.len() == g * hd && out.len() == g * hd && n >= 1);
            assert!(k.len() >= (n - 1) * stride + hd && v.len() >= (n - 1) * stride + hd);
            let (pk, pv) = (k.as_ptr() as *const u16, v.as_ptr() as *const u16);
            let mut h0 = 0;
            while h0 < g {
                let m = (g - h0).min(8);
                scores.clear();
                scores.resize(m * n, 0.0);
                let (pq, po, ps) = (q.as_ptr().add(h0 * hd), out.as_mut_ptr().add(h0 * hd), scores.as_mut_ptr());
                // Heads in registers: one instance per count.
                match m {
                    1 => attend_heads::<1>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    2 => attend_heads::<2>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    3 => attend_heads::<3>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    4 => attend_heads::<4>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    5 => attend_heads::<5>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    6 => attend_heads::<6>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    7 => attend_heads::<7>(pq, po, hd, pk, pv, stride, n, scale, ps),
                    _ => attend_heads::<8>(pq, po, hd, pk, pv, stride, n, scale, ps),
                }
                h0 += m;
            }
        }

        /// [`attend_group`] for `M` heads at `pq` into `po`, their scores (`M x n`) at `ps`.
        #[allow(clippy::too_many_arguments)]
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn attend_heads<const M: usize>(
            pq: *const f32,
            po: *mut f32,
            hd: usize,
            pk: *const u16,
            pv: *const u16,
            stride: usize,
            n: usize,
            scale: f32,
            ps: *mut f32,
        ) {
            let half8 = |p: *const u16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
            // Scores: per position, each K chunk converted once and multiplied into every head's chain (the
            // chunks in order, as `attend`).
            let mut max = [f32::NEG_INFINITY; M];
            // A decode batch's caches are not in any cache level (every sequence's, one layer after another): the
            // prefetchers alone left these loops waiting on memory. K rows a few positions ahead, and each V row
            // while its K row is read, so the values' passes find them near.
            let line = |p: *const u16| {
                let b = p as *const i8;
                let mut o = 0;
                while o < 2 * hd + 63 {
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(o.min(2 * hd - 1)));
                    o += 64;
                }
            };
            for p in 0..n {
                line(pk.wrapping_add((p + 8) * stride));
                line(pv.wrapping_add(p * stride));
                let mut acc = [_mm256_setzero_ps(); M];
                let mut i = 0;
                while i < hd {
                    let kc = half8(pk.add(p * stride + i));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(h * hd + i)), kc, *acc);
                    }
                    i += 8;
                }
                for h in 0..M {
                    let s = hsum(acc[h]) * scale;
                    max[h] = max[h].max(s);
                    *ps.add(h * n + p) = s;
                }
            }
            // exp(s - max) per head as `attend`, then each weight times 1 / sum in place.
            for (h, &max) in max.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(ps.add(h * n), n);
                let inv = 1.0 / exp_sum(row, max);
                row.iter_mut().for_each(|a| *a *= inv);
            }
            // Values: each V chunk of eight converted once for every head's accumulator, `pass(M)` chunks a pass
            // over the positions: a pass of one chunk would leave M chains of dependent FMAs (3 for SmolLM2), too
            // few to hide an FMA's latency. Each element still sums its positions in order, as `attend`.
            const fn pass(m: usize) -> usize {
                match m {
                    1 => 8,
                    2 | 3 => 4,
                    4 => 2,
                    _ => 1,
                }
            }
            let mut i = 0;
            while i < hd {
                let w = if hd - i >= 8 * pass(M) { pass(M) } else { 1 };
                let mut acc = [[_mm256_setzero_ps(); M]; 8];
                for p in 0..n {
                    let run = |acc: &mut [[__m256; M]; 8], j: usize| {
                        let vc = half8(pv.add(p * stride + i + 8 * j));
                        for (h, acc) in acc[j].iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(_mm256_set1_ps(*ps.add(h * n + p)), vc, *acc);
                        }
                    };
                    if w == pass(M) {
                        (0..pass(M)).for_each(|j| run(&mut acc, j));
                    } else {
                        run(&mut acc, 0);
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(w) {
                    for (h, acc) in acc.iter().enumerate() {
                        _mm256_storeu_ps(po.add(h * hd + i + 8 * j), *acc);
                    }
                }
                i += 8 * w;
            }
        }
    };
}

pub(crate) use x86_attend;
