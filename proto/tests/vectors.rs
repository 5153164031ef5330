//! The shared byte-exact vectors (shared/protocol-v1-vectors.json, copied here
//! so a clone builds alone; `vectors_copy_is_current` guards the copy).

use bytes::BytesMut;
use serde_json::Value;
use tidegate_proto::{
    pb, AppCode, Cmd, DecodeError, Flags, Frame, Header, MsgType, DEFAULT_MAX_BODY,
};

const VECTORS: &str = include_str!("protocol-v1-vectors.json");

fn field(fields: &[Value], n: u64) -> Option<&Value> {
    fields
        .iter()
        .find(|f| f[0].as_u64() == Some(n))
        .map(|f| &f[1])
}

fn s(fields: &[Value], n: u64) -> String {
    field(fields, n)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn u(fields: &[Value], n: u64) -> u64 {
    field(fields, n).and_then(Value::as_u64).unwrap_or_default()
}

/// Builds the frame a vector describes, from its cmd, flags and body fields.
fn build(v: &Value) -> Frame {
    let cmd = Cmd::from_u16(v["cmd"].as_u64().unwrap() as u16).unwrap();
    let flags = Flags(v["flags"].as_u64().unwrap() as u8);
    let header = Header {
        flags,
        cmd,
        appcode: AppCode(v["appcode"].as_u64().unwrap() as u16),
        msgtype: MsgType(v["msgtype"].as_u64().unwrap() as u16),
        seq: v["seq"].as_u64().unwrap() as u32,
        body_len: 0,
    };
    let f = v["body_fields"].as_array().unwrap();
    match (cmd, flags.contains(Flags::RESPONSE)) {
        (Cmd::Login, false) => Frame::new(
            header,
            &pb::Login {
                token: s(f, 1),
                device_id: s(f, 2),
                platform: s(f, 3),
            },
        ),
        (Cmd::Login, true) => Frame::new(
            header,
            &pb::LoginOk {
                uid: s(f, 1),
                session_id: u(f, 2),
                keepalive_s: u(f, 3) as u32,
                server_time_ms: u(f, 4),
            },
        ),
        (Cmd::Keepalive | Cmd::Logout, _) => Frame::empty(header),
        (Cmd::C2s, _) => Frame::new(
            header,
            &pb::Payload {
                content_type: s(f, 1),
                content: s(f, 2).into_bytes().into(),
            },
        ),
        (Cmd::S2c, _) => Frame::new(
            header,
            &pb::Push {
                msg_id: s(f, 1),
                content_type: s(f, 2),
                content: s(f, 3).into_bytes().into(),
                sent_at_ms: u(f, 4),
            },
        ),
        (Cmd::S2cAck, _) => Frame::new(header, &pb::PushAck { msg_id: s(f, 1) }),
        (Cmd::Kickout, _) => Frame::new(
            header,
            &pb::Kickout {
                reason: u(f, 1) as i32,
                message: s(f, 2),
            },
        ),
        (Cmd::Error, _) => Frame::new(
            header,
            &pb::Error {
                code: u(f, 1) as u32,
                message: s(f, 2),
            },
        ),
        other => panic!("no builder for {other:?}"),
    }
}

fn vectors() -> Value {
    serde_json::from_str(VECTORS).unwrap()
}

#[test]
fn valid_vectors_encode_byte_exact() {
    for v in vectors()["valid"].as_array().unwrap() {
        let frame = build(v);
        assert_eq!(
            hex::encode(frame.to_bytes()),
            v["hex"].as_str().unwrap(),
            "encode {}",
            v["name"]
        );
    }
}

#[test]
fn valid_vectors_decode_to_the_same_frame() {
    for v in vectors()["valid"].as_array().unwrap() {
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = Frame::parse(&mut buf, DEFAULT_MAX_BODY)
            .unwrap_or_else(|e| panic!("{}: {e}", v["name"]))
            .unwrap_or_else(|| panic!("{}: incomplete", v["name"]));
        assert!(buf.is_empty(), "{} left bytes", v["name"]);
        assert_eq!(frame, build(v), "decode {}", v["name"]);
    }
}

#[test]
fn invalid_vectors_are_classified() {
    for v in vectors()["invalid"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let got = Frame::parse(&mut buf, DEFAULT_MAX_BODY);
        let expect = v["expect"].as_str().unwrap();
        match (expect, got) {
            (e, Err(DecodeError::BadMagic(_))) if e.starts_with("error: bad magic") => {}
            (e, Err(DecodeError::BadVersion(9))) if e.starts_with("error: unsupported version") => {
            }
            (e, Err(DecodeError::BodyTooLarge { .. }))
                if e.starts_with("error: body too large") => {}
            ("need more bytes", Ok(None)) => assert_eq!(buf.len(), bytes.len(), "{name} consumed"),
            (e, got) => panic!("{name}: expected {e}, got {got:?}"),
        }
    }
}

#[test]
fn vectors_copy_is_current() {
    // CI clones the repo with shared/ beside it; a developer's checkout too.
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/protocol-v1-vectors.json"
    );
    if let Ok(upstream) = std::fs::read_to_string(shared) {
        assert_eq!(
            upstream, VECTORS,
            "copy shared/protocol-v1-vectors.json to proto/tests/"
        );
    }
}
