//! Churn and recovery, as the fault-tolerance issue specifies it: a node of a running plan fails; after the
//! detection delay the coordinator re-plans on the nodes left (the real planner), ships each member the tensors
//! its cache lacks, loads the stages, and every sequence in flight replays its prompt and the tokens delivered so
//! far (one prefill) and continues. When no plan fits, the replica's running requests fail (queued ones move to
//! another replica if there is one) until a node comes back. A node that comes back keeps its cache; it is used
//! at the next re-plan of its replica (at once if the replica has no plan).

use crate::deploy::RepState;
use crate::engine::{End, Ev, Msg, Sim, TOKEN_BYTES};
use crate::net;

impl Sim<'_> {
    pub(crate) fn fail(&mut self, node: usize) {
        if !self.up[node] {
            return;
        }
        self.up[node] = false;
        self.c.node_failures += 1;
        self.c.failure_times.push(self.now);
        if let Some(churn) = self.cfg.churn {
            let back = self.now + net::exp_sample(&mut self.churn_rng, churn.down_s * 1e6);
            self.schedule(back, Ev::Rejoin { node: node as u32 });
        }
        let r = self.replica_of[node] as usize;
        if self.replicas[r].uses(node) {
            self.interrupt(r);
        }
    }

    /// The replica's plan is broken: its sequences stall until the coordinator notices and re-plans.
    fn interrupt(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        rep.epoch += 1;
        rep.state = RepState::Recovering;
        if let Some(d) = rep.plan.take() {
            rep.last = Some((d.plan, d.nodes));
        }
        rep.pending = None;
        let epoch = rep.epoch;
        self.host_drop(r as u32);
        let at = self.now + self.cfg.detect_s * 1e6;
        self.schedule(at, Ev::Detect { rep: r as u32, epoch });
    }

    pub(crate) fn rejoin(&mut self, node: usize) {
        self.up[node] = true;
        if let Some(churn) = self.cfg.churn {
            let mtbf = churn.mtbf_s.unwrap_or(self.cfg.cluster.nodes[node].device.mtbf_s);
            let next = self.now + net::exp_sample(&mut self.churn_rng, mtbf * 1e6);
            self.schedule(next, Ev::Fail { node: node as u32 });
        }
        let r = self.replica_of[node] as usize;
        if self.replicas[r].is_down() {
            // Discovery finds the node within the same bound as a failure.
            let rep = &mut self.replicas[r];
            rep.epoch += 1;
            rep.state = RepState::Recovering;
            let (epoch, at) = (rep.epoch, self.now + self.cfg.detect_s * 1e6);
            self.schedule(at, Ev::Detect { rep: r as u32, epoch });
        }
    }

    /// Plans on the replica's live nodes and ships the plan, or gives the replica up.
    pub(crate) fn replan(&mut self, r: usize) {
        match self.plan_replica(r) {
            Ok(d) => {
                self.c.replans += 1;
                let t = self.ship(&d, true);
                let rep = &mut self.replicas[r];
                rep.pending = Some(d);
                let epoch = rep.epoch;
                self.schedule(self.now + t, Ev::Ready { rep: r as u32, epoch });
            }
            Err(_) => {
                self.c.failed_replans += 1;
                self.replicas[r].state = RepState::Down;
                for id in std::mem::take(&mut self.replicas[r].in_flight) {
                    self.end_request(id, End::Failed);
                }
                let queued: Vec<u32> = self.replicas[r].queue.drain(..).collect();
                for id in queued {
                    self.reroute(id);
                }
            }
        }
    }

    /// A queued request of a replica that went down: to another live replica, or failed.
    fn reroute(&mut self, id: u32) {
        let target = (0..self.replicas.len())
            .filter(|&r| !self.replicas[r].is_down())
            .min_by_key(|&r| self.replicas[r].in_flight.len() + self.replicas[r].queue.len());
        match target {
            Some(t) => {
                self.reqs[id as usize].replica = Some(t as u32);
                self.replicas[t].queue.push_back(id);
                self.admit(t);
            }
            None => {
                self.reqs[id as usize].replica = None;
                self.end_request(id, End::Failed);
            }
        }
    }

    /// The new plan is loaded: the stalled sequences replay and continue, queued ones start.
    pub(crate) fn ready(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        let Some(d) = rep.pending.take() else { return };
        let first = d.stages[0].cost.leader() as u32;
        rep.plan = Some(d);
        rep.state = RepState::Up;
        let epoch = rep.epoch;
        for id in rep.in_flight.clone() {
            let req = &mut self.reqs[id as usize];
            req.generated = req.delivered;
            let bytes = TOKEN_BYTES * (req.prompt + req.delivered) as u64;
            self.send(r as u32, epoch, self.coord, first, bytes, Msg::Start { req: id });
        }
        self.admit(r);
    }
}

#[cfg(test)]
mod tests {
    use crate::deploy::TensorKey;

    #[test]
    fn tensor_keys_distinguish_slices() {
        let a = TensorKey::Layer { layer: 1, kv_heads: (0, 2), ffn: (0, 64) };
        let b = TensorKey::Layer { layer: 1, kv_heads: (2, 3), ffn: (64, 128) };
        assert_ne!(a, b);
        assert_ne!(TensorKey::Embed, TensorKey::Head);
    }
}
