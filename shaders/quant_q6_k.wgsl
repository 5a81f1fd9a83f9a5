// Q6_K, one 32-weight sub-block per block (repacked at load, see weights.rs): w = a * (q - 32). Texel 0: q's low
// 4 bits as nibbles in Q4_0's order; texel 1: the high 2 bits of weights 0..16 and 16..32 (weight j at bits 2j),
// then a = d * sc of each 16-weight half as f32 (the product ggml forms).
fn hi2(h: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(((vec4<u32>(h) >> (vec4<u32>(0u, 2u, 4u, 6u) + vec4<u32>(8u * k))) & vec4<u32>(3u)) << vec4<u32>(4u));
}
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let q = quant_texel(p, 2u * b);
    let e = quant_texel(p, 2u * b + 1u);
    let a0 = bitcast<f32>(e.z);
    let a1 = bitcast<f32>(e.w);
    let o = vec4<f32>(32.0);
    return Blk((nib_lo(q.x) + hi2(e.x, 0u) - o) * a0, (nib_lo(q.y) + hi2(e.x, 1u) - o) * a0,
               (nib_lo(q.z) + hi2(e.x, 2u) - o) * a0, (nib_lo(q.w) + hi2(e.x, 3u) - o) * a0,
               (nib_hi(q.x) + hi2(e.y, 0u) - o) * a1, (nib_hi(q.y) + hi2(e.y, 1u) - o) * a1,
               (nib_hi(q.z) + hi2(e.y, 2u) - o) * a1, (nib_hi(q.w) + hi2(e.y, 3u) - o) * a1);
}
