// Causal grouped-query attention over the KV cache, one workgroup per (head, token). Each invocation keeps an
// online softmax (running max, sum and weighted V) over every WG-th position; one barrier merges them.
// Header constant: HD (head dim).

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Att { n_heads: u32, n_kv_heads: u32, q_dim: u32, kv_dim: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> a: Att;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const WG: u32 = 32u;
const NEG: f32 = -3.0e38;

var<workgroup> sm_max: array<f32, WG>;
var<workgroup> sm_sum: array<f32, WG>;
var<workgroup> sm_acc: array<f32, WG * HD>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let h = wid.x;
    let t = wid.y;
    let last = step.pos0 + t; // attends to positions 0..=last
    let kv_off = (h / (a.n_heads / a.n_kv_heads)) * HD;
    let q_off = t * a.q_dim + h * HD;

    var qv: array<f32, HD>;
    var acc: array<f32, HD>;
    for (var d = 0u; d < HD; d++) {
        qv[d] = q[q_off + d] * a.scale;
        acc[d] = 0.0;
    }
    var mx = NEG;
    var sum = 0.0;
    for (var pos = tid; pos <= last; pos += WG) {
        let base = pos * a.kv_dim + kv_off;
        var s = 0.0;
        for (var d = 0u; d < HD; d++) {
            s += qv[d] * k_cache[base + d];
        }
        let new_max = max(mx, s);
        let correction = exp(mx - new_max);
        let e = exp(s - new_max);
        sum = sum * correction + e;
        for (var d = 0u; d < HD; d++) {
            acc[d] = acc[d] * correction + e * v_cache[base + d];
        }
        mx = new_max;
    }
    sm_max[tid] = mx;
    sm_sum[tid] = sum;
    for (var d = 0u; d < HD; d++) {
        sm_acc[tid * HD + d] = acc[d];
    }
    workgroupBarrier();

    var m_all = NEG;
    for (var i = 0u; i < WG; i++) {
        m_all = max(m_all, sm_max[i]);
    }
    var total = 0.0;
    for (var i = 0u; i < WG; i++) {
        total += sm_sum[i] * exp(sm_max[i] - m_all);
    }
    for (var d = tid; d < HD; d += WG) {
        var o = 0.0;
        for (var i = 0u; i < WG; i++) {
            o += sm_acc[i * HD + d] * exp(sm_max[i] - m_all);
        }
        out[q_off + d] = o / total;
    }
}
