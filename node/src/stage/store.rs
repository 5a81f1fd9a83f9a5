//! The node's tensor cache: `DATA_DIR/tensors/<blake3 hex>`, one file per tensor, named by the hash of its bytes.
//! A transfer in progress is `<hash>.part` (append-only, so an interrupted transfer resumes where it stopped);
//! a finished one is checked against its hash before it is renamed into place. A cached file is hashed again
//! before each use: a corrupted one is deleted and fetched again.

use std::io::Write;
use std::path::{Path, PathBuf};

use edge_protocol::stage::{Hash, TensorEntry};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tensor cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tensor {name}: received bytes do not match its hash")]
    HashMismatch { name: String },
    #[error("tensor {name}: data at offset {offset}, expected {expected}")]
    OutOfOrder { name: String, offset: u64, expected: u64 },
    #[error("tensor {name}: {got} bytes is more than its size {size}")]
    TooLong { name: String, got: u64, size: u64 },
}

pub struct TensorStore {
    dir: PathBuf,
}

/// Lower-case hex of a hash or id.
pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl TensorStore {
    pub fn open(data_dir: &Path) -> Result<TensorStore, StoreError> {
        let dir = data_dir.join("tensors");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        Ok(TensorStore { dir })
    }

    pub fn path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(hex(hash))
    }

    fn part(&self, hash: &Hash) -> PathBuf {
        self.dir.join(format!("{}.part", hex(hash)))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { path: path.to_owned(), source }
    }

    /// Whether the cached file exists with the right size and hash (a corrupted one is deleted).
    pub fn verify(&self, t: &TensorEntry) -> bool {
        let path = self.path(&t.hash);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == t.size => {}
            Ok(_) => {
                tracing::warn!(tensor = %t.name, "cached tensor has the wrong size; fetching it again");
                let _ = std::fs::remove_file(&path);
                return false;
            }
            Err(_) => return false,
        }
        let mut hasher = blake3::Hasher::new();
        if hasher.update_mmap(&path).is_err() || *hasher.finalize().as_bytes() != t.hash {
            tracing::warn!(tensor = %t.name, "cached tensor does not match its hash; fetching it again");
            let _ = std::fs::remove_file(&path);
            return false;
        }
        true
    }

    /// The tensors to fetch, each with the bytes a previous transfer left (resume offset).
    pub fn need(&self, tensors: &[TensorEntry]) -> Vec<(u32, u64)> {
        let mut need = Vec::new();
        for (i, t) in tensors.iter().enumerate() {
            if self.verify(t) {
                continue;
            }
            let have = std::fs::metadata(self.part(&t.hash)).map_or(0, |m| m.len());
            // A part file longer than the tensor is garbage: start over.
            let have = if have > t.size {
                let _ = std::fs::remove_file(self.part(&t.hash));
                0
            } else {
                have
            };
            need.push((i as u32, have));
        }
        need
    }

    /// Appends received bytes at `offset` (which must be where the part file ends); returns true when the tensor
    /// is complete, checked and in place.
    pub fn write(&self, t: &TensorEntry, offset: u64, data: &[u8]) -> Result<bool, StoreError> {
        let part = self.part(&t.hash);
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        if offset != have {
            return Err(StoreError::OutOfOrder { name: t.name.clone(), offset, expected: have });
        }
        let end = offset + data.len() as u64;
        if end > t.size {
            return Err(StoreError::TooLong { name: t.name.clone(), got: end, size: t.size });
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&part).map_err(Self::io(&part))?;
        f.write_all(data).map_err(Self::io(&part))?;
        if end < t.size {
            return Ok(false);
        }
        f.sync_data().map_err(Self::io(&part))?;
        drop(f);
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap(&part).map_err(Self::io(&part))?;
        if *hasher.finalize().as_bytes() != t.hash {
            let _ = std::fs::remove_file(&part);
            return Err(StoreError::HashMismatch { name: t.name.clone() });
        }
        let path = self.path(&t.hash);
        std::fs::rename(&part, &path).map_err(Self::io(&path))?;
        Ok(true)
    }

    /// Maps a cached tensor.
    pub fn map(&self, hash: &Hash) -> Result<memmap2::Mmap, StoreError> {
        let path = self.path(hash);
        let f = std::fs::File::open(&path).map_err(Self::io(&path))?;
        // SAFETY: cache files are only ever created whole by rename and never modified in place.
        unsafe { memmap2::Mmap::map(&f) }.map_err(Self::io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8]) -> TensorEntry {
        TensorEntry {
            name: "t".into(),
            ty: 0,
            dims: vec![data.len() as u64 / 4],
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
        }
    }

    #[test]
    fn transfers_resume_verify_and_detect_corruption() {
        let dir = std::env::temp_dir().join(format!("edge-store-{}", std::process::id()));
        let store = TensorStore::open(&dir).unwrap();
        let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let t = entry(&data);
        assert_eq!(store.need(std::slice::from_ref(&t)), vec![(0, 0)]);
        assert!(!store.write(&t, 0, &data[..1000]).unwrap());
        // Interrupted: the next transfer resumes at 1000; data at the wrong offset is refused.
        assert_eq!(store.need(std::slice::from_ref(&t)), vec![(0, 1000)]);
        assert!(matches!(store.write(&t, 500, &data[500..]), Err(StoreError::OutOfOrder { .. })));
        assert!(store.write(&t, 1000, &data[1000..]).unwrap());
        assert!(store.need(std::slice::from_ref(&t)).is_empty(), "cached: nothing to send");
        assert_eq!(&store.map(&t.hash).unwrap()[..], &data[..]);
        // A flipped byte in the cache is caught and the tensor fetched again.
        let mut bad = data.clone();
        bad[17] ^= 1;
        std::fs::write(store.path(&t.hash), &bad).unwrap();
        assert_eq!(store.need(std::slice::from_ref(&t)), vec![(0, 0)]);
        // Bytes that do not hash right are refused and the part file dropped.
        assert!(matches!(store.write(&t, 0, &bad), Err(StoreError::HashMismatch { .. })));
        assert_eq!(store.need(std::slice::from_ref(&t)), vec![(0, 0)]);
        assert!(matches!(store.write(&t, 0, &[data.clone(), vec![0]].concat()), Err(StoreError::TooLong { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
