// F32 "blocks" of 32 values: 8 vec4 words per block, no scale.
fn load_block(rows: u32, r: u32, b: u32) -> Blk {
    let i = (b * rows + r) * 8u;
    return Blk(bitcast<vec4<f32>>(w_quant[i]), bitcast<vec4<f32>>(w_quant[i + 1u]), bitcast<vec4<f32>>(w_quant[i + 2u]),
               bitcast<vec4<f32>>(w_quant[i + 3u]), bitcast<vec4<f32>>(w_quant[i + 4u]), bitcast<vec4<f32>>(w_quant[i + 5u]),
               bitcast<vec4<f32>>(w_quant[i + 6u]), bitcast<vec4<f32>>(w_quant[i + 7u]));
}
