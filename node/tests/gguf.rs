//! The GGUF reader on hostile input: every truncation into the header or tensor data, random byte flips and
//! random bytes give an error or a parse whose tensors all lie inside the file, never a panic or an unbounded
//! allocation.

use edge_node::gguf::{parse_bytes, GgufError, Value};
use edge_node::gguf_writer::GgufWriter;
use edge_node::quant::{quantize_row, GgmlType};
use proptest::prelude::*;

/// A small but complete GGUF image: metadata of several kinds and tensors of several types.
fn image() -> Vec<u8> {
    let x: Vec<f32> = (0..64).map(|i| i as f32 / 10.0 - 3.0).collect();
    GgufWriter::new()
        .kv("general.architecture", Value::Str("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv("tokenizer.ggml.tokens", Value::Array(vec![Value::Str("a".into()), Value::Str("b".into())]))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .tensor("a", &[64], GgmlType::F32, quantize_row(GgmlType::F32, &x))
        .tensor("b", &[64], GgmlType::Q4_1, quantize_row(GgmlType::Q4_1, &x))
        .tensor(
            "c",
            &[32, 2],
            GgmlType::Q8_0,
            [quantize_row(GgmlType::Q8_0, &x[..32]), quantize_row(GgmlType::Q8_0, &x[32..])].concat(),
        )
        .to_bytes()
        .unwrap()
}

fn check(bytes: &[u8]) {
    if let Ok(g) = parse_bytes(bytes) {
        for t in &g.tensors {
            assert!(g.data(t).len() as u64 == t.size);
        }
    }
}

#[test]
fn the_image_parses_and_every_truncation_is_an_error() {
    let img = image();
    let g = parse_bytes(&img).unwrap();
    assert_eq!(g.tensors.len(), 3);
    // Where the last tensor's data ends: past it the writer only pads to the alignment.
    let base = g.bytes().as_ptr() as usize;
    let data_end = g.tensors.iter().map(|t| g.data(t).as_ptr() as usize + t.size as usize - base).max().unwrap();
    assert!(data_end < img.len(), "the image ends with alignment padding");
    for len in 0..img.len() {
        match parse_bytes(&img[..len]) {
            Err(GgufError::Truncated(_) | GgufError::Corrupt(_) | GgufError::BadMagic) if len < data_end => {}
            Ok(g) if len >= data_end => assert_eq!(g.tensors.len(), 3, "cut only padding"),
            other => panic!("truncated to {len} of {} bytes (data ends at {data_end}): {other:?}", img.len()),
        }
    }
}

#[test]
fn huge_counts_and_unknown_types_are_errors() {
    let mut img = image();
    // Tensor count (bytes 8..16) claims 2^60 tensors.
    img[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(parse_bytes(&img), Err(GgufError::Corrupt(_))));
    let mut img = image();
    img[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert!(matches!(parse_bytes(&img), Err(GgufError::Version(99))));
    let mut img = image();
    img[0] = b'X';
    assert!(matches!(parse_bytes(&img), Err(GgufError::BadMagic)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_byte_flips_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut img = image();
        for (i, b) in flips {
            let at = i.index(img.len());
            img[at] = b;
        }
        check(&img);
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"GGUF");
            bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        check(&bytes);
    }
}
