//! Matmul bandwidth over a large Q4_1 matrix on the pool: `cargo run --release --example matmul_speed`.
use edge_node::cpu::kernels::Kernels;
use edge_node::cpu::matmul::{matmul, Acts, Mat};
use edge_node::quant::{quantize_row, GgmlType};
use std::time::Instant;

fn main() {
    if let Some(n) = std::env::var("EDGE_THREADS").ok().and_then(|v| v.parse().ok()) {
        edge_node::cpu::pool::set_threads(n);
    }
    let pool = edge_node::cpu::pool::global();
    for (rows, cols) in [(576usize, 576usize), (1536, 576), (65536, 1024)] {
        let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let row = quantize_row(GgmlType::Q4_1, &x);
        let cached = std::env::var("CACHED").is_ok();
        let copies = if cached { 1 } else { (96 << 20) / (row.len() * rows) + 1 }; // rotate through ~96 MiB
        let w: Vec<u8> = (0..rows * copies).flat_map(|_| row.clone()).collect();
        let mats: Vec<Mat> = (0..copies)
            .map(|c| {
                let mut m = Mat::raw(GgmlType::Q4_1, rows, cols, Kernels::detect()).unwrap();
                m.range = c * rows * row.len()..(c + 1) * rows * row.len();
                m
            })
            .collect();
        let mut acts = Acts::default();
        acts.quantize(&x, cols, &[&mats[0]]);
        let mut y = vec![0.0; rows];
        let reps = if cached { 400 } else { 1 };
        let t0 = Instant::now();
        for _ in 0..reps {
            for m in &mats {
                matmul(&pool, &w, &[m], &acts, 1, &mut [&mut y]);
            }
        }
        let secs = t0.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{rows}x{cols}: {copies} matrices, {:.1} us each, {:.1} GB/s",
            secs / copies as f64 * 1e6,
            w.len() as f64 / secs / 1e9
        );
    }
}
