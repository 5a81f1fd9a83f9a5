// y = W · x for n tokens, W quantized (see load_block): `main` computes 4 output rows x up to 4 tokens per
// invocation, `pair` 4 rows x up to 2 tokens, `gemv` (one token) 8 rows. No workgroup memory, no barriers, no
// indexed per-invocation arrays. Header constants: NORM (x is RMS-normalised with gamma on the fly), BIAS,
// RESIDUAL (y += result), SWIGLU (rows [0, out_rows) are gate, [out_rows, 2 out_rows) up: y = silu(gate) * up),
// GELU (with SWIGLU: GeGLU, y = gelu_tanh(gate) * up, as gemma3).
//
// x and gamma are read through 64 KiB *uniform* views: every invocation reads the same x, and on lavapipe a
// uniform load is one vector gather while a storage load is a per-lane scalar loop. The host binds x with a
// dynamic offset per group of `group_tokens` tokens (as many as fit in 64 KiB) and dispatches once per group;
// `grp.index` tells the kernel which group it is.

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Mat {
    rows: u32,       // rows of this weight chunk
    cols: u32,       // K, a multiple of 32
    out_rows: u32,   // outputs computed (rows, or rows / 2 with SWIGLU)
    row_off: u32,    // first output column written (chunks, q/k/v parts)
    out_stride: u32, // floats per token in y
    head: u32,       // 1: tokens come from Step.head_n / head_row0 (output head)
    eps: f32,
    bias_off: u32,
    group_tokens: u32, // tokens per 64 KiB view of x
    _p0: u32,
    _p1: u32,
    _p2: u32,
}
struct Group { index: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> m: Mat;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;
@group(0) @binding(3) var w_scale: texture_2d_array<u32>;
@group(0) @binding(4) var w_quant: texture_2d_array<u32>;
@group(0) @binding(5) var<uniform> gamma: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<uniform> grp: Group;

const TB: u32 = 4u;

fn xv(i: u32, g: u32) -> vec4<f32> {
    if (NORM) {
        return x[i] * gamma[g];
    }
    return x[i];
}

fn inv_rms(xo: u32, k4: u32) -> f32 {
    var ss = 0.0;
    for (var k = 0u; k < k4; k++) {
        let v = x[xo + k];
        ss += dot(v, v);
    }
    return inverseSqrt(ss / f32(k4 * 4u) + m.eps);
}

fn store(t: u32, r: u32, gate: f32, up: f32) {
    var v = gate;
    if (BIAS) {
        v += bias[m.bias_off + r];
    }
    if (SWIGLU && GELU) {
        // 0.5 v (1 + tanh(u)) = v * sigmoid(2u): no tanh overflow for large |u|.
        let u = 0.7978846 * (v + 0.044715 * v * v * v);
        v = v / (1.0 + exp(-2.0 * u)) * up;
    } else if (SWIGLU) {
        v = v / (1.0 + exp(-v)) * up;
    }
    let o = t * m.out_stride + m.row_off + r;
    if (RESIDUAL) {
        v += y[o];
    }
    y[o] = v;
}

// Several tokens (a prompt, or sequences decoding together): each invocation computes 4 rows x up to TB tokens, so
// a block of weights is decoded once per TB tokens and a block of x is read once per 4 rows. Every (row, token)
// sum is formed exactly as `gemv` forms it (dot8 per block, blocks in order, then the norm factor), so a token's
// result does not depend on how many tokens share the step. `pair` is the same for up to 2 tokens per
// invocation: lavapipe runs both sides of `main`'s per-token branches, so 2 tokens would cost as much as 4.
@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    tile(gid.x, wid.y, TB);
}

@compute @workgroup_size(16)
fn pair(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    tile(gid.x, wid.y, 2u);
}

// Invocation `ix`, token tile `ty` of tb (a constant of each entry point, <= 4) tokens.
fn tile(ix: u32, ty: u32, tb: u32) {
    let r0 = ix * 4u;
    // The head's view of x starts at Step.head_row0 (bound by the host); other matmuls start at token 0.
    let nt = select(step.n_tok, step.head_n, m.head != 0u);
    let local = ty * tb; // first token of this invocation inside the group's view of x
    let t0 = grp.index * m.group_tokens + local;
    if (r0 >= m.out_rows || t0 >= nt) {
        return;
    }
    let cnt = min(tb, min(nt, (grp.index + 1u) * m.group_tokens) - t0);
    let nr = min(4u, m.out_rows - r0);
    let k4 = m.cols / 4u;
    let x0 = local * k4;

    var inv = vec4<f32>(1.0);
    if (NORM) {
        inv.x = inv_rms(x0, k4);
        if (cnt > 1u) { inv.y = inv_rms(x0 + k4, k4); }
        if (cnt > 2u) { inv.z = inv_rms(x0 + 2u * k4, k4); }
        if (cnt > 3u) { inv.w = inv_rms(x0 + 3u * k4, k4); }
    }

    // a{i}: row r0 + i, one component per token; u{i}: its SWIGLU up row.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var u0 = vec4<f32>(0.0);
    var u1 = vec4<f32>(0.0);
    var u2 = vec4<f32>(0.0);
    var u3 = vec4<f32>(0.0);
    let pg = rows4_at(r0);
    let pu = rows4_at(r0 + m.out_rows);
    for (var b = 0u; b < m.cols / 32u; b++) {
        let xo = x0 + b * 8u;
        let go = b * 8u;
        let v0 = xblk(xo, go);
        var v1 = v0;
        var v2 = v0;
        var v3 = v0;
        if (cnt > 1u) { v1 = xblk(xo + k4, go); }
        if (cnt > 2u) { v2 = xblk(xo + 2u * k4, go); }
        if (cnt > 3u) { v3 = xblk(xo + 3u * k4, go); }
        a0 += dot_tokens(load_block(pg.a, b), v0, v1, v2, v3, cnt);
        if (nr > 1u) { a1 += dot_tokens(load_block(pg.b, b), v0, v1, v2, v3, cnt); }
        if (nr > 2u) { a2 += dot_tokens(load_block(pg.c, b), v0, v1, v2, v3, cnt); }
        if (nr > 3u) { a3 += dot_tokens(load_block(pg.d, b), v0, v1, v2, v3, cnt); }
        if (SWIGLU) {
            u0 += dot_tokens(load_block(pu.a, b), v0, v1, v2, v3, cnt);
            if (nr > 1u) { u1 += dot_tokens(load_block(pu.b, b), v0, v1, v2, v3, cnt); }
            if (nr > 2u) { u2 += dot_tokens(load_block(pu.c, b), v0, v1, v2, v3, cnt); }
            if (nr > 3u) { u3 += dot_tokens(load_block(pu.d, b), v0, v1, v2, v3, cnt); }
        }
    }
    store_tokens(t0, r0, cnt, a0 * inv, u0 * inv);
    if (nr > 1u) { store_tokens(t0, r0 + 1u, cnt, a1 * inv, u1 * inv); }
    if (nr > 2u) { store_tokens(t0, r0 + 2u, cnt, a2 * inv, u2 * inv); }
    if (nr > 3u) { store_tokens(t0, r0 + 3u, cnt, a3 * inv, u3 * inv); }
}

// The block of x (times gamma) at vec4 index xo, gamma's at go.
fn xblk(xo: u32, go: u32) -> Blk {
    return Blk(xv(xo, go), xv(xo + 1u, go + 1u), xv(xo + 2u, go + 2u), xv(xo + 3u, go + 3u),
               xv(xo + 4u, go + 4u), xv(xo + 5u, go + 5u), xv(xo + 6u, go + 6u), xv(xo + 7u, go + 7u));
}

// One block of one row against the block of each of cnt (<= 4) tokens.
fn dot_tokens(w: Blk, v0: Blk, v1: Blk, v2: Blk, v3: Blk, cnt: u32) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    a.x = dot8(w, v0);
    if (cnt > 1u) { a.y = dot8(w, v1); }
    if (cnt > 2u) { a.z = dot8(w, v2); }
    if (cnt > 3u) { a.w = dot8(w, v3); }
    return a;
}

// Row r's results for tokens t0 .. t0 + cnt.
fn store_tokens(t0: u32, r: u32, cnt: u32, a: vec4<f32>, u: vec4<f32>) {
    store(t0, r, a.x, u.x);
    if (cnt > 1u) { store(t0 + 1u, r, a.y, u.y); }
    if (cnt > 2u) { store(t0 + 2u, r, a.z, u.z); }
    if (cnt > 3u) { store(t0 + 3u, r, a.w, u.w); }
}

// ---- Decode (one token): each invocation computes GEMV_ROWS rows, so the block of x (times gamma) is read once
// for all of them instead of once per row.
const GEMV_ROWS: u32 = 8u;

fn dot8(w: Blk, v: Blk) -> f32 {
    return dot(w.w0, v.w0) + dot(w.w1, v.w1) + dot(w.w2, v.w2) + dot(w.w3, v.w3)
         + dot(w.w4, v.w4) + dot(w.w5, v.w5) + dot(w.w6, v.w6) + dot(w.w7, v.w7);
}

// Texture positions of 4 consecutive rows, computed once per invocation.
struct Rows4 { a: vec2<u32>, b: vec2<u32>, c: vec2<u32>, d: vec2<u32> }
fn rows4_at(r: u32) -> Rows4 { return Rows4(tex_at(r), tex_at(r + 1u), tex_at(r + 2u), tex_at(r + 3u)); }

// One block of x against one block of each of the n (<= 4) rows.
fn dot_rows(p: Rows4, n: u32, b: u32, v: Blk) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    a.x = dot8(load_block(p.a, b), v);
    if (n > 1u) { a.y = dot8(load_block(p.b, b), v); }
    if (n > 2u) { a.z = dot8(load_block(p.c, b), v); }
    if (n > 3u) { a.w = dot8(load_block(p.d, b), v); }
    return a;
}

@compute @workgroup_size(16)
fn gemv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r0 = gid.x * GEMV_ROWS;
    if (r0 >= m.out_rows) {
        return;
    }
    let n_lo = min(4u, m.out_rows - r0);
    let n_hi = min(4u, m.out_rows - r0 - n_lo);
    let t = grp.index * m.group_tokens;
    var inv = 1.0;
    if (NORM) {
        inv = inv_rms(0u, m.cols / 4u);
    }
    let pg = rows4_at(r0);
    let pg2 = rows4_at(r0 + 4u);
    let pu = rows4_at(r0 + m.out_rows);
    let pu2 = rows4_at(r0 + 4u + m.out_rows);
    var acc = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var up = vec4<f32>(0.0);
    var up2 = vec4<f32>(0.0);
    for (var b = 0u; b < m.cols / 32u; b++) {
        let o = b * 8u;
        let v = Blk(xv(o, o), xv(o + 1u, o + 1u), xv(o + 2u, o + 2u), xv(o + 3u, o + 3u),
                    xv(o + 4u, o + 4u), xv(o + 5u, o + 5u), xv(o + 6u, o + 6u), xv(o + 7u, o + 7u));
        acc += dot_rows(pg, n_lo, b, v);
        if (n_hi > 0u) { acc2 += dot_rows(pg2, n_hi, b, v); }
        if (SWIGLU) {
            up += dot_rows(pu, n_lo, b, v);
            if (n_hi > 0u) { up2 += dot_rows(pu2, n_hi, b, v); }
        }
    }
    acc *= inv;
    up *= inv;
    acc2 *= inv;
    up2 *= inv;
    store(t, r0, acc.x, up.x);
    if (n_lo > 1u) { store(t, r0 + 1u, acc.y, up.y); }
    if (n_lo > 2u) { store(t, r0 + 2u, acc.z, up.z); }
    if (n_lo > 3u) { store(t, r0 + 3u, acc.w, up.w); }
    if (n_hi > 0u) { store(t, r0 + 4u, acc2.x, up2.x); }
    if (n_hi > 1u) { store(t, r0 + 5u, acc2.y, up2.y); }
    if (n_hi > 2u) { store(t, r0 + 6u, acc2.z, up2.z); }
    if (n_hi > 3u) { store(t, r0 + 7u, acc2.w, up2.w); }
}
