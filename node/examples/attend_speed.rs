//! One head's attention on one thread, cache-resident: `cargo run --release --example attend_speed` (`HD` 64,
//! `N` 128 positions, `STRIDE` 192 values per f16 cache row). Prints microseconds per head and GFLOP/s per path.
use edge_node::cpu::kernels::{Isa, Kernels};
use std::time::Instant;

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().unwrap());
    let (hd, n, stride) = (env("HD", 64), env("N", 128), env("STRIDE", 192));
    let f = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 50.0;
    let q: Vec<f32> = (0..hd).map(f).collect();
    let half = |g: &dyn Fn(usize) -> f32| (0..n * stride).map(|i| half::f16::from_f32(g(i))).collect::<Vec<_>>();
    let (k, v) = (half(&|i| f(i + 3)), half(&f));
    let mut out = vec![0f32; hd];
    let mut scores = Vec::new();
    for isa in Isa::available() {
        let kern = Kernels::new(isa).unwrap();
        let reps = 20000;
        let t0 = Instant::now();
        for _ in 0..reps {
            kern.attend(&q, &k, &v, stride, n, 0.125, &mut scores, &mut out);
            std::hint::black_box(&out);
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
        println!("{:>12}: {us:.2} us per head ({:.1} GFLOP/s)", isa.name(), 4.0 * (hd * n) as f64 / us / 1e3);
    }
}
