#!/usr/bin/env python3
"""Regenerates node/tests/fixtures/gemma3_reference.json: a plain numpy forward pass of Gemma-3-270M (Q4_K_M),
its argmax at every position of two prompts, its top logits at their last positions, and its greedy
continuation of the short prompt.

The Rust backends must agree with it; node/tests/gemma3.rs checks that. This script is independent of the Rust
code on purpose: weights are dequantized by the `gguf` package, token ids come from llama.cpp's tokenizer, and
the forward pass is written from llama.cpp's gemma3 graph (llm_build_gemma3_iswa), in float32:
  - the token embedding times sqrt(width);
  - per layer: RMSNorm; q, k, v (no bias); RMSNorm of each query and key head (attn_q_norm, attn_k_norm);
    GPT-NeoX RoPE with base 10000 on local layers and rope.freq_base on global ones; attention scaled by
    1/sqrt(head_dim), where a local layer sees the last `sliding_window` positions (its own included) and every
    sixth layer (5, 11, 17) sees them all; the output RMS-normed (post_attention_norm) before the residual add;
  - the FFN: GELU (tanh approximation) of the gate times up, down, RMS-normed (post_ffw_norm), added;
  - the final RMSNorm and the tied head (the token embedding).
The GGUF's norm weights already hold (1 + w): the converter adds the one, so they are used as they are.

The long prompt (node/tests/fixtures/teacher_text.txt, over 512 tokens) is where the window masks keys.
The fixture also holds llama.cpp's own argmax over the long prompt and its greedy continuation of the short one
(llama-cpp-python, the same file), for the agreement checks against llama.cpp.

Needs: `pip install numpy gguf` and llama-cpp-python (for the token ids; vocab only, no weights are run).
Run:   python3 scripts/gemma3_reference.py [--model PATH] [--check]
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "node" / "tests" / "fixtures" / "gemma3_reference.json"
LONG = ROOT / "node" / "tests" / "fixtures" / "teacher_text.txt"
DEFAULT_MODEL = Path.home() / ".cache" / "edge-infer" / "models" / "gemma-3-270m-q4_k_m.gguf"
SHORT = "The quick brown fox jumps over the lazy dog. In the morning, the fox"
CONTINUE = 12
TOP = 5


class Model:
    def __init__(self, path):
        self.r = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.r.tensors}
        self.cache = {}

        def field(key, default=None):
            if key not in self.r.fields:
                return default
            f = self.r.fields[key]
            return f.parts[f.data[0]][0]

        self.n_layers = int(field("gemma3.block_count"))
        self.dim = int(field("gemma3.embedding_length"))
        self.n_heads = int(field("gemma3.attention.head_count"))
        self.n_kv = int(field("gemma3.attention.head_count_kv"))
        self.head_dim = int(field("gemma3.attention.key_length"))
        self.eps = float(field("gemma3.attention.layer_norm_rms_epsilon"))
        self.theta = float(field("gemma3.rope.freq_base"))
        self.theta_local = float(field("gemma3.rope.freq_base_swa", 10000.0))
        self.window = int(field("gemma3.attention.sliding_window"))

    def w(self, name):
        if name not in self.cache:
            t = self.tensors[name]
            shape = [int(d) for d in reversed(t.shape.tolist())] if len(t.shape) > 1 else [int(t.shape[0])]
            self.cache[name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        return self.cache[name]


def rmsnorm(x, g, eps):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * g


def rope_neox(x, pos, theta):
    # x: (n, heads, head_dim); rotate (i, i + half).
    hd = x.shape[-1]
    half = hd // 2
    freq = np.float32(theta) ** (-2.0 * np.arange(half, dtype=np.float32) / hd)
    ang = pos[:, None].astype(np.float32) * freq[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608) * (x + np.float32(0.044715) * x * x * x)))


def forward(m, ids):
    """The final hidden states (n, dim), after the output norm."""
    n = len(ids)
    hd, nh, nkv = m.head_dim, m.n_heads, m.n_kv
    x = m.w("token_embd.weight")[ids] * np.float32(np.sqrt(m.dim))  # (n, dim)
    pos = np.arange(n)
    causal = pos[None, :] > pos[:, None]
    local_mask = np.where(causal | (pos[:, None] - pos[None, :] >= m.window), -np.inf, 0).astype(np.float32)
    global_mask = np.where(causal, -np.inf, 0).astype(np.float32)
    for l in range(m.n_layers):
        p = f"blk.{l}."
        local = l % 6 < 5
        h = rmsnorm(x, m.w(p + "attn_norm.weight"), m.eps)
        q = (h @ m.w(p + "attn_q.weight").T).reshape(n, nh, hd)
        k = (h @ m.w(p + "attn_k.weight").T).reshape(n, nkv, hd)
        v = (h @ m.w(p + "attn_v.weight").T).reshape(n, nkv, hd)
        q = rmsnorm(q, m.w(p + "attn_q_norm.weight"), m.eps)
        k = rmsnorm(k, m.w(p + "attn_k_norm.weight"), m.eps)
        theta = m.theta_local if local else m.theta
        q = rope_neox(q, pos, theta)
        k = rope_neox(k, pos, theta)
        mask = local_mask if local else global_mask
        group = nh // nkv
        out = np.zeros((n, nh, hd), dtype=np.float32)
        for head in range(nh):
            s = q[:, head, :] @ k[:, head // group, :].T / np.float32(np.sqrt(hd)) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, head, :] = s @ v[:, head // group, :]
        a = out.reshape(n, nh * hd) @ m.w(p + "attn_output.weight").T
        x = x + rmsnorm(a, m.w(p + "post_attention_norm.weight"), m.eps)
        h = rmsnorm(x, m.w(p + "ffn_norm.weight"), m.eps)
        g = h @ m.w(p + "ffn_gate.weight").T
        u = h @ m.w(p + "ffn_up.weight").T
        f = (gelu_tanh(g) * u) @ m.w(p + "ffn_down.weight").T
        x = x + rmsnorm(f, m.w(p + "post_ffw_norm.weight"), m.eps)
    return rmsnorm(x, m.w("output_norm.weight"), m.eps)


def logits(m, h):
    return h @ m.w("token_embd.weight").T  # tied head


def prompt_entry(m, text, ids):
    h = forward(m, ids)
    argmax = []
    for chunk in range(0, len(ids), 64):  # the head in chunks: (n, 262144) floats at once is large
        argmax += [int(t) for t in np.argmax(logits(m, h[chunk : chunk + 64]), axis=-1)]
    last = logits(m, h[-1:])[0]
    top = np.argsort(-last)[:TOP]
    return {
        "text": text,
        "ids": [int(i) for i in ids],
        "argmax": argmax,
        "top_last": [[int(i), float(last[i])] for i in top],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path(os.environ.get("EDGE_GEMMA3_MODEL", DEFAULT_MODEL)))
    ap.add_argument("--check", action="store_true", help="compare with the committed fixture, exit 1 on a difference")
    args = ap.parse_args()

    from llama_cpp import Llama

    tok = Llama(model_path=str(args.model), vocab_only=True, verbose=False)
    m = Model(args.model)
    short_ids = tok.tokenize(SHORT.encode(), add_bos=True, special=False)
    long_text = LONG.read_text()
    long_ids = tok.tokenize(long_text.encode(), add_bos=True, special=False)
    assert len(long_ids) > m.window + 16, f"the long prompt has {len(long_ids)} tokens, not past the window"
    ids = list(short_ids)
    for _ in range(CONTINUE):
        ids.append(int(np.argmax(logits(m, forward(m, ids)[-1:])[0])))
    llama = Llama(model_path=str(args.model), n_ctx=1024, logits_all=True, verbose=False)
    llama.eval(long_ids)
    llama_long = [int(t) for t in np.argmax(np.asarray(llama.scores[: len(long_ids)]), axis=-1)]
    llama.reset()
    llama_greedy, seq = [], list(short_ids)
    for _ in range(CONTINUE):
        llama.reset()
        llama.eval(seq)
        seq.append(int(np.argmax(llama.scores[len(seq) - 1])))
        llama_greedy.append(seq[-1])
    fixture = {
        "model_sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(),
        "short": prompt_entry(m, SHORT, short_ids),
        "greedy": ids[len(short_ids) :],
        "long": prompt_entry(m, "node/tests/fixtures/teacher_text.txt", long_ids),
        "llama_cpp": {"greedy": llama_greedy, "long_argmax": llama_long},
    }
    if args.check:
        old = json.loads(OUT.read_text())
        same = all(old[k] == fixture[k] for k in ("greedy", "llama_cpp")) and all(
            old[p][k] == fixture[p][k] for p in ("short", "long") for k in ("ids", "argmax")
        )
        print("fixture matches" if same else "fixture differs")
        sys.exit(0 if same else 1)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}: {len(short_ids)} + {len(long_ids)} positions, greedy {fixture['greedy']}")


if __name__ == "__main__":
    main()
