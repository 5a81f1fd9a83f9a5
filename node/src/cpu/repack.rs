//! Weights repacked at load: eight rows interleaved so one SIMD multiply-add serves eight rows (ggml's
//! `block_q4_0x8` idea, in a layout of our own).
//!
//! In GGML's order a row's 32-weight block sits in one place, so a kernel forms one row's integer sum per vector,
//! then converts it to float and scales it by itself: five vector operations around every multiply-add. Here the
//! blocks of 8 rows are interleaved in 4-byte groups: a 32-byte vector holds weights `4j..4j+4` of all eight rows
//! (row `r` in bytes `4r..4r+4`), so one `vpdpbusd` (or `sdot` by lane on ARM) with the token's four activation
//! bytes broadcast adds to eight rows' sums at once, and a block ends with one conversion and two FMAs for the
//! eight rows. Decode and prefill read the same bytes (there is one copy of the weights). On AVX-512 VNNI, two
//! neighbouring groups run side by side in 512-bit vectors (`kernels/x86_packed_wide.rs`): sixteen rows per
//! `vpdpbusd`, and two streams of weights in flight per thread.
//!
//! A group of eight rows is its `cols / 32` blocks one after another; a block of the group, for each type:
//! - `Q4_0` (144 bytes): `d[8]` (f16) | `qs` (128);
//! - `Q4_1` (160 bytes): `d[8]` | `m[8]` (f16) | `qs` (128);
//! - `Q5_0` (176 bytes): `d[8]` | `qh` (32) | `qs` (128);
//! - `Q8_0` (272 bytes): `d[8]` | `qs` (256): eight 32-byte chunks, chunk `j` byte `4r + i` = weight `4j + i`
//!   of row `r` (signed bytes);
//!
//! where the 4-bit types' `qs` is four 32-byte chunks, chunk `k` byte `4r + i` = byte `4k + i` of row `r`'s GGML
//! `qs`: its low nibble is weight `4k + i`, its high nibble weight `4k + i + 16`, so chunk `k` gives the vectors of
//! weights `4k..` and `4(k + 4)..`. Q5_0's `qh` byte `4r + i` bit `j` is the fifth bit of weight `4j + i` of row
//! `r`.
//!
//! The K-quants interleave the same way, a 256-weight super-block of eight rows at a time (the kernels in
//! `x86_packed_k.rs`); chunk `c` of an array (32 bytes) holds bytes `4c..4c + 4` of each row's GGML array, row `r`
//! in bytes `4r..4r + 4`:
//! - `Q4_K` (1184 bytes): `d[8]` | `dmin[8]` (f16) | `sc[8][8]` | `m[8][8]` (sub-block `s` x row, the 6-bit scales
//!   and mins unpacked to bytes: 32 bytes more than GGML's, no unpacking per token) | `qs` (1024) as 32 chunks,
//!   chunk `8k + j` from GGML bytes `32k + 4j..`: low nibbles weights `64k + 4j..` (sub-block `2k`), high nibbles
//!   the same places of sub-block `2k + 1`;
//! - `Q6_K` (1680 bytes, GGML's size): `d[8]` (f16) | `sc[16][8]` (i8) | `ql` (1024) as 32 chunks, chunk `8c + j`
//!   from GGML `ql` bytes `32c + 4j..` | `qh` (512) as 16 chunks, chunk `8h + j` from `qh` bytes `32h + 4j..`.
//!
//! The K-quant kernels take Q8_K activations (as their GGML-layout kernels do) and equal `dot_q4_k` / `dot_q6_k`
//! bit for bit: the same exact integer sums, the same float operations per super-block.
//!
//! The kernels take Q8_1 activations for every type (the block sum `s = d Σq` carries the weights' offset: a
//! 4-bit block is `d_w d_a Σ u q + m s` with the unsigned nibbles `u` and `m` the type's min, `-8 d_w` or `-16 d_w`
//! for Q4_0 and Q5_0; Q8_0's signed weights need no min), and accumulate every row in its own f32 lane in the
//! same order on every path, so the SIMD kernels equal the portable one bit for bit and a row's result never
//! depends on the tokens beside it.

use crate::quant::GgmlType;

/// Rows interleaved in a group.
pub const ROWS: usize = 8;

/// Bytes of one block of a group (eight rows' blocks; a super-block of 256 for the K-quants) of a type this
/// layout has, `None` for the others.
pub const fn group_block(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q4_0 => Some(144),
        GgmlType::Q4_1 => Some(160),
        GgmlType::Q5_0 => Some(176),
        GgmlType::Q8_0 => Some(272),
        GgmlType::Q4K => Some(1184),
        GgmlType::Q6K => Some(1680),
        _ => None,
    }
}

/// The activations the portable packed kernel of `ty` takes: Q8_K for the K-quants, Q8_1 for the others (a SIMD
/// path may take another form: `Kernels::packed_act`).
pub fn act_type(ty: GgmlType) -> crate::cpu::act::ActType {
    match ty {
        GgmlType::Q4K | GgmlType::Q6K => crate::cpu::act::ActType::Q8K,
        _ => crate::cpu::act::ActType::Q8_1,
    }
}

/// Weights in one block of `ty`'s packed layout.
const fn block_len(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4K | GgmlType::Q6K => 256,
        _ => 32,
    }
}

/// The packed types, numbered as the SIMD kernels' const parameter is.
pub const TYPES: [GgmlType; 4] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0];

/// (bytes of a group's block, offset of its weights) of packed type number `i` of [`TYPES`].
pub const fn layout(i: u8) -> (usize, usize) {
    let ty = TYPES[i as usize];
    (group_block(ty).unwrap(), qs_offset(ty))
}

/// Offset of the weights in a group's block.
pub const fn qs_offset(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => 16,
        GgmlType::Q4_1 => 32,
        _ => 48,
    }
}

/// The weight type's min as a multiple of `d` (`None`: the block stores its own min, Q4_1, or has none, Q8_0).
pub const fn offset(ty: GgmlType) -> Option<f32> {
    match ty {
        GgmlType::Q4_0 => Some(8.0),
        GgmlType::Q5_0 => Some(16.0),
        _ => None,
    }
}

/// `rows` rows of `cols` weights in GGML blocks (`src`) in the interleaved layout; `None` when the type has no
/// such layout or the rows do not fill whole groups.
pub fn repack(ty: GgmlType, rows: usize, cols: usize, src: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; packed_len(ty, rows, cols)?];
    repack_into(ty, rows, cols, src, &mut out);
    Some(out)
}

/// Bytes of `rows` x `cols` weights of `ty` in the interleaved layout; `None` when the type has no such layout
/// or the rows do not fill whole groups.
pub fn packed_len(ty: GgmlType, rows: usize, cols: usize) -> Option<usize> {
    let (gb, bl) = (group_block(ty)?, block_len(ty));
    (rows.is_multiple_of(ROWS) && cols.is_multiple_of(bl)).then_some(rows / ROWS * cols / bl * gb)
}

/// [`repack`] into `out` ([`packed_len`] bytes).
pub fn repack_into(ty: GgmlType, rows: usize, cols: usize, src: &[u8], out: &mut [u8]) {
    let gb = group_block(ty).expect("a packed type");
    let (blocks, bb) = (cols / block_len(ty), ty.block().1);
    let row_bytes = blocks * bb;
    assert!(src.len() >= rows * row_bytes, "repack: {} bytes for {rows} x {cols} {ty:?}", src.len());
    assert_eq!(Some(out.len()), packed_len(ty, rows, cols));
    for (g, og) in out.chunks_exact_mut(blocks * gb).enumerate() {
        for (b, o) in og.chunks_exact_mut(gb).enumerate() {
            for r in 0..ROWS {
                let s = &src[(g * ROWS + r) * row_bytes + b * bb..][..bb];
                if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
                    k_block(ty, r, s, o);
                    continue;
                }
                o[2 * r..2 * r + 2].copy_from_slice(&s[..2]);
                let chunks = if ty == GgmlType::Q8_0 { 8 } else { 4 };
                let qs = &s[bb - 4 * chunks..];
                for k in 0..chunks {
                    o[qs_offset(ty) + 32 * k + 4 * r..][..4].copy_from_slice(&qs[4 * k..4 * k + 4]);
                }
                match ty {
                    GgmlType::Q4_1 => o[16 + 2 * r..18 + 2 * r].copy_from_slice(&s[2..4]),
                    GgmlType::Q5_0 => {
                        let qh = u32::from_le_bytes([s[2], s[3], s[4], s[5]]);
                        for i in 0..4 {
                            o[16 + 4 * r + i] = (0..8).map(|j| ((qh >> (4 * j + i) & 1) as u8) << j).sum();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Row `r`'s GGML super-block `s` into the group's packed super-block `o` (see the module documentation).
fn k_block(ty: GgmlType, r: usize, s: &[u8], o: &mut [u8]) {
    // Row r's part of the chunks of GGML array `src`, from byte `at` of `o`.
    let mut chunks = |src: &[u8], at: usize| {
        for (c, four) in src.chunks_exact(4).enumerate() {
            o[at + 32 * c + 4 * r..][..4].copy_from_slice(four);
        }
    };
    if ty == GgmlType::Q4K {
        chunks(&s[16..144], 160);
        o[2 * r..2 * r + 2].copy_from_slice(&s[..2]);
        o[16 + 2 * r..18 + 2 * r].copy_from_slice(&s[2..4]);
        for sb in 0..8 {
            let (sc, m) = crate::quant::k4_scale_min(sb, &s[4..16]);
            (o[32 + 8 * sb + r], o[96 + 8 * sb + r]) = (sc, m);
        }
    } else {
        chunks(&s[..128], 144);
        chunks(&s[128..192], 1168);
        o[2 * r..2 * r + 2].copy_from_slice(&s[208..210]);
        for sb in 0..16 {
            o[16 + 8 * sb + r] = s[192 + sb];
        }
    }
}
