// Q8_0: w = d * q with q signed bytes; 2 vec4 words per block; d is an f16, two per scale word.
fn load_block(rows: u32, r: u32, b: u32) -> Blk {
    let d = half_at(b * rows + r);
    let i = (b * rows + r) * 2u;
    let lo = w_quant[i];
    let hi = w_quant[i + 1u];
    return Blk(i8x4(lo.x) * d, i8x4(lo.y) * d, i8x4(lo.z) * d, i8x4(lo.w) * d,
               i8x4(hi.x) * d, i8x4(hi.y) * d, i8x4(hi.z) * d, i8x4(hi.w) * d);
}
