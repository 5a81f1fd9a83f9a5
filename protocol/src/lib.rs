//! Every message that crosses the wire between `edge-node` and `edge-coord`, defined once.
//!
//! # Layout
//! - [`wire`]: the one bincode configuration, bounded [`encode`]/[`decode`], the crate's [`WireError`].
//! - [`shard`]: what a shard is (a layer range, with or without embedding and head).
//! - [`capability`]: the signed, versioned capability record a node advertises ([`SignedCapabilities`]).
//! - [`control`]: the control protocol ([`CONTROL_PROTOCOL`]): capability records, peer lists, link probes.
//! - [`bulk`]: dedicated streams for bulk data ([`bulk::BULK_PROTOCOL`]): bounded length-prefixed frames.
//! - [`stage`]: running a plan ([`stage::STAGE_PROTOCOL`]): sessions that ship and drive a stage, pipes between
//!   stages for hidden states, sampled tokens and tensor-parallel partial sums.
//! - [`codec`]: the libp2p request-response codec ([`BincodeCodec`], [`ControlCodec`]) with per-direction limits.
//!
//! Every libp2p protocol name ends with `/`[`PROTOCOL_VERSION`] (checked at compile time); every read has a hard
//! size limit; `tests/golden.rs` pins the bytes of each message so an accidental wire change fails a test.

pub mod bulk;
pub mod capability;
pub mod codec;
pub mod control;
pub mod shard;
pub mod stage;
pub mod wire;

pub use capability::{Capabilities, HeldShard, SignedCapabilities};
pub use codec::{BincodeCodec, ControlCodec};
pub use control::{
    ControlRequest, ControlResponse, PeerInfo, CONTROL_PROTOCOL, MAX_CONTROL_REQUEST, MAX_CONTROL_RESPONSE,
    MAX_PROBE_BYTES,
};
pub use shard::{LayerSlice, ShardSpec};
pub use wire::{decode, encode, WireError};

/// Protocol version, part of every libp2p protocol name (2: stage streams are answered with a `StageAccept`).
pub const PROTOCOL_VERSION: u32 = 9;

/// Whether a protocol name starts with `/` and ends with `/{PROTOCOL_VERSION}`; every protocol name constant
/// asserts it at compile time.
pub(crate) const fn is_versioned(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b[0] != b'/' {
        return false;
    }
    let (mut i, mut v, mut digits) = (b.len(), 0u64, 0);
    let mut scale = 1u64;
    while i > 0 && b[i - 1].is_ascii_digit() && digits < 10 {
        v += (b[i - 1] - b'0') as u64 * scale;
        scale *= 10;
        digits += 1;
        i -= 1;
    }
    digits > 0 && i > 1 && b[i - 1] == b'/' && v == PROTOCOL_VERSION as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn versioned_names() {
        assert!(super::is_versioned("/edge-infer/control/9"));
        assert!(!super::is_versioned("/edge-infer/control/1"));
        assert!(!super::is_versioned("/edge-infer/control/12"));
        assert!(!super::is_versioned("/edge-infer/control"));
        assert!(!super::is_versioned("edge-infer/control/9"));
        assert!(!super::is_versioned("/9"));
    }
}
