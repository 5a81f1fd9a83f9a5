// Causal grouped-query attention over the KV cache, one workgroup of WG invocations per (head, token).
// Positions go in tiles of TILE scores kept in workgroup memory; softmax runs online across tiles (running max
// and sum), so any context length works. Loads are vec4 and few (on lavapipe each storage load is a per-lane
// loop): each invocation scores every WG-th position, partial maxima and sums meet in WG shared slots, and
// invocation i owns output dims [4i, 4i + 4), [64 + 4i, 64 + 4i + 4), ... (SLOTS of them). Header constant: HD
// (head dim, a multiple of 4, at most 4 * 4 * WG = 256).
//
// A sliding-window layer (window > 0) attends to the last `window` positions, its own included. Position p's K
// and V are at cache row p % ring (see rope_kv.wgsl). The sequence's rows of the step start at row `rows.row0`
// of q and out (a batch holds several sequences' rows, each with its own cache and positions).

struct Rows { n_tok: u32, pos0: u32, row0: u32, _p: u32 }
struct Att { n_heads: u32, n_kv_heads: u32, q_dim: u32, kv_dim: u32, scale: f32, window: u32, ring: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> rows: Rows;
@group(0) @binding(1) var<uniform> a: Att;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

const WG: u32 = 16u;
const TILE: u32 = 2048u;
const NEG: f32 = -3.0e38;
const H4: u32 = HD / 4u;
const SLOTS: u32 = (H4 + WG - 1u) / WG;

var<workgroup> sc: array<f32, TILE>;
var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let h = wid.x;
    let t = wid.y;
    let n_pos = rows.pos0 + t + 1u; // attends to positions first .. n_pos
    var first = 0u;
    if (a.window > 0u && n_pos > a.window) {
        first = n_pos - a.window;
    }
    let kv4 = a.kv_dim / 4u;
    let kv_off = (h / (a.n_heads / a.n_kv_heads)) * H4;
    let q_off = ((rows.row0 + t) * a.q_dim) / 4u + h * H4;
    let own0 = tid < H4;
    let own1 = SLOTS > 1u && WG + tid < H4;
    let own2 = SLOTS > 2u && 2u * WG + tid < H4;
    let own3 = SLOTS > 3u && 3u * WG + tid < H4;

    var run_max = NEG;
    var run_sum = 0.0;
    var o0 = vec4<f32>(0.0);
    var o1 = vec4<f32>(0.0);
    var o2 = vec4<f32>(0.0);
    var o3 = vec4<f32>(0.0);
    for (var start = first; start < n_pos; start += TILE) {
        let len = min(TILE, n_pos - start);
        var local_max = NEG;
        for (var p = tid; p < len; p += WG) {
            let kb = ((start + p) % a.ring) * kv4 + kv_off;
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
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        for (var p = 0u; p < len; p++) {
            let e = sc[p];
            let vb = ((start + p) % a.ring) * kv4 + kv_off;
            if (own0) { acc0 += e * v_cache[vb + tid]; }
            if (own1) { acc1 += e * v_cache[vb + WG + tid]; }
            if (own2) { acc2 += e * v_cache[vb + 2u * WG + tid]; }
            if (own3) { acc3 += e * v_cache[vb + 3u * WG + tid]; }
        }
        run_sum = run_sum * correction + tile_sum;
        o0 = o0 * correction + acc0;
        o1 = o1 * correction + acc1;
        o2 = o2 * correction + acc2;
        o3 = o3 * correction + acc3;
        run_max = tile_max;
        workgroupBarrier();
    }
    if (own0) { out[q_off + tid] = o0 / run_sum; }
    if (own1) { out[q_off + WG + tid] = o1 / run_sum; }
    if (own2) { out[q_off + 2u * WG + tid] = o2 / run_sum; }
    if (own3) { out[q_off + 3u * WG + tid] = o3 / run_sum; }
}
