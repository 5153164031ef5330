//! A whole frame: header plus body bytes, and the encode/parse pair.

use crate::{pb, Cmd, DecodeError, ErrorCode, Flags, Header, HEADER_LEN};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// One v1 frame. The body stays undecoded bytes until a handler asks for its
/// message, so forwarding never re-encodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The header; `body_len` equals `body.len()`.
    pub header: Header,
    /// The protobuf body.
    pub body: Bytes,
}

impl Frame {
    /// Splits the next frame off the front of `buf`. `Ok(None)`: need more
    /// bytes (nothing consumed). On `Err`, a non-fatal error (see
    /// [`DecodeError::is_fatal`]) has consumed the offending frame, so the
    /// caller may answer it and go on; a fatal one consumed nothing.
    pub fn parse(buf: &mut BytesMut, max_body: u32) -> Result<Option<Frame>, DecodeError> {
        let Some(len) = Header::check(buf, max_body)? else {
            return Ok(None);
        };
        let mut bytes = buf.split_to(len).freeze();
        let header = Header::decode(&bytes[..HEADER_LEN])?;
        let body = bytes.split_off(HEADER_LEN);
        Ok(Some(Frame { header, body }))
    }

    /// Builds a frame from a header and a message; `body_len` is set here.
    pub fn new(mut header: Header, msg: &impl Message) -> Frame {
        let body = msg.encode_to_vec();
        header.body_len = body.len() as u32;
        Frame {
            header,
            body: Bytes::from(body),
        }
    }

    /// A frame with an empty body.
    pub fn empty(mut header: Header) -> Frame {
        header.body_len = 0;
        Frame {
            header,
            body: Bytes::new(),
        }
    }

    /// Encodes header and message straight into `out` (one copy, no
    /// intermediate body buffer).
    pub fn encode_msg(mut header: Header, msg: &impl Message, out: &mut BytesMut) {
        let len = msg.encoded_len();
        header.body_len = len as u32;
        out.reserve(HEADER_LEN + len);
        header.encode(out);
        // Cannot fail: capacity was reserved above.
        let _ = msg.encode(out);
    }

    /// Encodes header and message as one contiguous buffer.
    pub fn encode_msg_to_bytes(header: Header, msg: &impl Message) -> Bytes {
        let mut out = BytesMut::new();
        Frame::encode_msg(header, msg, &mut out);
        out.freeze()
    }

    /// An ERROR frame answering the request `h` (same appcode, msgtype, seq).
    pub fn error_reply(h: &Header, code: ErrorCode, message: &str) -> Bytes {
        let header = Header {
            cmd: Cmd::Error,
            flags: Flags::empty(),
            ..*h
        };
        let body = pb::Error {
            code: code.code(),
            message: message.to_string(),
        };
        Frame::encode_msg_to_bytes(header, &body)
    }

    /// Writes this frame to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        let mut header = self.header;
        header.body_len = self.body.len() as u32;
        header.encode(out);
        out.put_slice(&self.body);
    }

    /// This frame as one contiguous buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes the body as `M`.
    pub fn decode_body<M: Message + Default>(&self) -> Result<M, DecodeError> {
        Ok(M::decode(self.body.clone())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pb, AppCode, Cmd, Flags, MsgType, DEFAULT_MAX_BODY};
    use proptest::prelude::*;

    fn header(cmd: Cmd, flags: u8, appcode: u16, msgtype: u16, seq: u32) -> Header {
        Header {
            flags: Flags(flags),
            cmd,
            appcode: AppCode(appcode),
            msgtype: MsgType(msgtype),
            seq,
            body_len: 0,
        }
    }

    fn parse_all(bytes: &[u8]) -> Vec<Result<Frame, String>> {
        parse_split(bytes, &[])
    }

    /// Feeds `bytes` in pieces cut at `cuts`, parsing after each piece, as a
    /// socket would deliver them.
    fn parse_split(bytes: &[u8], cuts: &[usize]) -> Vec<Result<Frame, String>> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut start = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(bytes.len());
        'feed: for end in ends {
            if end < start {
                continue;
            }
            buf.extend_from_slice(&bytes[start..end]);
            start = end;
            loop {
                match Frame::parse(&mut buf, DEFAULT_MAX_BODY) {
                    Ok(Some(f)) => out.push(Ok(f)),
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        out.push(Err(e.label().to_string()));
                        if fatal {
                            break 'feed;
                        }
                    }
                }
            }
        }
        out
    }

    fn arb_cmd() -> impl Strategy<Value = Cmd> {
        prop::sample::select(vec![
            Cmd::Login,
            Cmd::Logout,
            Cmd::Keepalive,
            Cmd::Kickout,
            Cmd::C2s,
            Cmd::S2c,
            Cmd::S2cAck,
            Cmd::Error,
            Cmd::LinkDeliver,
        ])
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            arb_cmd(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(cmd, flags, app, mt, seq, body)| {
                let mut h = header(cmd, flags, app, mt, seq);
                h.body_len = body.len() as u32;
                Frame {
                    header: h,
                    body: Bytes::from(body),
                }
            })
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(frame in arb_frame()) {
            let mut buf = BytesMut::from(&frame.to_bytes()[..]);
            let parsed = Frame::parse(&mut buf, DEFAULT_MAX_BODY).unwrap().unwrap();
            prop_assert_eq!(parsed, frame);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn messages_round_trip(uid in ".{0,40}", sid in any::<u64>(), ka in any::<u32>(), t in any::<u64>()) {
            let msg = pb::LoginOk { uid, session_id: sid, keepalive_s: ka, server_time_ms: t };
            let bytes = Frame::encode_msg_to_bytes(header(Cmd::Login, 2, 1, 0, 9), &msg);
            let mut buf = BytesMut::from(&bytes[..]);
            let f = Frame::parse(&mut buf, DEFAULT_MAX_BODY).unwrap().unwrap();
            prop_assert_eq!(f.decode_body::<pb::LoginOk>().unwrap(), msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_all(&bytes);
            let _ = Header::check(&bytes, DEFAULT_MAX_BODY);
        }

        #[test]
        fn valid_prefix_then_garbage_never_panics(frame in arb_frame(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = frame.to_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            let out = parse_all(&bytes);
            prop_assert_eq!(out[0].as_ref().unwrap(), &frame);
        }

        #[test]
        fn split_stream_equals_whole(frames in prop::collection::vec(arb_frame(), 1..6),
                                      garbage in prop::collection::vec(any::<u8>(), 0..8),
                                      cuts in prop::collection::vec(any::<usize>(), 0..12)) {
            let mut bytes = Vec::new();
            for f in &frames { bytes.extend_from_slice(&f.to_bytes()); }
            bytes.extend_from_slice(&garbage);
            prop_assert_eq!(parse_split(&bytes, &cuts), parse_all(&bytes));
        }
    }

    #[test]
    fn split_at_every_offset_equals_whole() {
        let mut bytes = Vec::new();
        let login = pb::Login {
            token: "t".repeat(50),
            device_id: "d".into(),
            platform: "ios".into(),
        };
        bytes.extend_from_slice(&Frame::new(header(Cmd::Login, 0, 1, 0, 1), &login).to_bytes());
        bytes.extend_from_slice(&Frame::empty(header(Cmd::Keepalive, 0, 1, 0, 2)).to_bytes());
        bytes.extend_from_slice(&[0x54, 0x47, 0x09]);
        let whole = parse_all(&bytes);
        assert_eq!(whole.len(), 3);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                assert_eq!(parse_split(&bytes, &[a, b]), whole, "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn unknown_cmd_skips_the_frame_and_goes_on() {
        let mut bytes = hex::decode("5447010000770001000000000000000100000002aaaa").unwrap();
        bytes.extend_from_slice(&Frame::empty(header(Cmd::Keepalive, 0, 1, 0, 2)).to_bytes());
        let out = parse_all(&bytes);
        assert_eq!(out[0], Err("unknown_cmd".to_string()));
        assert_eq!(out[1].as_ref().unwrap().header.cmd, Cmd::Keepalive);
    }

    #[test]
    fn body_limit_is_checked_before_the_body_arrives() {
        // Only the header is present: a decoder that waited for the body
        // would have to buffer ~4 GiB first.
        let bytes = hex::decode("54470100000100010000000000000001fffffff0").unwrap();
        let err = Header::check(&bytes, DEFAULT_MAX_BODY).unwrap_err();
        assert!(
            matches!(err, DecodeError::BodyTooLarge { len: 0xffff_fff0, max } if max == DEFAULT_MAX_BODY)
        );
    }

    #[test]
    fn bad_body_is_typed() {
        let f = Frame {
            header: header(Cmd::Login, 0, 1, 0, 1),
            body: Bytes::from_static(&[0x0a, 0x05, 0x61]),
        };
        assert!(matches!(
            f.decode_body::<pb::Login>(),
            Err(DecodeError::BadBody(_))
        ));
    }
}
