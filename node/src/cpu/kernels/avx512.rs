//! AVX-512 VNNI on 256-bit vectors (Ice Lake, Zen 4 and later): u8 x i8 products summed in fours straight into
//! i32 lanes with one `vpdpbusd` (no i16 step, no saturation). 256-bit vectors keep the clock up on CPUs that
//! slow down for 512-bit ones and fit the 32-weight blocks.

use std::arch::x86_64::{__m256i, _mm256_dpbusd_epi32};

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

super::x86::x86_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", 4, 4);
