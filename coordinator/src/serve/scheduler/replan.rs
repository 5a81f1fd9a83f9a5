//! A replica's re-plans: after a lost node (resuming its running requests on the new plan), and while no plan of
//! it fits (its requests moved to the other replicas, or failed when there are none). Plans are made one at a
//! time across replicas and never take another replica's nodes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{fork_of, Active, Scheduler};
use crate::job::Failure;
use crate::run::{plan_and_deploy, PlanFailure, Target, MAX_RECOVERIES};
use crate::serve::openai::ApiError;

impl Scheduler {
    /// "replica N: " (counted from 1) in messages, when there are several.
    fn name(&self) -> String {
        if self.board().replicas.len() > 1 {
            format!("replica {}: ", self.replica + 1)
        } else {
            String::new()
        }
    }

    /// Moves `requests` to the other replicas; the ones none can take fail with `why`.
    pub(super) fn hand_over(&mut self, requests: Vec<Active>, why: &str) {
        let left = match self.router.upgrade() {
            Some(router) => router.hand_over(self.replica, requests),
            None => requests,
        };
        for mut a in left {
            self.end(&mut a, Some(ApiError::unavailable(why.to_string())));
        }
    }

    /// Running and waiting requests go to the other replicas (or fail); this replica takes no new ones until a
    /// plan of it fits again.
    pub(super) fn go_unavailable(&mut self, why: String) {
        let then = if self.board().replicas.len() > 1 {
            "its requests go to the other replicas until it runs again"
        } else {
            "answering 503 until the cluster can run the model again"
        };
        eprintln!("error: {}{why}; {then}", self.name());
        {
            let mut b = self.board();
            let r = b.replica(self.replica);
            r.unavailable = Some(why.clone());
            r.plan = None;
        }
        self.setup.fleet.claim(self.replica, HashSet::new());
        let mut requests: Vec<Active> = std::mem::take(&mut self.active);
        requests.retain(|a| a.ended_at.is_none());
        requests.extend(std::mem::take(&mut self.moved));
        let queued: Vec<Active> = std::mem::take(&mut self.queue).into_iter().map(|s| self.admitted(s)).collect();
        requests.extend(queued);
        for a in &mut requests {
            a.seq = None;
        }
        self.hand_over(requests, &why);
        self.publish_load();
        self.last_attempt = Instant::now();
    }

    fn target(&self) -> Target<'_> {
        let s = &self.setup;
        let previous = self.previous.as_ref().map(|(p, n)| (p, n.as_slice()));
        Target { model: &s.model, facts: &s.facts, desc: &s.desc, req: &s.req, stages: s.stages, previous }
    }

    /// A stage failed: close the plan, re-plan without the lost nodes (and the other replicas' nodes), resume the
    /// running requests.
    pub(super) async fn recover(&mut self, failure: Failure) {
        // New requests go to the other replicas from now on.
        self.board().replica(self.replica).plan = None;
        let mut excluded = HashSet::new();
        if let Some(d) = self.deployment.take() {
            // Give the other sessions a moment to report their own breakage.
            tokio::time::sleep(Duration::from_millis(500)).await;
            excluded.extend(d.lost_peers().iter().map(|p| p.to_string()));
            d.close().await;
        }
        self.active.retain(|a| a.ended_at.is_none());
        for a in &mut self.active {
            a.seq = None;
        }
        self.recoveries += 1;
        if !failure.retry || self.recoveries > MAX_RECOVERIES {
            self.go_unavailable(format!("the cluster keeps failing: {failure}"));
            return;
        }
        eprintln!(
            "warning: {}{failure}; re-planning without {} lost node(s) and resuming {} request(s)",
            self.name(),
            excluded.len(),
            self.active.len()
        );
        let fleet = self.setup.fleet.clone();
        let planning = fleet.planning.lock().await;
        excluded.extend(fleet.others(self.replica));
        let client = self.setup.joined_client.clone();
        let mut attempt = 0;
        let planned = loop {
            let r =
                plan_and_deploy(&client, &self.setup.discovery, &self.target(), &excluded, true, &self.progress).await;
            match r {
                Ok(p) => break p,
                Err(PlanFailure::NoPlan(e)) => {
                    drop(planning);
                    self.go_unavailable(format!("no set of the remaining nodes can run the model: {e:#}"));
                    return;
                }
                Err(PlanFailure::Deploy(e)) if attempt < MAX_RECOVERIES => {
                    eprintln!("warning: deploying failed ({e:#}); planning again");
                    attempt += 1;
                    tokio::time::sleep(edge_node::net::event_loop::LIVENESS_TIMEOUT).await;
                }
                Err(PlanFailure::Deploy(e)) => {
                    drop(planning);
                    self.go_unavailable(format!("deploying failed: {e:#}"));
                    return;
                }
            }
        };
        self.install(planned);
        drop(planning);
        let mut active = std::mem::take(&mut self.active);
        for i in 0..active.len() {
            if self.failure.is_some() {
                break;
            }
            // (A choice resumed before its sibling is a sequence of its own.)
            let fork = fork_of(&active[i].sub, &active, self.setup.model.config.sliding.is_some());
            if let Err(f) = self.start_seq(&mut active[i], fork).await {
                self.failure = Some(f);
            }
        }
        self.active = active;
    }

    /// While unavailable: try to plan on the nodes no other replica holds.
    pub(super) async fn retry(&mut self) {
        self.last_attempt = Instant::now();
        let fleet = self.setup.fleet.clone();
        let planning = fleet.planning.lock().await;
        let excluded = fleet.others(self.replica);
        let client = self.setup.joined_client.clone();
        let r = plan_and_deploy(&client, &self.setup.discovery, &self.target(), &excluded, true, &self.progress).await;
        self.last_attempt = Instant::now();
        match r {
            Ok(p) => {
                eprintln!("{}the cluster can run the model again; serving", self.name());
                self.recoveries = 0;
                self.install(p);
            }
            Err(e) => {
                let why = format!("no set of the members can run the model: {:#}", e.error());
                self.board().replica(self.replica).unavailable = Some(why);
            }
        }
        drop(planning);
    }
}
