#!/usr/bin/env python3
"""The peer for `edge-node bench`: llama.cpp (through llama-cpp-python) on the same GGUF and the same token ids.

Prefill runs the prompt as one batch; decode is greedy, one token at a time, reading only the last position's
logits. Prints one JSON line: {"prefill_tps": ..., "decode_tps": ..., "threads": ..., "version": ...}.

With --batch 1,2,4,8 it measures batched decode instead, as `edge-node bench` does on its side: for each B, B
sequences each prefilled with the prompt (not timed), then --tokens steps that decode one greedy token of every
sequence in one llama_decode (llama.cpp's own continuous batching: one batch, a sequence id per row, every row's
logits). Prints {"batched_tps": {"1": ..., "8": ...}, "threads": ..., "version": ...}.
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
ap.add_argument("--batch", help="comma-separated batch sizes: measure batched decode instead")
args = ap.parse_args()

ids = [int(t) for t in args.ids.split(",")]
m = llama_cpp.Llama(model_path=args.model, n_ctx=len(ids) + args.tokens + 8, n_batch=max(512, len(ids)),
                    n_threads=args.threads, n_threads_batch=args.threads, logits_all=False, verbose=False)
n_vocab = m.n_vocab()


def batched_tps(b):
    """Aggregate decode tok/s of b sequences sharing every step (see the module's documentation)."""
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = b * (len(ids) + args.tokens + 16)
    cp.n_batch = cp.n_ubatch = max(512, len(ids))
    cp.n_seq_max, cp.n_threads, cp.n_threads_batch = b, args.threads, args.threads
    ctx = llama_cpp.llama_init_from_model(m.model, cp)
    batch = llama_cpp.llama_batch_init(max(len(ids), b), 0, b)

    def decode(rows):  # rows: (token, position, sequence, wants logits)
        batch.n_tokens = len(rows)
        for i, (t, p, s, want) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p, 1, want
            batch.seq_id[i][0] = s
        assert llama_cpp.llama_decode(ctx, batch) == 0, "llama_decode failed"

    def argmax(i):
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))

    try:
        nxt = []
        for s in range(b):
            decode([(t, p, s, p == len(ids) - 1) for p, t in enumerate(ids)])
            nxt.append(argmax(-1))
        t0 = time.perf_counter()
        for k in range(args.tokens):
            decode([(nxt[s], len(ids) + k, s, True) for s in range(b)])
            nxt = [argmax(i) for i in range(b)]
        return b * args.tokens / (time.perf_counter() - t0)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


if args.batch:
    sizes = [int(b) for b in args.batch.split(",")]
    print(json.dumps({"batched_tps": {str(b): batched_tps(b) for b in sizes}, "threads": args.threads,
                      "version": llama_cpp.__version__}))
    raise SystemExit(0)


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
