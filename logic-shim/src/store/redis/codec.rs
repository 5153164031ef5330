//! Encoding of Redis values: presence records (`<epoch>|<json>`), stream
//! entries (XRANGE replies) and gate heartbeats. Parsing never panics:
//! anything unexpected is [`StoreError::Corrupt`] naming the key.

use crate::store::{
    C2sEntry, GateShardStatus, InboxMessage, NewSession, SessionRecord, StoreError, StreamId,
};
use bytes::Bytes;
use redis::Value;
use serde::{Deserialize, Serialize};
use tidegate_proto::MsgType;

/// A session's presence value minus the epoch, which the script prefixes.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredSession {
    gate_id: String,
    shard: u32,
    conn: u64,
    device: String,
    platform: String,
    since_ms: u64,
    #[serde(default)]
    incarnation: u64,
}

impl StoredSession {
    pub(super) fn from_new(new: &NewSession) -> StoredSession {
        StoredSession {
            gate_id: new.key.gate_id.clone(),
            shard: new.key.shard,
            conn: new.key.conn,
            device: new.device.clone(),
            platform: new.platform.clone(),
            since_ms: new.since_ms,
            incarnation: new.incarnation,
        }
    }

    pub(super) fn into_record(self, epoch: u64) -> SessionRecord {
        SessionRecord {
            gate_id: self.gate_id,
            shard: self.shard,
            conn: self.conn,
            epoch,
            device: self.device,
            platform: self.platform,
            since_ms: self.since_ms,
            incarnation: self.incarnation,
        }
    }
}

/// Decodes one presence value `<epoch>|<json>`.
pub(super) fn parse_session(key: &str, value: &[u8]) -> Result<SessionRecord, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("{key}: {why}"));
    let bar = value
        .iter()
        .position(|&b| b == b'|')
        .ok_or_else(|| corrupt("presence value has no epoch prefix".into()))?;
    let epoch = std::str::from_utf8(&value[..bar])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| corrupt("presence epoch is not a number".into()))?;
    let stored: StoredSession = serde_json::from_slice(&value[bar + 1..])
        .map_err(|e| corrupt(format!("presence record: {e}")))?;
    Ok(stored.into_record(epoch))
}

/// Decodes an XRANGE reply `[[id, [field, value, …]], …]`, each entry's
/// fields by `parse`.
pub(super) fn parse_xrange<T>(
    key: &str,
    reply: Value,
    parse: impl Fn(Fields) -> Result<T, &'static str>,
) -> Result<Vec<(StreamId, T)>, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("XRANGE {key}: {why}"));
    let Value::Array(items) = reply else {
        return Err(corrupt("reply is not an array"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(corrupt("entry is not an array"));
        };
        let [id, Value::Array(fields)] =
            <[Value; 2]>::try_from(pair).map_err(|_| corrupt("entry is not [id, fields]"))?
        else {
            return Err(corrupt("entry fields are not an array"));
        };
        let id: StreamId = as_text(&id)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("entry id is not <ms>-<seq>"))?;
        let fields = field_pairs(fields).map_err(|why| corrupt(&format!("entry {id}: {why}")))?;
        let entry = parse(fields).map_err(|why| corrupt(&format!("entry {id}: {why}")))?;
        out.push((id, entry));
    }
    Ok(out)
}

/// A stream entry's `(field name, value)` pairs.
pub(super) type Fields = Vec<(String, Vec<u8>)>;

fn field_pairs(fields: Vec<Value>) -> Result<Fields, &'static str> {
    let mut out = Vec::with_capacity(fields.len() / 2);
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let Value::BulkString(value) = value else {
            return Err("field value is not a string");
        };
        let name = as_text(&name).ok_or("field name is not text")?;
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn number(value: &[u8], what: &'static str) -> Result<u64, &'static str> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(what)
}

/// Builds a [`C2sEntry`] from XADD's fields; unknown fields are ignored so
/// a newer writer can add some.
pub(super) fn c2s_entry(fields: Fields) -> Result<C2sEntry, &'static str> {
    let (mut uid, mut ct, mut body, mut at) = (None, None, None, None);
    for (name, value) in fields {
        match name.as_str() {
            "uid" => uid = Some(String::from_utf8(value).map_err(|_| "uid is not UTF-8")?),
            "ct" => ct = Some(String::from_utf8(value).map_err(|_| "ct is not UTF-8")?),
            "body" => body = Some(Bytes::from(value)),
            "at" => at = Some(number(&value, "at is not a number")?),
            _ => {}
        }
    }
    Ok(C2sEntry {
        uid: uid.ok_or("no uid field")?,
        content_type: ct.ok_or("no ct field")?,
        content: body.ok_or("no body field")?,
        at_ms: at.ok_or("no at field")?,
    })
}

/// Builds an [`InboxMessage`] from its XADD fields `t` (msgtype), `x`
/// (expiry, ms) and `p` (encoded push).
pub(super) fn inbox_message(fields: Fields) -> Result<InboxMessage, &'static str> {
    let (mut msgtype, mut expires, mut push) = (None, None, None);
    for (name, value) in fields {
        match name.as_str() {
            "t" => {
                let t = number(&value, "t is not a msgtype")?;
                msgtype = Some(MsgType(u16::try_from(t).map_err(|_| "t is not a msgtype")?));
            }
            "x" => expires = Some(number(&value, "x is not a number")?),
            "p" => push = Some(Bytes::from(value)),
            _ => {}
        }
    }
    Ok(InboxMessage {
        msgtype: msgtype.ok_or("no t field")?,
        expires_ms: expires.ok_or("no x field")?,
        push: push.ok_or("no p field")?,
    })
}

pub(super) fn as_text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A gate shard's heartbeat with its lease end, as stored in the gate hash.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredShard {
    pub(super) expires_ms: u64,
    #[serde(flatten)]
    pub(super) status: GateShardStatus,
}

/// A hash's `(field, value)` pairs.
pub(super) type HashPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes an HGETALL reply.
pub(super) fn hash_pairs(key: &str, v: Value) -> Result<HashPairs, StoreError> {
    redis::from_redis_value(v).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_presence_values_are_errors_not_panics() {
        for bad in [&b""[..], b"12", b"x|{}", b"1|not json", b"1|{}"] {
            assert!(matches!(
                parse_session("k", bad),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
