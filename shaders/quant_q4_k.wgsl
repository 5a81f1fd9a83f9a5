// Q4_K, one 32-weight sub-block per block (repacked at load, see weights.rs): w = a * q - m with q the sub-block's
// nibbles in Q4_0's order (texel 0) and a = d * sc, m = dmin * min as f32, the products ggml forms (texel 1).
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let q = quant_texel(p, 2u * b);
    let e = quant_texel(p, 2u * b + 1u);
    let a = bitcast<f32>(e.x);
    let m = vec4<f32>(bitcast<f32>(e.y));
    return Blk(nib_lo(q.x) * a - m, nib_lo(q.y) * a - m, nib_lo(q.z) * a - m, nib_lo(q.w) * a - m,
               nib_hi(q.x) * a - m, nib_hi(q.y) * a - m, nib_hi(q.z) * a - m, nib_hi(q.w) * a - m);
}
