//! The value of a presence row. The embedded store keeps every logged-in
//! session in its file and redb caches the file's pages in the process, so
//! a session's row is part of `tidegate up`'s memory per connection. Rows
//! were JSON copies of the whole [`SessionRecord`] (~190 bytes, the gate id
//! twice: the row's key already names gate, shard and connection); they are
//! now `[3][since_ms varint][incarnation varint][device len varint][device]
//! [platform len varint][platform]`, ~25 bytes for a typical login. The key
//! gives gate, shard and connection, the row's epoch column the epoch.
//!
//! JSON rows written by earlier builds still read: a JSON object starts with
//! `{`, never with the layout byte.

use crate::store::SessionRecord;
use prost::encoding::{decode_varint, encode_varint};

/// Layout byte of a compact row (JSON rows start with `{`).
const SESSION_V3: u8 = 3;

/// Encodes the parts of `record` its key and epoch column do not carry.
pub(super) fn encode(record: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 10 + 10 + 4 + record.device.len() + record.platform.len());
    out.push(SESSION_V3);
    encode_varint(record.since_ms, &mut out);
    encode_varint(record.incarnation, &mut out);
    put_text(&mut out, &record.device);
    put_text(&mut out, &record.platform);
    out
}

/// Reads a presence row back: `field` is its key's `gate/shard/conn`,
/// `epoch` its epoch column, `value` either layout. The error says what is
/// wrong with the row; it never panics on damaged bytes.
pub(super) fn decode(field: &str, epoch: u64, value: &[u8]) -> Result<SessionRecord, String> {
    if value.first() != Some(&SESSION_V3) {
        let mut record: SessionRecord =
            serde_json::from_slice(value).map_err(|e| format!("JSON row: {e}"))?;
        // The epoch column is what fencing compares; it wins over the copy.
        record.epoch = epoch;
        return Ok(record);
    }
    let (gate_id, shard, conn) = split_field(field)?;
    let mut rest = &value[1..];
    let since_ms = decode_varint(&mut rest).map_err(|_| "since_ms cut short or too long")?;
    let incarnation = decode_varint(&mut rest).map_err(|_| "incarnation cut short or too long")?;
    let device = take_text(&mut rest).ok_or("device cut short")?;
    let platform = take_text(&mut rest).ok_or("platform cut short")?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the platform", rest.len()));
    }
    Ok(SessionRecord {
        gate_id: gate_id.to_string(),
        shard,
        conn,
        epoch,
        device,
        platform,
        since_ms,
        incarnation,
    })
}

/// `gate/shard/conn`, read from the right: a configured gate id may hold
/// a `/` itself, the two numbers never do.
fn split_field(field: &str) -> Result<(&str, u32, u64), String> {
    let bad = || format!("key {field:?} is not gate/shard/conn");
    let mut parts = field.rsplitn(3, '/');
    let conn = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let shard = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let gate_id = parts.next().filter(|g| !g.is_empty()).ok_or_else(bad)?;
    Ok((gate_id, shard, conn))
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    encode_varint(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

fn take_text(bytes: &mut &[u8]) -> Option<String> {
    let len = decode_varint(bytes).ok()?;
    // Checked against what is there before any slicing or allocation: a
    // damaged length cannot make a read allocate more than the row holds.
    if len > bytes.len() as u64 {
        return None;
    }
    let (text, rest) = bytes.split_at(len as usize);
    let text = std::str::from_utf8(text).ok()?.to_string();
    *bytes = rest;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(gate_id: &str) -> SessionRecord {
        SessionRecord {
            gate_id: gate_id.into(),
            shard: 3,
            conn: 12_884_901_893,
            epoch: 7,
            device: "phone-1".into(),
            platform: "android".into(),
            since_ms: 1_764_000_000_000,
            incarnation: 1_764_000_000_123_456,
        }
    }

    fn field(r: &SessionRecord) -> String {
        r.key().to_string()
    }

    #[test]
    fn a_compact_row_reads_back_whole_and_small() {
        for gate in ["gate-a", "host/with/slashes-12", "g"] {
            let r = record(gate);
            let row = encode(&r);
            assert!(row.len() <= 32, "{} bytes", row.len());
            assert_eq!(decode(&field(&r), r.epoch, &row).unwrap(), r);
        }
    }

    #[test]
    fn the_epoch_column_wins_in_both_layouts() {
        let r = record("gate-a");
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode(&field(&r), 9, &json).unwrap().epoch, 9);
        assert_eq!(decode(&field(&r), 9, &encode(&r)).unwrap().epoch, 9);
    }

    #[test]
    fn json_rows_of_earlier_builds_still_read() {
        let r = record("gate-a");
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode(&field(&r), r.epoch, &json).unwrap(), r);
        // Before incarnations existed rows had none: 0.
        let old = br#"{"gate_id":"g","shard":0,"conn":1,"epoch":2,"device":"d","platform":"web","since_ms":5}"#;
        assert_eq!(decode("g/0/1", 2, old).unwrap().incarnation, 0);
    }

    #[test]
    fn damaged_rows_are_errors_never_panics() {
        let r = record("gate-a");
        let row = encode(&r);
        for cut in 0..row.len() {
            assert!(decode(&field(&r), 1, &row[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = row.clone();
        long.push(0);
        assert!(decode(&field(&r), 1, &long).is_err());
        // A length past the row's end, an over-long varint, bad UTF-8.
        let mut huge = vec![SESSION_V3, 1, 1];
        encode_varint(u64::MAX, &mut huge);
        assert!(decode("g/0/1", 1, &huge).is_err());
        assert!(decode(
            "g/0/1",
            1,
            &[SESSION_V3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
        )
        .is_err());
        assert!(decode("g/0/1", 1, &[SESSION_V3, 1, 1, 2, 0xc3, 0x28, 0]).is_err());
        for bad_field in ["", "g", "g/0", "/0/1", "g/x/1", "g/0/-1"] {
            assert!(decode(bad_field, 1, &row).is_err(), "{bad_field:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic xorshift stream: every length up to 64, many times.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (s >> (i % 8 * 8)) as u8).collect();
            if let Some(b) = bytes.first_mut() {
                *b = SESSION_V3;
            }
            let _ = decode("g/0/1", 1, &bytes);
        }
    }

    #[test]
    fn varint_fields_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut r = record("g");
            r.since_ms = v;
            r.incarnation = u64::MAX - v;
            assert_eq!(decode(&field(&r), r.epoch, &encode(&r)).unwrap(), r);
        }
    }
}
