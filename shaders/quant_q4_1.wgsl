// Q4_1: w[j] = d * lo(qs[j]) + m, w[j + 16] = d * hi(qs[j]) + m; one texel per block; (d, m) f16 pair per scale word.
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let dm = unpack2x16float(scale_word(p, b));
    let d = dm.x;
    let m = vec4<f32>(dm.y);
    let q = quant_texel(p, b);
    return Blk(nib_lo(q.x) * d + m, nib_lo(q.y) * d + m, nib_lo(q.z) * d + m, nib_lo(q.w) * d + m,
               nib_hi(q.x) * d + m, nib_hi(q.y) * d + m, nib_hi(q.z) * d + m, nib_hi(q.w) * d + m);
}
