// Q4_0: w[j] = d * (lo(qs[j]) - 8), w[j + 16] = d * (hi(qs[j]) - 8); 4 words per block; d f16, two per word.
fn dequant_block(rows: u32, r: u32, b: u32, w: ptr<function, array<f32, 32>>) {
    let s = b * rows + r;
    let d = unpack2x16float(w_scale[s >> 1u])[s & 1u];
    for (var k = 0u; k < 4u; k++) {
        let q = w_quant[(b * 4u + k) * rows + r];
        for (var i = 0u; i < 4u; i++) {
            let byte = (q >> (8u * i)) & 0xffu;
            (*w)[4u * k + i] = (f32(byte & 0xfu) - 8.0) * d;
            (*w)[4u * k + i + 16u] = (f32(byte >> 4u) - 8.0) * d;
        }
    }
}
