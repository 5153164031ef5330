//! The production [`Store`]: presence, gate leases and c2s streams in Redis,
//! a single node (`redis://host:port/db`) or Redis Cluster
//! (`redis+cluster://host:port,host:port`), reached through one
//! auto-reconnecting multiplexed connection shared by every task.
//!
//! Key layout (ARCHITECTURE §5, §7):
//! * `tg:{<app>:<uid>}:p` — presence hash, field `gate/shard/conn`
//!   ([`SessionKey`]'s `Display`), value `<epoch>|<json>`;
//! * `tg:{<app>:<uid>}:epoch` — the user's epoch counter;
//! * `tg:gate:{<gate_id>}` — the gate's lease: a hash, field = shard, value =
//!   the shard's last heartbeat (JSON with its lease end); the key expires
//!   with the lease;
//! * `tg:gates` — sorted set of gate ids scored by lease end (ms), so one
//!   `ZRANGEBYSCORE` lists the live gates;
//! * `{tg:gates}:inc` — hash gate id → the incarnation of its newest
//!   heartbeat (same slot as `tg:gates`: the tag is the whole other key), so
//!   a restarted gate's old sessions read as offline at once;
//! * `tg:{<app>:<uid>}:inbox` — the user's offline inbox: a stream of
//!   pushes (fields `t` msgtype, `x` expiry ms, `p` encoded push), trimmed
//!   exactly to the configured length, acknowledged by `XTRIM MINID`, and
//!   expiring with its longest-lived message;
//! * `tg:reach` — reach totals of every logic instance, field
//!   `<app>:<msgtype>:<stage>`;
//! * `c2s:<app>:<msgtype>` — the app's c2s stream ([`c2s_stream_key`]).
//!
//! The per-user keys carry the same hash tag, so the one Lua script per
//! presence transition touches a single cluster slot. Presence reads filter
//! by `tg:gates` in the same round trip (a pipeline on a single node; on a
//! cluster, concurrent commands the multiplexed connections pipeline).

mod codec;
mod conn;
mod leases;

use super::{
    c2s_stream_key, check_max_len, fold_gates, inbox_page, C2sAppend, C2sEntry, DevicePolicy,
    GateInfo, GateShardStatus, InboxEntry, InboxMessage, InboxPage, LoginOutcome, NewSession,
    ReachCounts, ReachDelta, SessionKey, SessionRecord, Store, StoreError, StreamEntry, StreamId,
};
use async_trait::async_trait;
use codec::{
    c2s_entry, hash_pairs, inbox_message, parse_session, parse_xrange, StoredSession, StoredShard,
};
use conn::Conn;
use leases::{Judgement, LeaseCache, LeaseView};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_proto::{now_ms, AppCode, MsgType};

/// Bound on one TCP connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one command's round trip once connected.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a whole store call, including waiting for a reconnect: a caller
/// (a LOGIN, a c2s append) must get `Unavailable`, never hang (§5 case 1).
const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// Applies the device policy, then INCRs the epoch and HSETs the session,
/// all in one step: two concurrent logins of one user can never get the same
/// epoch, interleave, or both survive a single-device policy.
/// KEYS: presence, epoch. ARGV: field, json, policy, platform.
/// Returns `{epoch, {removed values…}}`. Lua numbers are doubles, exact to
/// 2^53; epochs count logins and stay far below.
const ADD_SESSION: &str = r"
local kicked = {}
if ARGV[3] ~= 'multi' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    if f ~= ARGV[1] then
      local kick = ARGV[3] == 'single'
      if not kick then
        local bar = string.find(v, '|', 1, true)
        if bar then
          local ok, rec = pcall(cjson.decode, string.sub(v, bar + 1))
          kick = ok and type(rec) == 'table' and rec.platform == ARGV[4]
        end
      end
      if kick then
        redis.call('HDEL', KEYS[1], f)
        kicked[#kicked + 1] = v
      end
    end
  end
end
local e = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', e) .. '|' .. ARGV[2])
return {e, kicked}
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

/// Extends a gate's lease in [`GATES_KEY`], records its current incarnation
/// in [`INCARNATIONS_KEY`], and forgets gates long dead from both, in one
/// step so the two never disagree about which gates exist.
/// KEYS: gates, incarnations. ARGV: gate_id, expires_ms, incarnation, forget_before.
const RENEW_GATE: &str = r"
-- GT: a late heartbeat from another logic instance never shortens it, nor
-- (checked first) brings back the incarnation a newer heartbeat replaced.
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for i = 1, #old do
  redis.call('HDEL', KEYS[2], old[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
return 1
";

/// Adds reach deltas to [`REACH_KEY`] in one step, so a retried flush is
/// either wholly applied or not at all. KEYS: reach. ARGV: field, n, ….
const ADD_REACH: &str = r"
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
";

/// Hash of reach totals, field `<app>:<msgtype>:<stage>`: one key (one
/// cluster slot), so [`ADD_REACH`] is atomic on a cluster too; it is
/// written once per second per logic instance, far from hot.
const REACH_KEY: &str = "tg:reach";

/// Sorted set of gate ids by lease end.
const GATES_KEY: &str = "tg:gates";
/// Hash gate id → current incarnation. Its hash tag is [`GATES_KEY`]
/// verbatim, so both live in one cluster slot and one script touches both.
const INCARNATIONS_KEY: &str = "{tg:gates}:inc";
/// Gate ids whose lease ended this long ago are dropped from [`GATES_KEY`].
const GATE_FORGET_MS: u64 = 3_600_000;

/// Presence, gate leases and c2s streams in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// The gate leases as last read (`leases.rs`): most presence reads skip
    /// re-reading them.
    leases: Arc<LeaseCache>,
    add_session: Script,
    remove_session: Script,
    renew_gate: Script,
    add_reach: Script,
}

impl RedisStore {
    /// Connects to `url`: `redis://host:port/db` for one node, or
    /// `redis+cluster://host:port,host:port,…` for Redis Cluster (any
    /// reachable node is enough to discover the rest). `Unavailable` if
    /// nothing answers.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let conn = Conn::connect(url).await?;
        Ok(RedisStore {
            conn,
            leases: Arc::default(),
            add_session: Script::new(ADD_SESSION),
            remove_session: Script::new(REMOVE_SESSION),
            renew_gate: Script::new(RENEW_GATE),
            add_reach: Script::new(ADD_REACH),
        })
    }

    /// Removes sessions of dead gates in the background, each fenced by its
    /// epoch: a login that replaced one meanwhile is never touched.
    fn clean_lazily(&self, app: AppCode, dead: Vec<(String, SessionKey, u64)>) {
        if dead.is_empty() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            for (uid, key, epoch) in dead {
                if let Err(e) = store.remove_session(app, &uid, &key, epoch).await {
                    tracing::debug!("lazy presence cleanup: {e}");
                    return;
                }
            }
        });
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
        policy: DevicePolicy,
    ) -> Result<LoginOutcome, StoreError> {
        let value = StoredSession::from_new(&new);
        let json = serde_json::to_string(&value)
            .map_err(|e| StoreError::BadInput(format!("session {}: {e}", new.key)))?;
        let mut conn = self.conn.clone();
        let mut call = self.add_session.prepare_invoke();
        let key = presence_key(app, uid);
        call.key(&key)
            .key(epoch_key(app, uid))
            .arg(new.key.to_string())
            .arg(json)
            .arg(policy.name())
            .arg(&new.platform);
        let (epoch, removed): (u64, Vec<Vec<u8>>) = bounded(call.invoke_async(&mut conn)).await?;
        let mut kicked = removed
            .iter()
            .map(|v| parse_session(&key, v))
            .collect::<Result<Vec<_>, _>>()?;
        kicked.sort_by_key(|s| s.epoch);
        Ok(LoginOutcome {
            record: value.into_record(epoch),
            kicked,
        })
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

    async fn sessions_many(
        &self,
        app: AppCode,
        uids: &[String],
    ) -> Result<Vec<Vec<SessionRecord>>, StoreError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        // With a fresh view of the leases, one pipeline of presence reads;
        // without, the leases are read in the same round trip.
        let cached = self.leases.fresh();
        let mut cmds = Vec::with_capacity(uids.len() + 2);
        let read_at = Instant::now();
        if cached.is_none() {
            cmds.extend(lease_reads());
        }
        let keys: Vec<String> = uids.iter().map(|u| presence_key(app, u)).collect();
        for key in &keys {
            let mut c = redis::cmd("HGETALL");
            c.arg(key);
            cmds.push(c);
        }
        let mut replies = bounded(self.conn.query_many(cmds)).await?.into_iter();
        let (mut view, mut fresh) = match cached {
            Some(view) => (view, false),
            None => {
                let view = Arc::new(parse_leases(&mut replies)?);
                self.leases.keep(read_at, view.clone());
                (view, true)
            }
        };
        let mut all = Vec::with_capacity(uids.len());
        for (key, reply) in keys.iter().zip(replies) {
            let sessions = hash_pairs(key, reply)?
                .into_iter()
                .map(|(_, value)| parse_session(key, &value))
                .collect::<Result<Vec<_>, _>>()?;
            all.push(sessions);
        }
        let now = now_ms();
        let not_live = |view: &LeaseView, s: &SessionRecord| {
            view.judge(&s.gate_id, s.incarnation, now) == Judgement::NotLive
        };
        if !fresh && all.iter().flatten().any(|s| not_live(&view, s)) {
            // The view cannot call a session dead: read the leases now.
            let read_at = Instant::now();
            let mut replies = bounded(self.conn.query_many(lease_reads().to_vec()))
                .await?
                .into_iter();
            view = Arc::new(parse_leases(&mut replies)?);
            self.leases.keep(read_at, view.clone());
            fresh = true;
        }
        let mut out = Vec::with_capacity(uids.len());
        let mut dead = Vec::new();
        for (uid, sessions) in uids.iter().zip(all) {
            let (mut live, gone): (Vec<_>, Vec<_>) =
                sessions.into_iter().partition(|s| !not_live(&view, s));
            debug_assert!(fresh || gone.is_empty());
            dead.extend(gone.into_iter().map(|s| (uid.clone(), s.key(), s.epoch)));
            live.sort_by_key(|s| s.epoch);
            out.push(live);
        }
        self.clean_lazily(app, dead);
        Ok(out)
    }

    async fn renew_gate(&self, status: &GateShardStatus, ttl_ms: u64) -> Result<(), StoreError> {
        let now = now_ms();
        let expires_ms = now + ttl_ms;
        let key = gate_key(&status.gate_id);
        let value = serde_json::to_string(&StoredShard {
            expires_ms,
            status: status.clone(),
        })
        .map_err(|e| StoreError::BadInput(format!("gate {}: {e}", status.gate_id)))?;
        let mut hset = redis::cmd("HSET");
        hset.arg(&key).arg(status.shard).arg(value);
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(ttl_ms);
        bounded(self.conn.query_many(vec![hset, expire])).await?;
        let mut conn = self.conn.clone();
        let mut call = self.renew_gate.prepare_invoke();
        call.key(GATES_KEY)
            .key(INCARNATIONS_KEY)
            .arg(&status.gate_id)
            .arg(expires_ms)
            .arg(status.incarnation.to_string())
            .arg(now.saturating_sub(GATE_FORGET_MS));
        let _: i64 = bounded(call.invoke_async(&mut conn)).await?;
        self.leases.renewed(&status.gate_id, status.incarnation);
        Ok(())
    }

    async fn live_gates(&self) -> Result<Vec<GateInfo>, StoreError> {
        let now = now_ms();
        let mut conn = self.conn.clone();
        let ids: Vec<String> = bounded(
            redis::cmd("ZRANGEBYSCORE")
                .arg(GATES_KEY)
                .arg(format!("({now}"))
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
        let keys: Vec<String> = ids.iter().map(|g| gate_key(g)).collect();
        let cmds = keys
            .iter()
            .map(|k| {
                let mut c = redis::cmd("HGETALL");
                c.arg(k);
                c
            })
            .collect();
        let replies = bounded(self.conn.query_many(cmds)).await?;
        let mut rows = Vec::new();
        for (key, reply) in keys.iter().zip(replies) {
            for (_, value) in hash_pairs(key, reply)? {
                let shard: StoredShard = serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
                rows.push((shard.expires_ms, shard.status));
            }
        }
        Ok(fold_gates(rows, now))
    }

    async fn append_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        entry: &C2sEntry,
        max_len: u64,
    ) -> Result<StreamId, StoreError> {
        check_max_len("c2s", max_len)?;
        let key = c2s_stream_key(app, msgtype);
        let mut conn = self.conn.clone();
        let id: String = bounded(xadd(&key, entry, max_len).query_async(&mut conn)).await?;
        parse_stream_id(&key, &id)
    }

    async fn append_c2s_many(&self, batch: &[C2sAppend]) -> Vec<Result<StreamId, StoreError>> {
        // One pipeline per stream keeps each stream's appends in batch order
        // (and on one slot, as a cluster pipeline must be); the streams'
        // pipelines go out concurrently.
        let mut results: Vec<Option<Result<StreamId, StoreError>>> = vec![None; batch.len()];
        let mut streams: HashMap<String, (redis::Pipeline, Vec<usize>)> = HashMap::new();
        for (i, a) in batch.iter().enumerate() {
            if let Err(e) = check_max_len("c2s", a.max_len) {
                results[i] = Some(Err(e));
                continue;
            }
            let key = c2s_stream_key(a.app, a.msgtype);
            let (pipe, slots) = streams.entry(key.clone()).or_default();
            pipe.add_command(xadd(&key, &a.entry, a.max_len));
            slots.push(i);
        }
        let sent = streams.into_iter().map(|(key, (pipe, slots))| {
            let mut conn = self.conn.clone();
            async move {
                let ids: Result<Vec<String>, StoreError> =
                    bounded(pipe.query_async(&mut conn)).await;
                (key, slots, ids)
            }
        });
        for (key, slots, ids) in futures_util::future::join_all(sent).await {
            let ids = ids.and_then(|ids| {
                if ids.len() == slots.len() {
                    Ok(ids)
                } else {
                    Err(StoreError::Corrupt(format!(
                        "{} XADDs to {key} answered {} ids",
                        slots.len(),
                        ids.len()
                    )))
                }
            });
            match ids {
                Ok(ids) => {
                    for (i, id) in slots.into_iter().zip(ids) {
                        results[i] = Some(parse_stream_id(&key, &id));
                    }
                }
                Err(e) => {
                    for i in slots {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every item refused or sent"))
            .collect()
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
        let entries = parse_xrange(&key, reply, c2s_entry)?;
        Ok(entries
            .into_iter()
            .map(|(id, entry)| StreamEntry { id, entry })
            .collect())
    }

    async fn store_offline(
        &self,
        app: AppCode,
        uids: &[String],
        message: &InboxMessage,
        max_len: u64,
    ) -> Result<Vec<u64>, StoreError> {
        check_max_len("offline inbox", max_len)?;
        let ttl_ms = message.expires_ms.saturating_sub(now_ms()).max(1);
        let mut cmds = Vec::with_capacity(uids.len() * INBOX_STORE_CMDS);
        for uid in uids {
            let key = inbox_key(app, uid);
            let mut add = redis::cmd("XADD");
            add.arg(&key)
                .arg("*")
                .arg("t")
                .arg(message.msgtype.0)
                .arg("x")
                .arg(message.expires_ms)
                .arg("p")
                .arg(message.push.as_ref());
            // Exact trim: its reply is the eviction count the API reports.
            let mut trim = redis::cmd("XTRIM");
            trim.arg(&key).arg("MAXLEN").arg(max_len);
            // The inbox outlives its longest-lived message: NX gives a new
            // inbox a lifetime, GT only ever extends it.
            let mut first = redis::cmd("PEXPIRE");
            first.arg(&key).arg(ttl_ms).arg("NX");
            let mut extend = redis::cmd("PEXPIRE");
            extend.arg(&key).arg(ttl_ms).arg("GT");
            cmds.extend([add, trim, first, extend]);
        }
        let replies = bounded(self.conn.query_many(cmds)).await?;
        replies
            .chunks(INBOX_STORE_CMDS)
            .map(|r| {
                redis::from_redis_value::<u64>(r[1].clone())
                    .map_err(|e| StoreError::Corrupt(format!("XTRIM inbox: {e}")))
            })
            .collect()
    }

    async fn read_offline(
        &self,
        app: AppCode,
        uid: &str,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<InboxPage, StoreError> {
        if limit == 0 {
            return Ok(InboxPage::default());
        }
        let key = inbox_key(app, uid);
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit + 1);
        let mut conn = self.conn.clone();
        let reply: Value = bounded(cmd.query_async(&mut conn)).await?;
        let scanned = parse_xrange(&key, reply, inbox_message)?
            .into_iter()
            .map(|(id, message)| InboxEntry { id, message })
            .collect();
        Ok(inbox_page(scanned, limit, now_ms()))
    }

    async fn ack_offline(
        &self,
        app: AppCode,
        uid: &str,
        up_to: StreamId,
    ) -> Result<u64, StoreError> {
        // MINID keeps ids ≥ its argument: the successor of `up_to`.
        let keep_from = match up_to.seq.checked_add(1) {
            Some(seq) => StreamId { seq, ..up_to },
            None => StreamId {
                ms: up_to.ms.saturating_add(1),
                seq: 0,
            },
        };
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(inbox_key(app, uid))
            .arg("MINID")
            .arg(keep_from.to_string());
        let mut conn = self.conn.clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    async fn add_reach(&self, deltas: &[ReachDelta]) -> Result<(), StoreError> {
        let mut call = self.add_reach.prepare_invoke();
        call.key(REACH_KEY);
        let mut any = false;
        for d in deltas {
            for (stage, n) in d.counts.fields().into_iter().filter(|(_, n)| *n > 0) {
                call.arg(reach_field(d.app, d.msgtype, stage)).arg(n);
                any = true;
            }
        }
        if !any {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = bounded(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn reach_totals(
        &self,
        app: AppCode,
        msgtype: MsgType,
    ) -> Result<ReachCounts, StoreError> {
        let stages = ReachCounts::default().fields().map(|(stage, _)| stage);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(REACH_KEY);
        for stage in stages {
            cmd.arg(reach_field(app, msgtype, stage));
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<u64>> = bounded(cmd.query_async(&mut conn)).await?;
        Ok(ReachCounts::from_fields(&values))
    }
}

/// The reach hash field of one counter.
fn reach_field(app: AppCode, msgtype: MsgType, stage: &str) -> String {
    format!("{app}:{msgtype}:{stage}")
}

/// Commands [`RedisStore::store_offline`] pipelines per user.
const INBOX_STORE_CMDS: usize = 4;

/// The two reads of a [`LeaseView`]: live gates with their lease ends, and
/// every gate's current incarnation (one cluster slot: [`INCARNATIONS_KEY`]).
fn lease_reads() -> [redis::Cmd; 2] {
    let mut live = redis::cmd("ZRANGEBYSCORE");
    live.arg(GATES_KEY)
        .arg(format!("({}", now_ms()))
        .arg("+inf")
        .arg("WITHSCORES");
    let mut incarnations = redis::cmd("HGETALL");
    incarnations.arg(INCARNATIONS_KEY);
    [live, incarnations]
}

/// Reads the replies of [`lease_reads`] off the front of `replies`.
fn parse_leases(replies: &mut impl Iterator<Item = Value>) -> Result<LeaseView, StoreError> {
    let live: Vec<(String, f64)> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
        .map_err(|e| StoreError::Corrupt(format!("{GATES_KEY}: {e}")))?;
    let incarnations = hash_pairs(INCARNATIONS_KEY, replies.next().unwrap_or(Value::Nil))?
        .into_iter()
        .filter_map(|(g, i)| {
            let inc = std::str::from_utf8(&i).ok()?.parse().ok()?;
            Some((String::from_utf8(g).ok()?, inc))
        })
        .collect();
    // Scores are the lease ends in ms, written as integers.
    let gates = live.into_iter().map(|(g, ends)| (g, ends as u64));
    Ok(LeaseView::new(gates, incarnations))
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
/// `XADD` of `entry` onto stream `key`, trimmed to about `max_len`.
fn xadd(key: &str, entry: &C2sEntry, max_len: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
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
    cmd
}

/// The id `XADD` on `key` answered.
fn parse_stream_id(key: &str, id: &str) -> Result<StreamId, StoreError> {
    id.parse()
        .map_err(|_| StoreError::Corrupt(format!("XADD {key} returned id {id:?}")))
}

fn presence_key(app: AppCode, uid: &str) -> String {
    format!("tg:{{{app}:{}}}:p", tag_safe(uid))
}

/// Lease hash of one gate.
fn gate_key(gate_id: &str) -> String {
    format!("tg:gate:{{{}}}", tag_safe(gate_id))
}

/// Offline inbox stream of one user; same hash tag as [`presence_key`].
fn inbox_key(app: AppCode, uid: &str) -> String {
    format!("tg:{{{app}:{}}}:inbox", tag_safe(uid))
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
        assert_eq!(tag(&p), tag(&inbox_key(AppCode(3), uid)));
        assert_eq!(tag(&p), "3:x%7Dy%7Bz");
    }
}
