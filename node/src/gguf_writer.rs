//! GGUF v3 writer: the inverse of [`crate::gguf`]. Builds test models in memory and ships model shards between
//! machines, so everything it writes is checked to be readable by our reader and by llama.cpp's.
//!
//! ```
//! use edge_node::gguf::Value;
//! use edge_node::gguf_writer::GgufWriter;
//! use edge_node::quant::GgmlType;
//!
//! let bytes = GgufWriter::new()
//!     .kv("general.architecture", Value::Str("llama".into()))
//!     .tensor("output_norm.weight", &[4], GgmlType::F32, vec![0u8; 16])
//!     .to_bytes()
//!     .unwrap();
//! let g = edge_node::gguf::parse_bytes(&bytes).unwrap();
//! assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
//! ```
//!
//! Layout: magic, version 3, tensor count, metadata count, the metadata (in insertion order), the tensor infos
//! (offsets relative to the data section, each a multiple of the alignment), zero padding up to the alignment,
//! then each tensor's bytes padded with zeros to the alignment. The alignment is `general.alignment` when that key
//! is set (a power of two), else 32, the GGUF default.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

use crate::gguf::Value;
use crate::quant::GgmlType;

/// The alignment GGUF uses when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Arrays nested deeper than this are rejected by the reader (see `gguf.rs`), so they are not written.
const MAX_ARRAY_NESTING: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    /// The content cannot be written as a valid GGUF file (the message says which key or tensor).
    #[error("cannot write GGUF: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

struct Tensor<'a> {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF image: metadata key/values and tensors (raw GGML bytes, borrowed or owned).
#[derive(Default)]
pub struct GgufWriter<'a> {
    kv: Vec<(String, Value)>,
    tensors: Vec<Tensor<'a>>,
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value; setting a key again replaces its value (keeping its first position).
    pub fn kv(mut self, key: impl Into<String>, value: Value) -> Self {
        let key = key.into();
        match self.kv.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.kv.push((key, value)),
        }
        self
    }

    /// Adds a tensor: `dims` innermost first (a matrix `[rows, cols]` is `&[cols, rows]`), `data` its GGML bytes.
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        self.tensors.push(Tensor { name: name.into(), dims: dims.to_vec(), ty, data: data.into() });
        self
    }

    /// The data alignment this file will use.
    pub fn alignment(&self) -> Result<u64, GgufWriteError> {
        match self.kv.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 20)
                .ok_or_else(|| GgufWriteError::Invalid(format!("general.alignment {v:?} is not a power of two"))),
        }
    }

    /// Checks everything the reader checks, before a single byte is written.
    fn validate(&self) -> Result<(), GgufWriteError> {
        let bad = |m: String| Err(GgufWriteError::Invalid(m));
        self.alignment()?;
        for (k, v) in &self.kv {
            check_value(v, 0).map_err(|m| GgufWriteError::Invalid(format!("metadata {k}: {m}")))?;
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return bad(format!("tensor {} appears twice", t.name));
            }
            if t.dims.is_empty() || t.dims.len() > 4 {
                return bad(format!("tensor {} has {} dimensions (1 to 4)", t.name, t.dims.len()));
            }
            let (block, block_bytes) = t.ty.block();
            if t.dims[0] % block as u64 != 0 {
                return bad(format!(
                    "tensor {}: row length {} is not a multiple of the {:?} block size {block}",
                    t.name, t.dims[0], t.ty
                ));
            }
            let size = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| (n / block as u64).checked_mul(block_bytes as u64));
            if size != Some(t.data.len() as u64) {
                return bad(format!(
                    "tensor {} {:?} {:?}: {} bytes of data, expected {size:?}",
                    t.name,
                    t.ty,
                    t.dims,
                    t.data.len()
                ));
            }
        }
        Ok(())
    }

    /// Streams the file to `w` (tensor data is written straight from the borrowed bytes).
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), GgufWriteError> {
        self.validate()?;
        let align = self.alignment()?;
        let mut out = Counting { w, n: 0 };
        out.put(b"GGUF")?;
        out.put(&3u32.to_le_bytes())?;
        out.put(&(self.tensors.len() as u64).to_le_bytes())?;
        out.put(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            put_str(&mut out, k)?;
            out.put(&type_id(v).to_le_bytes())?;
            put_value(&mut out, v)?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name)?;
            out.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.put(&d.to_le_bytes())?;
            }
            out.put(&t.ty.id().to_le_bytes())?;
            out.put(&offset.to_le_bytes())?;
            offset += (t.data.len() as u64).next_multiple_of(align);
        }
        out.pad(align)?;
        for t in &self.tensors {
            out.put(&t.data)?;
            out.pad(align)?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufWriteError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write(&self, path: &Path) -> Result<(), GgufWriteError> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        self.write_to(&mut f)?;
        f.flush()?;
        Ok(())
    }
}

/// Counts bytes written so padding can be computed from the start of the file.
struct Counting<'w, W: Write> {
    w: &'w mut W,
    n: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.n += b.len() as u64;
        self.w.write_all(b)
    }
    fn pad(&mut self, align: u64) -> std::io::Result<()> {
        let n = (self.n.next_multiple_of(align) - self.n) as usize;
        self.put(&vec![0u8; n])
    }
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Arrays must be homogeneous (GGUF stores one item type per array) and nested at most as deep as the reader
/// accepts. An empty array is written with item type u8.
fn check_value(v: &Value, depth: usize) -> Result<(), String> {
    if let Value::Array(items) = v {
        if depth >= MAX_ARRAY_NESTING {
            return Err(format!("arrays nested more than {MAX_ARRAY_NESTING} deep"));
        }
        if let Some(first) = items.first() {
            let ty = type_id(first);
            if let Some(other) = items.iter().find(|i| type_id(i) != ty) {
                return Err(format!("array mixes item types {first:?} and {other:?}"));
            }
        }
        items.iter().try_for_each(|i| check_value(i, depth + 1))?;
    }
    Ok(())
}

fn put_str<W: Write>(out: &mut Counting<'_, W>, s: &str) -> std::io::Result<()> {
    out.put(&(s.len() as u64).to_le_bytes())?;
    out.put(s.as_bytes())
}

fn put_value<W: Write>(out: &mut Counting<'_, W>, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => out.put(&x.to_le_bytes()),
        Value::I8(x) => out.put(&x.to_le_bytes()),
        Value::U16(x) => out.put(&x.to_le_bytes()),
        Value::I16(x) => out.put(&x.to_le_bytes()),
        Value::U32(x) => out.put(&x.to_le_bytes()),
        Value::I32(x) => out.put(&x.to_le_bytes()),
        Value::F32(x) => out.put(&x.to_le_bytes()),
        Value::Bool(x) => out.put(&[*x as u8]),
        Value::Str(s) => put_str(out, s),
        Value::Array(items) => {
            out.put(&items.first().map_or(0, type_id).to_le_bytes())?;
            out.put(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| put_value(out, i))
        }
        Value::U64(x) => out.put(&x.to_le_bytes()),
        Value::I64(x) => out.put(&x.to_le_bytes()),
        Value::F64(x) => out.put(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::parse_bytes;
    use crate::quant::quantize_row;

    fn every_value() -> Vec<(&'static str, Value)> {
        vec![
            ("u8", Value::U8(250)),
            ("i8", Value::I8(-7)),
            ("u16", Value::U16(65000)),
            ("i16", Value::I16(-30000)),
            ("u32", Value::U32(4_000_000_000)),
            ("i32", Value::I32(-2_000_000_000)),
            ("f32", Value::F32(-1.5e-7)),
            ("bool.t", Value::Bool(true)),
            ("bool.f", Value::Bool(false)),
            ("str", Value::Str("héllo ▁world\n".into())),
            ("str.empty", Value::Str(String::new())),
            ("u64", Value::U64(u64::MAX - 3)),
            ("i64", Value::I64(i64::MIN + 1)),
            ("f64", Value::F64(std::f64::consts::PI)),
            ("arr.u32", Value::Array(vec![Value::U32(1), Value::U32(2), Value::U32(3)])),
            (
                "arr.str",
                Value::Array(vec![Value::Str("a".into()), Value::Str(String::new()), Value::Str("ccc".into())]),
            ),
            ("arr.f32", Value::Array(vec![Value::F32(0.25), Value::F32(-3.0)])),
            ("arr.bool", Value::Array(vec![Value::Bool(true), Value::Bool(false)])),
            ("arr.i8", Value::Array(vec![Value::I8(-1), Value::I8(1)])),
            ("arr.empty", Value::Array(vec![])),
            (
                "arr.nested",
                Value::Array(vec![
                    Value::Array(vec![Value::I64(-1), Value::I64(2)]),
                    Value::Array(vec![]),
                    Value::Array(vec![Value::I64(5)]),
                ]),
            ),
            (
                "arr.nested3",
                Value::Array(vec![
                    Value::Array(vec![Value::Array(vec![Value::Str("deep".into())])]),
                    Value::Array(vec![]),
                ]),
            ),
        ]
    }

    #[test]
    fn round_trip_through_the_reader() {
        let xs: Vec<f32> = (0..3 * 64).map(|i| ((i * 29 % 53) as f32 - 26.0) / 7.0).collect();
        let q4: Vec<u8> = xs.chunks(64).flat_map(|r| quantize_row(GgmlType::Q4_0, r)).collect();
        let q41: Vec<u8> = xs.chunks(64).flat_map(|r| quantize_row(GgmlType::Q4_1, r)).collect();
        let q8 = quantize_row(GgmlType::Q8_0, &xs[..96]);
        let f16 = quantize_row(GgmlType::F16, &xs[..2 * 3 * 5]);
        let f32v = quantize_row(GgmlType::F32, &xs[..7]);
        let mut w = GgufWriter::new();
        for (k, v) in every_value() {
            w = w.kv(k, v);
        }
        let w = w
            .tensor("vec.f32", &[7], GgmlType::F32, &f32v[..]) // 28 bytes: the next offset needs padding
            .tensor("mat.q4_0", &[64, 3], GgmlType::Q4_0, q4.clone())
            .tensor("t3.f16", &[2, 3, 5], GgmlType::F16, f16.clone())
            .tensor("mat.q4_1", &[64, 3], GgmlType::Q4_1, q41.clone())
            .tensor("row.q8_0", &[96], GgmlType::Q8_0, q8.clone())
            .tensor("t4.f32", &[1, 1, 1, 1], GgmlType::F32, 1.0f32.to_le_bytes().to_vec());
        let bytes = w.to_bytes().unwrap();
        let g = parse_bytes(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata.len(), every_value().len());
        for (k, v) in every_value() {
            assert_eq!(g.get(k), Some(&v), "{k}");
        }
        let want: [(&str, &[u64], GgmlType, &[u8]); 6] = [
            ("vec.f32", &[7], GgmlType::F32, &f32v),
            ("mat.q4_0", &[64, 3], GgmlType::Q4_0, &q4),
            ("t3.f16", &[2, 3, 5], GgmlType::F16, &f16),
            ("mat.q4_1", &[64, 3], GgmlType::Q4_1, &q41),
            ("row.q8_0", &[96], GgmlType::Q8_0, &q8),
            ("t4.f32", &[1, 1, 1, 1], GgmlType::F32, &1.0f32.to_le_bytes()),
        ];
        assert_eq!(g.tensors.len(), want.len());
        for (t, (name, dims, ty, data)) in g.tensors.iter().zip(want) {
            assert_eq!((t.name.as_str(), t.dims.as_slice(), t.ty), (name, dims, ty));
            assert_eq!(t.offset % DEFAULT_ALIGNMENT, 0, "{name} offset");
            assert_eq!(g.data(t), data, "{name} data");
        }
        // The data section itself starts aligned, and the file ends on the alignment.
        let first = &g.tensors[0];
        let start = g.data(first).as_ptr() as usize - g.bytes().as_ptr() as usize;
        assert_eq!(start % 32, 0);
        assert_eq!(bytes.len() % 32, 0);
    }

    #[test]
    fn honours_general_alignment_and_streams_to_a_file() {
        let data: Vec<u8> = (0..20u8).collect(); // one Q4_1 block
        let w = GgufWriter::new()
            .kv("general.alignment", Value::U32(256))
            .tensor("a", &[32], GgmlType::Q4_1, &data[..])
            .tensor("b", &[32], GgmlType::Q4_1, &data[..]);
        let bytes = w.to_bytes().unwrap();
        let g = parse_bytes(&bytes).unwrap();
        assert_eq!(g.tensors[1].offset, 256);
        let start = g.data(&g.tensors[0]).as_ptr() as usize - g.bytes().as_ptr() as usize;
        assert_eq!(start % 256, 0);
        assert_eq!(g.data(&g.tensors[1]), &data[..]);

        let path = std::env::temp_dir().join(format!("gguf_writer_{}.gguf", std::process::id()));
        w.write(&path).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        let opened = crate::gguf::Gguf::open(&path).map(|g| g.tensors.len());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(on_disk, bytes);
        assert_eq!(opened.unwrap(), 2);
    }

    #[test]
    fn a_key_set_twice_keeps_the_last_value() {
        let bytes =
            GgufWriter::new().kv("k", Value::U32(1)).kv("j", Value::U8(0)).kv("k", Value::U32(2)).to_bytes().unwrap();
        let g = parse_bytes(&bytes).unwrap();
        assert_eq!(g.get("k"), Some(&Value::U32(2)));
        assert_eq!(g.metadata.len(), 2);
    }

    #[test]
    fn rejects_what_the_reader_would_reject() {
        let invalid = |w: GgufWriter<'_>| matches!(w.to_bytes(), Err(GgufWriteError::Invalid(_)));
        assert!(invalid(GgufWriter::new().tensor("t", &[32], GgmlType::Q8_0, vec![0u8; 33])), "wrong data length");
        assert!(invalid(GgufWriter::new().tensor("t", &[16], GgmlType::Q8_0, vec![0u8; 17])), "partial block");
        assert!(invalid(GgufWriter::new().tensor("t", &[], GgmlType::F32, vec![])), "no dims");
        assert!(invalid(GgufWriter::new().tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0u8; 4])), "5 dims");
        assert!(invalid(GgufWriter::new().tensor("t", &[1], GgmlType::F32, vec![0u8; 4]).tensor(
            "t",
            &[1],
            GgmlType::F32,
            vec![0u8; 4]
        )));
        assert!(invalid(GgufWriter::new().kv("a", Value::Array(vec![Value::U8(1), Value::I8(1)]))), "mixed array");
        let deep = Value::Array(vec![Value::Array(vec![Value::Array(vec![Value::Array(vec![])])])]);
        assert!(invalid(GgufWriter::new().kv("a", deep)), "nesting");
        assert!(invalid(GgufWriter::new().kv("general.alignment", Value::U32(24))), "alignment");
        assert!(invalid(GgufWriter::new().kv("general.alignment", Value::Str("32".into()))), "alignment type");
    }
}
