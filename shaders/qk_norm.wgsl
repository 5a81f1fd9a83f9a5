// gemma3's QK-norm: each query and key head of the fused qkv projection RMS-normed in place with its shared
// weight (q_w for query heads, k_w for key heads), before RoPE. One invocation per (head, token).

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Qk { n_heads: u32, n_kv_heads: u32, head_dim: u32, qkv_stride: u32, eps: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Qk;
@group(0) @binding(2) var<storage, read_write> qkv: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> q_w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k_w: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.x;
    let t = gid.y;
    if (t >= step.n_tok || h >= p.n_heads + p.n_kv_heads) {
        return;
    }
    let h4 = p.head_dim / 4u;
    let o = (t * p.qkv_stride) / 4u + h * h4; // key heads follow the query heads
    var ss = 0.0;
    for (var i = 0u; i < h4; i++) {
        let v = qkv[o + i];
        ss += dot(v, v);
    }
    let inv = inverseSqrt(ss / f32(p.head_dim) + p.eps);
    let is_k = h >= p.n_heads;
    for (var i = 0u; i < h4; i++) {
        var w = q_w[i];
        if (is_k) {
            w = k_w[i];
        }
        qkv[o + i] = qkv[o + i] * inv * w;
    }
}
