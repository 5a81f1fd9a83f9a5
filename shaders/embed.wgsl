// x[t] = embedding row of tokens[t] times `scale` (gemma3: sqrt(width); 1 otherwise), read from the quantized
// table. One invocation per (block, token).

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Emb { rows: u32, cols: u32, scale: f32, _p1: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> e: Emb;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var w_scale: texture_2d_array<u32>;
@group(0) @binding(4) var w_quant: texture_2d_array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    let t = gid.y;
    if (b >= e.cols / 32u || t >= step.n_tok) {
        return;
    }
    let w = load_block(tex_at(tokens[t]), b);
    let sc = e.scale;
    let o = t * (e.cols / 4u) + b * 8u;
    x[o] = w.w0 * sc;
    x[o + 1u] = w.w1 * sc;
    x[o + 2u] = w.w2 * sc;
    x[o + 3u] = w.w3 * sc;
    x[o + 4u] = w.w4 * sc;
    x[o + 5u] = w.w5 * sc;
    x[o + 6u] = w.w6 * sc;
    x[o + 7u] = w.w7 * sc;
}
