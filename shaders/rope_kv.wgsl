// Splits the fused qkv projection: RoPE on q (to q_out) and k (to the KV cache), v copied to the KV cache.
// One invocation per (rotation pair or v element, token). NEOX: rotate (i, i + hd/2), else (2i, 2i + 1).
// Position `pos` goes to cache row `pos % ring`: a sliding-window layer's cache is a ring of `ring` rows (the
// window and one step), a global layer's ring is the whole capacity. The sequence's rows of the step start at row
// `rows.row0` of qkv and q_out (a batch holds several sequences' rows, each with its own cache and positions).

struct Rows { n_tok: u32, pos0: u32, row0: u32, _p: u32 }
struct Rope { q_dim: u32, kv_dim: u32, head_dim: u32, qkv_stride: u32, theta: f32, ring: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> rows: Rows;
@group(0) @binding(1) var<uniform> p: Rope;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    let q_pairs = p.q_dim / 2u;
    let k_pairs = p.kv_dim / 2u;
    if (t >= rows.n_tok || i >= q_pairs + k_pairs + p.kv_dim) {
        return;
    }
    let pos = rows.pos0 + t;
    let src = (rows.row0 + t) * p.qkv_stride;
    let row = (pos % p.ring) * p.kv_dim;
    if (i >= q_pairs + k_pairs) {
        let e = i - q_pairs - k_pairs;
        v_cache[row + e] = qkv[src + p.q_dim + p.kv_dim + e];
        return;
    }
    let is_k = i >= q_pairs;
    let pair = select(i, i - q_pairs, is_k);
    let half = p.head_dim / 2u;
    let head = pair / half;
    let j = pair % half;
    var a = head * p.head_dim + 2u * j;
    var b = a + 1u;
    if (NEOX) {
        a = head * p.head_dim + j;
        b = a + half;
    }
    let freq = pow(p.theta, -2.0 * f32(j) / f32(p.head_dim));
    let angle = f32(pos) * freq;
    let c = cos(angle);
    let s = sin(angle);
    let off = src + select(0u, p.q_dim, is_k);
    let x0 = qkv[off + a];
    let x1 = qkv[off + b];
    let y0 = x0 * c - x1 * s;
    let y1 = x0 * s + x1 * c;
    if (is_k) {
        k_cache[row + a] = y0;
        k_cache[row + b] = y1;
    } else {
        q_out[(rows.row0 + t) * p.q_dim + a] = y0;
        q_out[(rows.row0 + t) * p.q_dim + b] = y1;
    }
}
