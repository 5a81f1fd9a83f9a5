// Shared by every quant decoder. A block is 32 weights as 8 vec4s: w{i} multiplies x[4i .. 4i + 4) of the block.
// Kernels never index per-invocation arrays with a variable (lavapipe turns that into scratch memory), so a block
// is a struct of named vectors and every helper is branch-free vector arithmetic.
//
// Weights live in textures (see weights.rs): w_quant holds V 16-byte texels per block at y = b * V .. , and
// w_scale S 32-bit words per block at y = b * S .. (S per type, see weights.rs); row r sits at x = r % width in layer r / width. Kernels compute
// a row's position once with tex_at (integer division is slow on lavapipe) and pass it to load_block.
struct Blk { w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>, w4: vec4<f32>, w5: vec4<f32>, w6: vec4<f32>, w7: vec4<f32> }

// (x, layer) of row r in the weight textures.
fn tex_at(r: u32) -> vec2<u32> {
    let w = textureDimensions(w_quant).x;
    return vec2<u32>(r % w, r / w);
}
fn quant_texel(p: vec2<u32>, y: u32) -> vec4<u32> { return textureLoad(w_quant, vec2<u32>(p.x, y), p.y, 0); }
fn scale_word(p: vec2<u32>, y: u32) -> u32 { return textureLoad(w_scale, vec2<u32>(p.x, y), p.y, 0).x; }

// Low / high nibbles of the four bytes of q.
fn nib_lo(q: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u)); }
fn nib_hi(q: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u)); }
// The four bytes of q as signed integers.
fn i8x4(q: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }
