//! AVX2 + FMA (+ F16C for the f16 scales): every x86-64 CPU since Haswell / Zen 1. u8 x i8 products go through
//! `vpmaddubsw` (pairs into saturating i16) and `vpmaddwd` by ones (pairs of those into i32).

use std::arch::x86_64::{
    __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_madd_epi16, _mm256_maddubs_epi16,
    _mm256_or_si256, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi64x, _mm256_set1_epi8, _mm256_set_epi64x,
    _mm256_shuffle_epi8,
};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
}

/// 32 bits as 32 bytes: 16 where the bit is set (Q5_0's fifth bits, in place above the nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(16))
}

super::x86::x86_kernels!("avx2,fma,f16c", 2, 4);
super::x86_attend::x86_attend!("avx2,fma,f16c");
super::x86_packed::x86_packed!("avx2,fma,f16c", 4, false);
super::x86_packed_k::x86_packed_k!("avx2,fma,f16c", 2);

/// One Q8 activation block of 32 floats (`cpu::act`): writes the 32 q's to `qs`, returns `(d, Σq)`. The same
/// arithmetic as the portable `act::q8_block` (d = max|x| / 127, x * (1 / d), halfway cases away from zero),
/// so the bytes are identical.
///
/// # Safety
/// The CPU has AVX2; `x` and `qs` hold at least 32 elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    assert!(x.len() >= 32 && qs.len() >= 32);
    let p = x.as_ptr();
    let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i)));
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for x in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    let mut q = [_mm256_setzero_si256(); 4];
    let mut sum = _mm256_setzero_si256();
    for (q, x) in q.iter_mut().zip(v) {
        let s = _mm256_mul_ps(x, id);
        let t = _mm256_cvttps_epi32(s);
        let f = _mm256_sub_ps(s, _mm256_cvtepi32_ps(t));
        // Masks are -1 where set: t + 1 where the fraction is >= 1/2, t - 1 where it is <= -1/2.
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, neg_half));
        *q = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
        sum = _mm256_add_epi32(sum, *q);
    }
    // i32 -> i16 -> i8 (|q| <= 127: no saturation) packs within 128-bit lanes: 4-byte groups come out as
    // q0[0..4] q1[0..4] q2[0..4] q3[0..4] q0[4..8] q1[4..8] q2[4..8] q3[4..8]; the permute restores the order.
    let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes);
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4));
    (d, _mm_cvtsi128_si32(s4))
}

/// One Q8_K block of 256 floats (`cpu::act`) into its 292 bytes, the same bytes as the portable
/// `act::q8k_block`: the scale from the first value of the largest magnitude (its sign kept), `q = round(x *
/// iscale)` halfway away from zero, at most 127, and the sums of each 16 q's. Returns `false` and writes nothing
/// when a value is not finite (the portable block then decides what such a block becomes).
///
/// # Safety
/// The CPU has AVX2; `x` holds at least 256 elements and `o` at least 292 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8k_block(x: &[f32], o: &mut [u8]) -> bool {
    use std::arch::x86_64::*;
    assert!(x.len() >= 256 && o.len() >= 292);
    let p = x.as_ptr();
    let sign = _mm256_set1_ps(-0.0);
    let (mut m, mut bad) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in 0..32 {
        let v = _mm256_loadu_ps(p.add(8 * i));
        // Not finite: unordered with itself (NaN) or |v| = inf; both end the SIMD path.
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let a = _mm256_andnot_ps(sign, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_EQ_OQ>(a, _mm256_set1_ps(f32::INFINITY)));
        m = _mm256_max_ps(a, m);
    }
    if _mm256_movemask_ps(bad) != 0 {
        return false;
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    if amax == 0.0 {
        o[..292].fill(0);
        return true;
    }
    // The first value of magnitude amax, as the portable loop's strict `>` finds it.
    let mut first = 0;
    for i in 0..32 {
        let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i)));
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, _mm256_set1_ps(amax)));
        if hit != 0 {
            first = 8 * i + hit.trailing_zeros() as usize;
            break;
        }
    }
    let iscale = -127.0 / x[first];
    let is = _mm256_set1_ps(iscale);
    let (half, neg_half, top) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5), _mm256_set1_epi32(127));
    let qs = o.as_mut_ptr().add(4);
    let bsums = o.as_mut_ptr().add(260);
    for g in 0..8 {
        let mut q = [_mm256_setzero_si256(); 4];
        for (j, q) in q.iter_mut().enumerate() {
            let s = _mm256_mul_ps(is, _mm256_loadu_ps(p.add(32 * g + 8 * j)));
            let t = _mm256_cvttps_epi32(s);
            let f = _mm256_sub_ps(s, _mm256_cvtepi32_ps(t));
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, neg_half));
            *q = _mm256_min_epi32(_mm256_add_epi32(_mm256_sub_epi32(t, up), down), top);
        }
        // Sums of q's 0..16 and 16..32 of this run of 32: two block sums.
        for h in 0..2 {
            let s = _mm256_add_epi32(q[2 * h], q[2 * h + 1]);
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b10_11_00_01>(s4));
            let sum = _mm_cvtsi128_si32(s4) as i16;
            (bsums.add(4 * g + 2 * h) as *mut [u8; 2]).write_unaligned(sum.to_le_bytes());
        }
        // i32 -> i8 as in `q8_block` (|q| <= 127), the permute restoring the order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.add(32 * g) as *mut __m256i, bytes);
    }
    o[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    true
}
