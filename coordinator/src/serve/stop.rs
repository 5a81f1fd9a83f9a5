//! Stop strings on streamed text: the text is released as it comes, except a tail that could still become a stop
//! string (held back until the next piece decides); once a stop string appears, the text up to it is released and
//! nothing after it ever is.

/// Cuts a stream of text pieces at the first of some stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Default::default() }
    }

    /// Whether a stop string was found (nothing more is released).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a piece of text; returns the text now safe to release and whether a stop string ended the stream.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        // The earliest stop string wins (and, at the same place, the longest: it does not matter, both cut there).
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let mut out = std::mem::take(&mut self.held);
            out.truncate(at);
            return (out, true);
        }
        let keep = self.partial_tail();
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (out, false)
    }

    /// The end of the stream: whatever was held back (nothing after a stop).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that are a proper prefix of some stop string (the longest such tail).
    fn partial_tail(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.stops {
            // Longest k < len(s) with held ending in s[..k], on character boundaries of both.
            for k in (1..s.len().min(h.len() + 1)).rev() {
                if k <= best {
                    break;
                }
                if s.is_char_boundary(k) && h.is_char_boundary(h.len() - k) && h.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (everything released, stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (o, stop) = m.push(p);
            out.push_str(&o);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stop_strings_release_everything_at_once() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("hello"), ("hello".into(), false));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_stop_string_inside_one_piece_cuts_there() {
        assert_eq!(run(&["\n\n"], &["one\n\ntwo"]), ("one".into(), true));
        assert_eq!(run(&["END"], &["END"]), ("".into(), true));
    }

    #[test]
    fn a_stop_string_split_over_pieces_is_never_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abc S"), ("abc ".into(), false), "a possible start is held back");
        assert_eq!(m.push("T"), ("".into(), false));
        assert_eq!(m.push("OP and more"), ("".into(), true));
        assert_eq!(m.push("later"), ("".into(), true));
        assert_eq!(m.finish(), "");
        assert_eq!(run(&["STOP"], &["x", "S", "T", "O", "P", "y"]), ("x".into(), true));
    }

    #[test]
    fn held_back_text_is_released_when_it_turns_out_not_to_stop() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ST"), ("".into(), false));
        assert_eq!(m.push("ART"), ("START".into(), false));
        assert_eq!(m.push("S"), ("".into(), false));
        assert_eq!(m.finish(), "S", "the end releases the held tail");
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".into(), true));
        assert_eq!(run(&["bc", "abcd"], &["xab", "cd"]), ("x".into(), true), "abcd starts first");
        assert_eq!(run(&["bc", "abce"], &["xab", "cd"]), ("xa".into(), true));
        // The longest partial prefix of any stop string is held.
        let mut m = StopMatcher::new(vec!["ab".into(), "xyz".into()]);
        assert_eq!(m.push("1xy"), ("1".into(), false));
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        assert_eq!(run(&["é!"], &["café", "!", "x"]), ("caf".into(), true));
        assert_eq!(run(&["日本"], &["こんにちは日", "本語"]), ("こんにちは".into(), true));
        let mut m = StopMatcher::new(vec!["éa".into()]);
        assert_eq!(m.push("eé"), ("e".into(), false));
        assert_eq!(m.push("b"), ("éb".into(), false));
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(run(&[""], &["abc"]), ("abc".into(), false));
    }
}
