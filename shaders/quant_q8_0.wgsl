// Q8_0: w = d * q, q signed bytes; 8 words per block; d is an f16, two per scale word.
fn dequant_block(rows: u32, r: u32, b: u32, w: ptr<function, array<f32, 32>>) {
    let s = b * rows + r;
    let d = unpack2x16float(w_scale[s >> 1u])[s & 1u];
    for (var k = 0u; k < 8u; k++) {
        let q = bitcast<i32>(w_quant[(b * 8u + k) * rows + r]);
        for (var i = 0u; i < 4u; i++) {
            (*w)[4u * k + i] = f32(extractBits(q, 8u * i, 8u)) * d;
        }
    }
}
