// Greedy token per row of logits: one workgroup per row, lowest index wins ties (as the CPU reference).

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Arg { n: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> g: Arg;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = wid.x;
    if (row >= step.head_n) {
        return;
    }
    let base = row * g.n;
    // Each invocation starts from its first logit (not from a sentinel value, which -inf or NaN logits would
    // never beat, leaving NONE as the answer); NONE marks an invocation without logits (n < WG).
    var bv = 0.0;
    var bi = NONE;
    for (var i = tid; i < g.n; i += WG) {
        let v = logits[base + i];
        if (bi == NONE || v > bv) {
            bv = v;
            bi = i;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (tid < s) {
            let ov = best_v[tid + s];
            let oi = best_i[tid + s];
            let mine = best_i[tid];
            if (oi != NONE && (mine == NONE || ov > best_v[tid] || (ov == best_v[tid] && oi < mine))) {
                best_v[tid] = ov;
                best_i[tid] = oi;
            }
        }
    }
    if (tid == 0u) {
        out[row] = best_i[0];
    }
}
