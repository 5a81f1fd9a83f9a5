#!/usr/bin/env python3
"""Regenerates node/tests/fixtures/qwen2_reference.json: the argmax of a plain numpy forward pass of
Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) at every position of a prompt, and the top logits there.

The Rust CPU reference (node/src/cpu.rs) must agree with it; node/tests/reference.rs checks that. This script is
independent of the Rust code on purpose: weights are dequantized by the `gguf` package (ggml's block formats as its
maintainers wrote them), token ids come from llama.cpp's tokenizer, and the forward pass is written from the
Qwen2 architecture (RMSNorm, q/k/v with bias, GPT-NeoX RoPE on the two halves of each head, grouped-query
attention, SwiGLU FFN, separate output head), in float32.

Needs: `pip install numpy gguf` and llama-cpp-python (for the token ids; vocab only, no weights are run).
Run:   python3 scripts/qwen2_reference.py [--model PATH] [--check]
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
OUT = ROOT / "node" / "tests" / "fixtures" / "qwen2_reference.json"
DEFAULT_MODEL = Path.home() / ".cache" / "edge-infer" / "models" / "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
PROMPT = "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot ="
TOP = 5


class Model:
    def __init__(self, path):
        self.r = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.r.tensors}

        def field(key):
            f = self.r.fields[key]
            return f.parts[f.data[0]][0]

        self.n_layers = int(field("qwen2.block_count"))
        self.dim = int(field("qwen2.embedding_length"))
        self.n_heads = int(field("qwen2.attention.head_count"))
        self.n_kv = int(field("qwen2.attention.head_count_kv"))
        self.eps = float(field("qwen2.attention.layer_norm_rms_epsilon"))
        self.theta = float(field("qwen2.rope.freq_base"))
        self.head_dim = self.dim // self.n_heads

    def w(self, name):
        t = self.tensors[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
            [int(d) for d in reversed(t.shape.tolist())] if len(t.shape) > 1 else [int(t.shape[0])]
        )


def rmsnorm(x, g, eps):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * g


def rope_neox(x, pos, theta):
    # x: (n, heads, head_dim); rotate (i, i + half).
    hd = x.shape[-1]
    half = hd // 2
    freq = theta ** (-2.0 * np.arange(half, dtype=np.float32) / hd)
    ang = pos[:, None].astype(np.float32) * freq[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def forward(m, ids):
    n = len(ids)
    hd, nh, nkv = m.head_dim, m.n_heads, m.n_kv
    x = m.w("token_embd.weight")[ids]  # (n, dim)
    pos = np.arange(n)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for l in range(m.n_layers):
        p = f"blk.{l}."
        h = rmsnorm(x, m.w(p + "attn_norm.weight"), m.eps)
        q = h @ m.w(p + "attn_q.weight").T + m.w(p + "attn_q.bias")
        k = h @ m.w(p + "attn_k.weight").T + m.w(p + "attn_k.bias")
        v = h @ m.w(p + "attn_v.weight").T + m.w(p + "attn_v.bias")
        q = rope_neox(q.reshape(n, nh, hd), pos, m.theta)
        k = rope_neox(k.reshape(n, nkv, hd), pos, m.theta)
        v = v.reshape(n, nkv, hd)
        group = nh // nkv
        out = np.zeros((n, nh, hd), dtype=np.float32)
        for head in range(nh):
            s = q[:, head, :] @ k[:, head // group, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, head, :] = s @ v[:, head // group, :]
        x = x + out.reshape(n, nh * hd) @ m.w(p + "attn_output.weight").T
        h = rmsnorm(x, m.w(p + "ffn_norm.weight"), m.eps)
        g = h @ m.w(p + "ffn_gate.weight").T
        u = h @ m.w(p + "ffn_up.weight").T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ m.w(p + "ffn_down.weight").T
    h = rmsnorm(x, m.w("output_norm.weight"), m.eps)
    return h @ m.w("output.weight").T  # (n, vocab)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path(os.environ.get("EDGE_QWEN_MODEL", DEFAULT_MODEL)))
    ap.add_argument("--check", action="store_true", help="compare with the committed fixture, exit 1 on a difference")
    args = ap.parse_args()

    from llama_cpp import Llama

    tok = Llama(model_path=str(args.model), vocab_only=True, verbose=False)
    ids = tok.tokenize(PROMPT.encode(), add_bos=True, special=False)
    logits = forward(Model(args.model), ids)
    top = np.argsort(-logits, axis=-1)[:, :TOP]
    sha = hashlib.sha256(args.model.read_bytes()).hexdigest()
    fixture = {
        "model_sha256": sha,
        "prompt": PROMPT,
        "ids": [int(i) for i in ids],
        "argmax": [int(t[0]) for t in top],
        "top": [[[int(i), float(logits[p, i])] for i in top[p]] for p in range(len(ids))],
    }
    if args.check:
        old = json.loads(OUT.read_text())
        same = old["ids"] == fixture["ids"] and old["argmax"] == fixture["argmax"]
        print("fixture matches" if same else "fixture differs")
        sys.exit(0 if same else 1)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}: {len(ids)} positions, argmax {fixture['argmax']}")


if __name__ == "__main__":
    main()
