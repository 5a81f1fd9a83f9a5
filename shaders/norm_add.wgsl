// gemma3's post-norms: x[t] += rmsnorm(delta[t]) * w, the attention or FFN output normed before the residual
// add. One workgroup per token; partial sums of squares meet in workgroup memory.

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Norm { dim: u32, eps: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Norm;
@group(0) @binding(2) var<storage, read> delta: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>;

const WG: u32 = 64u;
var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let t = wid.y;
    let d4 = p.dim / 4u;
    let base = t * d4;
    var ss = 0.0;
    for (var i = tid; i < d4; i += WG) {
        let v = delta[base + i];
        ss += dot(v, v);
    }
    part[tid] = ss;
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG; i++) {
        total += part[i];
    }
    let inv = inverseSqrt(total / f32(p.dim) + p.eps);
    for (var i = tid; i < d4; i += WG) {
        x[base + i] += delta[base + i] * inv * w[i];
    }
}
