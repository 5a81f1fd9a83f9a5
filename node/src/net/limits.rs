//! Per-peer limits: how many streams of a kind one peer may hold open at once, and how many control requests it
//! may make per second. A cluster member holding the key is trusted to run shards, not to exhaust the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Counts open streams per peer; [`PerPeer::try_acquire`] hands out a guard while the peer is under the limit.
#[derive(Clone)]
pub struct PerPeer {
    max: usize,
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// One open stream of a peer; released on drop.
pub struct PeerGuard {
    peer: PeerId,
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PerPeer {
    pub fn new(max: usize) -> PerPeer {
        PerPeer { max, open: Arc::default() }
    }

    pub fn try_acquire(&self, peer: PeerId) -> Option<PeerGuard> {
        let mut open = self.open.lock().expect("limits lock");
        let n = open.entry(peer).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerGuard { peer, open: self.open.clone() })
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("limits lock");
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// At most `per_second` events per peer in any one-second window.
pub struct RateLimit {
    per_second: u32,
    windows: HashMap<PeerId, (Instant, u32)>,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit { per_second, windows: HashMap::new() }
    }

    /// Counts an event of `peer`; false when it is over the limit.
    pub fn allow(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        if self.windows.len() > 4096 {
            self.windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
        }
        let (start, n) = self.windows.entry(peer).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_per_peer_and_release() {
        let l = PerPeer::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let g1 = l.try_acquire(a).unwrap();
        let _g2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "a third stream of the same peer is refused");
        assert!(l.try_acquire(b).is_some(), "other peers are not affected");
        drop(g1);
        assert!(l.try_acquire(a).is_some(), "a closed stream frees its slot");

        let mut r = RateLimit::new(3);
        assert!((0..3).all(|_| r.allow(a)));
        assert!(!r.allow(a));
        assert!(r.allow(b));
    }
}
