//! Cycles per block of each dot kernel, one thread, L2-resident rows: `cargo run --release --example kernel_speed`.
use edge_node::cpu::kernels::{Isa, Kernels};
use edge_node::cpu::matmul::act_type;
use edge_node::quant::{quantize_row, GgmlType};
use std::time::Instant;

fn main() {
    let (rows, cols) = (256usize, 1024usize);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K] {
        let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let w: Vec<u8> = (0..rows).flat_map(|_| quantize_row(ty, &x)).collect();
        let act = act_type(ty).unwrap();
        let mut a = vec![0u8; act.row_bytes(cols)];
        act.quantize_row(&x, &mut a);
        let rb = ty.row_bytes(cols);
        for isa in Isa::available() {
            let k = Kernels::new(isa).unwrap();
            let dot = k.dot(ty).unwrap();
            let reps = 200;
            let t0 = Instant::now();
            let mut s = 0.0;
            for _ in 0..reps {
                for r in 0..rows {
                    s += unsafe { dot(cols, &w[r * rb..], &a) };
                }
            }
            let blocks = (reps * w.len() / ty.block().1) as f64;
            let ns1 = t0.elapsed().as_secs_f64() * 1e9 / blocks;
            let mut ns4 = f64::NAN;
            if let Some(d4) = k.dot4(ty) {
                let t0 = Instant::now();
                for _ in 0..reps {
                    for r in (0..rows).step_by(4) {
                        let v = unsafe { d4(cols, &w[r * rb..], rb, &a) };
                        s += v[0] + v[3];
                    }
                }
                ns4 = t0.elapsed().as_secs_f64() * 1e9 / blocks;
            }
            println!(
                "{ty:?} {:<10} one row {ns1:.2} ns/block, four rows {ns4:.2} ns/block ({:.1} GB/s one thread) {}",
                isa.name(),
                ty.block().1 as f64 / ns4.min(ns1),
                s as u8
            );
        }
    }
}
