//! Tokenizer built from the vocabulary embedded in a GGUF file, producing the same token ids as llama.cpp.
//!
//! Two kinds of vocabulary are supported: SentencePiece (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2,
//! Mistral), encoded by [`crate::tokenizer_spm`] (its module documentation has the algorithm; the special-token
//! classes, BOS/EOS, end of generation and chat prompts below apply to it as well), and GPT-2-style byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`), which covers SmolLM2, Qwen2, Llama 3, StarCoder and most current BPE
//! models. The BPE itself is the `tokenizers` crate's; this module only configures it the way llama.cpp
//! (`src/llama-vocab.cpp`) interprets the GGUF metadata:
//!
//! * **Vocabulary and merges** come from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges` (merge rank = position
//!   in the list; for a pair listed twice the first rank wins, as in llama.cpp).
//! * **Pre-tokenizer**: llama.cpp splits text with a per-model list of regexes selected by `tokenizer.ggml.pre`.
//!   Each regex becomes a `Split` pre-tokenizer with `Isolated` behaviour (matches and the text between them both
//!   become pieces, as llama.cpp's `unicode_regex_split` does), followed by `ByteLevel` (no regex, no prefix
//!   space) which maps bytes to the GPT-2 printable alphabet. Supported families:
//!   - `smollm`, `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva-7b`, `mellum2`:
//!     `\p{N}` (every digit its own piece), then the GPT-2 regex;
//!   - `gpt-2`/`gpt2`, `mpt`, `olmo`, `jais`, `phi-2`, … : the GPT-2 regex alone;
//!   - `qwen2`, `stablelm2`, `deepseek-r1-qwen`, `megrez`, …: the Qwen2 regex (letters may take one leading
//!     non-letter, digits one by one);
//!   - `llama3`/`llama-bpe`/…, `dbrx`, `smaug-bpe`: the Llama 3 regex (digits in groups of up to three); the
//!     llama3 names also skip merges for words that are whole vocabulary entries and default to adding BOS;
//!   - `default` or a missing key: llama.cpp's "default" list (punctuation runs, the GPT-2 regex, digit runs,
//!     groups of three ASCII digits).
//!
//!   An unknown `tokenizer.ggml.pre` (llama.cpp refuses to load those) falls back to the GPT-2 regex alone; the
//!   fallback is silent (no log), [`Tokenizer::pre_tokenizer`] reports which family was chosen.
//! * **Special tokens**: tokens of type control (3) or unknown (2) — plus tokens whose text llama.cpp
//!   force-promotes to control (end-of-generation and FIM markers) — are special: [`Tokenizer::encode`] treats
//!   their text as ordinary text, [`Tokenizer::encode_with_special`] turns it into the token id (ChatML
//!   `<|im_start|>` etc.). User-defined tokens (type 4) are matched in both modes, as in llama.cpp.
//!   Overlapping special tokens are resolved leftmost-longest (llama.cpp: longest token first); the two agree
//!   unless one special token's text overlaps another's.
//! * **BOS/EOS**: `tokenizer.ggml.add_bos_token` / `add_eos_token` decide whether `encode*` add them (defaults:
//!   BOS only for the llama3 family, never EOS), exactly like `llama_tokenize(.., add_special = true)`. Without a
//!   `tokenizer.ggml.bos_token_id`/`eos_token_id` key llama.cpp's GPT-2 default id 11 is used.
//! * **No normalization** (llama.cpp applies none to BPE vocabularies) and no clean-up of spaces on decode, so
//!   `decode(encode(s)) == s` for any string.
//!
//! Checked against llama.cpp (llama-cpp-python 0.3.36): node/tests/tokenizer.rs compares SmolLM2 (`smollm`) and
//! Qwen2.5-Coder (`qwen2`), node/tests/tokenizer_gemma3.rs Gemma-3-270M (SentencePiece) with fixtures of
//! llama.cpp's ids (scripts/tokenizer_fixture.py); 6,000 random
//! mixed-script/whitespace/special-token strings gave identical ids with the real Qwen2.5 vocabulary, and 4,500
//! with the SmolLM2 vocabulary relabelled as `smollm`, `qwen2`, `gpt-2`, `default` (and no `pre` key) and
//! `llama-bpe`, with and without special-token parsing.
//!
//! Decoding maps every token back to its bytes (byte-level alphabet for normal tokens, the literal text for
//! special and user-defined ones) and joins them; [`TextStream`] does the same incrementally.

use std::collections::{HashMap, HashSet};

use crate::chat::{ChatFallback, ChatTemplate};
use crate::gguf::{Gguf, GgufError, Value};
use crate::tokenizer_bpe::{build_bpe, Bpe, PreFamily};
use crate::tokenizer_spm::Spm;

/// Token texts llama.cpp always treats as end-of-generation (and promotes to control tokens).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// FIM padding / repository / file-separator markers: llama.cpp detects them by text (unless the GGUF names them
/// by id), promotes them to control tokens and counts them as end-of-generation.
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Other FIM markers llama.cpp promotes to control tokens (not end-of-generation).
const FIM_OTHER_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];

/// GGUF token types (`tokenizer.ggml.token_type`).
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;

/// llama.cpp's default BOS/EOS id for GPT-2 vocabularies whose GGUF does not name them.
const GPT2_DEFAULT_SPECIAL: u32 = 11;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer metadata key is missing or has the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The vocabulary is neither GPT-2-style BPE nor SentencePiece (e.g. WordPiece `bert`, Unigram `t5`).
    #[error(
        "unsupported tokenizer model {0:?} (only \"gpt2\" byte-level BPE and \"llama\" SentencePiece are supported)"
    )]
    UnsupportedModel(String),
    /// The tokenizer metadata is inconsistent (lengths differ, a token is not a string, …).
    #[error("invalid tokenizer metadata: {0}")]
    Invalid(String),
    /// The `tokenizers` crate rejected the vocabulary or failed to encode.
    #[error("tokenizer error: {0}")]
    Backend(String),
}

/// One chat turn for [`Tokenizer::chat_prompt`]: `system`, `user`, `assistant` (with the tool calls it made, if
/// any) or `tool` (a tool's result, answering the call `tool_call_id`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::chat_tools::ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

/// A GGUF vocabulary ready to encode and decode. Cheap to share (`&Tokenizer` is `Send + Sync`).
pub struct Tokenizer {
    encoder: Encoder,
    /// The bytes each token decodes to.
    pieces: Vec<Vec<u8>>,
    /// Token text -> id (last id wins for duplicate texts, as in llama.cpp).
    ids: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog: HashSet<u32>,
    /// Control tokens (type control or unknown, or promoted like llama.cpp does), by id.
    control: Vec<u32>,
    /// `tokenizer.chat_template`, compiled (ChatML or Gemma turns if absent or unusable).
    chat: ChatTemplate,
}

/// How text becomes ids.
enum Encoder {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) by the `tokenizers` crate.
    Bpe(Box<Bpe>),
    /// SentencePiece (`tokenizer.ggml.model = "llama"`).
    Spm(Box<Spm>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.pieces.len())
            .field("pre", &self.pre_tokenizer())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("chat", &self.chat)
            .finish()
    }
}

/// Reads an optional token-id key; `Ok(None)` if absent, an error if present but not an integer.
fn opt_id(g: &Gguf, key: &str) -> Result<Option<u64>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| TokenizerError::Gguf(GgufError::MissingKey(key.into()))),
    }
}

fn opt_bool(g: &Gguf, key: &str) -> Result<Option<bool>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| TokenizerError::Gguf(GgufError::MissingKey(key.into()))),
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata: byte-level BPE (`gpt2`) or
    /// SentencePiece (`llama`, [`crate::tokenizer_spm`]).
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = g.get_str("tokenizer.ggml.model")?;
        let spm = match model {
            "gpt2" => false,
            "llama" => true,
            _ => return Err(TokenizerError::UnsupportedModel(model.to_owned())),
        };
        let tokens = g
            .get_array("tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().ok_or_else(|| TokenizerError::Invalid(format!("token {i} is not a string"))))
            .collect::<Result<Vec<&str>, _>>()?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(TokenizerError::Invalid(format!("vocabulary of {n} tokens")));
        }
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(Value::Array(a)) if a.len() == n => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            Some(_) => {
                return Err(TokenizerError::Invalid(format!(
                    "tokenizer.ggml.token_type is not an integer array of {n} entries"
                )))
            }
        };

        // Vocabulary (last duplicate wins, like llama.cpp's token_to_id map).
        let mut ids: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            ids.insert((*t).to_owned(), i as u32);
        }

        // Token classes, mirroring llama.cpp's attributes.
        let promoted: HashSet<&str> = EOG_TEXTS
            .iter()
            .chain(FIM_PAD_TEXTS)
            .chain(FIM_REP_TEXTS)
            .chain(FIM_SEP_TEXTS)
            .chain(FIM_OTHER_TEXTS)
            .copied()
            .collect();
        let mut is_control = vec![false; n];
        let mut is_user = vec![false; n];
        let mut control = Vec::new();
        for (i, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ids.get(t) != Some(&(i as u32)) {
                continue; // shadowed duplicate
            }
            if ty == TYPE_CONTROL || ty == TYPE_UNKNOWN || promoted.contains(t) {
                is_control[i] = true;
                control.push(i as u32);
            } else if ty == TYPE_USER_DEFINED {
                is_user[i] = true;
            }
        }
        let is_literal: Vec<bool> = is_control.iter().zip(&is_user).map(|(c, u)| c | u).collect();

        // llama.cpp's defaults for a GGUF without the keys: SPM BOS 1, EOS 2, UNK 0 and BOS added; GPT-2 id 11 and
        // BOS added only for the llama3 pre-tokenizers.
        let (default_bos, default_eos) = if spm { (1, 2) } else { (GPT2_DEFAULT_SPECIAL, GPT2_DEFAULT_SPECIAL) };
        let in_range = |id: u64| (id < n as u64).then_some(id as u32);
        let bos = in_range(opt_id(g, "tokenizer.ggml.bos_token_id")?.unwrap_or(default_bos.into()));
        let eos = in_range(opt_id(g, "tokenizer.ggml.eos_token_id")?.unwrap_or(default_eos.into()));
        let (encoder, pieces, default_add_bos) = if spm {
            let scores = match g.get("tokenizer.ggml.scores") {
                None => Vec::new(),
                Some(Value::Array(a)) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                Some(_) => return Err(TokenizerError::Invalid("tokenizer.ggml.scores is not an array".into())),
            };
            let unk = in_range(opt_id(g, "tokenizer.ggml.unknown_token_id")?.unwrap_or(0));
            let add_space_prefix = opt_bool(g, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let enc = Spm::new(&tokens, scores, &is_control, &is_user, &ids, unk, add_space_prefix)
                .map_err(TokenizerError::Invalid)?;
            (Encoder::Spm(Box::new(enc)), crate::tokenizer_spm::pieces(&tokens, &types, &is_literal), true)
        } else {
            let (enc, pieces) = build_bpe(g, &tokens, &ids, &is_control, &is_user)?;
            let llama3 = matches!(enc.pre, PreFamily::Llama3 { ignore_merges: true });
            (Encoder::Bpe(Box::new(enc)), pieces, llama3)
        };
        let add_bos = opt_bool(g, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos);
        let add_eos = opt_bool(g, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);

        // End of generation, as llama.cpp computes it.
        let mut eog: HashSet<u32> = HashSet::new();
        eog.extend(eos);
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eog.extend(opt_id(g, key)?.and_then(in_range));
        }
        for (key, texts) in [
            ("tokenizer.ggml.fim_pad_token_id", FIM_PAD_TEXTS),
            ("tokenizer.ggml.fim_rep_token_id", FIM_REP_TEXTS),
            ("tokenizer.ggml.fim_sep_token_id", FIM_SEP_TEXTS),
        ] {
            match opt_id(g, key)?.and_then(in_range) {
                Some(id) => {
                    eog.insert(id);
                }
                // llama.cpp takes the first match in hash-map order; models have at most one of these.
                None => eog.extend(texts.iter().find_map(|t| ids.get(*t).copied())),
            }
        }
        eog.extend(EOG_TEXTS.iter().filter_map(|t| ids.get(*t).copied()));

        let text_of = |id: Option<u32>| id.map_or("", |id| tokens[id as usize]);
        // Gemma's turn format when the vocabulary has its turn markers and the GGUF no usable template.
        let fallback = if ids.contains_key("<start_of_turn>") && ids.contains_key("<end_of_turn>") {
            ChatFallback::GemmaTurns
        } else {
            ChatFallback::ChatMl
        };
        let chat = ChatTemplate::with_fallback(
            g.get("tokenizer.chat_template").and_then(Value::as_str),
            text_of(bos),
            text_of(eos),
            fallback,
        );

        Ok(Tokenizer { encoder, pieces, ids, bos, eos, add_bos, add_eos, eog, control, chat })
    }

    fn encode_inner(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            out.extend(self.bos);
        }
        match &self.encoder {
            Encoder::Bpe(bpe) => out.extend(bpe.encode(text, parse_special)?),
            Encoder::Spm(spm) => spm.encode(&self.ids, text, parse_special, &mut out),
        }
        if self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Plain text -> ids; adds BOS iff the GGUF says so (`tokenizer.ggml.add_bos_token`, default per llama.cpp:
    /// true for SentencePiece, for BPE only for the llama3 family) and EOS iff `tokenizer.ggml.add_eos_token`.
    /// Special-token text in `text` is NOT parsed as special. Matches `llama_tokenize(add_special = true,
    /// parse_special = false)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_inner(text, false)
    }

    /// Same, but `<|im_start|>`-style special tokens in the text become their ids (used for chat templates).
    /// Matches `llama_tokenize(add_special = true, parse_special = true)`.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_inner(text, true)
    }

    /// The bytes token `id` stands for (`None` if out of range).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(Vec::as_slice)
    }

    /// Ids -> text. Special tokens are rendered as their text; ids outside the vocabulary are skipped; invalid
    /// UTF-8 (a multi-byte character cut by the id sequence) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&id| self.token_bytes(id)).flatten().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Every token's bytes, the control tokens and the end-of-generation tokens: what the stage that samples
    /// needs to match grammars.
    pub fn vocabulary(&self) -> edge_protocol::stage::Vocabulary {
        let mut eog: Vec<u32> = self.eog.iter().copied().collect();
        eog.sort_unstable();
        let pieces = self.pieces.iter().map(Vec::as_slice);
        edge_protocol::stage::Vocabulary::from_pieces(pieces, self.control.clone(), eog)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode*` prepend BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The id of a token given its exact vocabulary text (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Which pre-tokenizer family was selected from `tokenizer.ggml.pre` ("starcoder" for SmolLM2, "qwen2",
    /// "llama3", "gpt2", "default", or "gpt2 (fallback)" for an unknown name); "spm" for a SentencePiece
    /// vocabulary (which has no pre-tokenizer).
    pub fn pre_tokenizer(&self) -> &'static str {
        match &self.encoder {
            Encoder::Bpe(bpe) => bpe.pre.name(),
            Encoder::Spm(_) => "spm",
        }
    }

    /// End-of-generation: eos, eot, and <|im_end|>/<|endoftext|> if present. Follows llama.cpp's rule: EOS,
    /// `eot`/`eom` ids, tokens whose text is a known end marker (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`,
    /// `<end_of_turn>`, …) and the FIM pad/repo/file-separator tokens.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The prompt for `messages` and the assistant's reply, from the model's own chat template
    /// (`tokenizer.chat_template`, rendered like HF's `apply_chat_template(add_generation_prompt=True)`, so it
    /// may add the model's default system message); plain ChatML if the GGUF has no usable template, Gemma's
    /// turns if its vocabulary has `<start_of_turn>` (see [`crate::chat`]). Encode it with
    /// [`Tokenizer::encode_with_special`]. When `encode*` add BOS, a leading BOS text the template prints is
    /// removed (as llama.cpp's `common_chat_templates_apply` does), so the ids start with exactly one BOS.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> String {
        self.strip_bos(self.chat.render(messages))
    }

    /// `prompt` without a leading BOS text if `encode*` add BOS themselves.
    fn strip_bos(&self, prompt: String) -> String {
        let bos = match self.bos {
            Some(id) if self.add_bos => self.token_bytes(id).unwrap_or_default(),
            _ => return prompt,
        };
        match std::str::from_utf8(bos) {
            Ok(b) if !b.is_empty() && prompt.starts_with(b) => prompt[b.len()..].to_owned(),
            _ => prompt,
        }
    }

    /// [`Tokenizer::chat_prompt`] with tools the model may call (OpenAI's `tools` list): the model's template
    /// renders them if it knows tools, else they are described in the system message ([`crate::chat_tools`]).
    pub fn chat_prompt_with_tools(&self, messages: &[ChatMessage], tools: Option<&serde_json::Value>) -> String {
        self.strip_bos(crate::chat_tools::render(&self.chat, messages, tools))
    }

    /// The chat template behind [`Tokenizer::chat_prompt`].
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat
    }
}

/// Streaming detokenizer: feed ids one at a time, get back the newly completed UTF-8 text (holds back incomplete
/// multi-byte sequences). The concatenation of all `push` results and `finish` equals [`Tokenizer::decode`] of
/// the same ids.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream { tok, pending: Vec::new() }
    }

    /// Adds one token; returns the text that is now complete (possibly empty). Out-of-range ids are ignored.
    pub fn push(&mut self, id: u32) -> String {
        if let Some(b) = self.tok.token_bytes(id) {
            self.pending.extend_from_slice(b);
        }
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).expect("valid prefix"));
                    start += valid;
                    match e.error_len() {
                        // An invalid sequence: replace it, exactly as `from_utf8_lossy` would.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += len;
                        }
                        // An incomplete character at the end: keep it for the next token.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Flushes whatever is held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
