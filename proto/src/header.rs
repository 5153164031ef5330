//! The fixed 20-byte v1 header and the allocation-free frame check.

use crate::{AppCode, Cmd, DecodeError, MsgType};
use bytes::{Buf, BufMut};

/// `"TG"`: anything else at offset 0 closes the connection.
pub const MAGIC: u16 = 0x5447;
/// The only protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 20;
/// Default maximum body length (64 KiB).
pub const DEFAULT_MAX_BODY: u32 = 64 * 1024;

/// Header flag bits (offset 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// bit0: the sender wants a reply.
    pub const ACK_REQUESTED: Flags = Flags(0b01);
    /// bit1: this frame answers a request with the same `seq`.
    pub const RESPONSE: Flags = Flags(0b10);

    /// No flags.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// True if every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A decoded v1 header. `reserved` is always written as 0 and ignored on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flag bits.
    pub flags: Flags,
    /// Command.
    pub cmd: Cmd,
    /// Tenant.
    pub appcode: AppCode,
    /// Business line.
    pub msgtype: MsgType,
    /// Sender's request id, echoed in the response.
    pub seq: u32,
    /// Length of the body that follows.
    pub body_len: u32,
}

impl Header {
    /// A header for a request of `cmd` (no flags, msgtype 0, body_len set on encode).
    pub fn new(cmd: Cmd, appcode: AppCode, seq: u32) -> Header {
        Header {
            flags: Flags::empty(),
            cmd,
            appcode,
            msgtype: MsgType(0),
            seq,
            body_len: 0,
        }
    }

    /// The header of this request's reply: same cmd, appcode, msgtype and seq,
    /// response flag set.
    pub fn reply(&self) -> Header {
        Header {
            flags: Flags::RESPONSE,
            body_len: 0,
            ..*self
        }
    }

    /// Is a whole frame at the start of `buf`? `Ok(None)`: need more bytes;
    /// `Ok(Some(n))`: a frame of `n` bytes is ready. Never allocates; the body
    /// length is checked against `max_body` before anything reads the body.
    pub fn check(buf: &[u8], max_body: u32) -> Result<Option<usize>, DecodeError> {
        // Validate what is present even before the header is complete, so a
        // garbage stream is refused on its first two bytes.
        if buf.len() >= 2 {
            let magic = u16::from_be_bytes([buf[0], buf[1]]);
            if magic != MAGIC {
                return Err(DecodeError::BadMagic(magic));
            }
        }
        if buf.len() >= 3 && buf[2] != VERSION {
            return Err(DecodeError::BadVersion(buf[2]));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let body_len = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if body_len > max_body {
            return Err(DecodeError::BodyTooLarge {
                len: body_len,
                max: max_body,
            });
        }
        let total = HEADER_LEN + body_len as usize;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Decodes the header at the start of `buf`, which must hold
    /// [`HEADER_LEN`] bytes that [`Header::check`] accepted (magic, version
    /// and length are not re-checked here).
    pub fn decode(mut buf: &[u8]) -> Result<Header, DecodeError> {
        debug_assert!(buf.len() >= HEADER_LEN);
        buf.advance(3);
        let flags = Flags(buf.get_u8());
        let code = buf.get_u16();
        let cmd = Cmd::from_u16(code).ok_or(DecodeError::UnknownCmd(code))?;
        let appcode = AppCode(buf.get_u16());
        let msgtype = MsgType(buf.get_u16());
        let _reserved = buf.get_u16();
        let seq = buf.get_u32();
        let body_len = buf.get_u32();
        Ok(Header {
            flags,
            cmd,
            appcode,
            msgtype,
            seq,
            body_len,
        })
    }

    /// Writes the 20 header bytes.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(self.flags.0);
        out.put_u16(self.cmd.code());
        out.put_u16(self.appcode.0);
        out.put_u16(self.msgtype.0);
        out.put_u16(0);
        out.put_u32(self.seq);
        out.put_u32(self.body_len);
    }
}
