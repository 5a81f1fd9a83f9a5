//! Activations quantized once per matmul and shared by every thread, in the block forms ggml's integer dot
//! products take (scales kept in f32, not f16: they never leave the node, and f32 is one less conversion per
//! block):
//! - `Q8_0` (for Q4_0, Q5_0, Q8_0 weights): `d (f32), qs[32] (i8)`; x ≈ d * q. 36 bytes.
//! - `Q8_1` (for Q4_1 weights): `d (f32), s (f32) = d * Σq, qs[32]`; the sum carries the weights' min. 40 bytes.
//! - `Q8_1U`: `Q8_1` with each q stored as the unsigned byte `q + 128` (its sign bit flipped), the unsigned side
//!   of a u8 x i8 product (`vpdpbusd`) against signed weights (the packed Q8_0 kernel on AVX-512 VNNI).
//! - `Q8_K` (for Q4_K, Q6_K weights): `d (f32), qs[256], bsums[16] (i16)`, the sum of each 16 q's. 292 bytes.
//! - `F32` (for F16 and F32 weights): the floats themselves.
//!
//! Scales follow ggml: `d = max|x| / 127`, `q = round(x / d)` (Q8_K keeps the sign of the largest value, as
//! `quantize_row_q8_K_ref` does). Blocks are read with unaligned loads, so the buffer is plain bytes.

/// How a weight type wants its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActType {
    Q8_0,
    Q8_1,
    Q8_1U,
    Q8K,
    F32,
}

impl ActType {
    /// (elements per block, bytes per block).
    pub const fn block(self) -> (usize, usize) {
        match self {
            ActType::Q8_0 => (32, 36),
            ActType::Q8_1 | ActType::Q8_1U => (32, 40),
            ActType::Q8K => (256, 292),
            ActType::F32 => (1, 4),
        }
    }

    /// Bytes of one quantized row of `n` elements (`n` a multiple of the block).
    pub const fn row_bytes(self, n: usize) -> usize {
        let (b, s) = self.block();
        n / b * s
    }

    /// Quantizes one row `x` into `out` (`row_bytes(x.len())` bytes).
    pub fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.row_bytes(x.len()));
        match self {
            ActType::Q8_0 => {
                for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
                    let (d, _) = q8_block(blk, &mut o[4..]);
                    o[..4].copy_from_slice(&d.to_le_bytes());
                }
            }
            ActType::Q8_1 | ActType::Q8_1U => {
                for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(40)) {
                    let (d, sum) = q8_block(blk, &mut o[8..]);
                    o[..4].copy_from_slice(&d.to_le_bytes());
                    o[4..8].copy_from_slice(&(d * sum as f32).to_le_bytes());
                    if self == ActType::Q8_1U {
                        o[8..].iter_mut().for_each(|q| *q ^= 0x80);
                    }
                }
            }
            ActType::Q8K => {
                for (blk, o) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
                    q8k_block(blk, o);
                }
            }
            ActType::F32 => {
                for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// `v` rounded to the nearest integer, halfway cases away from zero, as `f32::round`, which is a libm call on
/// x86-64's baseline (no SSE4.1): with the rest of `quantize_row` it was 14% of an `edge-node bench` run's
/// samples. Exact for |v| < 2^23: the truncation and the fraction `v - t` are exact there.
#[inline]
fn round(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

/// One Q8 block of 32: writes the q's, returns (d, Σq). AVX2 where the CPU has it (the same bytes).
fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected; blocks are 32 floats and 32 bytes.
        return unsafe { super::kernels::avx2::q8_block(x, qs) };
    }
    q8_block_portable(x, qs)
}

fn q8_block_portable(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0;
    for (q, v) in qs.iter_mut().zip(x) {
        let v = round(v * id);
        sum += v;
        *q = v as i8 as u8;
    }
    (d, sum)
}

/// One Q8_K block of 256 into its 292 bytes. AVX2 where the CPU has it (the same bytes).
fn q8k_block(x: &[f32], o: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected; blocks are 256 floats and 292 bytes.
        if unsafe { super::kernels::avx2::q8k_block(x, o) } {
            return;
        }
    }
    q8k_block_portable(x, o)
}

fn q8k_block_portable(x: &[f32], o: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        o.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    let (qs, bsums) = o[4..].split_at_mut(256);
    for (q, v) in qs.iter_mut().zip(x) {
        *q = round(iscale * v).min(127) as i8 as u8;
    }
    for (b, s) in bsums.chunks_exact_mut(2).enumerate() {
        let sum: i32 = qs[16 * b..16 * b + 16].iter().map(|&q| q as i8 as i32).sum();
        s.copy_from_slice(&(sum as i16).to_le_bytes());
    }
    o[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// `n` rows of activations in one activation type, quantized once and read by every thread.
#[derive(Default)]
pub struct QuantizedRows {
    pub data: Vec<u8>,
    pub row_bytes: usize,
    pub ty: Option<ActType>,
}

impl QuantizedRows {
    /// Takes type `ty` and room for `n` rows of `cols` (a multiple of the type's block).
    pub fn reset(&mut self, ty: ActType, n: usize, cols: usize) {
        self.ty = Some(ty);
        self.row_bytes = ty.row_bytes(cols);
        self.data.resize(n * self.row_bytes, 0);
    }

    pub fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.row_bytes..(i + 1) * self.row_bytes]
    }
}

#[cfg(test)]
mod tests {
    /// The SIMD block equals the portable one byte for byte: random spreads, exact halves, zeros, extremes.
    #[test]
    fn q8_blocks_are_the_same_on_every_path() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut blocks: Vec<Vec<f32>> =
            (0..500).map(|i| (0..32).map(|_| next() * (i as f32 * 0.37 + 1e-3)).collect()).collect();
        blocks.push(vec![0.0; 32]);
        // d = 1: x / d are the values themselves, halfway cases of both signs.
        blocks.push((0..32).map(|i| if i == 0 { -127.0 } else { i as f32 - 16.5 }).collect());
        blocks.push((0..32).map(|i| if i % 2 == 0 { 3.0e4 } else { -3.0e4 }).collect());
        blocks.push((0..32).map(|i| if i == 5 { -1e-30 } else { 0.0 }).collect());
        for x in &blocks {
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            assert_eq!(super::q8_block(x, &mut a), super::q8_block_portable(x, &mut b), "{x:?}");
            assert_eq!(a, b, "{x:?}");
        }
    }

    /// The same for Q8_K blocks: random spreads, the largest magnitude twice with both signs, halfway cases,
    /// zeros, values that are not finite.
    #[test]
    fn q8k_blocks_are_the_same_on_every_path() {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut blocks: Vec<Vec<f32>> =
            (0..300).map(|i| (0..256).map(|_| next() * (i as f32 * 0.37 + 1e-3)).collect()).collect();
        blocks.push(vec![0.0; 256]);
        // The largest magnitude at 7 (negative) and 200 (positive): the first one's sign sets the scale.
        blocks.push(
            (0..256).map(|i| [(i as f32) * 0.01, -5.0, 5.0][(i == 7) as usize + 2 * (i == 200) as usize]).collect(),
        );
        // max = -127: iscale = 1, every halfway case of both signs.
        blocks.push((0..256).map(|i| if i == 3 { -127.0 } else { (i % 64) as f32 - 31.5 }).collect());
        blocks.push((0..256).map(|i| if i == 9 { 1e-30 } else { 0.0 }).collect());
        let mut odd = blocks[5].clone();
        odd[17] = f32::NAN;
        blocks.push(odd.clone());
        odd[17] = f32::NEG_INFINITY;
        blocks.push(odd);
        for x in &blocks {
            let (mut a, mut b) = ([0u8; 292], [0u8; 292]);
            super::q8k_block(x, &mut a);
            super::q8k_block_portable(x, &mut b);
            assert_eq!(a, b, "{x:?}");
        }
    }

    #[test]
    fn round_is_f32_round_for_activation_values() {
        let mut v = -130.0f32;
        while v <= 130.0 {
            for x in [v, f32::from_bits(v.to_bits() + 1), f32::from_bits(v.to_bits().saturating_sub(1))] {
                assert_eq!(super::round(x), x.round() as i32, "{x}");
            }
            v += 0.25;
        }
        for x in [0.5, -0.5, 1.5, -1.5, 0.49999997, -0.49999997, 126.5, -127.5, 0.0, -0.0] {
            assert_eq!(super::round(x), x.round() as i32, "{x}");
        }
    }
}
