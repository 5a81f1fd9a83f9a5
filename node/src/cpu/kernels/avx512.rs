//! AVX-512 VNNI on 256-bit vectors (Ice Lake, Zen 4 and later): u8 x i8 products summed in fours straight into
//! i32 lanes with one `vpdpbusd` (no i16 step, no saturation). 256-bit vectors keep the clock up on CPUs that
//! slow down for 512-bit ones and fit the 32-weight blocks. AVX-512 BW (every VNNI CPU has it) turns a bit mask
//! into bytes in one instruction.

use std::arch::x86_64::{__m256i, _mm256_dpbusd_epi32, _mm256_maskz_mov_epi8, _mm256_set1_epi8};

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// 32 bits as 32 bytes: 16 where the bit is set (Q5_0's fifth bits, in place above the nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn fifth_bits(x: u32) -> __m256i {
    _mm256_maskz_mov_epi8(x, _mm256_set1_epi8(16))
}

super::x86::x86_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", 4, 4);
super::x86_attend::x86_attend!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni");
super::x86_packed::x86_packed!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", 8, true);
super::x86_packed_k::x86_packed_k!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", 8);
super::x86_packed_wide::x86_packed_wide!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", 8);
