//! The network: the planner's star topology (every endpoint hangs off one switch by its own link), with each
//! link's direction a FIFO resource. A message `a -> b` is sent over `a`'s uplink (wait until the link is free,
//! `bytes / bandwidth` on the wire, then `latency + jitter` and any loss recovery), then from the switch over
//! `b`'s downlink the same way; the switch forwards packet by packet, so a large message's two legs overlap.
//! For a message of one packet without jitter, loss or queueing this is exactly the planner's hop cost
//! `lat_a + bytes/bw_a + lat_b + bytes/bw_b`. Messages on one link direction arrive in the order they were sent
//! (a TCP/QUIC stream: a delayed message holds back the ones behind it). Nodes sharing a medium (Wi-Fi airtime)
//! use one resource for both directions of all of them.

use rand::rngs::StdRng;
use rand::Rng;

use crate::profiles::LinkSpec;

/// Payload bytes per packet (a 1500-byte MTU less IP and TCP headers).
pub const PACKET_BYTES: u64 = 1448;
/// Least time before a lost packet is resent (the Linux tail-loss probe / QUIC probe timeout order): a loss
/// costs `max(2 x RTT, MIN_RECOVERY_US)` with the RTT estimated as four one-way latencies of the link.
pub const MIN_RECOVERY_US: f64 = 10_000.0;

/// An exponential sample of mean `mean` (0 when the mean is 0).
pub fn exp_sample(rng: &mut StdRng, mean: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    let u: f64 = rng.random();
    -mean * (1.0 - u).ln()
}

/// One-way latency of one message over `link`: the fixed part and an exponential jitter.
pub fn latency(link: &LinkSpec, rng: &mut StdRng) -> f64 {
    link.latency_us + exp_sample(rng, link.jitter_us)
}

/// Extra delay of resending the packets of a `bytes` message that `link` loses (0 without loss).
pub fn loss_delay(link: &LinkSpec, bytes: u64, rng: &mut StdRng) -> f64 {
    if link.loss <= 0.0 {
        return 0.0;
    }
    let packets = bytes.div_ceil(PACKET_BYTES).max(1);
    let lost = (0..packets).filter(|_| rng.random::<f64>() < link.loss).count();
    lost as f64 * (8.0 * link.latency_us).max(MIN_RECOVERY_US)
}

/// One message over one link segment, without queueing (all-reduces and broadcasts inside a tensor-parallel
/// stage, which the simulator times analytically).
pub fn segment(link: &LinkSpec, bytes: u64, rng: &mut StdRng) -> f64 {
    bytes as f64 / link.bandwidth_mbps + latency(link, rng) + loss_delay(link, bytes, rng)
}

/// A message on its way: when its first and its last byte reach the switch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AtSwitch {
    pub first: f64,
    pub last: f64,
}

/// The link resources of every endpoint (nodes `0..n`, the coordinator at `n`).
pub struct Net {
    links: Vec<LinkSpec>,
    /// Resource of each endpoint's (up, down) direction.
    resource: Vec<(usize, usize)>,
    free_at: Vec<f64>,
    /// Last arrival per endpoint and direction (in-order delivery).
    last_arrival: Vec<[f64; 2]>,
}

impl Net {
    /// `links[i]` is endpoint `i`'s link; endpoints sharing a medium are grouped by `shared_by` in index order
    /// (each run of `shared_by` consecutive endpoints with the same link name shares one access point).
    pub fn new(links: Vec<LinkSpec>) -> Net {
        let mut resource = Vec::with_capacity(links.len());
        let mut next = 0usize;
        let mut medium: std::collections::HashMap<(&'static str, usize), usize> = Default::default();
        let mut count: std::collections::HashMap<&'static str, usize> = Default::default();
        for l in &links {
            match l.shared_by {
                Some(k) if k > 0 => {
                    let c = count.entry(l.name).or_insert(0);
                    let ap = *c / k;
                    *c += 1;
                    let r = *medium.entry((l.name, ap)).or_insert_with(|| {
                        next += 1;
                        next - 1
                    });
                    resource.push((r, r));
                }
                _ => {
                    resource.push((next, next + 1));
                    next += 2;
                }
            }
        }
        let n = links.len();
        Net { links, resource, free_at: vec![0.0; next], last_arrival: vec![[0.0; 2]; n] }
    }

    pub fn link(&self, endpoint: usize) -> &LinkSpec {
        &self.links[endpoint]
    }

    /// Sends `bytes` from `endpoint` to the switch at `now`: the link is taken from when it is free for
    /// `bytes / bandwidth`; every byte then takes one sampled latency (plus any loss recovery, which delays the
    /// end of the message).
    pub fn up(&mut self, now: f64, endpoint: usize, bytes: u64, rng: &mut StdRng) -> AtSwitch {
        let link = self.links[endpoint];
        let r = self.resource[endpoint].0;
        let start = now.max(self.free_at[r]);
        let wire = bytes as f64 / link.bandwidth_mbps;
        self.free_at[r] = start + wire;
        let lat = latency(&link, rng);
        let last = (start + wire + lat + loss_delay(&link, bytes, rng)).max(self.last_arrival[endpoint][0]);
        self.last_arrival[endpoint][0] = last;
        let first = (start + bytes.min(PACKET_BYTES) as f64 / link.bandwidth_mbps + lat).min(last);
        AtSwitch { first, last }
    }

    /// Forwards a message from the switch to `endpoint`, called when its first packet is there (cut-through
    /// per packet: the downlink starts as soon as it is free, and ends no sooner than the last packet allows).
    /// For a message of one packet the two legs add up to the planner's `lat_a + bytes/bw_a + lat_b +
    /// bytes/bw_b`. Returns when the whole message has arrived.
    pub fn down(&mut self, at: AtSwitch, endpoint: usize, bytes: u64, rng: &mut StdRng) -> f64 {
        let link = self.links[endpoint];
        let r = self.resource[endpoint].1;
        let start = at.first.max(self.free_at[r]);
        let tail = bytes - bytes.saturating_sub(1) / PACKET_BYTES * PACKET_BYTES;
        let end = (start + bytes as f64 / link.bandwidth_mbps).max(at.last + tail as f64 / link.bandwidth_mbps);
        self.free_at[r] = end;
        let arrive = end + latency(&link, rng) + loss_delay(&link, bytes, rng);
        let arrive = arrive.max(self.last_arrival[endpoint][1]);
        self.last_arrival[endpoint][1] = arrive;
        arrive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn steady(bw: f64) -> LinkSpec {
        LinkSpec { name: "t", latency_us: 100.0, jitter_us: 0.0, bandwidth_mbps: bw, loss: 0.0, shared_by: None }
    }

    #[test]
    fn one_packet_costs_the_planners_hop() {
        let mut net = Net::new(vec![steady(100.0), steady(50.0)]);
        let mut rng = StdRng::seed_from_u64(1);
        let at = net.up(0.0, 0, 1000, &mut rng);
        let t = net.down(at, 1, 1000, &mut rng);
        assert!((t - (100.0 + 10.0 + 100.0 + 20.0)).abs() < 1e-9, "{t}");
    }

    #[test]
    fn large_messages_pipeline_through_the_switch_and_queue_fifo() {
        let mut net = Net::new(vec![steady(100.0), steady(100.0)]);
        let mut rng = StdRng::seed_from_u64(1);
        let big = 1_000_000;
        let at = net.up(0.0, 0, big, &mut rng);
        let t_big = net.down(at, 1, big, &mut rng);
        // 10 ms on each link, overlapped: not 20 ms.
        assert!(t_big < 10_000.0 + 300.0 && t_big > 10_000.0, "{t_big}");
        // A small message sent right after waits for the big one on both links and arrives after it.
        let at = net.up(1.0, 0, 100, &mut rng);
        let t_small = net.down(at, 1, 100, &mut rng);
        assert!(t_small >= t_big && t_small < t_big + 10.0, "{t_small} vs {t_big}");
    }

    #[test]
    fn a_shared_medium_carries_one_message_at_a_time() {
        let wifi = LinkSpec { shared_by: Some(4), ..steady(100.0) };
        let mut net = Net::new(vec![wifi, wifi]);
        let mut rng = StdRng::seed_from_u64(1);
        let at = net.up(0.0, 0, 100_000, &mut rng);
        // Airtime: up 1 ms, then down 1 ms (they cannot overlap on one medium); the uplink's latency passes
        // while the downlink waits for the air, the downlink's comes after.
        let t = net.down(at, 1, 100_000, &mut rng);
        assert!((t - (2000.0 + 100.0)).abs() < 1e-6, "{t}");
    }

    #[test]
    fn jitter_keeps_messages_in_order() {
        let l = LinkSpec { jitter_us: 5000.0, ..steady(100.0) };
        let mut net = Net::new(vec![l, l]);
        let mut rng = StdRng::seed_from_u64(3);
        let mut last = 0.0;
        for i in 0..200 {
            let at = net.up(i as f64 * 10.0, 0, 100, &mut rng);
            let t = net.down(at, 1, 100, &mut rng);
            assert!(t >= last);
            last = t;
        }
    }
}
