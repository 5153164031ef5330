//! A small MQTT 3.1.1 codec, enough for bench to drive a broker as Tidegate's
//! peer: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0 and 1), PUBACK,
//! PINGREQ/PINGRESP, DISCONNECT. Decoding follows STYLE §1: [`check`] says
//! whether a whole packet is buffered without allocating, [`Packet::parse`]
//! builds it, and every byte string yields a packet, "need more" or a typed
//! [`DecodeError`], never a panic. For benchmarking only: no will, no
//! credentials, no QoS 2.

pub mod client;

use bytes::{BufMut, Bytes, BytesMut};

/// The largest remaining length the four-byte varint can express.
pub const MAX_REMAINING: usize = 268_435_455;

/// A packet's delivery guarantee (QoS 2 is not spoken here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once: the receiver answers PUBACK.
    AtLeastOnce = 1,
}

/// CONNECT: a client opens its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Client identifier, unique per broker.
    pub client_id: String,
    /// Seconds of silence after which the broker may drop the client (0 = never).
    pub keep_alive_s: u16,
    /// Start from an empty session and discard it at disconnect.
    pub clean_session: bool,
}

/// CONNACK: the broker's answer to CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// The broker kept a session from an earlier connection.
    pub session_present: bool,
    /// 0 = accepted; 1–5 = refused (protocol, identifier, unavailable, credentials, authorization).
    pub return_code: u8,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Packet identifier, present exactly when `qos` is at least once.
    pub packet_id: Option<u16>,
    /// A redelivery of an earlier attempt (QoS 1 only).
    pub dup: bool,
    /// The broker keeps it for future subscribers.
    pub retain: bool,
    /// Opaque application bytes.
    pub payload: Bytes,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Topic filter (may hold `+` and `#`).
    pub topic: String,
    /// Highest QoS the client accepts on it.
    pub qos: QoS,
}

/// SUBSCRIBE: the client asks for messages on some topic filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed by SUBACK.
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<Filter>,
}

/// SUBACK: the QoS granted per filter, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier.
    pub packet_id: u16,
    /// Per filter, in order: `Some(qos)` granted, `None` refused (0x80).
    pub granted: Vec<Option<QoS>>,
}

/// The packets this codec speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client → broker, first packet.
    Connect(Connect),
    /// Broker → client.
    ConnAck(ConnAck),
    /// Either way.
    Publish(Publish),
    /// Acknowledges a QoS 1 PUBLISH (its packet identifier).
    PubAck(u16),
    /// Client → broker.
    Subscribe(Subscribe),
    /// Broker → client.
    SubAck(SubAck),
    /// Client → broker liveness probe.
    PingReq,
    /// Broker → client answer to PINGREQ.
    PingResp,
    /// Client → broker: closing on purpose.
    Disconnect,
}

/// Why bytes are not an MQTT packet this codec accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining-length varint runs past four bytes.
    #[error("remaining length longer than four bytes")]
    BadRemainingLength,
    /// The declared packet is larger than the reader allows.
    #[error("packet of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared remaining length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// Packet type 0 or 15 (reserved in 3.1.1).
    #[error("reserved packet type {0}")]
    ReservedType(u8),
    /// A valid MQTT packet type bench does not speak (PUBREC, UNSUBSCRIBE, ...).
    #[error("unsupported packet type {0}")]
    Unsupported(u8),
    /// Fixed-header flags that 3.1.1 forbids for this type.
    #[error("bad flags {flags:#06b} for packet type {packet_type}")]
    BadFlags {
        /// Packet type (high nibble).
        packet_type: u8,
        /// Flags (low nibble).
        flags: u8,
    },
    /// The variable header or payload does not match its packet type.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} of {len} bytes is too long for MQTT")]
pub struct EncodeError {
    /// The field that does not fit.
    pub what: &'static str,
    /// Its length.
    pub len: usize,
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;

/// Whether `buf` starts with a whole packet: `Ok(None)` = need more bytes,
/// `Ok(Some(n))` = the first `n` bytes are one packet. Never allocates; a
/// packet over `max` remaining bytes is refused before it is buffered.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    if packet_type == 0 || packet_type == 15 {
        return Err(DecodeError::ReservedType(packet_type));
    }
    let Some(remaining) = decode_remaining(&buf[1..])? else {
        return Ok(None);
    };
    if remaining.value > max {
        return Err(DecodeError::TooLarge {
            len: remaining.value,
            max,
        });
    }
    let total = 1 + remaining.len + remaining.value;
    Ok((buf.len() >= total).then_some(total))
}

/// A decoded remaining-length varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// The length it declares.
    pub value: usize,
    /// Bytes the varint itself took (1–4).
    pub len: usize,
}

/// Decodes the remaining-length varint at the start of `buf`: `Ok(None)`
/// when `buf` ends inside it, an error when it runs past four bytes.
pub fn decode_remaining(buf: &[u8]) -> Result<Option<Remaining>, DecodeError> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Remaining { value, len: i + 1 }));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::BadRemainingLength)
    } else {
        Ok(None)
    }
}

/// Appends the remaining-length varint of `value` (≤ [`MAX_REMAINING`]).
pub fn encode_remaining(value: usize, out: &mut BytesMut) -> Result<(), EncodeError> {
    if value > MAX_REMAINING {
        return Err(EncodeError {
            what: "packet",
            len: value,
        });
    }
    let mut v = value;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.put_u8(byte);
            return Ok(());
        }
        out.put_u8(byte | 0x80);
    }
}

impl Packet {
    /// Parses exactly one packet, as delimited by [`check`].
    pub fn parse(frame: &[u8]) -> Result<Packet, DecodeError> {
        let first = *frame.first().ok_or(DecodeError::Malformed("empty"))?;
        let remaining = decode_remaining(&frame[1..])?
            .ok_or(DecodeError::Malformed("truncated remaining length"))?;
        let body = frame
            .get(1 + remaining.len..)
            .filter(|b| b.len() == remaining.value)
            .ok_or(DecodeError::Malformed(
                "length differs from remaining length",
            ))?;
        let (packet_type, flags) = (first >> 4, first & 0x0f);
        let fixed_flags = |want: u8| {
            if flags == want {
                Ok(())
            } else {
                Err(DecodeError::BadFlags { packet_type, flags })
            }
        };
        let mut r = Reader(body);
        let packet = match packet_type {
            CONNECT => {
                fixed_flags(0)?;
                parse_connect(&mut r)?
            }
            CONNACK => {
                fixed_flags(0)?;
                let ack = r.u8()?;
                if ack & 0xfe != 0 {
                    return Err(DecodeError::Malformed("CONNACK reserved bits set"));
                }
                Packet::ConnAck(ConnAck {
                    session_present: ack & 1 == 1,
                    return_code: r.u8()?,
                })
            }
            PUBLISH => parse_publish(flags, &mut r)?,
            PUBACK => {
                fixed_flags(0)?;
                Packet::PubAck(r.u16()?)
            }
            SUBSCRIBE => {
                fixed_flags(0b0010)?;
                let packet_id = r.u16()?;
                let mut filters = Vec::new();
                while !r.is_empty() {
                    let topic = r.string()?;
                    let qos = qos_of(r.u8()?)?;
                    filters.push(Filter { topic, qos });
                }
                if filters.is_empty() {
                    return Err(DecodeError::Malformed("SUBSCRIBE without filters"));
                }
                Packet::Subscribe(Subscribe { packet_id, filters })
            }
            SUBACK => {
                fixed_flags(0)?;
                let packet_id = r.u16()?;
                let granted = r
                    .rest()
                    .iter()
                    .map(|&code| match code {
                        0x80 => Ok(None),
                        q => qos_of(q).map(Some),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Packet::SubAck(SubAck { packet_id, granted })
            }
            PINGREQ => {
                fixed_flags(0)?;
                Packet::PingReq
            }
            PINGRESP => {
                fixed_flags(0)?;
                Packet::PingResp
            }
            DISCONNECT => {
                fixed_flags(0)?;
                Packet::Disconnect
            }
            0 | 15 => return Err(DecodeError::ReservedType(packet_type)),
            other => return Err(DecodeError::Unsupported(other)),
        };
        if r.is_empty() {
            Ok(packet)
        } else {
            Err(DecodeError::Malformed("trailing bytes"))
        }
    }

    /// Appends the packet's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut body = BytesMut::new();
        let first = match self {
            Packet::Connect(c) => {
                put_string(&mut body, "MQTT", "protocol name")?;
                body.put_u8(4); // protocol level 3.1.1
                body.put_u8(if c.clean_session { 0x02 } else { 0 });
                body.put_u16(c.keep_alive_s);
                put_string(&mut body, &c.client_id, "client id")?;
                CONNECT << 4
            }
            Packet::ConnAck(a) => {
                body.put_u8(u8::from(a.session_present));
                body.put_u8(a.return_code);
                CONNACK << 4
            }
            Packet::Publish(p) => {
                put_string(&mut body, &p.topic, "topic")?;
                if let Some(id) = p.packet_id {
                    body.put_u16(id);
                }
                body.put_slice(&p.payload);
                (PUBLISH << 4) | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
            }
            Packet::PubAck(id) => {
                body.put_u16(*id);
                PUBACK << 4
            }
            Packet::Subscribe(s) => {
                body.put_u16(s.packet_id);
                for f in &s.filters {
                    put_string(&mut body, &f.topic, "topic filter")?;
                    body.put_u8(f.qos as u8);
                }
                (SUBSCRIBE << 4) | 0b0010
            }
            Packet::SubAck(s) => {
                body.put_u16(s.packet_id);
                for g in &s.granted {
                    body.put_u8(g.map_or(0x80, |q| q as u8));
                }
                SUBACK << 4
            }
            Packet::PingReq => PINGREQ << 4,
            Packet::PingResp => PINGRESP << 4,
            Packet::Disconnect => DISCONNECT << 4,
        };
        out.reserve(1 + 4 + body.len());
        out.put_u8(first);
        encode_remaining(body.len(), out)?;
        out.put_slice(&body);
        Ok(())
    }

    /// The packet as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }
}

fn parse_connect(r: &mut Reader<'_>) -> Result<Packet, DecodeError> {
    if r.string()? != "MQTT" {
        return Err(DecodeError::Malformed("CONNECT protocol name is not MQTT"));
    }
    if r.u8()? != 4 {
        return Err(DecodeError::Malformed("CONNECT protocol level is not 4"));
    }
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    if flags & 0xfc != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT with will or credentials (not spoken by bench)",
        ));
    }
    let keep_alive_s = r.u16()?;
    let client_id = r.string()?;
    Ok(Packet::Connect(Connect {
        client_id,
        keep_alive_s,
        clean_session: flags & 0x02 != 0,
    }))
}

fn parse_publish(flags: u8, r: &mut Reader<'_>) -> Result<Packet, DecodeError> {
    let bad = DecodeError::BadFlags {
        packet_type: PUBLISH,
        flags,
    };
    let qos = qos_of((flags >> 1) & 0b11).map_err(|_| bad.clone())?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(bad);
    }
    let topic = r.string()?;
    if topic.contains(['+', '#']) {
        return Err(DecodeError::Malformed("wildcard in a PUBLISH topic"));
    }
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => match r.u16()? {
            0 => return Err(DecodeError::Malformed("packet identifier 0")),
            id => Some(id),
        },
    };
    Ok(Packet::Publish(Publish {
        topic,
        qos,
        packet_id,
        dup,
        retain: flags & 1 == 1,
        payload: Bytes::copy_from_slice(r.rest()),
    }))
}

fn qos_of(v: u8) -> Result<QoS, DecodeError> {
    match v {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        _ => Err(DecodeError::Malformed("QoS other than 0 or 1")),
    }
}

fn put_string(out: &mut BytesMut, s: &str, what: &'static str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError { what, len: s.len() })?;
    out.put_u16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// A bounds-checked cursor over a packet's body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("shorter than its fields"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
        // MQTT-1.5.3-2: a string must not hold U+0000.
        if s.contains('\0') {
            return Err(DecodeError::Malformed("NUL in a string"));
        }
        Ok(s.to_string())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn parse_one(bytes: &[u8]) -> Result<Packet, DecodeError> {
        let n = check(bytes, MAX)?.expect("a whole packet");
        assert_eq!(n, bytes.len());
        Packet::parse(bytes)
    }

    #[test]
    fn remaining_length_matches_the_spec_table() {
        // MQTT 3.1.1 §2.2.3, table 2.4: the boundaries of each varint size.
        let table: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for (value, bytes) in table {
            let mut out = BytesMut::new();
            encode_remaining(value, &mut out).unwrap();
            assert_eq!(&out[..], bytes, "{value}");
            let got = decode_remaining(bytes).unwrap().unwrap();
            assert_eq!(
                got,
                Remaining {
                    value,
                    len: bytes.len()
                }
            );
        }
        assert!(encode_remaining(MAX_REMAINING + 1, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn a_fifth_varint_byte_is_an_error_not_a_wait() {
        assert_eq!(
            decode_remaining(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::BadRemainingLength)
        );
        assert_eq!(
            check(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], MAX),
            Err(DecodeError::BadRemainingLength)
        );
        assert_eq!(decode_remaining(&[0x80, 0x80, 0x80]), Ok(None));
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            parse_one(&[0x20, 0x02, 0x00, 0x00]),
            Ok(Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: 0
            }))
        );
        assert_eq!(parse_one(&[0xd0, 0x00]), Ok(Packet::PingResp));
        assert_eq!(Packet::PingReq.to_bytes().unwrap(), &[0xc0, 0x00][..]);
        assert_eq!(Packet::Disconnect.to_bytes().unwrap(), &[0xe0, 0x00][..]);
        // SUBACK for packet 10 granting QoS 0 and refusing the second filter.
        assert_eq!(
            parse_one(&[0x90, 0x04, 0x00, 0x0a, 0x00, 0x80]),
            Ok(Packet::SubAck(SubAck {
                packet_id: 10,
                granted: vec![Some(QoS::AtMostOnce), None]
            }))
        );
        // PUBLISH QoS 1 to "a/b", packet 1, payload "hi".
        let publish = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'h', b'i',
        ];
        let want = Packet::Publish(Publish {
            topic: "a/b".into(),
            qos: QoS::AtLeastOnce,
            packet_id: Some(1),
            dup: false,
            retain: false,
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(parse_one(&publish), Ok(want.clone()));
        assert_eq!(want.to_bytes().unwrap(), &publish[..]);
        let connect = Packet::Connect(Connect {
            client_id: "c".into(),
            keep_alive_s: 60,
            clean_session: true,
        });
        assert_eq!(
            connect.to_bytes().unwrap(),
            &[0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c'][..]
        );
    }

    #[test]
    fn hostile_headers_are_typed_errors() {
        assert_eq!(check(&[0x00, 0x00], MAX), Err(DecodeError::ReservedType(0)));
        assert_eq!(
            check(&[0xf0, 0x00], MAX),
            Err(DecodeError::ReservedType(15))
        );
        assert_eq!(
            check(&[0x30, 0xff, 0xff, 0x7f], 1000),
            Err(DecodeError::TooLarge {
                len: 2_097_151,
                max: 1000
            })
        );
        // QoS 3, and DUP on QoS 0.
        assert!(matches!(
            parse_one(&[0x36, 0x03, 0x00, 0x01, b'a']),
            Err(DecodeError::BadFlags { .. })
        ));
        assert!(matches!(
            parse_one(&[0x38, 0x03, 0x00, 0x01, b'a']),
            Err(DecodeError::BadFlags { .. })
        ));
        // SUBSCRIBE must carry flags 0b0010.
        assert!(matches!(
            parse_one(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00]),
            Err(DecodeError::BadFlags { .. })
        ));
        assert_eq!(
            parse_one(&[0x50, 0x02, 0, 1]),
            Err(DecodeError::Unsupported(5))
        );
        assert!(matches!(
            parse_one(&[0xd0, 0x01, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
        // A string longer than the packet.
        assert!(matches!(
            parse_one(&[0x30, 0x02, 0x00, 0x09]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn check_waits_for_the_whole_packet() {
        let bytes = Packet::Publish(Publish {
            topic: "t".into(),
            qos: QoS::AtMostOnce,
            packet_id: None,
            dup: false,
            retain: false,
            payload: Bytes::from(vec![7u8; 300]),
        })
        .to_bytes()
        .unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(check(&bytes[..cut], MAX), Ok(None), "cut at {cut}");
        }
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes);
        assert_eq!(check(&two, MAX), Ok(Some(bytes.len())));
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9/_-]{0,40}"
    }

    fn packet() -> impl Strategy<Value = Packet> {
        let connect = (text(), any::<u16>(), any::<bool>()).prop_map(|(client_id, k, clean)| {
            Packet::Connect(Connect {
                client_id,
                keep_alive_s: k,
                clean_session: clean,
            })
        });
        let connack = (any::<bool>(), 0u8..6).prop_map(|(s, c)| {
            Packet::ConnAck(ConnAck {
                session_present: s,
                return_code: c,
            })
        });
        let publish = (
            text(),
            qos(),
            1u16..,
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(topic, qos, id, dup, retain, payload)| {
                let at_least_once = qos == QoS::AtLeastOnce;
                Packet::Publish(Publish {
                    topic,
                    qos,
                    packet_id: at_least_once.then_some(id),
                    dup: dup && at_least_once,
                    retain,
                    payload: payload.into(),
                })
            });
        let subscribe = (any::<u16>(), prop::collection::vec((text(), qos()), 1..5)).prop_map(
            |(packet_id, fs)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters: fs
                        .into_iter()
                        .map(|(topic, qos)| Filter { topic, qos })
                        .collect(),
                })
            },
        );
        let suback = (
            any::<u16>(),
            prop::collection::vec(prop::option::of(qos()), 0..5),
        )
            .prop_map(|(packet_id, granted)| Packet::SubAck(SubAck { packet_id, granted }));
        prop_oneof![
            connect,
            connack,
            publish,
            subscribe,
            suback,
            any::<u16>().prop_map(Packet::PubAck),
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            Just(Packet::Disconnect),
        ]
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_typed(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some(n)) = check(&bytes, 256) {
                prop_assert!(n <= bytes.len());
                let _ = Packet::parse(&bytes[..n]);
            }
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn encoded_packets_round_trip(p in packet()) {
            let bytes = p.to_bytes().unwrap();
            prop_assert_eq!(check(&bytes, MAX), Ok(Some(bytes.len())));
            prop_assert_eq!(Packet::parse(&bytes), Ok(p));
        }

        #[test]
        fn varint_round_trips(v in 0usize..=MAX_REMAINING) {
            let mut out = BytesMut::new();
            encode_remaining(v, &mut out).unwrap();
            prop_assert_eq!(decode_remaining(&out), Ok(Some(Remaining { value: v, len: out.len() })));
        }

        #[test]
        fn flipped_bytes_never_panic(p in packet(), at in any::<usize>(), with in any::<u8>()) {
            let mut bytes = p.to_bytes().unwrap().to_vec();
            let i = at % bytes.len();
            bytes[i] = with;
            if let Ok(Some(n)) = check(&bytes, MAX) {
                let _ = Packet::parse(&bytes[..n]);
            }
        }
    }
}
