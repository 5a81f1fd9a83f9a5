//! NEON with the ARMv8.2 dot-product extension (Raspberry Pi 5, Jetson Orin, Apple M, recent phones): sixteen
//! i8 x i8 products summed in fours straight into i32 lanes with one `sdot`. Rust's `vdotq_s32` is not stable
//! yet, so the instruction is written as inline assembly.

use std::arch::aarch64::{int32x4_t, int8x16_t};

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot16(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    std::arch::asm!(
        "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
        inout(vreg) acc,
        in(vreg) a,
        in(vreg) b,
        options(pure, nomem, nostack)
    );
    acc
}

super::arm::arm_kernels!("neon,dotprod", 2, 4);
super::arm_packed::arm_packed!("neon,dotprod");
