// F32 "blocks" of 32 values: 32 words per block, no scale.
fn dequant_block(rows: u32, r: u32, b: u32, w: ptr<function, array<f32, 32>>) {
    for (var j = 0u; j < 32u; j++) {
        (*w)[j] = bitcast<f32>(w_quant[(b * 32u + j) * rows + r]);
    }
}
