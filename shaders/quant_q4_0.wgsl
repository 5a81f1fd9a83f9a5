// Q4_0: w[j] = d * (lo(qs[j]) - 8), w[j + 16] = d * (hi(qs[j]) - 8); one texel per block; d f16 in the scale word.
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let d = unpack2x16float(scale_word(p, b)).x;
    let q = quant_texel(p, b);
    let o = vec4<f32>(8.0);
    return Blk((nib_lo(q.x) - o) * d, (nib_lo(q.y) - o) * d, (nib_lo(q.z) - o) * d, (nib_lo(q.w) - o) * d,
               (nib_hi(q.x) - o) * d, (nib_hi(q.y) - o) * d, (nib_hi(q.z) - o) * d, (nib_hi(q.w) - o) * d);
}
