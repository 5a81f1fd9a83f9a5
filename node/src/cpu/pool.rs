//! A persistent pool of worker threads that runs one job at a time on the caller and whichever workers join it.
//!
//! A job is split into tasks that threads claim from an atomic counter ([`Pool::tasks`]), so it needs no
//! particular thread: the caller runs tasks until none is left, then closes the job, and waits only for the
//! workers that joined before that. A worker the OS has not scheduled yet (several nodes sharing a machine, more
//! threads than cores) skips the closed job instead of holding the caller until it runs. Between jobs a worker
//! spins for [`SPIN`] (a forward pass issues jobs every few microseconds), then sleeps on a condition variable,
//! so an idle node never burns a core another node on the same machine needs. One process-wide pool
//! ([`global`]) serves every shard of the process, one job at a time.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker (or a waiting caller) spins before it sleeps.
pub const SPIN: Duration = Duration::from_micros(100);

type Job = *const (dyn Fn(usize) + Sync);

/// `Shared::state`: the job's generation in the high 32 bits, [`CLOSED`], and the workers running it below.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

struct Shared {
    /// Generation (bumped once per job), closed flag and the count of workers running the job. A worker joins
    /// the job by incrementing the count while the flag is clear; the caller sets the flag when no task is left
    /// and waits for the count to reach 0.
    state: AtomicU64,
    /// The current job, written before the generation moves and read by workers that joined (the caller waits
    /// for them, so the closure outlives every use).
    job: UnsafeCell<Option<Job>>,
    sleepers: AtomicUsize,
    wake: (Mutex<()>, Condvar),
    caller_sleeps: AtomicBool,
    done: (Mutex<()>, Condvar),
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the caller holding `Pool::run_lock` while no worker runs a job (the previous
// one is closed with no worker active), and read by workers only between joining and leaving a job.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` threads in all: the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: UnsafeCell::new(None),
            sleepers: AtomicUsize::new(0),
            wake: (Mutex::new(()), Condvar::new()),
            caller_sleeps: AtomicBool::new(false),
            done: (Mutex::new(()), Condvar::new()),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("edge-cpu-{i}"))
                    .spawn(move || worker(&s, i))
                    .expect("spawn a pool thread")
            })
            .collect();
        Pool { shared, workers, run_lock: Mutex::new(()) }
    }

    /// Threads a job runs on (the caller included).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(scratch, i)` for every task `i` in `0..n`, each once, on the caller and the workers that join;
    /// every thread that takes part makes its own `scratch()` first. Returns when all tasks have finished; a
    /// panic in any of them is raised here.
    pub fn tasks<S>(&self, n: usize, scratch: impl Fn() -> S + Sync, f: impl Fn(&mut S, usize) + Sync) {
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            let mut s = None;
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    return;
                }
                f(s.get_or_insert_with(&scratch), i);
            }
        });
    }

    /// Runs `f(i)` on the caller (`i = 0`) and on any of the workers (`i` = the worker's index) that join
    /// before the caller's `f` returns, and returns when every call has finished. `f` must therefore split its
    /// work dynamically: when the caller's call returns, no work may be left that only another index would do.
    /// A panic in any call is raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.workers.is_empty() {
            return f(0);
        }
        let _one_job = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: no worker reads `job` now (the last job is closed and none is active); the lifetime is erased
        // because `run` does not return before every worker that joined is done with it.
        unsafe { *s.job.get() = Some(std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f)) };
        let generation = (s.state.load(SeqCst) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.state.store(generation << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.1.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        s.state.fetch_or(CLOSED, SeqCst);
        wait_until(
            || s.state.load(Acquire) & ACTIVE == 0,
            || {
                let mut g = s.done.0.lock().unwrap_or_else(|e| e.into_inner());
                s.caller_sleeps.store(true, SeqCst);
                while s.state.load(SeqCst) & ACTIVE != 0 {
                    g = s.done.1.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.caller_sleeps.store(false, SeqCst);
            },
        );
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a CPU pool thread panicked");
        }
    }
}

/// Spins on `ready` for [`SPIN`], then calls `sleep` (which blocks until ready).
fn wait_until(ready: impl Fn() -> bool, sleep: impl FnOnce()) {
    let t0 = Instant::now();
    let mut i = 0u32;
    while !ready() {
        // No `pause` here: in this project's VMs a pause loop can end in a pause-loop exit that hands the core
        // to the hypervisor, and the hand-off measured no faster with it. The loop is bounded by SPIN anyway.
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) && t0.elapsed() > SPIN {
            return sleep();
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = s.state.load(SeqCst) >> 32;
    loop {
        wait_until(
            || s.state.load(Acquire) >> 32 != seen || s.stop.load(Relaxed),
            || {
                let mut g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.state.load(SeqCst) >> 32 == seen && !s.stop.load(SeqCst) {
                    g = s.wake.1.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
            },
        );
        if s.stop.load(SeqCst) {
            return;
        }
        // Join the newest job unless the caller has closed it (then all its tasks are taken: skip it).
        let mut cur = s.state.load(SeqCst);
        let joined = loop {
            seen = cur >> 32;
            if cur & CLOSED != 0 {
                break false;
            }
            match s.state.compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst) {
                Ok(_) => break true,
                Err(now) => cur = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: set before the generation moved; the caller keeps it alive until no joined worker is active.
        let job = unsafe { (*s.job.get()).expect("a job with the generation") };
        if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_err() {
            s.panicked.store(true, SeqCst);
        }
        let before = s.state.fetch_sub(1, SeqCst);
        if before & ACTIVE == 1 && before & CLOSED != 0 && s.caller_sleeps.load(SeqCst) {
            let _g = s.done.0.lock().unwrap_or_else(|e| e.into_inner());
            s.done.1.notify_one();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _g = self.shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.1.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static GLOBAL: OnceLock<Arc<Pool>> = OnceLock::new();

/// Sets the threads of the process-wide pool (`--threads`); only before its first use. Returns false when the
/// pool already runs with another count.
pub fn set_threads(n: usize) -> bool {
    THREADS.store(n.max(1), SeqCst);
    GLOBAL.get().is_none_or(|p| p.threads() == n.max(1))
}

/// The process-wide pool: [`set_threads`]' count, else the physical cores this process may use.
pub fn global() -> Arc<Pool> {
    GLOBAL
        .get_or_init(|| {
            let n = match THREADS.load(SeqCst) {
                0 => physical_cores(),
                n => n,
            };
            Arc::new(Pool::new(n))
        })
        .clone()
}

/// Physical cores among the CPUs this process may run on (SMT siblings counted once), at least 1.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..logical.max(1) * 4 {
        let p = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        if let Ok(s) = std::fs::read_to_string(p) {
            cores.insert(s.trim().to_string());
        }
    }
    match cores.len() {
        0 => logical,
        n => n.min(logical),
    }
}
