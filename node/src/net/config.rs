//! The member's config file, `DATA_DIR/config.toml` (optional). Command-line flags add to it.
//!
//! ```toml
//! # Addresses to listen on (default: all interfaces, a random port).
//! listen = ["/ip4/0.0.0.0/tcp/4001"]
//! # Members to dial at start and keep dialing with backoff.
//! bootstrap = ["/ip4/192.168.1.7/tcp/4001/p2p/12D3KooW..."]
//! # Local-network discovery.
//! mdns = true
//! # Only these peers may stay connected (empty: anyone holding the cluster key).
//! allow = []
//! # Compute backend offered: "auto" (wgpu on a real GPU, else cpu), "wgpu", "cpu" or "reference".
//! backend = "auto"
//! # Threads of the CPU backend (default: the physical cores).
//! threads = 4
//! # Bytes available for weights and KV caches (default: what the system reports as available).
//! memory = 4294967296
//! # Plans (coordinator sessions) served at once.
//! max_plans = 8
//! ```

use std::path::Path;

use libp2p::{Multiaddr, PeerId};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: Vec<Multiaddr>,
    #[serde(default)]
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: Option<bool>,
    #[serde(default)]
    pub allow: Vec<PeerId>,
    pub backend: Option<crate::backend::Backend>,
    pub memory: Option<u64>,
    pub max_plans: Option<usize>,
    pub threads: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl FileConfig {
    /// Reads `dir/config.toml`; a missing file is the empty config, a malformed one an error naming the problem.
    pub fn load(dir: &Path) -> Result<FileConfig, ConfigError> {
        let path = dir.join("config.toml");
        let err = |reason: String| ConfigError { path: path.display().to_string(), reason };
        match std::fs::read_to_string(&path) {
            Ok(s) => toml::from_str(&s).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_rejects_typos() {
        let dir = std::env::temp_dir().join(format!("edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(FileConfig::load(&dir).unwrap().bootstrap.is_empty(), "no file: empty config");
        let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        std::fs::write(
            dir.join("config.toml"),
            format!("listen = [\"/ip4/0.0.0.0/tcp/4001\"]\nbootstrap = [\"/ip4/10.0.0.7/tcp/4001/p2p/{peer}\"]\nmdns = false\nallow = [\"{peer}\"]\nbackend = \"cpu\"\nmemory = 4096\nmax_plans = 2\n"),
        )
        .unwrap();
        let c = FileConfig::load(&dir).unwrap();
        assert_eq!((c.listen.len(), c.bootstrap.len(), c.mdns, c.allow), (1, 1, Some(false), vec![peer]));
        assert_eq!((c.backend, c.memory, c.max_plans), (Some(crate::backend::Backend::Cpu), Some(4096), Some(2)));
        std::fs::write(dir.join("config.toml"), "backend = \"tpu\"\n").unwrap();
        assert!(FileConfig::load(&dir).unwrap_err().to_string().contains("tpu"));
        std::fs::write(dir.join("config.toml"), "bootstrapp = []\n").unwrap();
        let e = FileConfig::load(&dir).unwrap_err();
        assert!(e.to_string().contains("bootstrapp"), "{e}");
        std::fs::write(dir.join("config.toml"), "bootstrap = [\"not an address\"]\n").unwrap();
        assert!(FileConfig::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
