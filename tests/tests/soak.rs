//! A bounded soak on loopback: two members and, for a fixed time, twelve coordinators at once each running short
//! jobs over both (more plans than a member serves at once). Every job must either produce the right tokens or
//! fail with a clear "busy" error; afterwards the members hold nothing, their thread counts are back where they
//! started and their memory has not grown without bound. A summary is printed.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_tests::{bin, new_key, temp_dir, Node, NodeSpec, TempDir};

const PROMPT: &str = "Hello";
const SOAK: Duration = Duration::from_secs(40);
const WORKERS: usize = 12;

fn job(key: &str, a: &Node, b: &Node) -> Result<Vec<u64>, String> {
    let dir = TempDir(temp_dir("soak-coord"));
    let out = Command::new(bin("edge-coord"))
        .args([
            "run",
            "--json",
            "--no-mdns",
            "--wait",
            "60",
            "--min-nodes",
            "2",
            "-p",
            PROMPT,
            "-n",
            "3",
            "--stages",
            "2",
        ])
        .args(["--peer", &a.addr, "--peer", &b.addr])
        .arg("--data-dir")
        .arg(&dir.0)
        .env("EDGE_CLUSTER_KEY", key)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["outcomes"][0]["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect())
}

/// (threads, resident KiB) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| -> u64 {
        s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
    };
    (field("Threads:"), field("VmRSS:"))
}

#[test]
fn concurrent_short_jobs_complete_or_are_refused_as_busy_and_nothing_leaks() {
    let key = new_key();
    // cpu backend (cheap loads); two plans at once per member, so twelve coordinators are often refused.
    let extra = ["--max-plans", "2"];
    let a = Node::start(&key, NodeSpec { extra: &extra, ..Default::default() });
    let b = Node::start(&key, NodeSpec { peers: &[&a.addr], extra: &extra, ..Default::default() });
    let want = job(&key, &a, &b).expect("a first job on an idle cluster");
    assert_eq!(want.len(), 3);
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<(u64, u64)> = [&a, &b].iter().map(|n| usage(n.proc.0.id())).collect();

    let (done, busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let other: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            let (done, busy, other, want, key, a, b) = (&done, &busy, &other, &want, &key, &a, &b);
            s.spawn(move || {
                while start.elapsed() < SOAK {
                    match job(key, a, b) {
                        Ok(t) if t == *want => done.fetch_add(1, Ordering::Relaxed),
                        Ok(t) => {
                            other.lock().unwrap().push(format!("wrong tokens {t:?}"));
                            0
                        }
                        Err(e) if e.contains("busy") => busy.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            other.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            });
        }
    });
    let elapsed = start.elapsed();
    // Sessions end with their coordinators, and idle runtime threads retire after 10 s: wait (bounded) for the
    // thread counts to come back.
    let settle = Instant::now();
    let mut after: Vec<(u64, u64)>;
    loop {
        after = [&a, &b].iter().map(|n| usage(n.proc.0.id())).collect();
        if after.iter().zip(&before).all(|(x, y)| x.0 <= y.0 + 2) || settle.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (done, busy) = (done.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
    println!(
        "soak: {} s, {WORKERS} coordinators at once: {done} jobs completed, {busy} refused as busy, {} other; \
         member threads {:?} -> {:?}, resident KiB {:?} -> {:?}",
        elapsed.as_secs(),
        other.lock().unwrap().len(),
        before.iter().map(|u| u.0).collect::<Vec<_>>(),
        after.iter().map(|u| u.0).collect::<Vec<_>>(),
        before.iter().map(|u| u.1).collect::<Vec<_>>(),
        after.iter().map(|u| u.1).collect::<Vec<_>>(),
    );
    let other = other.lock().unwrap();
    assert!(other.is_empty(), "jobs failed without a busy error: {:#?}", &other[..other.len().min(3)]);
    assert!(done > 0, "no job completed");
    for ((t0, r0), (t1, r1)) in before.iter().zip(&after) {
        assert!(t1 <= &(t0 + 2), "threads leaked: {t0} -> {t1}");
        assert!(*r1 < r0 + 256 * 1024, "resident memory grew by {} KiB", r1 - r0);
    }
}
