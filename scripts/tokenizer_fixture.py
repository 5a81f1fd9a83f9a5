#!/usr/bin/env python3
"""Regenerates node/tests/fixtures/tokenizer_<model>.json: llama.cpp's token ids for a set of test strings, and
jinja2's renderings of the model's chat template.

The Rust tokenizer (node/src/tokenizer.rs) must reproduce these ids exactly and its chat prompts
(node/src/chat.rs) these renderings byte for byte; node/tests/tokenizer.rs checks both.

Needs:
  * llama-cpp-python (built and tested with 0.3.36: `pip install llama-cpp-python==0.3.36`), which bundles
    llama.cpp's tokenizer. Only the vocabulary is loaded (vocab_only=True), so no weights are read.
  * jinja2 (`pip install jinja2`), which renders the chat template exactly as Hugging Face's
    `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` does.
  * The model (scripts/setup.sh downloads both). --model smollm2 (the default): SmolLM2-135M-Instruct Q4_1;
    --model qwen2: Qwen2.5-Coder-0.5B-Instruct Q4_K_M; --model gemma3: Gemma-3-270M Q4_K_M. Found via --model-path, else (smollm2 only) $EDGE_MODEL,
    else in $EDGE_MODELS_DIR / $XDG_CACHE_HOME/edge-infer/models / ~/.cache/edge-infer/models.

Run from anywhere:
  python3 scripts/tokenizer_fixture.py                    # writes node/tests/fixtures/tokenizer_smollm2.json
  python3 scripts/tokenizer_fixture.py --model qwen2      # writes node/tests/fixtures/tokenizer_qwen2.json
  python3 scripts/tokenizer_fixture.py --model gemma3     # writes node/tests/fixtures/tokenizer_gemma3.json
  python3 scripts/tokenizer_fixture.py [--model M] --check  # compares with the existing file, exits 1 on a difference

Output: a JSON list of {"text": str, "ids": [int], "special": bool} and, for chat prompts, "messages":
[{"role", "content"}]; the text is then the chat template from the GGUF (tokenizer.chat_template) rendered by
jinja2 the way HF does (see render_chat), which Tokenizer::chat_prompt must reproduce.
  * special = false: llama_tokenize(text, add_special=True, parse_special=False) -- what Tokenizer::encode does.
  * special = true:  llama_tokenize(text, add_special=True, parse_special=True) -- Tokenizer::encode_with_special.
add_special=True means "add BOS/EOS if the GGUF asks for it" (tokenizer.ggml.add_bos_token /
add_eos_token); both GGUFs say add_bos_token = false, so no entry starts with BOS; Gemma 3's says true, so every gemma3 entry does (even "").
gemma3: the GGUF has no chat template, so the official Gemma 3 template (GEMMA3_TEMPLATE) is rendered; its output
starts with "<bos>", which the entry's "text" leaves out (kept in "rendered"; see main), and every entry has
"detokenized": llama.cpp's decoding of the ids after BOS.
llama-cpp-python's Llama.tokenize(text, add_bos=..., special=...) passes add_bos straight through as add_special.
"""

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "node" / "tests" / "fixtures"
MODEL_FILES = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2": "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

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
    # One user message (the templates add their default system message).
    [{"role": "user", "content": "What is the capital of France?"}],
    # System + user.
    [
        {"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    # Multi-turn.
    [
        {"role": "user", "content": "Écris un poème sur la mer 🌊\nen deux lignes."},
        {"role": "assistant", "content": "La mer murmure,\nle ciel l'écoute."},
        {"role": "user", "content": "Merci!"},
    ],
    # Unicode, newlines and braces (Jinja syntax inside content is data, not template).
    [
        {"role": "system", "content": "Réponds en JSON: {\"ok\": true}.\n\n  {{ not_a_variable }} {% if x %}"},
        {"role": "user", "content": "你好，世界 👋🏽\n\tfn main() { println!(\"{}\", 1); }\n}{ {#- c -#} \\n\r\n"},
        {"role": "assistant", "content": "  {\n  \"ok\": true\n}  "},
        {"role": "user", "content": "Ærøskøbing — naïve\u00a0café\u3000東京 🇫🇷\n\n\n"},
    ],
    # Tool results and a system message that is not first (Qwen's template has branches for both).
    [
        {"role": "user", "content": "What is 2+2 and 3*3?"},
        {"role": "assistant", "content": "Let me compute."},
        {"role": "tool", "content": "{\"result\": 4}"},
        {"role": "tool", "content": "{\"result\": 9}"},
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": ""},
    ],
]

# qwen2 only: more strings for its pre-tokenizer (digits one by one, a letter run may take one leading
# non-letter, punctuation runs take trailing newlines) and its many special and user-defined tokens.
QWEN2_PLAIN = [
    "1234567890 and 3.14159, -42, 1e10, 0x1F, 2,147,483,647, 007, ١٢٣ ₁₂ ½",
    "人工智能正在改变世界。机器学习、深度学习和自然语言处理是其核心技术。",
    "全角スペース\u3000と中文标点：「你好」，《书》……【注】",
    "👩🏽‍💻🧑‍🚀🏳️‍🌈 ✅❌⚠️ 🤖🤖🤖 a😀b",
    "a\n\n\n\nb    \n  \n\t\t\n   c",
    "    indented code\n        deeper\n\n\tTab\n",
    "\r\n\r\n  \r\n",
    "x \n y  \n\n z",
    "$foo #bar @baz _qux -x .y ,z ;w (paren) [bracket] {brace}",
    "'tis 'S 'RE 'Ve 'm 'LL 'd don't",
    "});\n}\n\n// end\n/* c */\n",
    "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c<|fim_middle|>",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    "<|endoftext|><|im_start|>system<|im_end|><|object_ref_start|><|box_end|><|vision_pad|>",
]
QWEN2_SPECIAL = [
    "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c<|fim_middle|>",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    "<|endoftext|><|im_start|>system<|im_end|><|object_ref_start|><|box_end|><|vision_pad|>",
    "<|repo_name|>edge<|file_sep|>main.rs\nfn main() {}<|endoftext|>",
    "text <|im_start|> spaced <|im_end|>\n<|im_start|>assistant\n",
]

# gemma3 only: SentencePiece (tokenizer.ggml.model = llama) without a space prefix; its user-defined tokens (runs of
# spaces, tabs and newlines) split the text even without special-token parsing; byte fallback for characters the
# vocabulary lacks; a literal byte-token text.
GEMMA3_PLAIN = [
    " leading space",
    "  two leading spaces",
    "a" + " " * 40 + "b" + "\t" * 35 + "c" + "\n" * 33 + "d",
    "\t\n\n",
    " \n \n\n \t x \t\t",
    "中文字符和日本語のひらがな、한국어 텍스트",
    "Emoji 😀🚀👍🏽🇫🇷👨‍👩‍👧 and ✅",
    "a\u0300e\u0301\u0302o\u0308\u0323 Z\u0351\u0352\u0353 \u0915\u094d\u0937",
    "private use \ue000 and \U000f0000 and \U0010fffd",
    "<0x41>",
    "literal <0x41><0x0A> and <0xZZ>",
    "<start_of_turn>user",
    "3.14159 2026 1,000,000 0x1F 007 12345678901234567890",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n}\n",
    "<end_of_turn>\n</s><eos><bos><pad><unk><mask><unused0>[multimodal]<start_of_image>",
    "word\u2581piece \u2581",
]
GEMMA3_SPECIAL = [
    "",
    "<start_of_turn>user",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<end_of_turn>\n</s><eos><bos><pad><unk><mask><unused0>[multimodal]<start_of_image>",
    "Hello<start_of_turn>model\n  indented <0x41>",
]

# Gemma 3's chat template (google/gemma-3-270m-it, tokenizer_config.json); the GGUF has none.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

GEMMA3_CHATS = CHATS[:4] + [
    [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
    ],
]

MODELS = {
    "smollm2": {"plain": PLAIN, "special": [], "reference": (REFERENCE_PROMPT, REFERENCE_IDS)},
    "qwen2": {"plain": PLAIN + QWEN2_PLAIN, "special": QWEN2_SPECIAL, "reference": None},
    "gemma3": {
        "plain": PLAIN + GEMMA3_PLAIN,
        "special": GEMMA3_SPECIAL,
        "reference": None,
        "template": GEMMA3_TEMPLATE,
        "chats": GEMMA3_CHATS,
    },
}


def models_dir():
    if os.environ.get("EDGE_MODELS_DIR"):
        return Path(os.environ["EDGE_MODELS_DIR"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "edge-infer" / "models"


def render_chat(template, messages, bos_token, eos_token):
    """The chat template rendered exactly like transformers' apply_chat_template(messages,
    add_generation_prompt=True) (transformers/utils/chat_template_utils.py: _compile_jinja_template and
    render_jinja_template): an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and loopcontrols, HF's
    tojson filter and raise_exception / strftime_now globals, tools=None, documents=None."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template).render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2", help="which fixture (default smollm2)")
    ap.add_argument("--model-path", help="the GGUF (default: see above)")
    ap.add_argument("--out", help="default node/tests/fixtures/tokenizer_<model>.json")
    ap.add_argument("--check", action="store_true", help="compare with the existing fixture instead of writing")
    args = ap.parse_args()

    spec = MODELS[args.model]
    model_path = args.model_path
    if model_path is None and args.model == "smollm2":
        model_path = os.environ.get("EDGE_MODEL")
    if model_path is None:
        model_path = str(models_dir() / MODEL_FILES[args.model])
    out = Path(args.out) if args.out else FIXTURES / f"tokenizer_{args.model}.json"

    if not Path(model_path).is_file():
        sys.exit(f"model not found: {model_path} (run scripts/setup.sh or pass --model-path)")
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    meta = llm.metadata
    print(f"llama-cpp-python {llama_cpp.__version__}; tokenizer.ggml.pre={meta.get('tokenizer.ggml.pre')}; "
          f"add_bos_token={meta.get('tokenizer.ggml.add_bos_token')}", file=sys.stderr)
    template = spec.get("template") or meta.get("tokenizer.chat_template")
    if not template:
        sys.exit(f"{model_path} has no tokenizer.chat_template")

    def token_text(key):
        return llm.detokenize([int(meta[key])], special=True).decode("utf-8") if key in meta else ""

    bos_token, eos_token = token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")

    def tok(text, special):
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    if spec["reference"]:
        prompt, want = spec["reference"]
        got = tok(prompt, False)
        if got != want:
            sys.exit(f"reference prompt tokenized to {got}, expected {want}")

    entries = [{"text": t, "ids": tok(t, False), "special": False} for t in spec["plain"]]
    entries += [{"text": t, "ids": tok(t, True), "special": True} for t in spec["special"]]
    if args.model == "gemma3":
        # llama.cpp's own decoding of the ids after BOS (control tokens as their text).
        for e in entries:
            assert e["ids"][:1] == [llm.token_bos()], e
            e["detokenized"] = llm.detokenize(e["ids"][1:], special=True).decode("utf-8", errors="replace")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token") in ("true", True, "1"))
    for msgs in spec.get("chats", CHATS):
        text = render_chat(template, msgs, bos_token, eos_token)
        entry = {"text": text, "ids": tok(text, True), "special": True, "messages": msgs}
        if add_bos and bos_token and text.startswith(bos_token):
            # The template prints the BOS text and tokenizing adds BOS: llama.cpp's common_chat_templates_apply
            # removes the text so that exactly one BOS id comes first (tokenizing the rendering as is gives two).
            # "text" is therefore what Tokenizer::chat_prompt returns, "rendered" jinja2's output.
            stripped = text[len(bos_token):]
            entry = {"text": stripped, "rendered": text, "ids": tok(stripped, True), "special": True, "messages": msgs}
            assert entry["ids"][:2] != [llm.token_bos()] * 2 and tok(text, True)[:2] == [llm.token_bos()] * 2
        entries.append(entry)

    body = "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n"
    if args.check:
        old = json.loads(out.read_text(encoding="utf-8"))
        if old != json.loads(body):
            sys.exit(f"{out} differs from llama.cpp's / jinja2's current output")
        print(f"{out}: {len(entries)} entries match", file=sys.stderr)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    print(f"wrote {len(entries)} entries to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
