//! Plain NEON (every aarch64 CPU: Raspberry Pi 4, Cortex-A53/A72 boards, older phones): sixteen i8 x i8
//! products as two widening multiplies (`smull`, `smull2`) pairwise-added into i32 lanes (`sadalp`).

use std::arch::aarch64::{int32x4_t, int8x16_t, vget_low_s8, vmull_high_s8, vmull_s8, vpadalq_s16};

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // |a b| <= 128 * 128 fits an i16 lane.
    let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    vpadalq_s16(acc, vmull_high_s8(a, b))
}

super::arm::arm_kernels!("neon", 2, 4);
