//! AVX2 + FMA (+ F16C for the f16 scales): every x86-64 CPU since Haswell / Zen 1. u8 x i8 products go through
//! `vpmaddubsw` (pairs into saturating i16) and `vpmaddwd` by ones (pairs of those into i32).

use std::arch::x86_64::{__m256i, _mm256_add_epi32, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
}

super::x86::x86_kernels!("avx2,fma,f16c", 2, 4);
