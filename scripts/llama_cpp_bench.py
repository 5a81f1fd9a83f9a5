#!/usr/bin/env python3
"""The peer for `edge-node bench`: llama.cpp (through llama-cpp-python) on the same GGUF and the same token ids.

Prefill runs the prompt as one batch; decode is greedy, one token at a time, reading only the last position's
logits. Prints one JSON line: {"prefill_tps": ..., "decode_tps": ..., "threads": ..., "version": ...}.
Needs `pip install llama-cpp-python numpy` (scripts/setup.sh --with-llama-cpp).
"""
import argparse
import json
import time

import llama_cpp
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--ids", required=True, help="comma-separated prompt token ids")
ap.add_argument("--tokens", type=int, default=64, help="tokens to decode")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()

ids = [int(t) for t in args.ids.split(",")]
m = llama_cpp.Llama(model_path=args.model, n_ctx=len(ids) + args.tokens + 8, n_batch=max(512, len(ids)),
                    n_threads=args.threads, n_threads_batch=args.threads, logits_all=False, verbose=False)
n_vocab = m.n_vocab()


def last_logits():
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.ctx, -1), shape=(n_vocab,))


# Warm up (first evaluation allocates buffers), then measure.
m.eval(ids[:8])
m.reset()
t0 = time.perf_counter()
m.eval(ids)
prefill = time.perf_counter() - t0
tok = int(np.argmax(last_logits()))
t1 = time.perf_counter()
for _ in range(args.tokens - 1):
    m.eval([tok])
    tok = int(np.argmax(last_logits()))
decode = time.perf_counter() - t1
print(json.dumps({
    "prefill_tps": len(ids) / prefill,
    "decode_tps": (args.tokens - 1) / decode,
    "threads": args.threads,
    "version": llama_cpp.__version__,
}))
