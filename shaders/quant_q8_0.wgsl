// Q8_0: w = d * q with q signed bytes; 2 texels per block; d is GGML's f16 in the low half of the scale word.
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let d = unpack2x16float(scale_word(p, b)).x;
    let lo = quant_texel(p, 2u * b);
    let hi = quant_texel(p, 2u * b + 1u);
    return Blk(i8x4(lo.x) * d, i8x4(lo.y) * d, i8x4(lo.z) * d, i8x4(lo.w) * d,
               i8x4(hi.x) * d, i8x4(hi.y) * d, i8x4(hi.z) * d, i8x4(hi.w) * d);
}
