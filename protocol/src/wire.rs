//! The one byte encoding of the project: bincode 2 (standard configuration: little endian, variable-length
//! integers) through serde, with a hard size limit on every encode and decode.
//!
//! Every message that crosses the wire goes through [`encode`] and [`decode`]; nothing else in the project picks
//! a bincode configuration. The encoding is part of the protocol: changing [`config`] or a message type changes
//! the bytes, which the golden fixtures in `tests/golden.rs` catch.
//!
//! # Bounded decoding
//! [`decode`] refuses inputs longer than `max` before looking at them, and no allocation is larger than
//! [`CLAIM_FACTOR`]` * max` bytes rounded up to a power of two (or serde's 1 MiB sequence preallocation cap),
//! whatever the length prefixes inside the input claim: a `Vec` or `String` claiming 2^60 elements is an error, not an allocation. This works through bincode's
//! decode limit, which counts the in-memory size of everything decoded (a one-byte varint `u64` counts 8 bytes, a
//! string counts its length). The limit is a const generic in bincode, so [`decode`] picks it from a fixed ladder
//! of powers of two.
//!
//! Wire types must not contain `u128`/`i128` (they would break the [`CLAIM_FACTOR`] bound) and byte buffers
//! should use `#[serde(with = "crate::wire::bytes")]` (same bytes on the wire as a plain `Vec<u8>`, decoded in one
//! copy instead of byte by byte).

use bincode::config::{Configuration, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

/// Errors from encoding, decoding and checking wire messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message (encoded or received) is longer than the limit of its protocol.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not a valid encoding of the expected type (truncated, bad tag, bad UTF-8, a length prefix
    /// beyond the decode limit, ...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A value decoded but did not use the whole input.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes { extra: usize },
    /// A value could not be encoded (should not happen for the types of this crate).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A signature, or the public key that should check it, is invalid or does not match the signed bytes.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Signing failed (the key cannot sign).
    #[error("cannot sign: {0}")]
    Sign(String),
    /// A signed record names, or was sent by, another peer than the key that signed it.
    #[error("peer mismatch: expected {expected}, found {found}")]
    PeerMismatch { expected: String, found: String },
    /// The message decoded but breaks a rule of the protocol (a bound on a field, an invariant).
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// No message of any protocol may be larger than this (256 MiB); a larger `max` is treated as this.
pub const MAX_MESSAGE: usize = 256 << 20;

/// Upper bound of (bytes counted by bincode's decode limit) / (bytes on the wire) for the types we send:
/// a one-byte varint `u64`/`usize` (lengths) counts as 8.
pub const CLAIM_FACTOR: usize = 8;

/// The bincode configuration of the project, without a limit (encoding; [`decode`] adds one).
pub fn config() -> Configuration<LittleEndian, Varint> {
    bincode::config::standard()
}

/// Encodes `v`; fails with [`WireError::TooLarge`] if the encoding is longer than `max` bytes.
pub fn encode<T: Serialize + ?Sized>(v: &T, max: usize) -> Result<Vec<u8>, WireError> {
    let max = max.min(MAX_MESSAGE);
    let bytes = bincode::serde::encode_to_vec(v, config()).map_err(|e| WireError::Encode(e.to_string()))?;
    if bytes.len() > max {
        return Err(WireError::TooLarge { len: bytes.len(), max });
    }
    Ok(bytes)
}

/// Decodes a `T` that must use all of `bytes`, which must be at most `max` bytes long.
///
/// Never panics. Whatever the input, no single allocation exceeds `max(1 MiB, 2 * CLAIM_FACTOR * max)` bytes
/// (1 MiB is serde's cap on preallocating a sequence from its length prefix), and the memory held at any time
/// is a small multiple of `max` plus a few MiB (`tests/garbage.rs` measures both).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    let max = max.min(MAX_MESSAGE);
    if bytes.len() > max {
        return Err(WireError::TooLarge { len: bytes.len(), max });
    }
    let budget = max.saturating_mul(CLAIM_FACTOR);
    // The ladder of decode limits; `MAX_MESSAGE * CLAIM_FACTOR` is 2^31.
    macro_rules! ladder {
        ($($shift:literal)*) => {
            match budget {
                $(b if b <= 1usize << $shift => decode_limited::<T, { 1usize << $shift }>(bytes),)*
                _ => decode_limited::<T, { 1usize << 31 }>(bytes),
            }
        };
    }
    let (value, used) = ladder!(14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30)?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes { extra: bytes.len() - used });
    }
    Ok(value)
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<(T, usize), WireError> {
    bincode::serde::decode_from_slice(bytes, config().with_limit::<LIMIT>())
        .map_err(|e| WireError::Malformed(e.to_string()))
}

/// Checks a string field of a decoded message against a bound.
pub(crate) fn check_str(field: &str, value: &str, max: usize) -> Result<(), WireError> {
    if value.len() > max {
        return Err(WireError::Invalid(format!("{field} is {} bytes long, the limit is {max}", value.len())));
    }
    Ok(())
}

/// Checks the length of a list field of a decoded message against a bound.
pub(crate) fn check_len(field: &str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::Invalid(format!("{field} has {len} entries, the limit is {max}")));
    }
    Ok(())
}

/// Serde helper for `Vec<u8>` fields: `#[serde(with = "crate::wire::bytes")]`.
///
/// On the wire this is exactly a serde sequence of `u8` (varint length, then the bytes), so adding or removing it
/// never changes the encoding; it only makes bincode copy the bytes in one go instead of one element at a time.
pub mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte buffer")
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                // Self-describing formats may present bytes as a sequence; never trust its size hint.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Blob(#[serde(with = "bytes")] Vec<u8>);

    #[test]
    fn round_trip_and_exact_length() {
        let v = (7u32, String::from("hi"), vec![1u64, 2, 3]);
        let b = encode(&v, 64).unwrap();
        assert_eq!(decode::<(u32, String, Vec<u64>)>(&b, b.len()).unwrap(), v);
        assert_eq!(
            decode::<(u32, String, Vec<u64>)>(&b, b.len() - 1),
            Err(WireError::TooLarge { len: b.len(), max: b.len() - 1 })
        );
        assert_eq!(encode(&v, b.len() - 1), Err(WireError::TooLarge { len: b.len(), max: b.len() - 1 }));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut b = encode(&5u32, 16).unwrap();
        b.push(0);
        assert_eq!(decode::<u32>(&b, 16), Err(WireError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn bytes_helper_has_the_plain_vec_encoding() {
        let v: Vec<u8> = (0..=255).collect();
        let plain = encode(&v, 1024).unwrap();
        assert_eq!(encode(&Blob(v.clone()), 1024).unwrap(), plain);
        assert_eq!(decode::<Blob>(&plain, 1024).unwrap(), Blob(v));
    }

    #[test]
    fn varint_heavy_message_at_the_limit_decodes() {
        // One wire byte per element, eight bytes each against the decode limit: the worst legitimate ratio.
        for n in [0usize, 1, 100, 5000, 70_000] {
            let v = vec![0u64; n];
            let b = encode(&v, usize::MAX).unwrap();
            assert_eq!(decode::<Vec<u64>>(&b, b.len()).unwrap(), v);
            let s = vec![String::new(); n];
            let b = encode(&s, usize::MAX).unwrap();
            assert_eq!(decode::<Vec<String>>(&b, b.len()).unwrap(), s);
        }
    }

    /// A varint-encoded `u64` length prefix (bincode: 253 then 8 little-endian bytes).
    fn huge_prefix(n: u64) -> Vec<u8> {
        let mut b = vec![253];
        b.extend_from_slice(&n.to_le_bytes());
        b
    }

    #[test]
    fn huge_length_prefixes_fail_without_allocating() {
        for n in [1u64 << 60, u64::MAX, 1 << 32, 1 << 24] {
            let mut b = huge_prefix(n);
            b.extend_from_slice(&[1, 2, 3]);
            assert!(matches!(decode::<Blob>(&b, 1 << 20), Err(WireError::Malformed(_))), "{n}");
            assert!(matches!(decode::<String>(&b, 1 << 20), Err(WireError::Malformed(_))), "{n}");
            assert!(matches!(decode::<Vec<u8>>(&b, 1 << 20), Err(WireError::Malformed(_))), "{n}");
            assert!(matches!(decode::<Vec<String>>(&b, 1 << 20), Err(WireError::Malformed(_))), "{n}");
            assert!(matches!(decode::<Vec<Vec<u64>>>(&b, 1 << 20), Err(WireError::Malformed(_))), "{n}");
            // With the largest limit some of these claims fit, but the missing bytes still make it an error.
            assert!(decode::<Blob>(&b, MAX_MESSAGE).is_err());
            assert!(decode::<String>(&b, MAX_MESSAGE).is_err());
        }
    }

    #[test]
    fn oversized_max_is_clamped() {
        let b = vec![0u8; 4];
        assert!(decode::<u8>(&b, usize::MAX).is_err());
        assert_eq!(decode::<u8>(&[9], usize::MAX).unwrap(), 9);
    }
}
