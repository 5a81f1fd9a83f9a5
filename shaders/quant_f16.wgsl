// F16 "blocks" of 32 values: 16 words per block (two halves each), no scale.
fn dequant_block(rows: u32, r: u32, b: u32, w: ptr<function, array<f32, 32>>) {
    for (var k = 0u; k < 16u; k++) {
        let v = unpack2x16float(w_quant[(b * 16u + k) * rows + r]);
        (*w)[2u * k] = v.x;
        (*w)[2u * k + 1u] = v.y;
    }
}
