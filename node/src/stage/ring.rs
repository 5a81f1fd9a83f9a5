//! The first stage's view of a pipeline's ring: which sequences' steps are out (sent down the pipeline, their
//! token not back yet) and how long a round takes. A sequence whose prompt's last chunk is ready while a group is
//! out waits for that group (at most about a round) and runs with it, so the sequences of a pipeline decode as
//! one batch instead of as many groups as there were moments they arrived (each group reads every weight once a
//! round, and groups of one machine's stages compete for its cores).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest a step waits for the group out in the ring.
pub const MAX_WAIT: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct InFlight {
    /// When each sequence's step out in the ring left.
    out: HashMap<u64, Instant>,
    /// The last round measured (sent until its token came back).
    round: Option<Duration>,
}

impl InFlight {
    /// `seq`'s step left for the next stage; its token comes back around the ring.
    pub fn sent(&mut self, seq: u64, now: Instant) {
        self.out.insert(seq, now);
    }

    /// `seq`'s token came back (its next step is here).
    pub fn returned(&mut self, seq: u64, now: Instant) {
        if let Some(t) = self.out.remove(&seq) {
            self.round = Some(now.saturating_duration_since(t));
        }
    }

    /// How many sequences are out.
    pub fn out(&self) -> usize {
        self.out.len()
    }

    /// `seq` closed, failed or was cancelled: nothing of it comes back.
    pub fn forget(&mut self, seq: u64) {
        self.out.remove(&seq);
    }

    /// How long a step that could join the group out in the ring waits for it: None when nothing is out. About
    /// two rounds (the group is on its way back within one), at most [`MAX_WAIT`]; a step out for much longer
    /// than that is not coming back (its sequence failed further down) and is forgotten.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let wait = self.round.map_or(MAX_WAIT, |r| (2 * r).min(MAX_WAIT));
        self.out.retain(|_, t| now.saturating_duration_since(*t) < 2 * wait + MAX_WAIT);
        (!self.out.is_empty()).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_about_two_rounds_while_a_group_is_out_and_forgets_what_never_returns() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = InFlight::default();
        assert_eq!(f.wait(t0), None, "nothing out");
        f.sent(1, t0);
        f.sent(2, t0);
        assert_eq!(f.wait(t0), Some(MAX_WAIT), "no round measured yet");
        f.returned(1, t0 + ms(40));
        assert_eq!(f.wait(t0 + ms(40)), Some(ms(80)), "2 is still out; a round is 40 ms");
        f.forget(2);
        assert_eq!(f.wait(t0 + ms(40)), None);
        f.sent(3, t0 + ms(40));
        assert_eq!(f.wait(t0 + ms(40) + ms(600)), Some(ms(80)));
        assert_eq!(f.wait(t0 + ms(40) + ms(700)), None, "3 never came back: forgotten");
        f.returned(4, t0 + ms(800));
        assert_eq!(f.wait(t0 + ms(800)), None, "a step that was not out changes nothing");
        f.sent(5, t0 + ms(800));
        f.returned(5, t0 + ms(1800));
        f.sent(6, t0 + ms(1800));
        assert_eq!(f.wait(t0 + ms(1800)), Some(MAX_WAIT), "a slow round waits at most MAX_WAIT");
    }
}
