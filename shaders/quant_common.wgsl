// Shared by every quant decoder. A block is 32 weights as 8 vec4s: w{i} multiplies x[4i .. 4i + 4) of the block.
// Kernels never index per-invocation arrays with a variable (lavapipe turns that into scratch memory), so a block
// is a struct of named vectors and every helper is branch-free vector arithmetic.
struct Blk { w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>, w4: vec4<f32>, w5: vec4<f32>, w6: vec4<f32>, w7: vec4<f32> }

// Low / high nibbles of the four bytes of q.
fn nib_lo(q: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u)); }
fn nib_hi(q: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u)); }
// The four bytes of q as signed integers.
fn i8x4(q: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u)); }
// The f16 at half-word index s of w_scale.
fn half_at(s: u32) -> f32 {
    let v = unpack2x16float(w_scale[s >> 1u]);
    return select(v.x, v.y, (s & 1u) == 1u);
}
