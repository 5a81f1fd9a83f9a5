// Q4_0: w[j] = d * (lo(qs[j]) - 8), w[j + 16] = d * (hi(qs[j]) - 8); one vec4 word per block; d f16, two per word.
fn load_block(rows: u32, r: u32, b: u32) -> Blk {
    let d = half_at(b * rows + r);
    let q = w_quant[b * rows + r];
    let o = vec4<f32>(8.0);
    return Blk((nib_lo(q.x) - o) * d, (nib_lo(q.y) - o) * d, (nib_lo(q.z) - o) * d, (nib_lo(q.w) - o) * d,
               (nib_hi(q.x) - o) * d, (nib_hi(q.y) - o) * d, (nib_hi(q.z) - o) * d, (nib_hi(q.w) - o) * d);
}
