//! Prefill GEMM microbenchmark of one weight type on `THREADS` threads (1): `cargo run --release --example tile_bench -- TYPE`
//! (q4_0, q4_1, q5_0, q8_0, q4_k, q6_k). Prints G multiply-adds per second, best of the repeats. `N` tokens
//! (128), a `ROWS` x `COLS` matrix (1024 x 1024); `PACKED=0` keeps the weights in GGML's layout.
use edge_node::cpu::kernels::Kernels;
use edge_node::cpu::matmul::{matmul, Acts, Mat};
use edge_node::cpu::pool::Pool;
use edge_node::quant::{quantize_row, GgmlType};

fn main() {
    let ty = match std::env::args().nth(1).as_deref().unwrap_or("q5_0") {
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q8_0" => GgmlType::Q8_0,
        "q4_k" => GgmlType::Q4K,
        "q6_k" => GgmlType::Q6K,
        _ => GgmlType::Q5_0,
    };
    let n: usize = std::env::var("N").map_or(128, |v| v.parse().unwrap());
    let env = |k: &str, d: usize| std::env::var(k).map_or(d, |v| v.parse().unwrap());
    let (rows, cols) = (env("ROWS", 1024), env("COLS", 1024));
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut w = Vec::new();
    for _ in 0..rows {
        let row: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        w.extend(quantize_row(ty, &row));
    }
    let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
    let k = Kernels::detect();
    let mut m = Mat::raw(ty, rows, cols, k).unwrap();
    if std::env::var("PACKED").map_or(true, |v| v != "0") {
        m = m.repacked(&w, k);
    }
    let mut acts = Acts::default();
    acts.quantize(&x, cols, &[&m]);
    let pool = Pool::new(env("THREADS", 1));
    let mut out = vec![0f32; n * rows];
    let mut best = f64::MAX;
    for _ in 0..30 {
        let t0 = std::time::Instant::now();
        matmul(&pool, &w, &[&m], &acts, n, &mut [&mut out]);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!("{ty:?} (packed: {}): {:.1} GMAC/s", m.is_packed(), (rows * cols * n) as f64 / best / 1e9);
}
