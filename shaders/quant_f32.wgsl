// F32 "blocks" of 32 values: 8 texels per block, no scale.
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let y = b * 8u;
    return Blk(bitcast<vec4<f32>>(quant_texel(p, y)), bitcast<vec4<f32>>(quant_texel(p, y + 1u)),
               bitcast<vec4<f32>>(quant_texel(p, y + 2u)), bitcast<vec4<f32>>(quant_texel(p, y + 3u)),
               bitcast<vec4<f32>>(quant_texel(p, y + 4u)), bitcast<vec4<f32>>(quant_texel(p, y + 5u)),
               bitcast<vec4<f32>>(quant_texel(p, y + 6u)), bitcast<vec4<f32>>(quant_texel(p, y + 7u)));
}
