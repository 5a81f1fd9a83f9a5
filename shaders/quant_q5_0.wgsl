// Q5_0: w[j] = d * ((lo(qs[j]) | bit j of qh << 4) - 16), w[j + 16] the same with hi and bit j + 16. Two texels
// per block: the nibbles qs, then (d (f16, low half), qh, 0, 0).
fn bit5(qh: u32, j0: u32) -> vec4<f32> {
    return vec4<f32>(((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(j0))) & vec4<u32>(1u)) << vec4<u32>(4u));
}
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let q = quant_texel(p, 2u * b);
    let e = quant_texel(p, 2u * b + 1u);
    let d = unpack2x16float(e.x).x;
    let qh = e.y;
    let o = vec4<f32>(16.0);
    return Blk((nib_lo(q.x) + bit5(qh, 0u) - o) * d, (nib_lo(q.y) + bit5(qh, 4u) - o) * d,
               (nib_lo(q.z) + bit5(qh, 8u) - o) * d, (nib_lo(q.w) + bit5(qh, 12u) - o) * d,
               (nib_hi(q.x) + bit5(qh, 16u) - o) * d, (nib_hi(q.y) + bit5(qh, 20u) - o) * d,
               (nib_hi(q.z) + bit5(qh, 24u) - o) * d, (nib_hi(q.w) + bit5(qh, 28u) - o) * d);
}
