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
super::x86_packed::x86_packed!("avx2,fma,f16c", 4);
