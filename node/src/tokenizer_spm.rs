//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`, llama.cpp's `LLAMA_VOCAB_TYPE_SPM`: Llama 1/2,
//! Mistral, Gemma), encoded exactly as llama.cpp's `llm_tokenizer_spm_session` does (`src/llama-vocab.cpp`):
//!
//! 1. **Special tokens** split the text first (`tokenizer_st_partition`): control and unknown tokens only when
//!    special tokens are parsed, user-defined tokens (Gemma's runs of spaces, tabs and newlines, `[multimodal]`, …)
//!    always. llama.cpp tries them longest text first; this module matches leftmost-longest with aho-corasick,
//!    which gives the same fragments unless the texts of two such tokens overlap (none do in Gemma 3's vocabulary).
//! 2. **BOS** first when `tokenizer.ggml.add_bos_token` (default true for SPM), EOS last when `add_eos_token`.
//! 3. Each **text fragment** gets a leading space only if `tokenizer.ggml.add_space_prefix` (default true; Gemma 3
//!    says false) and it follows a special token or starts the text, then every ' ' becomes U+2581 "▁". No other
//!    normalization and no pre-tokenizer regex: the whole fragment is one session.
//! 4. **Session:** the fragment is split into characters; every adjacent pair whose concatenation is a vocabulary
//!    entry (of any type) is a candidate, scored by that entry's `tokenizer.ggml.scores` value. The best candidate
//!    is merged first (ties: the leftmost), stale candidates are skipped, and the merged symbol's new neighbours
//!    become candidates.
//! 5. Each final symbol is emitted as its id; a symbol that is not a vocabulary entry (a single character the
//!    vocabulary lacks) is emitted byte by byte as the `<0xXX>` byte tokens (**byte fallback**).
//!
//! Decoding: normal tokens turn "▁" back into ' ', byte tokens (type 6) give their byte, control, unknown and
//! user-defined tokens their text; so `decode(encode(s)) == s` unless `s` contains U+2581 (or the text of a
//! `<0xXX>` token, which the merges may build like any other entry).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// GGUF token types (`tokenizer.ggml.token_type`).
pub(crate) const TYPE_NORMAL: u64 = 1;
pub(crate) const TYPE_BYTE: u64 = 6;
/// `<unusedN>` placeholders.
const TYPE_UNUSED: u64 = 5;

/// "▁", SentencePiece's escaped space.
const SPACE: char = '\u{2581}';

/// Special tokens found by one automaton: pattern index -> token id.
struct Specials {
    matcher: AhoCorasick,
    ids: Vec<u32>,
}

impl Specials {
    fn new(tokens: Vec<(&str, u32)>) -> Result<Option<Specials>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(t, _)| t))
            .map_err(|e| format!("special-token matcher: {e}"))?;
        Ok(Some(Specials { matcher, ids: tokens.into_iter().map(|(_, id)| id).collect() }))
    }
}

/// The SentencePiece encoder. The text -> id map is the [`crate::tokenizer::Tokenizer`]'s (passed in).
pub(crate) struct Spm {
    scores: Vec<f32>,
    /// The token of each byte for byte fallback (`<0xXX>`, else the one-character string).
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    /// Control, unknown and user-defined tokens (special tokens parsed).
    all: Option<Specials>,
    /// User-defined tokens only (special tokens as text).
    user: Option<Specials>,
    add_space_prefix: bool,
}

/// A candidate merge of symbols `left` and `right` into a `size`-byte vocabulary entry.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the smaller `left` (llama.cpp's `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.partial_cmp(&other.score).unwrap_or(Ordering::Equal).then_with(|| other.left.cmp(&self.left))
    }
}

/// A symbol of the session: `len` bytes at `start` (0 once merged into its left neighbour), linked list order.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// `tokens`, `types` and `scores` are the GGUF arrays (`scores` empty if absent: all 0, as in llama.cpp);
    /// `control[i]` says token i is special (control, unknown or promoted by text), `user[i]` user-defined.
    /// `ids` maps text -> id (last duplicate wins).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tokens: &[&str],
        scores: Vec<f32>,
        control: &[bool],
        user: &[bool],
        ids: &HashMap<String, u32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Spm, String> {
        let n = tokens.len();
        let scores = if scores.is_empty() { vec![0.0; n] } else { scores };
        if scores.len() != n {
            return Err(format!("tokenizer.ggml.scores has {} entries for {n} tokens", scores.len()));
        }
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = ids
                .get(format!("<0x{b:02X}>").as_str())
                .copied()
                .or_else(|| (b < 0x80).then(|| ids.get(char::from(b as u8).to_string().as_str()).copied()).flatten());
        }
        let mut all = Vec::new();
        let mut user_only = Vec::new();
        for (i, &t) in tokens.iter().enumerate() {
            if t.is_empty() || ids.get(t) != Some(&(i as u32)) {
                continue; // nothing to match, or a shadowed duplicate
            }
            if control[i] {
                all.push((t, i as u32));
            } else if user[i] {
                all.push((t, i as u32));
                user_only.push((t, i as u32));
            }
        }
        Ok(Spm { scores, byte_ids, unk, all: Specials::new(all)?, user: Specials::new(user_only)?, add_space_prefix })
    }

    /// Appends the ids of `text` (without BOS/EOS) to `out`.
    pub(crate) fn encode(&self, ids: &HashMap<String, u32>, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        let specials = if parse_special { &self.all } else { &self.user };
        let mut prev_special = true;
        let mut last = 0;
        if let Some(sp) = specials {
            for m in sp.matcher.find_iter(text) {
                if m.start() > last {
                    self.session(ids, &text[last..m.start()], prev_special, out);
                }
                out.push(sp.ids[m.pattern().as_usize()]);
                prev_special = true;
                last = m.end();
            }
        }
        if last < text.len() {
            self.session(ids, &text[last..], prev_special, out);
        }
    }

    /// One raw-text fragment: llama.cpp's `llm_tokenizer_spm_session::tokenize`.
    fn session(&self, ids: &HashMap<String, u32>, fragment: &str, prev_special: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(fragment.len() + 3);
        if self.add_space_prefix && prev_special {
            text.push(SPACE);
        }
        for c in fragment.chars() {
            text.push(if c == ' ' { SPACE } else { c });
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            let end = start + c.len_utf8();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (end < text.len()).then_some(i + 1),
            });
        }
        let mut heap = BinaryHeap::with_capacity(symbols.len());
        let try_add = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (Some(left), Some(right)) = (left, right) else { return };
            let (l, r) = (symbols[left], symbols[right]);
            let piece = &text[l.start..l.start + l.len + r.len];
            if let Some(&id) = ids.get(piece) {
                if let Some(&score) = self.scores.get(id as usize) {
                    heap.push(Bigram { score, left, right, size: piece.len() });
                }
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut heap, &symbols, Some(i - 1), Some(i));
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(b.left);
            }
            try_add(&mut heap, &symbols, l.prev, Some(b.left));
            try_add(&mut heap, &symbols, Some(b.left), r.next);
        }
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match ids.get(piece) {
                Some(&id) => out.push(id),
                // Merged symbols are always vocabulary entries, so only single characters get here.
                None => {
                    for &b in piece.as_bytes() {
                        // llama.cpp throws if the vocabulary lacks the byte; the unknown token is the closest.
                        out.extend(self.byte_ids[b as usize].or(self.unk));
                    }
                }
            }
            at = s.next;
        }
    }
}

/// The bytes each token decodes to: normal tokens with "▁" as ' ', byte tokens (`<0xXX>`) their byte, every other
/// type (control, unknown, user-defined, unused) its text. `literal[i]` marks tokens decoded as their text
/// whatever their type (control tokens promoted by text).
pub(crate) fn pieces(tokens: &[&str], types: &[u64], literal: &[bool]) -> Vec<Vec<u8>> {
    tokens
        .iter()
        .zip(types)
        .zip(literal)
        .map(|((t, &ty), &literal)| {
            if literal {
                return t.as_bytes().to_vec();
            }
            match ty {
                TYPE_NORMAL => t.replace(SPACE, " ").into_bytes(),
                TYPE_BYTE => byte_of(t).map_or_else(|| t.as_bytes().to_vec(), |b| vec![b]),
                TYPE_UNUSED => Vec::new(), // llama.cpp's token_to_piece gives nothing for them
                _ => t.as_bytes().to_vec(),
            }
        })
        .collect()
}

/// The byte of a `<0xXX>` token's text.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: (text, score, kind) with kind 'n' normal, 'c' control, 'u' user-defined, 'b' byte.
    fn toy(entries: &[(&str, f32, char)], add_space_prefix: bool) -> (Spm, HashMap<String, u32>) {
        let tokens: Vec<&str> = entries.iter().map(|e| e.0).collect();
        let ids = tokens.iter().enumerate().map(|(i, t)| ((*t).to_owned(), i as u32)).collect();
        let control: Vec<bool> = entries.iter().map(|e| e.2 == 'c').collect();
        let user: Vec<bool> = entries.iter().map(|e| e.2 == 'u').collect();
        let scores = entries.iter().map(|e| e.1).collect();
        (Spm::new(&tokens, scores, &control, &user, &ids, None, add_space_prefix).unwrap(), ids)
    }

    fn enc(spm: &Spm, ids: &HashMap<String, u32>, text: &str, special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        spm.encode(ids, text, special, &mut out);
        out
    }

    #[test]
    fn merges_by_score_ties_leftmost_and_falls_back_to_bytes() {
        let mut v: Vec<(&str, f32, char)> = vec![
            ("<s>", 0.0, 'c'),
            ("a", -1.0, 'n'),
            ("b", -1.0, 'n'),
            ("ab", -5.0, 'n'),
            ("bb", -5.0, 'n'),
            ("▁", -1.0, 'n'),
            ("▁a", -2.0, 'n'),
            ("  ", 0.0, 'u'),
        ];
        let bytes: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
        v.extend(bytes.iter().map(|b| (b.as_str(), 0.0, 'b')));
        let (spm, ids) = toy(&v, false);
        let id = |t: &str| ids[t];
        // "abb": "ab" and "bb" tie; the leftmost wins.
        assert_eq!(enc(&spm, &ids, "abb", false), [id("ab"), id("b")]);
        // Spaces become ▁; "▁a" (-2) beats nothing else.
        assert_eq!(enc(&spm, &ids, "b a", false), [id("b"), id("▁a")]);
        // A user-defined token always splits; control tokens only with parse_special.
        assert_eq!(enc(&spm, &ids, "a  b", false), [id("a"), id("  "), id("b")]);
        assert_eq!(enc(&spm, &ids, "<s>", true), [id("<s>")]);
        assert_eq!(enc(&spm, &ids, "é", false), [id("<0xC3>"), id("<0xA9>")]);
        // With the space prefix, text after a special token (and at the start) gets a ▁.
        let (spm, ids) = toy(&v, true);
        assert_eq!(enc(&spm, &ids, "a<s>a", true), [ids["▁a"], ids["<s>"], ids["▁a"]]);
    }

    #[test]
    fn byte_tokens_decode_to_their_byte() {
        let p = pieces(&["▁a▁b", "<0x0A>", "<0xZZ>", "<ctl>▁"], &[1, 6, 6, 3], &[false; 4]);
        assert_eq!(p, [b" a b".to_vec(), vec![b'\n'], b"<0xZZ>".to_vec(), "<ctl>▁".as_bytes().to_vec()]);
    }
}
