//! Cross-crate integration tests live in `tests/`; this library holds what they share: the real model and its
//! known-good values.

use edge_node::backend::LoadedModel;

/// "Once upon a time, there was a little robot named" (llama.cpp's tokenizer, ../shared/ENVIRONMENT.md).
pub const REFERENCE_PROMPT: &str = "Once upon a time, there was a little robot named";
pub const REFERENCE_IDS: [u32; 11] = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 3365];

/// Greedy continuation of the reference prompt by the f32 CPU reference (32 tokens). llama.cpp 0.3.36 gives the
/// same first 17 tokens and then diverges: it quantizes activations to 8 bits (Q8_1) for Q4_1 dot products,
/// while the reference and the WGSL kernels keep them in f32.
pub const GREEDY_32: [u32; 32] = [
    659, 4075, 617, 4161, 281, 253, 905, 1135, 282, 40105, 30, 659, 4075, 5732, 288, 1238, 351, 7751, 284, 7751, 856,
    919, 3534, 1636, 30, 198, 198, 2705, 1194, 28, 253, 9077,
];

/// The real SmolLM2 model (`$EDGE_MODEL` or the model cache). Fails, never skips, when it is missing.
pub fn smollm2() -> LoadedModel {
    let path =
        std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model);
    LoadedModel::open(&path).unwrap_or_else(|e| panic!("{e:#} (run `bash scripts/setup.sh`)"))
}

/// A child process killed (and reaped) on drop, also when a test fails.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary. `cargo test --workspace` (the README's test command) rebuilds it; `cargo test -p
/// edge-tests` alone does not, and would run a stale one.
pub fn bin(name: &str) -> std::path::PathBuf {
    // Tests run from target/<profile>/deps; the binaries sit one level up.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(path.exists(), "{} not built (run the workspace tests: cargo test --release --workspace)", path.display());
    path
}

/// Spawns `cmd` (an `edge-node serve`, maybe wrapped in `ip netns exec`) with stdout piped and returns it with the
/// first `n` addresses it prints as `listening ADDR`, waiting at most `timeout`.
pub fn spawn_member(mut cmd: std::process::Command, n: usize, timeout: std::time::Duration) -> (Proc, Vec<String>) {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("start edge-node serve");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let addrs = (0..n)
        .map(|_| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            rx.recv_timeout(left).expect("edge-node printed no listening address in time")
        })
        .collect();
    (proc, addrs)
}
