//! Tidegate wire protocol v1 (shared/ARCHITECTURE.md §3).
//!
//! A frame is a fixed 20-byte big-endian [`Header`] followed by a protobuf body
//! of `body_len` bytes. Decoding is two-step, as in mini-redis: [`Header::check`]
//! answers "is a whole frame here?" without allocating, then [`Frame::parse`]
//! splits it off the buffer. Every byte sequence yields a frame, "need more", or
//! a typed [`DecodeError`]; nothing here panics on input or allocates more than
//! the header allows.
//!
//! The same codec carries the internal gate⇄logic link (commands ≥ 0x8000).

mod cmd;
mod error;
mod frame;
mod header;

#[cfg(feature = "client")]
pub mod client;

pub use cmd::Cmd;
pub use error::{DecodeError, ErrorCode};
pub use frame::Frame;
pub use header::{Flags, Header, DEFAULT_MAX_BODY, HEADER_LEN, MAGIC, VERSION};
pub use prost;

/// Generated protobuf bodies (`proto/tidegate.proto`).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/tidegate.v1.rs"));
}

/// Tenant id: an app / account system. Users are addressed as `(AppCode, uid)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppCode(pub u16);

impl std::fmt::Display for AppCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Business line inside an app; opaque to the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgType(pub u16);

impl std::fmt::Display for MsgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A gate shard's name for one connection: slab slot plus generation, so a
/// delivery addressed to a closed connection can never reach the next one that
/// reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slot in the shard's session slab.
    pub slot: u32,
    /// Incremented each time the slot is reused.
    pub generation: u32,
}

impl ConnId {
    /// Packs into the `conn` field of link messages.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(self.generation)
    }

    /// Unpacks the `conn` field of link messages.
    pub fn from_u64(v: u64) -> Self {
        ConnId {
            slot: (v >> 32) as u32,
            generation: v as u32,
        }
    }
}

/// Milliseconds since the Unix epoch (wire timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_id_round_trips() {
        let id = ConnId {
            slot: 0xdead_beef,
            generation: 7,
        };
        assert_eq!(ConnId::from_u64(id.to_u64()), id);
    }
}
