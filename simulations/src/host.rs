//! Nodes sharing one machine's cores (see [`crate::Host`]): the steps running on a host progress as in a
//! work-conserving processor-sharing server. Each step carries its work (its dedicated duration times its
//! speed); whenever a step starts or ends, the others are brought up to date and the next completion is
//! rescheduled (older completion events are recognized by the host's version and ignored).

use crate::engine::{Ev, Sim};

/// A running step on a shared host.
#[derive(Debug, Clone, Copy)]
pub struct HostJob {
    pub rep: u32,
    pub epoch: u32,
    pub stage: u32,
    /// Work left, in us at speed 1 core equivalent.
    pub work: f64,
    pub speed: f64,
}

#[derive(Debug, Clone)]
pub struct HostState {
    pub cores: f64,
    pub jobs: Vec<HostJob>,
    pub last: f64,
    pub version: u64,
}

impl Sim<'_> {
    /// Brings the host's jobs up to now.
    fn host_advance(&mut self, h: usize) {
        let now = self.now;
        let host = &mut self.hosts[h];
        let dt = now - host.last;
        if dt > 0.0 && !host.jobs.is_empty() {
            let f = host_factor(host);
            for j in &mut host.jobs {
                j.work -= j.speed * f * dt;
            }
        }
        host.last = now;
    }

    fn host_reschedule(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        host.version += 1;
        if host.jobs.is_empty() {
            return;
        }
        let f = host_factor(host);
        let next = host.jobs.iter().map(|j| j.work.max(0.0) / (j.speed * f)).fold(f64::INFINITY, f64::min);
        let (at, version) = (self.now + next, host.version);
        self.schedule(at, Ev::HostTick { host: h as u32, version });
    }

    pub(crate) fn host_add(&mut self, h: usize, job: HostJob) {
        self.host_advance(h);
        self.hosts[h].jobs.push(job);
        self.host_reschedule(h);
    }

    pub(crate) fn host_tick(&mut self, h: usize, version: u64) {
        if self.hosts[h].version != version {
            return;
        }
        self.host_advance(h);
        let (done, running): (Vec<HostJob>, Vec<HostJob>) =
            self.hosts[h].jobs.iter().partition(|j| j.work <= 1e-6 * j.speed.max(1.0));
        self.hosts[h].jobs = running;
        self.host_reschedule(h);
        for j in done {
            if self.replicas[j.rep as usize].epoch == j.epoch {
                self.stage_done(j.rep, j.stage);
            }
        }
    }

    /// Drops the running steps of replica `r` from every host (its plan failed).
    pub fn host_drop(&mut self, r: u32) {
        for h in 0..self.hosts.len() {
            if self.hosts[h].jobs.iter().any(|j| j.rep == r) {
                self.host_advance(h);
                self.hosts[h].jobs.retain(|j| j.rep != r);
                self.host_reschedule(h);
            }
        }
    }
}

/// Share of its own speed each running step of the host gets.
fn host_factor(host: &HostState) -> f64 {
    let demand: f64 = host.jobs.iter().map(|j| j.speed).sum();
    if demand > host.cores {
        host.cores / demand
    } else {
        1.0
    }
}
