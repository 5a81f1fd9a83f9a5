// F16 "blocks" of 32 values: 4 texels per block (two halves per word), no scale.
fn h8(v: vec4<u32>) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)),
                               vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)));
}
fn load_block(p: vec2<u32>, b: u32) -> Blk {
    let y = b * 4u;
    let a = h8(quant_texel(p, y));
    let c = h8(quant_texel(p, y + 1u));
    let d = h8(quant_texel(p, y + 2u));
    let e = h8(quant_texel(p, y + 3u));
    return Blk(a[0], a[1], c[0], c[1], d[0], d[1], e[0], e[1]);
}
