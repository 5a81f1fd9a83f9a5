#!/usr/bin/env python3
"""Teacher-forced fixture from llama.cpp (llama-cpp-python 0.3.36): tokenizes a text with llama.cpp's tokenizer
(the GGUF's own BOS flag), runs it through the model in one batch with every position's logits, and writes the
token ids and the argmax at each position as JSON, with llama.cpp's perplexity on the same tokens computed as
`llama-perplexity` does (chunks of --ppl-ctx tokens from an empty context, the second half of each scored). The
CPU backend's tests compare their top-1 and `edge-node perplexity` to it.

    python3 scripts/llama_cpp_fixture.py --model M.gguf --text node/tests/fixtures/teacher_text.txt --out F.json

With --variants it writes nothing: it runs llama.cpp again with settings that change only its float arithmetic
(flash attention on, an f32 KV cache, one thread) and prints each one's top-1 agreement with the default run, the
yardstick for how far any other implementation's agreement can be expected to go.
"""
import argparse
import json

import llama_cpp
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--text", required=True)
ap.add_argument("--out")
ap.add_argument("--variants", action="store_true", help="print llama.cpp's agreement with itself; write nothing")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--ppl-ctx", type=int, default=256)
args = ap.parse_args()
if not args.out and not args.variants:
    ap.error("--out is required (or --variants)")


def load(**settings):
    kw = dict(model_path=args.model, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=args.threads,
              logits_all=True, verbose=False)
    kw.update(settings)
    return llama_cpp.Llama(**kw)


def argmax_all(m, ids):
    m.eval(ids)
    return np.array(m.scores[: len(ids)], dtype=np.float32).argmax(axis=1)


m = load()
text = open(args.text, encoding="utf-8").read()
ids = m.tokenize(text.encode("utf-8"), add_bos=True, special=False)
top1 = argmax_all(m, ids).tolist()

if args.variants:
    variants = {"flash attention": dict(flash_attn=True), "f32 KV cache": dict(type_k=0, type_v=0),
                "1 thread": dict(n_threads=1)}
    for name, settings in variants.items():
        other = argmax_all(load(**settings), ids)
        agree = float((other == np.array(top1)).mean())
        print(f"llama.cpp with {name}: top-1 agreement with llama.cpp's default {100 * agree:.2f}% of {len(ids)}")
    raise SystemExit(0)

# Perplexity, chunk by chunk from an empty context, as llama-perplexity (BOS first when the model adds one).
ctx, first = args.ppl_ctx, args.ppl_ctx // 2
add_bos = len(ids) > 0 and ids[0] == m.token_bos()
nll, count = 0.0, 0
for c in range(len(ids) // ctx):
    chunk = ids[c * ctx:(c + 1) * ctx]
    if add_bos:
        chunk = [m.token_bos()] + chunk[1:]
    m.reset()
    m.eval(chunk)
    lg = np.array(m.scores[:ctx], dtype=np.float64)
    for j in range(first, ctx - 1):
        row = lg[j]
        mx = row.max()
        nll += np.log(np.exp(row - mx).sum()) + mx - row[chunk[j + 1]]
        count += 1
ppl = float(np.exp(nll / count))
with open(args.out, "w") as f:
    json.dump({"model": args.model.split("/")[-1], "llama_cpp": llama_cpp.__version__, "ids": ids, "top1": top1,
               "perplexity": {"ctx": ctx, "chunks": len(ids) // ctx, "ppl": ppl}}, f)
    f.write("\n")
print(f"{len(ids)} tokens, perplexity {ppl:.4f} (ctx {ctx}) -> {args.out}")
