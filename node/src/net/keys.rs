//! The two secrets of a node: its identity (an ed25519 key pair, created on first start and kept in the data
//! directory) and the cluster key (a 32-byte pre-shared key; without it no TCP connection to the cluster gets
//! past the first handshake).
//!
//! Files in the data directory: `identity.key` (libp2p protobuf encoding, mode 0600) and `cluster.key`
//! (go-libp2p's `swarm.key` format, mode 0600). On the command line the cluster key is 64 hex digits.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid identity key: {reason}")]
    BadIdentity { path: PathBuf, reason: String },
    #[error("invalid cluster key: {0} (expected 64 hex digits, or a swarm.key file)")]
    BadClusterKey(String),
    #[error(
        "no cluster key: run `edge-node init` (or `edge-coord cluster-key`) and pass it with --cluster-key, \
             $EDGE_CLUSTER_KEY or a cluster.key file in {0}"
    )]
    NoClusterKey(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_owned(), source }
}

/// Writes a secret file readable only by its owner, atomically (temp file then rename).
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// The node's identity from `dir/identity.key`, created on first use.
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair, KeyError> {
    let path = dir.join("identity.key");
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| KeyError::BadIdentity { path: path.clone(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().expect("ed25519 keys encode");
            write_secret(&path, &bytes)?;
            tracing::info!(path = %path.display(), peer = %key.public().to_peer_id(), "created node identity");
            Ok(key)
        }
        Err(e) => Err(KeyError::Io { path, source: e }),
    }
}

/// A fresh random cluster key.
pub fn new_cluster_key() -> PreSharedKey {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    PreSharedKey::new(bytes)
}

/// 64 hex digits (what `edge-node init` prints and `--cluster-key` takes).
pub fn cluster_key_hex(key: &PreSharedKey) -> String {
    // The key file's third line is the hex key.
    key.to_string().lines().nth(2).unwrap_or_default().to_string()
}

/// Parses 64 hex digits or a whole swarm.key file.
pub fn parse_cluster_key(s: &str) -> Result<PreSharedKey, KeyError> {
    let s = s.trim();
    if s.starts_with("/key/") {
        return s.parse().map_err(|e| KeyError::BadClusterKey(format!("{e:?}")));
    }
    format!("/key/swarm/psk/1.0.0/\n/base16/\n{s}").parse().map_err(|e| KeyError::BadClusterKey(format!("{e:?}")))
}

/// The cluster key: the explicit one (flag or environment), else `dir/cluster.key`.
pub fn load_cluster_key(explicit: Option<&str>, dir: &Path) -> Result<PreSharedKey, KeyError> {
    if let Some(k) = explicit {
        return parse_cluster_key(k);
    }
    let path = dir.join("cluster.key");
    match fs::read_to_string(&path) {
        Ok(s) => parse_cluster_key(&s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyError::NoClusterKey(dir.to_owned())),
        Err(e) => Err(KeyError::Io { path, source: e }),
    }
}

/// Stores a cluster key in `dir/cluster.key`.
pub fn save_cluster_key(key: &PreSharedKey, dir: &Path) -> Result<PathBuf, KeyError> {
    let path = dir.join("cluster.key");
    write_secret(&path, key.to_string().as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("edge-keys-{}", std::process::id()));
        let a = load_or_create_identity(&dir).unwrap();
        let b = load_or_create_identity(&dir).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("identity.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(dir.join("identity.key"), b"garbage").unwrap();
        assert!(matches!(load_or_create_identity(&dir), Err(KeyError::BadIdentity { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_key_round_trips_through_hex_and_file() {
        let dir = std::env::temp_dir().join(format!("edge-psk-{}", std::process::id()));
        let k = new_cluster_key();
        let hex = cluster_key_hex(&k);
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_cluster_key(&hex).unwrap().fingerprint().to_string(), k.fingerprint().to_string());
        assert!(matches!(load_cluster_key(None, &dir), Err(KeyError::NoClusterKey(_))));
        save_cluster_key(&k, &dir).unwrap();
        assert_eq!(load_cluster_key(None, &dir).unwrap().fingerprint().to_string(), k.fingerprint().to_string());
        assert!(parse_cluster_key("abc").is_err());
        assert!(parse_cluster_key(&"zz".repeat(32)).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
