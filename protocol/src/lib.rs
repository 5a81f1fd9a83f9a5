//! Every message that crosses the wire between `edge-node` and `edge-coord`, defined once.
//!
//! # Layout
//! - [`shard`]: what a shard is (a layer range, with or without embedding and head).
//!
//! The libp2p request/response messages, their codecs and size limits arrive with the peer-to-peer issue; they
//! will live here too, one file per message family.

pub mod shard;

pub use shard::ShardSpec;

/// Protocol version, part of every libp2p protocol name.
pub const PROTOCOL_VERSION: u32 = 1;
