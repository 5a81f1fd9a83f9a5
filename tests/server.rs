//! `edge-coord serve` as the tests and benchmarks start it: on 127.0.0.1 (any port), joined to the given members
//! by `--peer`, killed on drop. What it writes to stderr is kept (and echoed with `EDGE_TEST_LOGS=1`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{bin, temp_dir, Node, Proc, TempDir};

pub struct Server {
    /// What it printed as `serving http://...`.
    pub url: String,
    log: Arc<Mutex<String>>,
    _proc: Proc,
    _dir: TempDir,
}

impl Server {
    /// `edge-coord serve` for `nodes` (all of them must join: `--min-nodes`), with more flags in `args`.
    pub fn start(cluster_key: &str, nodes: &[&Node], args: &[&str]) -> Server {
        Server::start_logged(cluster_key, nodes, args, None)
    }

    /// As [`Server::start`], also writing its stderr to `log_file`.
    pub fn start_logged(
        cluster_key: &str,
        nodes: &[&Node],
        args: &[&str],
        log_file: Option<&std::path::Path>,
    ) -> Server {
        let dir = TempDir(temp_dir("serve"));
        let mut cmd = Command::new(bin("edge-coord"));
        cmd.args(["serve", "--no-mdns", "--listen", "127.0.0.1:0"]);
        cmd.args(["--wait", "60", "--min-nodes", &nodes.len().to_string()]);
        for n in nodes {
            cmd.args(["--peer", &n.addr]);
        }
        cmd.args(args)
            .arg("--data-dir")
            .arg(&dir.0)
            .env("EDGE_CLUSTER_KEY", cluster_key)
            .env_remove("EDGE_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start edge-coord serve");
        let stderr = child.stderr.take().unwrap();
        let proc = Proc(child);
        let mut file = log_file.map(|p| std::fs::File::create(p).unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("EDGE_TEST_LOGS").is_some() {
                    eprintln!("[serve] {line}");
                }
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                log2.lock().unwrap().push_str(&format!("{line}\n"));
                // (After the line is in the log: the log holds it once `start` returns.)
                if let Some(rest) = line.strip_prefix("serving ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(240)).unwrap_or_else(|_| {
            panic!("edge-coord serve did not print `serving http://…` in time:\n{}", log.lock().unwrap())
        });
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Server { _proc: proc, url, log, _dir: dir }
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}
