//! Hand-off cost of the pool: `cargo run --release --example pool_speed`.
use std::time::Instant;
fn main() {
    let pool = edge_node::cpu::pool::global();
    let hits = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..3 {
        let n = 20000;
        let t0 = Instant::now();
        for _ in 0..n {
            pool.run(&|_| {
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
        println!("{} threads: {:.2} us per empty job", pool.threads(), t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
