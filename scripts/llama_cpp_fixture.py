#!/usr/bin/env python3
"""Teacher-forced fixture from llama.cpp (llama-cpp-python 0.3.36): tokenizes a text with llama.cpp's tokenizer
(the GGUF's own BOS flag), runs it through the model in one batch with every position's logits, and writes the
token ids and the argmax at each position as JSON, with llama.cpp's perplexity on the same tokens computed as
`llama-perplexity` does (chunks of --ppl-ctx tokens from an empty context, the second half of each scored). The
CPU backend's tests compare their top-1 and `edge-node perplexity` to it.

    python3 scripts/llama_cpp_fixture.py --model M.gguf --text node/tests/fixtures/teacher_text.txt --out F.json
"""
import argparse
import json

import llama_cpp
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--text", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--ppl-ctx", type=int, default=256)
args = ap.parse_args()

m = llama_cpp.Llama(model_path=args.model, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=args.threads,
                    logits_all=True, verbose=False)
text = open(args.text, encoding="utf-8").read()
ids = m.tokenize(text.encode("utf-8"), add_bos=True, special=False)
m.eval(ids)
logits = np.array(m.scores[: len(ids)], dtype=np.float32)
top1 = logits.argmax(axis=1).tolist()

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
