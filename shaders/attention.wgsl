// Causal grouped-query attention over the KV cache, one workgroup per (head, token). Positions are taken in
// tiles of TILE scores kept in workgroup memory; softmax runs online across tiles (running max and sum), so any
// context length works. Invocation i owns output dims i and i + WG (head dim <= 2 WG). Header constant: HD.

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Att { n_heads: u32, n_kv_heads: u32, q_dim: u32, kv_dim: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> a: Att;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const TILE: u32 = 1024u;
const NEG: f32 = -3.0e38;

var<workgroup> sc: array<f32, TILE>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let h = wid.x;
    let t = wid.y;
    let n_pos = step.pos0 + t + 1u; // attends to positions 0 .. n_pos
    let kv_off = (h / (a.n_heads / a.n_kv_heads)) * HD;
    let q_off = t * a.q_dim + h * HD;
    let d0 = tid;
    let d1 = tid + WG;

    var run_max = NEG;
    var run_sum = 0.0;
    var o0 = 0.0;
    var o1 = 0.0;
    for (var start = 0u; start < n_pos; start += TILE) {
        let len = min(TILE, n_pos - start);
        // Scores of this tile, spread over the workgroup.
        for (var p = tid; p < len; p += WG) {
            let kb = (start + p) * a.kv_dim + kv_off;
            var s = 0.0;
            for (var d = 0u; d < HD; d++) {
                s += q[q_off + d] * k_cache[kb + d];
            }
            sc[p] = s * a.scale;
        }
        workgroupBarrier();
        var tile_max = run_max;
        for (var p = 0u; p < len; p++) {
            tile_max = max(tile_max, sc[p]);
        }
        workgroupBarrier();
        for (var p = tid; p < len; p += WG) {
            sc[p] = exp(sc[p] - tile_max);
        }
        workgroupBarrier();
        let correction = exp(run_max - tile_max);
        var sum = 0.0;
        var a0 = 0.0;
        var a1 = 0.0;
        for (var p = 0u; p < len; p++) {
            let e = sc[p];
            sum += e;
            let vb = (start + p) * a.kv_dim + kv_off;
            if (d0 < HD) { a0 += e * v_cache[vb + d0]; }
            if (d1 < HD) { a1 += e * v_cache[vb + d1]; }
        }
        run_sum = run_sum * correction + sum;
        o0 = o0 * correction + a0;
        o1 = o1 * correction + a1;
        run_max = tile_max;
        workgroupBarrier();
    }
    if (d0 < HD) { out[q_off + d0] = o0 / run_sum; }
    if (d1 < HD) { out[q_off + d1] = o1 / run_sum; }
}
