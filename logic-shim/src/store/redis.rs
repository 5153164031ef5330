//! The production [`Store`]: presence and c2s streams in Redis (a single
//! node today, Redis Cluster later), reached through one auto-reconnecting
//! `ConnectionManager` shared by every task of a logic instance.
//!
//! Key layout (ARCHITECTURE §5, §7):
//! * `tg:{<app>:<uid>}:p` — presence hash, field `gate/shard/conn`
//!   ([`SessionKey`]'s `Display`), value `<epoch>|<json>`;
//! * `tg:{<app>:<uid>}:epoch` — the user's epoch counter;
//! * `c2s:<app>:<msgtype>` — the app's c2s stream ([`c2s_stream_key`]).
//!
//! Both per-user keys carry the same hash tag, so the one Lua script per
//! presence transition touches a single cluster slot.

use super::{
    c2s_stream_key, C2sEntry, NewSession, SessionKey, SessionRecord, Store, StoreError,
    StreamEntry, StreamId,
};
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use tidegate_proto::{AppCode, MsgType};

/// Bound on one TCP connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one command's round trip once connected.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a whole store call, including waiting for a reconnect: a caller
/// (a LOGIN, a c2s append) must get `Unavailable`, never hang (§5 case 1).
const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// INCR the epoch and HSET the session in one step, so two concurrent logins
/// of one user can never get the same epoch or interleave.
/// KEYS: presence, epoch. ARGV: field, json. Returns the new epoch.
/// Lua numbers are doubles, exact to 2^53; epochs count logins and stay far below.
const ADD_SESSION: &str = r"
local e = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', e) .. '|' .. ARGV[2])
return e
";

/// HDEL only if the stored value still carries the caller's epoch, so a stale
/// close never removes a newer login on the same connection address.
/// KEYS: presence. ARGV: field, epoch. Returns 1 if removed.
const REMOVE_SESSION: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.match(v, '^(%d+)|') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// Presence and c2s streams in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    add_session: Script,
    remove_session: Script,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); `Unavailable` if nothing answers.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::BadInput(format!("redis url {url:?}: {e}")))?;
        // Few, short retries: the manager keeps reconnecting in the background
        // on later calls, and a startup against a dead server should fail fast.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = bounded(ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!("{url}: {m}")),
                other => other,
            })?;
        Ok(RedisStore {
            conn,
            add_session: Script::new(ADD_SESSION),
            remove_session: Script::new(REMOVE_SESSION),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pong: String = bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!("PING answered {pong:?}")))
        }
    }

    async fn add_session(
        &self,
        app: AppCode,
        uid: &str,
        new: NewSession,
    ) -> Result<SessionRecord, StoreError> {
        let value = StoredSession::from_new(&new);
        let json = serde_json::to_string(&value)
            .map_err(|e| StoreError::BadInput(format!("session {}: {e}", new.key)))?;
        let mut conn = self.conn.clone();
        let mut call = self.add_session.prepare_invoke();
        call.key(presence_key(app, uid))
            .key(epoch_key(app, uid))
            .arg(new.key.to_string())
            .arg(json);
        let epoch: u64 = bounded(call.invoke_async(&mut conn)).await?;
        Ok(value.into_record(epoch))
    }

    async fn remove_session(
        &self,
        app: AppCode,
        uid: &str,
        key: &SessionKey,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = self.remove_session.prepare_invoke();
        call.key(presence_key(app, uid))
            .arg(key.to_string())
            .arg(epoch.to_string());
        let removed: i64 = bounded(call.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    async fn sessions(&self, app: AppCode, uid: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let key = presence_key(app, uid);
        let fields: Vec<(Vec<u8>, Vec<u8>)> =
            bounded(redis::cmd("HGETALL").arg(&key).query_async(&mut conn)).await?;
        let mut out = fields
            .iter()
            .map(|(_, value)| parse_session(&key, value))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|s| s.epoch);
        Ok(out)
    }

    async fn append_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        entry: &C2sEntry,
        max_len: u64,
    ) -> Result<StreamId, StoreError> {
        if max_len == 0 {
            return Err(StoreError::BadInput(
                "c2s max_len 0 would drop every message".into(),
            ));
        }
        let key = c2s_stream_key(app, msgtype);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("uid")
            .arg(&entry.uid)
            .arg("ct")
            .arg(&entry.content_type)
            .arg("body")
            .arg(entry.content.as_ref())
            .arg("at")
            .arg(entry.at_ms);
        let mut conn = self.conn.clone();
        let id: String = bounded(cmd.query_async(&mut conn)).await?;
        id.parse()
            .map_err(|_| StoreError::Corrupt(format!("XADD {key} returned id {id:?}")))
    }

    async fn read_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = c2s_stream_key(app, msgtype);
        // `(<id>` is an exclusive start (Redis ≥ 6.2): no client-side skipping.
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&key).arg(start).arg("+").arg("COUNT").arg(limit);
        let mut conn = self.conn.clone();
        let reply: Value = bounded(cmd.query_async(&mut conn)).await?;
        parse_xrange(&key, reply)
    }
}

/// A session's presence value minus the epoch, which the script prefixes.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    gate_id: String,
    shard: u32,
    conn: u64,
    device: String,
    platform: String,
    since_ms: u64,
}

impl StoredSession {
    fn from_new(new: &NewSession) -> StoredSession {
        StoredSession {
            gate_id: new.key.gate_id.clone(),
            shard: new.key.shard,
            conn: new.key.conn,
            device: new.device.clone(),
            platform: new.platform.clone(),
            since_ms: new.since_ms,
        }
    }

    fn into_record(self, epoch: u64) -> SessionRecord {
        SessionRecord {
            gate_id: self.gate_id,
            shard: self.shard,
            conn: self.conn,
            epoch,
            device: self.device,
            platform: self.platform,
            since_ms: self.since_ms,
        }
    }
}

/// Runs one Redis call under [`OP_TIMEOUT`], mapping its error.
async fn bounded<T>(fut: impl Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(result) => result.map_err(map_err),
        Err(_) => Err(StoreError::Unavailable(format!(
            "redis did not answer within {OP_TIMEOUT:?}"
        ))),
    }
}

/// Wrong-typed or unparsable replies mean someone else wrote our keys;
/// everything else (I/O, timeouts, loading, failover) is worth a retry.
fn map_err(e: RedisError) -> StoreError {
    let corrupt = matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType)
        || e.code() == Some("WRONGTYPE")
        || matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ResponseError))
            && e.detail().is_some_and(|d| d.contains("WRONGTYPE"));
    if corrupt {
        StoreError::Corrupt(format!("redis: {e}"))
    } else {
        StoreError::Unavailable(format!("redis: {e}"))
    }
}

/// Presence hash of one user.
fn presence_key(app: AppCode, uid: &str) -> String {
    format!("tg:{{{app}:{}}}:p", tag_safe(uid))
}

/// Epoch counter of one user; same hash tag as [`presence_key`].
fn epoch_key(app: AppCode, uid: &str) -> String {
    format!("tg:{{{app}:{}}}:epoch", tag_safe(uid))
}

/// The uid as it appears inside a hash tag. Redis ends a tag at the first `}`,
/// so a raw `}` would shrink the tag to a prefix of the uid (unrelated users
/// sharing a slot, and the tag no longer naming the user). We percent-encode
/// `%`, `{` and `}` only: injective (so distinct uids keep distinct keys),
/// identical to the raw uid for the common case, and readable in redis-cli.
/// `:` needs no escaping: the app code before it is a number, and the key's
/// fixed prefix and suffix already make the uid's extent unambiguous.
fn tag_safe(uid: &str) -> std::borrow::Cow<'_, str> {
    if !uid.contains(['%', '{', '}']) {
        return uid.into();
    }
    let mut out = String::with_capacity(uid.len() + 8);
    for c in uid.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Decodes one presence value `<epoch>|<json>`.
fn parse_session(key: &str, value: &[u8]) -> Result<SessionRecord, StoreError> {
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

/// Decodes an XRANGE reply: `[[id, [field, value, …]], …]`.
fn parse_xrange(key: &str, reply: Value) -> Result<Vec<StreamEntry>, StoreError> {
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
        out.push(StreamEntry {
            id,
            entry: parse_fields(fields).map_err(|why| corrupt(&format!("entry {id}: {why}")))?,
        });
    }
    Ok(out)
}

/// Builds a [`C2sEntry`] from XADD's field list; unknown fields are ignored
/// so a newer writer can add some.
fn parse_fields(fields: Vec<Value>) -> Result<C2sEntry, &'static str> {
    let (mut uid, mut ct, mut body, mut at) = (None, None, None, None);
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let Value::BulkString(value) = value else {
            return Err("field value is not a string");
        };
        match as_text(&name) {
            Some("uid") => uid = Some(String::from_utf8(value).map_err(|_| "uid is not UTF-8")?),
            Some("ct") => ct = Some(String::from_utf8(value).map_err(|_| "ct is not UTF-8")?),
            Some("body") => body = Some(Bytes::from(value)),
            Some("at") => {
                let text = std::str::from_utf8(&value).map_err(|_| "at is not a number")?;
                at = Some(text.parse::<u64>().map_err(|_| "at is not a number")?);
            }
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

fn as_text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_safe_is_identity_for_plain_uids_and_escapes_braces() {
        assert_eq!(tag_safe("alice:1"), "alice:1");
        assert_eq!(tag_safe("a{b}c%"), "a%7Bb%7Dc%25");
        // `%7B` typed literally must not collide with an escaped `{`.
        assert_ne!(tag_safe("%7B"), tag_safe("{"));
    }

    #[test]
    fn user_keys_share_one_hash_tag() {
        let uid = "x}y{z";
        let tag = |k: &str| {
            let open = k.find('{').unwrap_or(0);
            let close = k[open..].find('}').map_or(0, |i| open + i);
            k[open + 1..close].to_string()
        };
        let p = presence_key(AppCode(3), uid);
        assert_eq!(tag(&p), tag(&epoch_key(AppCode(3), uid)));
        assert_eq!(tag(&p), "3:x%7Dy%7Bz");
    }

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
