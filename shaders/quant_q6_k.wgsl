// Q6_K, one 32-weight sub-block per block (repacked at load, see weights.rs): w = a * (q - 32) with q's low 4 bits
// as nibbles in Q4_0's order, and four scale words: the high 2 bits of weights 0..16 and 16..32 (weight j at bits
// 2j), then a = d * sc of each 16-weight half as f32 (the product ggml forms).
fn hi2(h: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(((vec4<u32>(h) >> (vec4<u32>(0u, 2u, 4u, 6u) + vec4<u32>(8u * k))) & vec4<u32>(3u)) << vec4<u32>(4u));
}
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let h0 = scale_word(p, 4u * b);
    let h1 = scale_word(p, 4u * b + 1u);
    let a0 = bitcast<f32>(scale_word(p, 4u * b + 2u));
    let a1 = bitcast<f32>(scale_word(p, 4u * b + 3u));
    let q = quant_texel(p, b);
    let o = vec4<f32>(32.0);
    return Blk((nib_lo(q.x) + hi2(h0, 0u) - o) * a0, (nib_lo(q.y) + hi2(h0, 1u) - o) * a0,
               (nib_lo(q.z) + hi2(h0, 2u) - o) * a0, (nib_lo(q.w) + hi2(h0, 3u) - o) * a0,
               (nib_hi(q.x) + hi2(h1, 0u) - o) * a1, (nib_hi(q.y) + hi2(h1, 1u) - o) * a1,
               (nib_hi(q.z) + hi2(h1, 2u) - o) * a1, (nib_hi(q.w) + hi2(h1, 3u) - o) * a1);
}
