//! GGML tensor types: block geometry, row dequantization (the CPU reference reads blocks directly, one row at a
//! time), and quantizers that build test data the way ggml's reference quantizers do.
//!
//! Block layouts (little endian, `d`/`m` are f16):
//! - `Q8_0`: `d, qs[32] (i8)`; w = d * q
//! - `Q4_0`: `d, qs[16]`; w[j] = d * ((qs[j] & 15) - 8), w[j + 16] = d * ((qs[j] >> 4) - 8)
//! - `Q4_1`: `d, m, qs[16]`; w[j] = d * (qs[j] & 15) + m, w[j + 16] = d * (qs[j] >> 4) + m
//! - `Q5_0`: `d, qh (u32), qs[16]`; like Q4_0 with a fifth bit from qh (bit j for w[j], bit j + 16 for w[j + 16])
//!   and an offset of 16: w[j] = d * ((qs[j] & 15 | bit << 4) - 16)
//! - `Q4_K` (256 weights): `d, dmin, scales[12], qs[128]`; 8 sub-blocks of 32 with 6-bit scales and mins
//!   (see [`k4_scale_min`]); sub-block `s` takes the low (s even) or high (s odd) nibbles of `qs[32 (s/2) ..][..32]`:
//!   w = (d * sc) * q - (dmin * m)
//! - `Q6_K` (256 weights): `ql[128], qh[64], scales[16] (i8), d`; 6-bit q = 4 low bits from ql, 2 high from qh,
//!   16 sub-blocks of 16: w = (d * sc) * (q - 32); the bit positions follow ggml's `dequantize_row_q6_K`
//!
//! K-quant products are formed in the order ggml forms them (`d * sc` first), so results match ggml's float for
//! float.

use half::f16;

/// A GGML tensor type id as stored in GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::BF16 => 30,
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
        }
    }

    /// Whether this runtime can compute with the type (CPU reference and WGSL kernels).
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    /// The types both backends compute with.
    pub const SUPPORTED: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];

    /// Bytes taken by one row of `cols` elements.
    pub fn row_bytes(self, cols: usize) -> usize {
        let (b, s) = self.block();
        cols / b * s
    }
}

/// The little-endian f16 at byte `i` of `b`, as f32 (GGML's block scales).
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes one row (`out.len()` elements) from its GGML bytes. Panics only on a caller bug (wrong lengths or
/// an unsupported type, both checked when a model is loaded).
pub fn dequantize_row(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    assert_eq!(data.len(), ty.row_bytes(out.len()), "row byte length");
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(data.chunks_exact(34)) {
                let d = f16_at(blk, 0);
                for (j, w) in o.iter_mut().enumerate() {
                    *w = d * (blk[2 + j] as i8) as f32;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(data.chunks_exact(18)) {
                let d = f16_at(blk, 0);
                for j in 0..16 {
                    let q = blk[2 + j];
                    o[j] = d * ((q & 15) as i32 - 8) as f32;
                    o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(data.chunks_exact(20)) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                for j in 0..16 {
                    let q = blk[4 + j];
                    o[j] = d * (q & 15) as f32 + m;
                    o[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (o, blk) in out.chunks_exact_mut(32).zip(data.chunks_exact(22)) {
                let d = f16_at(blk, 0);
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for j in 0..16 {
                    let q = blk[6 + j];
                    let lo = (q & 15) as u32 | ((qh >> j) & 1) << 4;
                    let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    o[j] = d * (lo as i32 - 16) as f32;
                    o[j + 16] = d * (hi as i32 - 16) as f32;
                }
            }
        }
        GgmlType::Q4K => {
            for (o, blk) in out.chunks_exact_mut(256).zip(data.chunks_exact(144)) {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for (s, o) in o.chunks_exact_mut(32).enumerate() {
                    let (sc, m) = k4_scale_min(s, scales);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    let shift = 4 * (s % 2);
                    for (l, w) in o.iter_mut().enumerate() {
                        *w = d1 * ((qs[32 * (s / 2) + l] >> shift) & 15) as f32 - m1;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (o, blk) in out.chunks_exact_mut(256).zip(data.chunks_exact(210)) {
                let (ql, qh, sc, d) = (&blk[..128], &blk[128..192], &blk[192..208], f16_at(blk, 208));
                for (s, o) in o.chunks_exact_mut(32).enumerate() {
                    for (l, w) in o.iter_mut().enumerate() {
                        let (q, scale) = q6k_at(ql, qh, sc, s, l);
                        *w = d * scale as f32 * q as f32;
                    }
                }
            }
        }
        other => panic!("dequantize_row: {other:?} is not supported"),
    }
}

/// Q4_K: the 6-bit (scale, min) of sub-block `s` (0..8) from the 12 packed bytes (ggml's `get_scale_min_k4`).
pub fn k4_scale_min(s: usize, q: &[u8]) -> (u8, u8) {
    if s < 4 {
        (q[s] & 63, q[s + 4] & 63)
    } else {
        ((q[s + 4] & 15) | ((q[s - 4] >> 6) << 4), (q[s + 4] >> 4) | ((q[s] >> 6) << 4))
    }
}

/// Q6_K: weight `l` (0..32) of 32-weight sub-block `s` (0..8) as (q - 32, its sub-block scale). The super-block
/// is two halves of 128 (`n`); within one, the four runs of 32 (`k`) take ql's low/high nibbles of bytes
/// `l` / `l + 32` and qh's bit pairs 0, 2, 4, 6.
pub fn q6k_at(ql: &[u8], qh: &[u8], scales: &[u8], s: usize, l: usize) -> (i32, i8) {
    let (n, k) = (s / 4, s % 4);
    let low = ql[64 * n + l + 32 * (k % 2)] >> (4 * (k / 2)) & 15;
    let high = (qh[32 * n + l] >> (2 * k)) & 3;
    let q = (low | high << 4) as i32 - 32;
    (q, scales[8 * n + l / 16 + 2 * k] as i8)
}

/// Quantizes one row the way ggml's reference quantizers do (used to build test data).
pub fn quantize_row(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.row_bytes(x.len()));
    match ty {
        GgmlType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in x.chunks_exact(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for blk in x.chunks_exact(32) {
                let max = blk.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for blk in x.chunks_exact(32) {
                let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
                let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
        GgmlType::Q5_0 => {
            for blk in x.chunks_exact(32) {
                let max = blk.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
                let mut qh = 0u32;
                let mut qs = [0u8; 16];
                for j in 0..16 {
                    let (a, b) = (q(blk[j]), q(blk[j + 16]));
                    qs[j] = (a & 15) as u8 | ((b & 15) as u8) << 4;
                    qh |= (a >> 4) << j | (b >> 4) << (j + 16);
                }
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&qh.to_le_bytes());
                out.extend_from_slice(&qs);
            }
        }
        GgmlType::Q4K => x.chunks_exact(256).for_each(|b| quantize_q4k(b, &mut out)),
        GgmlType::Q6K => x.chunks_exact(256).for_each(|b| quantize_q6k(b, &mut out)),
        other => panic!("quantize_row: {other:?} is not supported"),
    }
    out
}

/// A simple Q4_K quantizer (per sub-block min/max, 6-bit scales against the super-block's largest), for test
/// data: simpler than ggml's iterative search, and every block it writes is valid Q4_K.
fn quantize_q4k(x: &[f32], out: &mut Vec<u8>) {
    let mut sc = [0f32; 8];
    let mut mn = [0f32; 8];
    for (s, b) in x.chunks_exact(32).enumerate() {
        let lo = b.iter().copied().fold(0f32, f32::min); // mins are stored as positive offsets
        let hi = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        sc[s] = (hi - lo) / 15.0;
        mn[s] = -lo;
    }
    let d = f16::from_f32(sc.iter().copied().fold(0.0, f32::max) / 63.0);
    let dmin = f16::from_f32(mn.iter().copied().fold(0.0, f32::max) / 63.0);
    let q6 = |v: f32, step: f32| if step > 0.0 { (v / step).round().clamp(0.0, 63.0) as u8 } else { 0 };
    let sc6: Vec<u8> = sc.iter().map(|&v| q6(v, d.to_f32())).collect();
    let m6: Vec<u8> = mn.iter().map(|&v| q6(v, dmin.to_f32())).collect();
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = sc6[j] | (sc6[j + 4] >> 4) << 6;
        scales[j + 4] = m6[j] | (m6[j + 4] >> 4) << 6;
        scales[j + 8] = (sc6[j + 4] & 15) | (m6[j + 4] & 15) << 4;
    }
    let mut qs = [0u8; 128];
    for (s, b) in x.chunks_exact(32).enumerate() {
        let (d1, m1) = (d.to_f32() * sc6[s] as f32, dmin.to_f32() * m6[s] as f32);
        for (l, &v) in b.iter().enumerate() {
            let q = if d1 > 0.0 { ((v + m1) / d1).round().clamp(0.0, 15.0) as u8 } else { 0 };
            qs[32 * (s / 2) + l] |= q << (4 * (s % 2));
        }
    }
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    out.extend_from_slice(&qs);
}

/// A simple Q6_K quantizer (per 16-weight group scale from its largest magnitude, 8-bit scales against the
/// super-block's largest), for test data.
fn quantize_q6k(x: &[f32], out: &mut Vec<u8>) {
    // Weights 32s + 16h .. + 16 (sub-block s = 4n + k, half h) use scales[8n + h + 2k] (see q6k_at).
    let slot = |s: usize, h: usize| 8 * (s / 4) + h + 2 * (s % 4);
    let mut amax = [0f32; 16];
    for (g, w) in x.chunks_exact(16).enumerate() {
        amax[slot(g / 2, g % 2)] = w.iter().fold(0f32, |a, v| a.max(v.abs())) / 31.0;
    }
    let d = f16::from_f32(amax.iter().copied().fold(0.0, f32::max) / 127.0);
    let scales: Vec<i8> = amax
        .iter()
        .map(|&a| if d.to_f32() > 0.0 { (a / d.to_f32()).round().clamp(-128.0, 127.0) as i8 } else { 0 })
        .collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for s in 0..8 {
        let (n, k) = (s / 4, s % 4);
        for l in 0..32 {
            let step = d.to_f32() * scales[slot(s, l / 16)] as f32;
            let v = x[32 * s + l];
            let q = if step != 0.0 { (v / step).round().clamp(-32.0, 31.0) as i32 + 32 } else { 32 } as u8;
            ql[64 * n + l + 32 * (k % 2)] |= (q & 15) << (4 * (k / 2));
            qh[32 * n + l] |= (q >> 4) << (2 * k);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(scales.iter().map(|&v| v as u8));
    out.extend_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_bounded_per_type() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 3.0).collect();
        for (ty, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 2e-3),
            (GgmlType::Q8_0, 0.02),
            // Q4_0 maps the largest magnitude to -8, so the other side saturates at +7: error up to d = amax/8.
            (GgmlType::Q4_0, 3.0 / 8.0 + 5e-3),
            // Q4_1 spans [min, max] in 15 steps: error up to half a step.
            (GgmlType::Q4_1, 6.0 / 15.0 / 2.0 + 5e-3), // + f16 rounding of d and m
            // 5 bits: as Q4_0 with twice the steps.
            (GgmlType::Q5_0, 3.0 / 16.0 + 5e-3),
            // Half a 4-bit step plus the 6-bit rounding of scale and min.
            (GgmlType::Q4K, 6.0 / 15.0 / 2.0 + 6.0 / 63.0 + 0.02),
            // Half a 6-bit step plus the 8-bit rounding of the scale.
            (GgmlType::Q6K, 3.0 / 31.0 / 2.0 + 3.0 / 127.0 + 0.02),
        ] {
            let q = quantize_row(ty, &x);
            assert_eq!(q.len(), ty.row_bytes(x.len()));
            let mut y = vec![0.0; x.len()];
            dequantize_row(ty, &q, &mut y);
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err <= tol, "{ty:?}: max error {err} > {tol}");
        }
    }

    #[test]
    fn type_ids_round_trip() {
        for id in 0..40 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from GGML");
    }
}
