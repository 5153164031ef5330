//! The `Store`: everything the logic shim remembers lives behind this trait, so
//! the shim itself stays stateless (ARCHITECTURE §2). Two backends pass one
//! conformance suite (`tests/conformance/`): Redis for production
//! (`redis.rs`) and an embedded durable file for a single node (`embedded.rs`).

pub mod embedded;
pub mod redis;
pub mod timing;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tidegate_proto::{AppCode, MsgType};

/// A logged-in session as presence records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The gate process holding the socket.
    pub gate_id: String,
    /// The gate's shard (executor) holding the socket.
    pub shard: u32,
    /// The shard's connection id (`ConnId::to_u64`).
    pub conn: u64,
    /// Fencing token: strictly increasing per user across all logins.
    pub epoch: u64,
    /// Client-chosen device id.
    pub device: String,
    /// Client platform (android, ios, web …).
    pub platform: String,
    /// Login time, ms since the Unix epoch.
    pub since_ms: u64,
    /// The gate process's incarnation at login (`LinkHello.incarnation`):
    /// the session is live only while the gate's lease carries the same one.
    /// Absent in records written before incarnations existed: 0.
    #[serde(default)]
    pub incarnation: u64,
}

impl SessionRecord {
    /// Where this session lives.
    pub fn key(&self) -> SessionKey {
        SessionKey {
            gate_id: self.gate_id.clone(),
            shard: self.shard,
            conn: self.conn,
        }
    }
}

/// A session's address: unique among live sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Gate process id.
    pub gate_id: String,
    /// Shard in that gate.
    pub shard: u32,
    /// Connection id in that shard.
    pub conn: u64,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.gate_id, self.shard, self.conn)
    }
}

/// A session about to be added; the store assigns its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// Where the socket lives.
    pub key: SessionKey,
    /// Client-chosen device id.
    pub device: String,
    /// Client platform.
    pub platform: String,
    /// Login time, ms since the Unix epoch.
    pub since_ms: u64,
    /// The incarnation of the gate process holding the socket.
    pub incarnation: u64,
}

/// Which older sessions a new login replaces (`[[apps]] device_policy`),
/// decided in the same atomic step as the login itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevicePolicy {
    /// One session per user: a new login kicks every other session.
    Single,
    /// One session per platform: a new login kicks sessions of its platform.
    PerPlatform,
    /// Any number of sessions.
    #[default]
    Multi,
}

impl DevicePolicy {
    /// The name used in config and in the Redis script.
    pub fn name(self) -> &'static str {
        match self {
            DevicePolicy::Single => "single",
            DevicePolicy::PerPlatform => "per_platform",
            DevicePolicy::Multi => "multi",
        }
    }

    /// Whether a login on `platform` replaces the existing session `old`.
    pub fn replaces(self, platform: &str, old: &SessionRecord) -> bool {
        match self {
            DevicePolicy::Single => true,
            DevicePolicy::PerPlatform => old.platform == platform,
            DevicePolicy::Multi => false,
        }
    }
}

/// What a login did: the new record, and the sessions its device policy
/// removed from presence (the caller kicks them with KICKOUT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    /// The new session.
    pub record: SessionRecord,
    /// Older sessions removed by the device policy, oldest epoch first.
    pub kicked: Vec<SessionRecord>,
}

/// One gate shard's heartbeat as the store records it (the gate lease and
/// its directory entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateShardStatus {
    /// Gate process id.
    pub gate_id: String,
    /// Shard index.
    pub shard: u32,
    /// Open client connections on this shard.
    pub connections: u64,
    /// The gate is draining: the directory never returns it.
    pub draining: bool,
    /// Client TCP address clients should connect to.
    pub client_addr: String,
    /// Client HTTP/WebSocket address, empty if none.
    pub http_addr: String,
    /// The gate process's incarnation (`LinkHeartbeat.incarnation`); the
    /// lease's current one is that of the newest heartbeat.
    #[serde(default)]
    pub incarnation: u64,
}

/// A live gate: the sum of its shards' latest heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateInfo {
    /// Gate process id.
    pub gate_id: String,
    /// Open connections over all its shards.
    pub connections: u64,
    /// Any shard reported draining.
    pub draining: bool,
    /// Client TCP address (from the most recent heartbeat).
    pub client_addr: String,
    /// Client HTTP address, empty if none.
    pub http_addr: String,
    /// When the lease ends unless renewed, ms since the Unix epoch.
    pub expires_ms: u64,
    /// The incarnation of the newest heartbeat: the gate process now
    /// holding the lease.
    pub incarnation: u64,
}

/// Folds shard statuses (each with its lease end) into per-gate entries,
/// sorted by gate id. Shards whose lease ended are left out, and so are
/// shards of an earlier incarnation than the gate's newest heartbeat (a
/// restarted gate's old process).
pub fn fold_gates(
    rows: impl IntoIterator<Item = (u64, GateShardStatus)>,
    now_ms: u64,
) -> Vec<GateInfo> {
    let live: Vec<_> = rows.into_iter().filter(|(e, _)| *e > now_ms).collect();
    let current: std::collections::HashMap<String, u64> = current_incarnations(
        live.iter()
            .map(|(e, s)| (s.gate_id.as_str(), *e, s.incarnation)),
    )
    .into_iter()
    .map(|(g, i)| (g.to_string(), i))
    .collect();
    let mut gates: std::collections::BTreeMap<String, GateInfo> = Default::default();
    for (expires_ms, s) in live {
        let incarnation = current.get(&s.gate_id).copied().unwrap_or_default();
        if s.incarnation != incarnation {
            continue;
        }
        let g = gates.entry(s.gate_id.clone()).or_insert_with(|| GateInfo {
            gate_id: s.gate_id.clone(),
            connections: 0,
            draining: false,
            client_addr: String::new(),
            http_addr: String::new(),
            expires_ms: 0,
            incarnation,
        });
        g.connections += s.connections;
        g.draining |= s.draining;
        if expires_ms >= g.expires_ms {
            g.expires_ms = expires_ms;
            g.client_addr = s.client_addr;
            g.http_addr = s.http_addr;
        }
    }
    gates.into_values().collect()
}

/// Each gate's current incarnation, from `(gate_id, lease end, incarnation)`
/// rows of live shards: the one with the latest lease end, i.e. the newest
/// heartbeat (ties: the larger incarnation, so the answer is deterministic).
pub fn current_incarnations<'a>(
    rows: impl IntoIterator<Item = (&'a str, u64, u64)>,
) -> std::collections::HashMap<&'a str, u64> {
    let mut best: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for (gate, expires_ms, incarnation) in rows {
        let e = best.entry(gate).or_insert((expires_ms, incarnation));
        if (expires_ms, incarnation) > *e {
            *e = (expires_ms, incarnation);
        }
    }
    best.into_iter().map(|(g, (_, i))| (g, i)).collect()
}

/// Whether a session is live given the live gates' current incarnations: its
/// gate's lease runs and carries the incarnation the session logged in under
/// (ARCHITECTURE §5 case 4, and a gate restarted before its lease ended).
pub fn session_is_live(
    record: &SessionRecord,
    leases: &std::collections::HashMap<String, u64>,
) -> bool {
    leases.get(&record.gate_id) == Some(&record.incarnation)
}

/// One c2s message on an app's bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2sEntry {
    /// Sender.
    pub uid: String,
    /// App-chosen content type.
    pub content_type: String,
    /// Opaque content.
    pub content: Bytes,
    /// When logic received it, ms since the Unix epoch.
    pub at_ms: u64,
}

/// One append of a batch: `entry` onto the `(app, msgtype)` c2s stream,
/// trimmed to about `max_len` entries.
#[derive(Debug, Clone)]
pub struct C2sAppend {
    /// The stream's app.
    pub app: AppCode,
    /// The stream's msgtype.
    pub msgtype: MsgType,
    /// What to append.
    pub entry: C2sEntry,
    /// The stream's approximate length bound.
    pub max_len: u64,
}

/// A stream position, in Redis Stream id form `<ms>-<seq>` on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::BadInput(format!("stream id {s:?} is not <ms>-<seq>"));
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A c2s entry with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Position in the stream.
    pub id: StreamId,
    /// The message.
    pub entry: C2sEntry,
}

/// A push kept for a user who had no live session (`store_if_offline`),
/// until the user pulls and acknowledges it or it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxMessage {
    /// Business line of the push.
    pub msgtype: MsgType,
    /// When it stops being delivered, ms since the Unix epoch.
    pub expires_ms: u64,
    /// The encoded `pb::Push`, exactly as it would have gone out live.
    pub push: Bytes,
}

/// An inbox message with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Position in the user's inbox.
    pub id: StreamId,
    /// The message.
    pub message: InboxMessage,
}

/// One page of a user's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxPage {
    /// Unexpired messages, oldest first.
    pub entries: Vec<InboxEntry>,
    /// The last position the page covered (past its last entry when expired
    /// ones were skipped); `None` when the page covered nothing.
    pub cursor: Option<StreamId>,
    /// Entries may follow `cursor`.
    pub more: bool,
}

/// Reach-rate counters of one app and msgtype (ARCHITECTURE §4 s2c).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReachCounts {
    /// Targets pushes named (for a broadcast: the sessions it reached).
    pub sent: u64,
    /// Targets with at least one live session when pushed.
    pub online: u64,
    /// Sessions a gate queued the frame to.
    pub written: u64,
    /// Client acknowledgements.
    pub acked: u64,
    /// Targets with no live session whose push went to the offline inbox.
    pub stored: u64,
}

impl ReachCounts {
    /// The counters as `(name, value)`, in a fixed order (the Redis hash
    /// fields and the embedded row share it).
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("sent", self.sent),
            ("online", self.online),
            ("written", self.written),
            ("acked", self.acked),
            ("stored", self.stored),
        ]
    }

    /// Counters from values in [`ReachCounts::fields`] order; missing = 0.
    pub fn from_fields(values: &[Option<u64>]) -> ReachCounts {
        let v = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
        ReachCounts {
            sent: v(0),
            online: v(1),
            written: v(2),
            acked: v(3),
            stored: v(4),
        }
    }

    /// Adds `other` field by field (saturating: totals never wrap).
    pub fn add(&mut self, other: &ReachCounts) {
        self.sent = self.sent.saturating_add(other.sent);
        self.online = self.online.saturating_add(other.online);
        self.written = self.written.saturating_add(other.written);
        self.acked = self.acked.saturating_add(other.acked);
        self.stored = self.stored.saturating_add(other.stored);
    }
}

/// Counts to add to one app and msgtype's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachDelta {
    /// Tenant.
    pub app: AppCode,
    /// Business line.
    pub msgtype: MsgType,
    /// What to add.
    pub counts: ReachCounts,
}

/// Store failures, tagged by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The caller passed something the store cannot accept.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Stored data does not parse; a bug or a foreign writer.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

/// Presence and persistence for the logic shim.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs and metrics (`redis`, `embedded`).
    fn backend(&self) -> &'static str;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds a session to the user's presence under a fresh epoch, strictly
    /// greater than every epoch this user had before, and removes the older
    /// sessions `policy` replaces; one atomic step.
    async fn add_session(
        &self,
        app: AppCode,
        uid: &str,
        new: NewSession,
        policy: DevicePolicy,
    ) -> Result<LoginOutcome, StoreError>;

    /// Removes the session at `key` only if it still carries `epoch`, so a
    /// stale close can never remove a newer login; returns whether it did.
    async fn remove_session(
        &self,
        app: AppCode,
        uid: &str,
        key: &SessionKey,
        epoch: u64,
    ) -> Result<bool, StoreError>;

    /// The user's live sessions, oldest epoch first. Sessions on a gate
    /// whose lease has ended are not live: they are left out (and removed
    /// lazily, fenced by their epoch).
    async fn sessions(&self, app: AppCode, uid: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let mut all = self.sessions_many(app, &[uid.to_string()]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// [`Store::sessions`] of many users in one round trip (a pipeline on
    /// Redis, one read transaction embedded); one entry per uid, in order.
    async fn sessions_many(
        &self,
        app: AppCode,
        uids: &[String],
    ) -> Result<Vec<Vec<SessionRecord>>, StoreError>;

    /// Records a gate shard's heartbeat and extends its gate's lease to
    /// `ttl_ms` from now. The only presence write that is not per login, so
    /// idle users cost nothing (ARCHITECTURE §4 keepalive).
    async fn renew_gate(&self, status: &GateShardStatus, ttl_ms: u64) -> Result<(), StoreError>;

    /// Gates whose lease has not ended, sorted by gate id.
    async fn live_gates(&self) -> Result<Vec<GateInfo>, StoreError>;

    /// Appends to the `(app, msgtype)` c2s stream, trimming it to about
    /// `max_len` entries; returns the new entry's id (strictly increasing).
    async fn append_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        entry: &C2sEntry,
        max_len: u64,
    ) -> Result<StreamId, StoreError>;

    /// Appends each of `batch`, each stream's appends in batch order, as
    /// [`Store::append_c2s`] would one at a time, paying the backend's
    /// per-call cost once (one transaction; one pipeline per stream);
    /// returns each item's result in batch order.
    async fn append_c2s_many(&self, batch: &[C2sAppend]) -> Vec<Result<StreamId, StoreError>>;

    /// Up to `limit` entries after `after` (from the start when `None`), oldest first.
    async fn read_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamEntry>, StoreError>;

    /// Appends `message` to the inbox of each of `uids`, evicting the oldest
    /// messages of an inbox beyond `max_len`; returns, per uid in order, how
    /// many it evicted. An inbox is kept at least until its newest message
    /// expires.
    async fn store_offline(
        &self,
        app: AppCode,
        uids: &[String],
        message: &InboxMessage,
        max_len: u64,
    ) -> Result<Vec<u64>, StoreError>;

    /// Up to `limit` positions of the user's inbox after `after` (from the
    /// start when `None`); expired messages among them are left out.
    async fn read_offline(
        &self,
        app: AppCode,
        uid: &str,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<InboxPage, StoreError>;

    /// Deletes the user's inbox messages up to and including `up_to`;
    /// returns how many it deleted.
    async fn ack_offline(
        &self,
        app: AppCode,
        uid: &str,
        up_to: StreamId,
    ) -> Result<u64, StoreError>;

    /// Adds every delta to its app and msgtype's reach totals, shared by
    /// all logic instances; one round trip, all or nothing.
    async fn add_reach(&self, deltas: &[ReachDelta]) -> Result<(), StoreError>;

    /// The reach totals of one app and msgtype over all instances.
    async fn reach_totals(&self, app: AppCode, msgtype: MsgType)
        -> Result<ReachCounts, StoreError>;
}

/// Builds an [`InboxPage`] from `limit + 1` scanned positions: the extra
/// one only tells whether more follow. Expired messages are dropped here, so
/// both backends skip them the same way.
pub(crate) fn inbox_page(mut scanned: Vec<InboxEntry>, limit: usize, now_ms: u64) -> InboxPage {
    let more = scanned.len() > limit;
    scanned.truncate(limit);
    let cursor = scanned.last().map(|e| e.id);
    scanned.retain(|e| e.message.expires_ms > now_ms);
    InboxPage {
        entries: scanned,
        cursor,
        more,
    }
}

/// Refuses a length bound no backend can honour (every message would be
/// trimmed away at once); both backends call it first in `append_c2s`
/// (`what` = "c2s") and `store_offline` ("offline inbox").
pub(crate) fn check_max_len(what: &str, max_len: u64) -> Result<(), StoreError> {
    if max_len == 0 {
        return Err(StoreError::BadInput(format!(
            "{what} max_len 0 would drop every message"
        )));
    }
    Ok(())
}

/// The Redis key of an app's c2s stream, documented for consumer groups:
/// `XREADGROUP GROUP <g> <consumer> STREAMS c2s:<app>:<msgtype> >`.
pub fn c2s_stream_key(app: AppCode, msgtype: MsgType) -> String {
    format!("c2s:{app}:{msgtype}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(gate: &str, n: u32, connections: u64, incarnation: u64) -> GateShardStatus {
        GateShardStatus {
            gate_id: gate.into(),
            shard: n,
            connections,
            draining: false,
            client_addr: format!("a:{n}"),
            http_addr: String::new(),
            incarnation,
        }
    }

    #[test]
    fn current_incarnation_is_the_newest_heartbeats() {
        let rows = [("g", 100, 1), ("g", 200, 2), ("g", 150, 1), ("h", 50, 9)];
        let current = current_incarnations(rows);
        assert_eq!(current.get("g"), Some(&2));
        assert_eq!(current.get("h"), Some(&9));
    }

    #[test]
    fn fold_gates_drops_expired_shards_and_old_incarnations() {
        let rows = vec![
            (100, shard("g", 0, 5, 1)),
            (300, shard("g", 1, 2, 2)),
            (250, shard("g", 2, 3, 2)),
            (10, shard("h", 0, 1, 1)),
        ];
        let gates = fold_gates(rows, 50);
        assert_eq!(gates.len(), 1, "h expired: {gates:?}");
        assert_eq!(
            (
                gates[0].connections,
                gates[0].incarnation,
                gates[0].expires_ms
            ),
            (5, 2, 300)
        );
        assert_eq!(gates[0].client_addr, "a:1");
    }

    #[test]
    fn a_session_is_live_only_under_its_gates_current_incarnation() {
        let rec = |gate: &str, incarnation| SessionRecord {
            gate_id: gate.into(),
            shard: 0,
            conn: 1,
            epoch: 1,
            device: String::new(),
            platform: String::new(),
            since_ms: 0,
            incarnation,
        };
        let leases: std::collections::HashMap<String, u64> = [("g".to_string(), 2)].into();
        assert!(session_is_live(&rec("g", 2), &leases));
        assert!(!session_is_live(&rec("g", 1), &leases), "restarted gate");
        assert!(!session_is_live(&rec("x", 2), &leases), "no lease");
    }
}
