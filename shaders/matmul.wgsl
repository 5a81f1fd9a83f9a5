// y = W · x for n tokens, W quantized (see dequant_block), one output row per invocation and up to TB tokens per
// invocation, so each block is decoded once per TB tokens. No workgroup memory, no barriers.
// Header constants: NORM (x is RMS-normalised with gamma on the fly), BIAS, RESIDUAL (y += result),
// SWIGLU (rows [0, out_rows) are gate, [out_rows, 2 out_rows) are up: y = silu(gate) * up).

struct Step { n_tok: u32, pos0: u32, head_n: u32, head_row0: u32 }
struct Mat {
    rows: u32,       // rows of this weight chunk (its layout stride)
    cols: u32,       // K, a multiple of 32
    out_rows: u32,   // outputs computed (rows, or rows / 2 with SWIGLU)
    row_off: u32,    // first output column written (chunks, q/k/v parts)
    out_stride: u32, // floats per token in y
    head: u32,       // 1: tokens come from Step.head_n / head_row0 (output head)
    eps: f32,
    bias_off: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> m: Mat;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w_scale: array<u32>;
@group(0) @binding(4) var<storage, read> w_quant: array<u32>;
@group(0) @binding(5) var<storage, read> gamma: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

const TB: u32 = 8u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    var nt = step.n_tok;
    var row0 = 0u;
    if (m.head != 0u) {
        nt = step.head_n;
        row0 = step.head_row0;
    }
    let t0 = gid.y * TB;
    if (r >= m.out_rows || t0 >= nt) {
        return;
    }
    let cnt = min(TB, nt - t0);
    let k_len = m.cols;

    var inv: array<f32, TB>;
    for (var t = 0u; t < cnt; t++) {
        inv[t] = 1.0;
        if (NORM) {
            let base = (row0 + t0 + t) * k_len;
            var ss = 0.0;
            for (var k = 0u; k < k_len; k++) {
                let v = x[base + k];
                ss += v * v;
            }
            inv[t] = inverseSqrt(ss / f32(k_len) + m.eps);
        }
    }

    var acc: array<f32, TB>;
    var acc_up: array<f32, TB>;
    var w: array<f32, 32>;
    var w_up: array<f32, 32>;
    for (var b = 0u; b < k_len / 32u; b++) {
        dequant_block(m.rows, r, b, &w);
        if (SWIGLU) {
            dequant_block(m.rows, r + m.out_rows, b, &w_up);
        }
        for (var t = 0u; t < cnt; t++) {
            let base = (row0 + t0 + t) * k_len + b * 32u;
            var s = 0.0;
            var s_up = 0.0;
            for (var j = 0u; j < 32u; j++) {
                var xv = x[base + j];
                if (NORM) {
                    xv *= gamma[b * 32u + j];
                }
                s += w[j] * xv;
                if (SWIGLU) {
                    s_up += w_up[j] * xv;
                }
            }
            acc[t] += s;
            acc_up[t] += s_up;
        }
    }

    for (var t = 0u; t < cnt; t++) {
        var v = acc[t] * inv[t];
        if (BIAS) {
            v += bias[m.bias_off + r];
        }
        if (SWIGLU) {
            v = v / (1.0 + exp(-v)) * (acc_up[t] * inv[t]);
        }
        let o = (t0 + t) * m.out_stride + m.row_off + r;
        if (RESIDUAL) {
            v += y[o];
        }
        y[o] = v;
    }
}
