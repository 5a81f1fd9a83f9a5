//! Cross-crate integration tests live in `tests/`; this library holds what they share: the real model and its
//! known-good values.

use edge_node::backend::LoadedModel;

pub mod http;
pub mod server;
pub use server::Server;

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

/// A prompt for Qwen2.5-Coder-0.5B-Instruct (plain completion, no chat template).
pub const QWEN_PROMPT: &str = "def fibonacci(n):";

/// Greedy continuation of [`QWEN_PROMPT`] on Qwen2.5-Coder-0.5B by the f32 CPU reference (16 tokens; the single
/// wgpu node gives the same): "\n    if n <= 0:\n        return \"Invalid input\"\n    elif".
pub const QWEN_GREEDY_16: [u32; 16] =
    [198, 262, 421, 308, 2651, 220, 15, 510, 286, 470, 330, 7928, 1946, 698, 262, 4409];

/// The real SmolLM2 model (`$EDGE_MODEL` or the model cache). Fails, never skips, when it is missing.
pub fn smollm2() -> LoadedModel {
    let path =
        std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model);
    LoadedModel::open(&path).unwrap_or_else(|e| panic!("{e:#} (run `bash scripts/setup.sh`)"))
}

/// A model `scripts/setup.sh` fetches, from the model cache. Fails, never skips, when it is missing.
pub fn known(k: &edge_node::setup::KnownModel) -> LoadedModel {
    let path = edge_node::setup::known_model(k);
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

/// A fresh directory under the system temp dir (not removed: wrap it in [`TempDir`] for that).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let d = std::env::temp_dir().join(format!("edge-test-{}-{tag}-{}", std::process::id(), nanos % 1_000_000_007));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new random cluster key, hex.
pub fn new_key() -> String {
    edge_node::net::keys::cluster_key_hex(&edge_node::net::keys::new_cluster_key())
}

/// How to start a member with [`Node::start`].
#[derive(Default)]
pub struct NodeSpec<'a> {
    pub peers: &'a [&'a str],
    /// Written to its `config.toml` as the bootstrap list.
    pub bootstrap: &'a [&'a str],
    /// Also listen on QUIC.
    pub quic: bool,
    /// More `serve` flags.
    pub extra: &'a [&'a str],
    /// TCP port (0: any).
    pub port: u16,
    /// Data directory (default: a new temporary one, removed with the node).
    pub dir: Option<std::path::PathBuf>,
    /// `cpu` (default: starts fast) or `wgpu`.
    pub backend: Option<&'a str>,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// `--memory` in bytes (default 1 GB).
    pub memory: Option<u64>,
}

/// A member started with `edge-node serve` on 127.0.0.1; `addr` ends in `/p2p/<peer id>`. Killed on drop.
pub struct Node {
    pub proc: Proc,
    pub addr: String,
    /// The QUIC address, when started with `quic`.
    pub quic: Option<String>,
    pub peer_id: String,
    pub dir: std::path::PathBuf,
    _temp: Option<TempDir>,
}

impl Node {
    pub fn start(key: &str, spec: NodeSpec<'_>) -> Node {
        use std::process::{Command, Stdio};
        let (dir, temp) = match spec.dir {
            Some(d) => (d, None),
            None => {
                let d = temp_dir("node");
                (d.clone(), Some(TempDir(d)))
            }
        };
        if !spec.bootstrap.is_empty() {
            let list: Vec<String> = spec.bootstrap.iter().map(|a| format!("{a:?}")).collect();
            std::fs::write(dir.join("config.toml"), format!("bootstrap = [{}]\nmdns = false\n", list.join(", ")))
                .unwrap();
        }
        let mut cmd = Command::new(bin("edge-node"));
        let listen = format!("/ip4/127.0.0.1/tcp/{}", spec.port);
        let backend = spec.backend.unwrap_or("cpu");
        let memory = spec.memory.unwrap_or(1_000_000_000).to_string();
        cmd.args(["serve", "--listen", &listen, "--no-mdns", "--backend", backend, "--memory", &memory])
            .arg("--data-dir")
            .arg(&dir)
            .env("EDGE_CLUSTER_KEY", key)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("EDGE_TEST_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() });
        for p in spec.peers {
            cmd.args(["--peer", p]);
        }
        if spec.quic {
            cmd.args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
        }
        cmd.args(spec.extra);
        cmd.envs(spec.env.iter().copied());
        let (proc, addrs) = spawn_member(cmd, if spec.quic { 2 } else { 1 }, std::time::Duration::from_secs(120));
        let addr = addrs.iter().find(|a| a.contains("/tcp/")).expect("a TCP address").clone();
        let quic = addrs.iter().find(|a| a.contains("/quic-v1")).cloned();
        let peer_id = addr.rsplit('/').next().unwrap().to_string();
        Node { proc, addr, quic, peer_id, dir, _temp: temp }
    }
}
