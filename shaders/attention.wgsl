// Causal grouped-query attention over the KV cache, one workgroup of WG invocations per (head, token).
// Positions go in tiles of TILE scores kept in workgroup memory; softmax runs online across tiles (running max
// and sum), so any context length works. Loads are vec4 and few (on lavapipe each storage load is a per-lane
// loop): each invocation scores every WG-th position, partial maxima and sums meet in WG shared slots, and
// invocation i owns output dims [4i, 4i + 4) and [64 + 4i, 64 + 4i + 4). Header constant: HD (head dim,
// a multiple of 4, at most 128).

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Att { n_heads: u32, n_kv_heads: u32, q_dim: u32, kv_dim: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> a: Att;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

const WG: u32 = 16u;
const TILE: u32 = 2048u;
const NEG: f32 = -3.0e38;
const H4: u32 = HD / 4u;

var<workgroup> sc: array<f32, TILE>;
var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let h = wid.x;
    let t = wid.y;
    let n_pos = step.pos0 + t + 1u; // attends to positions 0 .. n_pos
    let kv4 = a.kv_dim / 4u;
    let kv_off = (h / (a.n_heads / a.n_kv_heads)) * H4;
    let q_off = (t * a.q_dim) / 4u + h * H4;
    let own_a = tid < H4;
    let own_b = WG + tid < H4;

    var run_max = NEG;
    var run_sum = 0.0;
    var o_a = vec4<f32>(0.0);
    var o_b = vec4<f32>(0.0);
    for (var start = 0u; start < n_pos; start += TILE) {
        let len = min(TILE, n_pos - start);
        var local_max = NEG;
        for (var p = tid; p < len; p += WG) {
            let kb = (start + p) * kv4 + kv_off;
            var s = 0.0;
            for (var d = 0u; d < H4; d++) {
                s += dot(q[q_off + d], k_cache[kb + d]);
            }
            s *= a.scale;
            sc[p] = s;
            local_max = max(local_max, s);
        }
        part[tid] = local_max;
        workgroupBarrier();
        var tile_max = run_max;
        for (var i = 0u; i < WG; i++) {
            tile_max = max(tile_max, part[i]);
        }
        workgroupBarrier();
        var local_sum = 0.0;
        for (var p = tid; p < len; p += WG) {
            let e = exp(sc[p] - tile_max);
            sc[p] = e;
            local_sum += e;
        }
        part[tid] = local_sum;
        workgroupBarrier();
        var tile_sum = 0.0;
        for (var i = 0u; i < WG; i++) {
            tile_sum += part[i];
        }
        let correction = exp(run_max - tile_max);
        var acc_a = vec4<f32>(0.0);
        var acc_b = vec4<f32>(0.0);
        for (var p = 0u; p < len; p++) {
            let e = sc[p];
            let vb = (start + p) * kv4 + kv_off;
            if (own_a) { acc_a += e * v_cache[vb + tid]; }
            if (own_b) { acc_b += e * v_cache[vb + WG + tid]; }
        }
        run_sum = run_sum * correction + tile_sum;
        o_a = o_a * correction + acc_a;
        o_b = o_b * correction + acc_b;
        run_max = tile_max;
        workgroupBarrier();
    }
    if (own_a) { out[q_off + tid] = o_a / run_sum; }
    if (own_b) { out[q_off + WG + tid] = o_b / run_sum; }
}
