//! The byte-level BPE half of [`crate::tokenizer`] (`tokenizer.ggml.model = "gpt2"`): the pre-tokenizer regex
//! families and the `tokenizers` BPE configured the way llama.cpp reads the GGUF (see that module's documentation).

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::{Gguf, Value};
use crate::tokenizer::TokenizerError;

fn backend(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Backend(e.to_string())
}

/// The BPE encoder: two `tokenizers` models, one parsing special tokens and one not.
pub(crate) struct Bpe {
    /// Matches special tokens in the input (for [`crate::tokenizer::Tokenizer::encode_with_special`]).
    pub(crate) special: tokenizers::Tokenizer,
    /// Same model, special-token text encoded as plain text (for [`crate::tokenizer::Tokenizer::encode`]).
    pub(crate) plain: tokenizers::Tokenizer,
    pub(crate) pre: PreFamily,
}

impl Bpe {
    /// The ids of `text` (without BOS/EOS).
    pub(crate) fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tk = if parse_special { &self.special } else { &self.plain };
        Ok(tk.encode_fast(text, false).map_err(backend)?.get_ids().to_vec())
    }
}

/// The GPT-2 pre-tokenizer regex, as llama.cpp writes it (without HF's trailing `|\s+`, which only changes how
/// an unmatched lone whitespace is grouped, and `Isolated` splitting yields the same pieces either way).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's regex with llama.cpp's adaptation of the case-insensitive contractions.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's regex (Qwen2's with digits grouped by up to three).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pre-tokenizer regex family, chosen from `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreFamily {
    /// `\p{N}` then GPT-2 (smollm, starcoder, refact, …).
    Starcoder,
    /// GPT-2 regex alone.
    Gpt2,
    /// Qwen2 regex.
    Qwen2,
    /// Llama 3 regex; `ignore_merges` says whether whole-vocabulary words skip BPE.
    Llama3 { ignore_merges: bool },
    /// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` list.
    Default,
    /// Unrecognised name: GPT-2 regex alone.
    Fallback,
}

impl PreFamily {
    pub(crate) fn from_name(pre: Option<&str>) -> PreFamily {
        match pre {
            None | Some("") | Some("default") => PreFamily::Default,
            Some(
                "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" | "mellum2",
            ) => PreFamily::Starcoder,
            Some(
                "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
                | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
                | "jais" | "exaone4",
            ) => PreFamily::Gpt2,
            Some("qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "megrez") => PreFamily::Qwen2,
            Some(
                "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
                | "jina-v5-nano",
            ) => PreFamily::Llama3 { ignore_merges: true },
            Some("dbrx" | "smaug-bpe") => PreFamily::Llama3 { ignore_merges: false },
            Some(_) => PreFamily::Fallback,
        }
    }

    fn regexes(self) -> &'static [&'static str] {
        match self {
            PreFamily::Starcoder => &[r"\p{N}", GPT2_REGEX],
            PreFamily::Gpt2 | PreFamily::Fallback => &[GPT2_REGEX],
            PreFamily::Qwen2 => &[QWEN2_REGEX],
            PreFamily::Llama3 { .. } => &[LLAMA3_REGEX],
            PreFamily::Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"],
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            PreFamily::Starcoder => "starcoder",
            PreFamily::Gpt2 => "gpt2",
            PreFamily::Qwen2 => "qwen2",
            PreFamily::Llama3 { .. } => "llama3",
            PreFamily::Default => "default",
            PreFamily::Fallback => "gpt2 (fallback)",
        }
    }
}

/// GPT-2's byte <-> printable-character table: char -> byte.
fn byte_level_inverse() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).expect("valid code point"), b as u8);
    }
    map
}

/// The BPE encoder and every token's bytes (GPT-2's byte-level alphabet, special and user-defined tokens as
/// their text).
pub(crate) fn build_bpe(
    g: &Gguf,
    tokens: &[&str],
    ids: &HashMap<String, u32>,
    is_control: &[bool],
    is_user: &[bool],
) -> Result<(Bpe, Vec<Vec<u8>>), TokenizerError> {
    let merges_raw = g.get_array("tokenizer.ggml.merges")?;
    let pre = PreFamily::from_name(g.get("tokenizer.ggml.pre").and_then(Value::as_str));

    // Merges: "a b" split at the first space after the first character (llama.cpp's rule). A pair listed
    // twice keeps its first rank. Merges whose parts or result are not in the vocabulary are dropped (the
    // `tokenizers` BPE requires them to exist; llama.cpp could apply them and then fall back to bytes).
    let mut seen = HashSet::with_capacity(merges_raw.len());
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let m = m.as_str().ok_or_else(|| TokenizerError::Invalid(format!("merge {i} is not a string")))?;
        let split = m.char_indices().nth(1).and_then(|(start, _)| m[start..].find(' ').map(|p| p + start));
        let Some(pos) = split else {
            return Err(TokenizerError::Invalid(format!("merge {i} ({m:?}) has no separating space")));
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        if !ids.contains_key(a) || !ids.contains_key(b) || !ids.contains_key(&format!("{a}{b}")) {
            continue;
        }
        if seen.insert((a, b)) {
            merges.push((a.to_owned(), b.to_owned()));
        }
    }

    let ignore_merges = matches!(pre, PreFamily::Llama3 { ignore_merges: true });
    let bpe = BPE::builder()
        .vocab_and_merges(ids.iter().map(|(k, &v)| (k.clone(), v)).collect::<tokenizers::models::bpe::Vocab>(), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(backend)?;

    let mut splits: Vec<PreTokenizerWrapper> = Vec::new();
    for re in pre.regexes() {
        let split = Split::new(SplitPattern::Regex((*re).to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(backend)?;
        splits.push(split.into());
    }
    splits.push(ByteLevel::new(false, false, false).into());

    let mut special = tokenizers::Tokenizer::new(bpe);
    special.with_pre_tokenizer(Some(Sequence::new(splits)));
    special.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

    let mut special_tokens = Vec::new();
    let mut user_tokens = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if is_control[i] {
            special_tokens.push(AddedToken::from(t, true).normalized(false));
        } else if is_user[i] {
            user_tokens.push(AddedToken::from(t, false).normalized(false));
        }
    }
    special.add_tokens(&user_tokens);
    special.add_special_tokens(&special_tokens);
    let mut plain = special.clone();
    plain.set_encode_special_tokens(true);

    // Bytes of every token.
    let inverse = byte_level_inverse();
    let pieces = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if is_control[i] || is_user[i] {
                return t.as_bytes().to_vec();
            }
            t.chars()
                .map(|c| inverse.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| t.as_bytes().to_vec())
        })
        .collect();
    Ok((Bpe { special, plain, pre }, pieces))
}
