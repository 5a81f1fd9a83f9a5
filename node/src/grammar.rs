//! Constrained decoding: a job's [`Grammar`] (a JSON schema, or a Lark grammar) becomes a token mask at every
//! step, computed by llguidance over the bytes of each token of the model's vocabulary, and applied where the
//! token is sampled (the last stage), so the output is always a sentence of the grammar at no extra round trip.
//!
//! [`Grammars`] indexes a vocabulary once (a byte trie; control tokens carry llguidance's marker byte so no
//! grammar can spell them as text), when the first job with a grammar arrives, and is shared by every plan of
//! the process with the same vocabulary ([`shared`]: indexing takes 0.1 to 0.5 s and tens of MiB); [`Grammars::compile`] turns a job's grammar into a [`Constraint`], one per
//! sequence, which masks the logits before each draw and follows each token drawn. Once the grammar is complete
//! only the end-of-generation tokens remain allowed, so the sequence ends there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use edge_protocol::stage::{Grammar, Vocabulary};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

/// A vocabulary indexed for grammars: built once per loaded model, shared by every sequence.
pub struct Grammars {
    factory: ParserFactory,
    eog: Arc<[u32]>,
    vocab: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.vocab).field("eog", &self.eog).finish()
    }
}

impl Grammars {
    pub fn new(v: &Vocabulary) -> anyhow::Result<Grammars> {
        v.validate()?;
        let mut words: Vec<Vec<u8>> = (0..v.len()).map(|i| v.piece(i).to_vec()).collect();
        for &s in &v.special {
            words[s as usize].insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
        }
        let info = TokRxInfo::new(words.len() as u32, v.eog[0]);
        // The trie asserts on inputs it cannot index; a vocabulary that trips one is an error, not a crash.
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words).with_eos_tokens(&v.eog))
            .map_err(|_| anyhow::anyhow!("the vocabulary cannot be indexed for grammars"))?;
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).context("indexing the vocabulary for grammars")?;
        factory.quiet();
        Ok(Grammars { factory, eog: v.eog.clone().into(), vocab: v.len() })
    }

    /// The grammar ready to constrain one sequence; an error says why it does not compile.
    pub fn compile(&self, g: &Grammar) -> anyhow::Result<Constraint> {
        let top = match g {
            Grammar::JsonSchema(s) => {
                let schema: serde_json::Value = serde_json::from_str(s).context("the schema is not JSON")?;
                TopLevelGrammar::from_json_schema(schema)
            }
            Grammar::Lark(s) => TopLevelGrammar::from_lark(s.clone()),
        };
        let parser = self.factory.create_parser(top)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            anyhow::bail!(e);
        }
        Ok(Constraint { matcher, eog: self.eog.clone(), vocab: self.vocab })
    }
}

/// Most vocabularies kept indexed at once.
const SHARED_VOCABULARIES: usize = 4;

/// The vocabulary indexed, built once per process and vocabulary (later plans of the same model reuse it).
pub fn shared(v: &Vocabulary) -> anyhow::Result<Arc<Grammars>> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Arc<Grammars>>>> = OnceLock::new();
    let mut h = blake3::Hasher::new();
    h.update(&v.bytes);
    for ids in [&v.ends, &v.special, &v.eog] {
        h.update(&(ids.len() as u64).to_le_bytes());
        for i in ids.iter() {
            h.update(&i.to_le_bytes());
        }
    }
    let key = *h.finalize().as_bytes();
    // Building holds the lock: a second plan asking for the same vocabulary waits for the first build.
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = cache.get(&key) {
        return Ok(g.clone());
    }
    let g = Arc::new(Grammars::new(v)?);
    if cache.len() >= SHARED_VOCABULARIES {
        cache.clear();
    }
    cache.insert(key, g.clone());
    Ok(g)
}

/// One sequence's grammar, matched so far against the tokens it generated.
pub struct Constraint {
    matcher: Matcher,
    eog: Arc<[u32]>,
    vocab: usize,
}

impl Constraint {
    /// Sets the logits of every token the grammar does not allow next to -inf (past the vocabulary too: a
    /// model's output may have more rows than its tokenizer has tokens). A grammar that is complete, or broken,
    /// allows only the end-of-generation tokens.
    pub fn mask(&mut self, logits: &mut [f32]) {
        let allowed = self.matcher.compute_mask_or_eos().ok();
        for (i, l) in logits.iter_mut().enumerate() {
            let ok = match &allowed {
                Some(m) => i < self.vocab && m.is_allowed(i as u32),
                None => self.eog.contains(&(i as u32)),
            };
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Follows a token the sequence generated (a token the grammar refuses breaks it: only the end remains).
    pub fn advance(&mut self, token: u32) {
        if !self.matcher.is_stopped() {
            let _ = self.matcher.consume_token(token);
        }
    }

    /// Whether the output so far is a complete sentence of the grammar.
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Printable ASCII bytes, a few longer pieces, a control token that looks like JSON text, and an end token.
    fn vocab() -> Vocabulary {
        let mut pieces: Vec<Vec<u8>> = (b' '..=b'~').map(|b| vec![b]).collect();
        for p in ["{\"", "\":", "true", "false", "null", "12", "\n", "{}", "<|end|>", "\"}"] {
            pieces.push(p.as_bytes().to_vec());
        }
        let end = pieces.iter().position(|p| p == b"<|end|>").unwrap() as u32;
        pieces.push(b"}".to_vec()); // a control token spelled like a brace: never allowed as text
        let control = pieces.len() as u32 - 1;
        Vocabulary::from_pieces(pieces.iter().map(Vec::as_slice), vec![end, control], vec![end])
    }

    /// Samples `c` to its end from random logits; the text and whether it ended on the end token.
    fn run(g: &Grammars, v: &Vocabulary, grammar: &Grammar, seed: u64) -> (String, bool) {
        let mut c = g.compile(grammar).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut logits: Vec<f32> = (0..v.len() + 3).map(|_| rng.random::<f32>() * 4.0).collect();
            c.mask(&mut logits);
            let t = crate::reference::argmax(&logits);
            assert!(logits[t as usize].is_finite(), "the mask left nothing");
            if v.eog.contains(&t) {
                assert!(c.is_complete(), "ended before the grammar was complete: {}", String::from_utf8_lossy(&out));
                return (String::from_utf8(out).unwrap(), true);
            }
            out.extend_from_slice(v.piece(t as usize));
            c.advance(t);
        }
        (String::from_utf8_lossy(&out).into_owned(), false)
    }

    #[test]
    fn random_logits_under_a_schema_give_valid_json() {
        let v = vocab();
        let g = Grammars::new(&v).unwrap();
        let schema = r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"},
            "tag": {"enum": ["a", "b"]}}, "required": ["ok", "n", "tag"], "additionalProperties": false}"#;
        let grammar = Grammar::JsonSchema(schema.into());
        for seed in 0..20 {
            let (text, ended) = run(&g, &v, &grammar, seed);
            assert!(ended, "seed {seed}: no end in 200 tokens: {text}");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(value["ok"].is_boolean() && value["n"].is_i64(), "{text}");
            assert!(["a", "b"].contains(&value["tag"].as_str().unwrap()), "{text}");
            assert_eq!(value.as_object().unwrap().len(), 3, "{text}");
        }
    }

    #[test]
    fn any_object_and_lark_grammars_constrain_too() {
        let v = vocab();
        let g = Grammars::new(&v).unwrap();
        for seed in 0..10 {
            let (text, ended) = run(&g, &v, &Grammar::JsonSchema(r#"{"type": "object"}"#.into()), seed);
            if ended {
                // Random digits make numbers like 1e999: JSON, though too large for serde_json.
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) => assert!(v.is_object(), "{text}"),
                    Err(e) => assert!(e.to_string().starts_with("number out of range"), "{text}: {e}"),
                }
            }
            let (text, ended) = run(&g, &v, &Grammar::Lark(r#"start: "yes" | "no" | /[0-9]{3}/"#.into()), seed);
            assert!(ended, "{text}");
            assert!(text == "yes" || text == "no" || (text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit())));
        }
    }

    #[test]
    fn control_tokens_and_rows_past_the_vocabulary_are_never_allowed() {
        let v = vocab();
        let g = Grammars::new(&v).unwrap();
        let mut c = g.compile(&Grammar::Lark(r#"start: "{}""#.into())).unwrap();
        let mut logits = vec![0.0; v.len() + 2];
        c.mask(&mut logits);
        let allowed: Vec<&[u8]> = (0..logits.len()).filter(|&i| logits[i].is_finite()).map(|i| v.piece(i)).collect();
        assert!(allowed.contains(&&b"{"[..]) && allowed.contains(&&b"{}"[..]), "{allowed:?}");
        assert!(!allowed.contains(&&b"}"[..]) && !allowed.contains(&&b"<|end|>"[..]), "{allowed:?}");
        // After "{}" only the end remains.
        let braces = (0..v.len()).find(|&i| v.piece(i) == b"{}").unwrap();
        c.advance(braces as u32);
        let mut logits = vec![0.0; v.len() + 2];
        c.mask(&mut logits);
        let left: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(left, v.eog.iter().map(|&t| t as usize).collect::<Vec<_>>());
    }

    #[test]
    fn one_index_serves_every_plan_with_the_same_vocabulary() {
        let v = vocab();
        let a = shared(&v).unwrap();
        assert!(Arc::ptr_eq(&a, &shared(&v.clone()).unwrap()));
        let other = Vocabulary { eog: vec![v.eog[0], 0], ..v.clone() };
        assert!(!Arc::ptr_eq(&a, &shared(&other).unwrap()));
    }

    #[test]
    fn grammars_that_do_not_compile_say_why() {
        let g = Grammars::new(&vocab()).unwrap();
        let e = g.compile(&Grammar::JsonSchema("{not json".into())).err().unwrap();
        assert!(format!("{e:#}").contains("not JSON"), "{e:#}");
        let e = g.compile(&Grammar::JsonSchema(r#"{"type": "frobnicate"}"#.into())).err().unwrap();
        assert!(format!("{e:#}").contains("frobnicate"), "{e:#}");
        assert!(g.compile(&Grammar::Lark("start: undefined_rule".into())).is_err());
    }
}
