#!/usr/bin/env python3
"""Regenerates node/tests/fixtures/tokenizer_smollm2.json: llama.cpp's token ids for a set of test strings.

The Rust tokenizer (node/src/tokenizer.rs) must reproduce these ids exactly; node/tests/tokenizer.rs checks it.

Needs:
  * llama-cpp-python (built and tested with 0.3.36: `pip install llama-cpp-python==0.3.36`), which bundles
    llama.cpp's tokenizer. Only the vocabulary is loaded (vocab_only=True), so no weights are read.
  * The SmolLM2 model (scripts/setup.sh downloads it). Found via $EDGE_MODEL, else
    ~/.cache/edge-infer/models/SmolLM2-135M-Instruct.Q4_1.gguf.

Run from anywhere:
  python3 scripts/tokenizer_fixture.py            # writes node/tests/fixtures/tokenizer_smollm2.json
  python3 scripts/tokenizer_fixture.py --check    # compares against the existing file, exits 1 on a difference

Output: a JSON list of {"text": str, "ids": [int], "special": bool} and, for chat prompts, "messages":
[{"role", "content"}] (the text is then the ChatML rendering of the messages, exactly as
Tokenizer::chat_prompt builds it).
  * special = false: llama_tokenize(text, add_special=True, parse_special=False) -- what Tokenizer::encode does.
  * special = true:  llama_tokenize(text, add_special=True, parse_special=True) -- Tokenizer::encode_with_special.
add_special=True means "add BOS/EOS if the GGUF asks for it" (tokenizer.ggml.add_bos_token /
add_eos_token); SmolLM2's GGUF says add_bos_token = false, so no entry starts with BOS.
llama-cpp-python's Llama.tokenize(text, add_bos=..., special=...) passes add_bos straight through as add_special.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "node" / "tests" / "fixtures" / "tokenizer_smollm2.json"
DEFAULT_MODEL = Path.home() / ".cache" / "edge-infer" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

REFERENCE_PROMPT = "Once upon a time, there was a little robot named"
REFERENCE_IDS = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 3365]

PYTHON_SNIPPET = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b  # tuple swap
    return b


print({k: fib(k) for k in range(10)}, [x ** 2 for x in range(3)])
'''

RUST_SNIPPET = '''impl<'a, T: Clone + Send> Iterator for Chunks<'a, T> {
    type Item = &'a [T];
    fn next(&mut self) -> Option<Self::Item> {
\tif self.pos >= self.data.len() { return None; }
\tlet end = (self.pos + self.size).min(self.data.len());
\tlet s = &self.data[self.pos..end];
\tself.pos = end; // advance
\tSome(s)
    }
}
'''

PLAIN = [
    REFERENCE_PROMPT,
    "",
    "Héllo wörld, café naïve résumé — ¿Qué tal? Ça va, Ærøskøbing! Straße.",
    "你好，世界！这是一个测试。日本語のテキストもあります。",
    "Emoji: 😀🚀👍🏽 ❤️ 🇫🇷 family 👨‍👩‍👧‍👦 done",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "English, Русский, Ελληνικά, हिन्दी, 한국어 and עברית in one line: Zürich→東京.",
    "e\u0301 n\u0303 a\u0308 (combining marks), ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ",
    PYTHON_SNIPPET,
    RUST_SNIPPET,
    "a+=b; x != y && z <= 0 || !w >>= 2 ** 3 // 4 -> r => s :: t ... ?? @decorator #[derive(Debug)] $var ~x ^y",
    "12345 3.14159 1,000,000 2026-11-24",
    "Version 2.0.1-beta3 released 2024/05/09 at 10:30am (UTC+2), build #98765; ⅓ ² ٣ ४",
    "multiple   spaces    between     words",
    "tabs\tand\t\tmore\ttabs\t",
    "line one\nline two\r\nline three\n",
    "trailing spaces   ",
    "\n\n\n",
    "   leading",
    " ",
    "\n",
    "mixed \t \n whitespace \n\n  \t\tend",
    "\u00a0non-breaking\u2003em space\u200bzero-width\u3000ideographic",
    "I'm don't we'll they've she'd it's you're",
    "I'M DON'T WE'LL They'Re",
    'JSON: {"key": [1, 2.5, null, true], "nested": {"a": "b\\n"}}',
    "https://example.com/path/to?q=1&x=y#frag user@example.org",
    "# Title\n\n* item one\n* **bold** and _italic_ `code`\n\n> quote",
    "<|im_start|>user\nnot special here<|im_end|>",
]

CHATS = [
    [
        {"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "user", "content": "Écris un poème sur la mer 🌊\nen deux lignes."},
        {"role": "assistant", "content": "La mer murmure,\nle ciel l'écoute."},
        {"role": "user", "content": "Merci!"},
    ],
]


def chat_prompt(messages):
    """ChatML, exactly as node/src/tokenizer.rs Tokenizer::chat_prompt renders it."""
    s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return s + "<|im_start|>assistant\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("EDGE_MODEL", str(DEFAULT_MODEL)))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--check", action="store_true", help="compare with the existing fixture instead of writing")
    args = ap.parse_args()

    if not Path(args.model).is_file():
        sys.exit(f"model not found: {args.model} (run scripts/setup.sh or set EDGE_MODEL)")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    print(f"llama-cpp-python {llama_cpp.__version__}; tokenizer.ggml.pre={llm.metadata.get('tokenizer.ggml.pre')}; "
          f"add_bos_token={llm.metadata.get('tokenizer.ggml.add_bos_token')}", file=sys.stderr)

    def tok(text, special):
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    got = tok(REFERENCE_PROMPT, False)
    if got != REFERENCE_IDS:
        sys.exit(f"reference prompt tokenized to {got}, expected {REFERENCE_IDS}")

    entries = [{"text": t, "ids": tok(t, False), "special": False} for t in PLAIN]
    for msgs in CHATS:
        text = chat_prompt(msgs)
        entries.append({"text": text, "ids": tok(text, True), "special": True, "messages": msgs})

    body = "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n"
    if args.check:
        old = json.loads(Path(args.out).read_text(encoding="utf-8"))
        if old != json.loads(body):
            sys.exit(f"{args.out} differs from llama.cpp's current output")
        print(f"{args.out}: {len(entries)} entries match", file=sys.stderr)
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(body, encoding="utf-8")
    print(f"wrote {len(entries)} entries to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
