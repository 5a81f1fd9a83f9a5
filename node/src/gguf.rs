//! GGUF reader: memory-mapped, zero-copy tensor data, every read bounds-checked.
//!
//! Layout of a GGUF file (v2/v3): magic `GGUF`, version, tensor count, metadata count, the metadata key/value
//! pairs, the tensor infos (name, dims innermost-first, type, offset), padding to `general.alignment`, then the
//! tensor data. A corrupt or truncated file gives [`GgufError`], never a panic or an unbounded allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::quant::GgmlType;

/// Strings longer than this are rejected (the longest real metadata strings are chat templates, a few KiB).
const MAX_STRING: u64 = 16 << 20;
/// Tensor ranks above this are rejected (GGML has at most 4 dimensions).
const MAX_DIMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read model file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    /// A GGUF version this reader does not understand.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    Version(u32),
    /// The file ends before a structure it announces.
    #[error("GGUF file is truncated or corrupt: {0}")]
    Truncated(String),
    /// A structurally invalid value (huge count, bad type id, overlapping data).
    #[error("GGUF file is corrupt: {0}")]
    Corrupt(String),
    /// A tensor type id that GGML does not define, or that this runtime cannot compute with.
    #[error("tensor {tensor}: unsupported tensor type {ty}")]
    UnsupportedType { tensor: String, ty: String },
    /// A tensor the model needs is not in the file.
    #[error("tensor {0} is missing from the model file")]
    MissingTensor(String),
    /// A metadata key the model needs is missing or has the wrong type.
    #[error("metadata key {0} is missing or has the wrong type")]
    MissingKey(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer value that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives in the file and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions innermost first, as GGUF stores them: a weight matrix `[out, in]` has `dims = [in, out]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Byte length of the data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Number of rows when viewed as a matrix (product of all but the innermost dimension).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
    /// Length of one row (the innermost dimension).
    pub fn cols(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// An opened GGUF file. Cheap to clone (the mapping is shared).
#[derive(Clone)]
pub struct Gguf {
    map: Arc<Mmap>,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    index: BTreeMap<String, usize>,
    data_start: u64,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io = |source| GgufError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; a model file modified while mapped is the caller's problem, and
        // every access below is bounds-checked against the mapping's length.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Arc::new(map))
    }

    fn parse(map: Arc<Mmap>) -> Result<Gguf, GgufError> {
        let mut r = Reader { buf: &map[..], pos: 0 };
        if r.bytes(4)? != b"GGUF" {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Every entry takes at least 8 bytes, so a count larger than the file is corrupt (bounds allocation).
        let max_entries = map.len() as u64 / 8;
        if n_tensors > max_entries || n_kv > max_entries {
            return Err(GgufError::Corrupt(format!("{n_tensors} tensors / {n_kv} metadata entries")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut index = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let ty_id = r.u32()?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| GgufError::UnsupportedType { tensor: name.clone(), ty: format!("id {ty_id}") })?;
            let offset = r.u64()?;
            let n: u64 = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name} dimensions {dims:?} overflow")))?;
            let (block, bytes) = ty.block();
            if dims[0] % block as u64 != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: row length {} is not a multiple of the {ty:?} block size {block}",
                    dims[0]
                )));
            }
            let size = (n / block as u64)
                .checked_mul(bytes as u64)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name} size overflows")))?;
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Corrupt(format!("tensor {name} appears twice")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 20)
                .ok_or_else(|| GgufError::Corrupt("general.alignment".into()))?,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.size));
            if end.is_none_or(|e| e > map.len() as u64) {
                return Err(GgufError::Truncated(format!(
                    "tensor {} ({} bytes at offset {}) lies past the end of the file ({} bytes)",
                    t.name,
                    t.size,
                    t.offset,
                    map.len()
                )));
            }
        }
        Ok(Gguf { map, version, metadata, tensors, index, data_start })
    }

    /// The tensor's description, or an error naming it.
    pub fn info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.index.get(name).map(|&i| &self.tensors[i]).ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The raw bytes of a tensor (GGML block layout), borrowed from the mapping.
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        &self.map[start..start + info.size as usize]
    }

    /// The whole file's bytes (for hashing).
    pub fn bytes(&self) -> &[u8] {
        &self.map[..]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| GgufError::MissingKey(key.into()))
    }
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| GgufError::MissingKey(key.into()))
    }
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| GgufError::MissingKey(key.into()))
    }
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        self.get(key).and_then(Value::as_array).ok_or_else(|| GgufError::MissingKey(key.into()))
    }
}

/// Parses a GGUF image held in memory (tests and fuzzing; the runtime maps files with [`Gguf::open`]).
pub fn parse_bytes(bytes: &[u8]) -> Result<Gguf, GgufError> {
    let mut anon = memmap2::MmapMut::map_anon(bytes.len().max(1))
        .map_err(|source| GgufError::Io { path: PathBuf::from("<memory>"), source })?;
    anon[..bytes.len()].copy_from_slice(bytes);
    let map = anon.make_read_only().map_err(|source| GgufError::Io { path: PathBuf::from("<memory>"), source })?;
    if bytes.is_empty() {
        return Err(GgufError::Truncated("empty file".into()));
    }
    Gguf::parse(Arc::new(map))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            GgufError::Truncated(format!("need {n} bytes at offset {}, file has {}", self.pos, self.buf.len()))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(GgufError::Corrupt(format!("string of {len} bytes")));
        }
        let b = self.bytes(len as usize)?;
        // Vocabularies contain invalid UTF-8 in rare byte tokens; keep them lossily rather than failing.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Corrupt("arrays nested too deeply".into()));
                }
                let item_ty = self.u32()?;
                let len = self.u64()?;
                // Each item takes at least one byte: a longer array cannot fit in what is left of the file.
                if len > (self.buf.len() - self.pos) as u64 {
                    return Err(GgufError::Truncated(format!("array of {len} items")));
                }
                let items = (0..len).map(|_| self.value(item_ty, depth + 1)).collect::<Result<Vec<_>, _>>()?;
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(GgufError::Corrupt(format!("metadata value type {other}"))),
        })
    }
}
