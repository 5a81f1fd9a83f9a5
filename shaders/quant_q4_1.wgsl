// Q4_1: w[j] = d * lo(qs[j]) + m, w[j + 16] = d * hi(qs[j]) + m; 4 words per block; (d, m) f16 pair in one word.
fn dequant_block(rows: u32, r: u32, b: u32, w: ptr<function, array<f32, 32>>) {
    let dm = unpack2x16float(w_scale[b * rows + r]);
    for (var k = 0u; k < 4u; k++) {
        let q = w_quant[(b * 4u + k) * rows + r];
        for (var i = 0u; i < 4u; i++) {
            let byte = (q >> (8u * i)) & 0xffu;
            (*w)[4u * k + i] = f32(byte & 0xfu) * dm.x + dm.y;
            (*w)[4u * k + i + 16u] = f32(byte >> 4u) * dm.x + dm.y;
        }
    }
}
