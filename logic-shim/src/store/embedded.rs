//! The single-node [`Store`]: presence, c2s streams and offline inboxes in
//! one redb file, so
//! `tidegate up` needs nothing else (ARCHITECTURE §2).
//!
//! Durability comes in two grades, chosen per commit by what it holds:
//! - **Messages** (c2s appends, offline inboxes, their acks): redb commits
//!   copy-on-write and fsyncs before `commit` returns
//!   ([`redb::Durability::Immediate`]), and no call is answered before the
//!   commit holding its write has returned, so whatever a caller saw succeed
//!   survives a crash or power cut.
//! - **Soft state** (presence, gate leases, reach counters): a batch of only
//!   these commits without an fsync ([`redb::Durability::None`]); readers
//!   see it at once, and it reaches the disk with the next durable commit,
//!   at most `store.soft_sync_ms` (default 200 ms) later, idle or not (0:
//!   every commit fsyncs, as before 2026-12-06). A crash
//!   rolls back at most that window, as `appendfsync everysec` does on
//!   Redis; what it loses is rebuilt by the next login, heartbeat or push.
//!   A login storm then pays ~5 fsyncs/s instead of one per batch (−15% of
//!   `up`'s CPU, +9% logins/s measured on 2026-12-06). Epoch fencing must
//!   not roll back with it: logins hand out epochs below a durable ceiling
//!   (`EPOCH_CEILING_KEY`) raised 65,536 at a time by a durable commit, and
//!   a reopened file starts its counter at that ceiling, so no epoch is
//!   ever handed out twice.
//!
//! Why group commit: c2s appends arrive from many tasks at once, and one
//! fsync per append would cap the store at one append per disk flush. One
//! writer thread owns every write (redb allows one write transaction at a
//! time anyway): it takes one op from its channel, drains whatever queued up
//! meanwhile (up to `writer::MAX_BATCH`), applies them all in ONE
//! transaction, pays ONE fsync, then answers each caller. Batches grow with
//! load by themselves; an idle store still commits each op at once. The
//! single writer is also what serializes per-user transitions (epoch
//! fencing, ARCHITECTURE §5). Reads run in their own MVCC read transactions
//! and never wait for the writer: small ones on the calling task, larger
//! ones on tokio's blocking pool.

use super::{
    c2s_stream_key, check_max_len, current_incarnations, fold_gates, inbox_page, session_is_live,
    C2sAppend, C2sEntry, DevicePolicy, GateInfo, GateShardStatus, InboxEntry, InboxMessage,
    InboxPage, LoginOutcome, NewSession, ReachCounts, ReachDelta, SessionKey, SessionRecord, Store,
    StoreError, StreamEntry, StreamId,
};
use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tidegate_proto::{now_ms, AppCode, MsgType};
use tokio::sync::{mpsc, oneshot};
pub use writer::DEFAULT_SOFT_SYNC;
use writer::{create_tables, run_writer, C2sRow, Done, Job, Op};

mod node;
mod session;
mod writer;

/// `(app, uid, "gate/shard/conn")` → `(epoch, session row)` (`embedded/session.rs`); a user's
/// sessions are one contiguous key range.
const PRESENCE: TableDefinition<(u16, &str, &str), (u64, &[u8])> = TableDefinition::new("presence");
/// `(gate_id, shard)` → `(lease end ms, JSON GateShardStatus)`: the gate
/// leases and directory. A gate is live while any of its shards' lease runs.
const GATES: TableDefinition<(&str, u32), (u64, &[u8])> = TableDefinition::new("gates");
/// `"last"` → the last epoch handed out to any user (and `"ceiling"`, its
/// durable bound, [`EPOCH_CEILING_KEY`]). One counter for the
/// whole store still gives each user strictly increasing epochs, which is
/// all fencing needs, and costs one row where a row per user ever logged in
/// cost ~100 bytes of file (and of redb's cache) per user.
const EPOCH_LAST: TableDefinition<&str, u64> = TableDefinition::new("epoch_last");
/// The key of [`EPOCH_LAST`]'s counter row.
const EPOCH_LAST_KEY: &str = "last";
/// The key of [`EPOCH_LAST`]'s ceiling row: above every epoch handed out,
/// and raised only by durable commits (module doc, soft state).
const EPOCH_CEILING_KEY: &str = "ceiling";
/// `(app, uid)` → that user's last epoch, as builds before [`EPOCH_LAST`]
/// kept it. Read once, when a file without the counter is opened, to start
/// the counter above every epoch already handed out; never written.
const EPOCHS: TableDefinition<(u16, &str), u64> = TableDefinition::new("epochs");
/// `(stream key, ms, seq)` → a node of encoded [`C2sEntry`]s, keyed by its
/// first entry's id (`embedded/node.rs`); ordered like a Redis Stream.
const C2S: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("c2s");
/// stream key → `(last ms, last seq, entry count)`.
const C2S_META: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("c2s_meta");

/// `(app, uid, ms, seq)` → encoded [`InboxMessage`]: a user's offline
/// inbox, one contiguous key range ordered like a Redis Stream.
const INBOX: TableDefinition<(u16, &str, u64, u64), &[u8]> = TableDefinition::new("inbox");
/// `(app, uid)` → `(last ms, last seq, message count)`.
const INBOX_META: TableDefinition<(u16, &str), (u64, u64, u64)> =
    TableDefinition::new("inbox_meta");
/// `(expires ms, app, uid, ms, seq)` → `()`: inbox messages by expiry, so the
/// writer's sweep finds expired ones without scanning every inbox.
const INBOX_EXPIRY: TableDefinition<(u64, u16, &str, u64, u64), ()> =
    TableDefinition::new("inbox_expiry");

/// Reach totals in [`ReachCounts::fields`] order.
type ReachRow = (u64, u64, u64, u64, u64);
/// `(app, msgtype)` → its reach totals.
const REACH: TableDefinition<(u16, u16), ReachRow> = TableDefinition::new("reach");

/// Queued writes before callers wait: backpressure instead of unbounded memory.
const QUEUE: usize = 8192;
/// Layout version byte of an encoded c2s entry and of an inbox message.
const ENTRY_V1: u8 = 1;

/// Presence and c2s streams in a durable local file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The gate leases, mirrored from the `gates` table: this process is
    /// the store's only writer, so the mirror is exact, and a presence read
    /// no longer parses every gate shard's JSON row (two per push with one
    /// gate; 112 with the C1M run's 56 workers).
    leases: Arc<Mutex<Leases>>,
    /// `None` only while dropping, so the writer sees the channel close.
    writes: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl EmbeddedStore {
    /// Opens or creates the store file at `path`, creating parent
    /// directories, with soft state synced every [`DEFAULT_SOFT_SYNC`].
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(path, DEFAULT_SOFT_SYNC)
    }

    /// [`EmbeddedStore::open`] with soft state waiting at most `soft_sync`
    /// for its fsync (zero: every commit fsyncs; module doc).
    pub fn open_with(
        path: &Path,
        soft_sync: std::time::Duration,
    ) -> Result<EmbeddedStore, StoreError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("embedded store {}: {what}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable("cannot create directory", &e))?;
        }
        let db = Database::create(path).map_err(|e| match redb::Error::from(e) {
            redb::Error::Corrupted(m) => {
                StoreError::Corrupt(format!("embedded store {}: {m}", path.display()))
            }
            e => unavailable("cannot open", &e),
        })?;
        // Creating the tables up front lets readers treat "no table" as a bug.
        create_tables(&db)?;

        let leases = Arc::new(Mutex::new(Leases::load(&db)?));
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_db = db.clone();
        let clock = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| unavailable("cannot start writer clock", &e))?;
        let writer = std::thread::Builder::new()
            .name("tg-store-writer".into())
            .spawn(move || run_writer(&writer_db, soft_sync, &clock, rx))
            .map_err(|e| unavailable("cannot start writer thread", &e))?;
        Ok(EmbeddedStore {
            db,
            leases,
            writes: Some(tx),
            writer: Some(writer),
        })
    }

    /// Hands `op` to the writer and waits for its commit.
    async fn write(&self, op: Op) -> Result<Done, StoreError> {
        let gone = || StoreError::Unavailable("embedded store writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        let writes = self.writes.as_ref().ok_or_else(gone)?;
        writes.send(Job { op, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Runs a read transaction on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db.begin_read().map_err(storage)?))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store read task: {e}")))?
    }

    /// Runs a small read transaction on the calling task. A point read of
    /// a few keys takes microseconds from redb's cached pages, less than
    /// the hand-off to the blocking pool and back (two thread wake-ups per
    /// single-target push).
    fn read_inline<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.db.begin_read().map_err(storage)?)
    }
}

/// Presence reads of at most this many users run on the calling task
/// (~1.8 µs per user from cached pages: ≤ ~230 µs on a tokio worker);
/// larger ones go to the blocking pool. A list push of 100 targets used to
/// take that hop, whose hand-off and two thread wake-ups cost more than the
/// read: at 500 such pushes/s (50,000 deliveries/s, embedded store) delivery
/// p99 was lower in 6 of 7 interleaved pairs and `up`'s CPU in 5 of 7
/// (README, "Unicast at 50,000 msgs/s", 2026-12-07).
const INLINE_READ_MAX: usize = 128;

/// Uids whose sessions went with a dead gate: (uid, session key, epoch).
type DeadSessions = Vec<(String, String, u64)>;

/// Each gate shard's lease end and incarnation, and which incarnation of
/// each gate is live now (recomputed when a lease is renewed or ends).
struct Leases {
    rows: HashMap<(String, u32), (u64, u64)>,
    live: Arc<HashMap<String, u64>>,
    /// When the earliest live lease ends: `live` is stale from then on.
    valid_until_ms: u64,
}

impl Leases {
    /// Reads the `gates` table once, at open.
    fn load(db: &Database) -> Result<Leases, StoreError> {
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(GATES).map_err(storage)?;
        let mut rows = HashMap::new();
        for row in table.iter().map_err(storage)? {
            let (key, value) = row.map_err(storage)?;
            let (gate, shard) = key.value();
            let (expires_ms, json) = value.value();
            let status: GateShardStatus = serde_json::from_slice(json)
                .map_err(|e| StoreError::Corrupt(format!("gate {gate:?}: {e}")))?;
            rows.insert((gate.to_string(), shard), (expires_ms, status.incarnation));
        }
        Ok(Leases {
            rows,
            live: Arc::default(),
            valid_until_ms: 0,
        })
    }

    fn renewed(&mut self, gate: &str, shard: u32, expires_ms: u64, incarnation: u64) {
        self.rows
            .insert((gate.to_string(), shard), (expires_ms, incarnation));
        self.valid_until_ms = 0;
    }

    /// Each live gate's current incarnation at `now`. Ended leases leave
    /// the mirror then (a renewal puts them back), so gates that are gone
    /// for good cost nothing after their lease.
    fn live(&mut self, now: u64) -> Arc<HashMap<String, u64>> {
        if now >= self.valid_until_ms {
            self.rows.retain(|_, (expires_ms, _)| *expires_ms > now);
            let current = current_incarnations(
                self.rows
                    .iter()
                    .map(|((g, _), (e, i))| (g.as_str(), *e, *i)),
            );
            self.live = Arc::new(
                current
                    .into_iter()
                    .map(|(g, i)| (g.to_string(), i))
                    .collect(),
            );
            self.valid_until_ms = self
                .rows
                .values()
                .map(|(e, _)| *e)
                .min()
                .unwrap_or(u64::MAX);
        }
        self.live.clone()
    }
}

/// Each uid's sessions on live gates, and the sessions of dead gates.
fn live_sessions(
    txn: &redb::ReadTransaction,
    live: &HashMap<String, u64>,
    app: AppCode,
    uids: &[String],
) -> Result<(Vec<Vec<SessionRecord>>, DeadSessions), StoreError> {
    let table = txn.open_table(PRESENCE).map_err(storage)?;
    let mut out = Vec::with_capacity(uids.len());
    let mut dead = Vec::new();
    for uid in uids {
        let mut sessions = Vec::new();
        for record in user_sessions(&table, app, uid)? {
            if session_is_live(&record, live) {
                sessions.push(record);
            } else {
                dead.push((uid.clone(), record.key().to_string(), record.epoch));
            }
        }
        out.push(sessions);
    }
    Ok((out, dead))
}

impl Drop for EmbeddedStore {
    /// Closes the queue and waits for the writer to commit what is queued and
    /// release the file, so the same path can be reopened right away.
    fn drop(&mut self) {
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.as_ref().is_none_or(|w| w.is_finished()) {
            return Err(StoreError::Unavailable(
                "embedded store writer has stopped".into(),
            ));
        }
        self.read(|txn| txn.open_table(EPOCH_LAST).map(drop).map_err(storage))
            .await
    }

    async fn add_session(
        &self,
        app: AppCode,
        uid: &str,
        new: NewSession,
        policy: DevicePolicy,
    ) -> Result<LoginOutcome, StoreError> {
        let op = Op::AddSession {
            app: app.0,
            uid: uid.to_string(),
            new,
            policy,
        };
        match self.write(op).await? {
            Done::Added(record) => Ok(record),
            other => Err(mismatch("add_session", &other)),
        }
    }

    async fn remove_session(
        &self,
        app: AppCode,
        uid: &str,
        key: &SessionKey,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let op = Op::RemoveSession {
            app: app.0,
            uid: uid.to_string(),
            key: key.to_string(),
            epoch,
        };
        match self.write(op).await? {
            Done::Removed(removed) => Ok(removed),
            other => Err(mismatch("remove_session", &other)),
        }
    }

    async fn sessions_many(
        &self,
        app: AppCode,
        uids: &[String],
    ) -> Result<Vec<Vec<SessionRecord>>, StoreError> {
        let live = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live(now_ms());
        let (out, dead) = if uids.len() <= INLINE_READ_MAX {
            self.read_inline(|txn| live_sessions(txn, &live, app, uids))?
        } else {
            let uids = uids.to_vec();
            self.read(move |txn| live_sessions(txn, &live, app, &uids))
                .await?
        };
        // Lazy cleanup of dead gates' sessions: queued, never awaited, each
        // fenced by its epoch; if the queue is full the next read retries.
        if let Some(writes) = &self.writes {
            for (uid, key, epoch) in dead {
                let (reply, _) = oneshot::channel();
                let op = Op::RemoveSession {
                    app: app.0,
                    uid,
                    key,
                    epoch,
                };
                if writes.try_send(Job { op, reply }).is_err() {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn renew_gate(&self, status: &GateShardStatus, ttl_ms: u64) -> Result<(), StoreError> {
        let json = serde_json::to_vec(status)
            .map_err(|e| StoreError::BadInput(format!("gate {}: {e}", status.gate_id)))?;
        let expires_ms = now_ms() + ttl_ms;
        let op = Op::RenewGate {
            gate_id: status.gate_id.clone(),
            shard: status.shard,
            expires_ms,
            json,
        };
        match self.write(op).await? {
            Done::Renewed => {
                self.leases
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .renewed(
                        &status.gate_id,
                        status.shard,
                        expires_ms,
                        status.incarnation,
                    );
                Ok(())
            }
            other => Err(mismatch("renew_gate", &other)),
        }
    }

    async fn live_gates(&self) -> Result<Vec<GateInfo>, StoreError> {
        self.read(|txn| {
            let now = now_ms();
            let table = txn.open_table(GATES).map_err(storage)?;
            let mut rows = Vec::new();
            for row in table.iter().map_err(storage)? {
                let (key, value) = row.map_err(storage)?;
                let (expires_ms, json) = value.value();
                if expires_ms <= now {
                    continue;
                }
                let status: GateShardStatus = serde_json::from_slice(json)
                    .map_err(|e| StoreError::Corrupt(format!("gate {:?}: {e}", key.value().0)))?;
                rows.push((expires_ms, status));
            }
            Ok(fold_gates(rows, now))
        })
        .await
    }

    async fn append_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        entry: &C2sEntry,
        max_len: u64,
    ) -> Result<StreamId, StoreError> {
        // Off the hot path (c2s ingest batches): one code path for both.
        let one = C2sAppend {
            app,
            msgtype,
            entry: entry.clone(),
            max_len,
        };
        let mut results = self.append_c2s_many(std::slice::from_ref(&one)).await;
        results.pop().expect("one result per item")
    }

    async fn append_c2s_many(&self, batch: &[C2sAppend]) -> Vec<Result<StreamId, StoreError>> {
        // One job, so the whole batch shares one transaction and one fsync
        // even when nothing else is queued; refused appends never reach it.
        let mut refused = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        // A batch is mostly runs of one stream: format its key once per run.
        let mut key: Option<((AppCode, MsgType), String)> = None;
        for a in batch {
            let refusal = check_max_len("c2s", a.max_len).err();
            if refusal.is_none() {
                let stream = match &key {
                    Some((of, stream)) if *of == (a.app, a.msgtype) => stream.clone(),
                    _ => key
                        .insert(((a.app, a.msgtype), c2s_stream_key(a.app, a.msgtype)))
                        .1
                        .clone(),
                };
                rows.push(C2sRow {
                    stream,
                    encoded: encode_entry(&a.entry),
                    max_len: a.max_len,
                });
            }
            refused.push(refusal);
        }
        let committed = if rows.is_empty() {
            Ok(Vec::new())
        } else {
            match self.write(Op::AppendC2s(rows)).await {
                Ok(Done::Appended(ids)) => Ok(ids),
                Ok(other) => Err(mismatch("append_c2s", &other)),
                Err(e) => Err(e),
            }
        };
        let mut ids = committed.as_ref().map(|ids| ids.iter());
        refused
            .into_iter()
            .map(|refusal| match (refusal, &mut ids) {
                (Some(e), _) => Err(e),
                (None, Ok(ids)) => ids.next().copied().ok_or_else(|| {
                    StoreError::Unavailable("embedded store writer returned too few ids".into())
                }),
                (None, Err(e)) => Err((*e).clone()),
            })
            .collect()
    }

    async fn read_c2s(
        &self,
        app: AppCode,
        msgtype: MsgType,
        after: Option<StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let stream = c2s_stream_key(app, msgtype);
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |txn| {
            let table = txn.open_table(C2S).map_err(storage)?;
            let s = stream.as_str();
            let (first, last) = ((s, 0, 0), (s, u64::MAX, u64::MAX));
            // The node holding the first entry after `after` starts at or
            // before `after`: the last row keyed up to it.
            let from = match after {
                Some(id) => table
                    .range(first..=(s, id.ms, id.seq))
                    .map_err(storage)?
                    .next_back()
                    .transpose()
                    .map_err(storage)?
                    .map_or(first, |(key, _)| (s, key.value().1, key.value().2)),
                None => first,
            };
            let mut out = Vec::with_capacity(limit.min(1024));
            for row in table.range(from..=last).map_err(storage)? {
                let (key, value) = row.map_err(storage)?;
                let (_, ms, seq) = key.value();
                let at = StreamId { ms, seq };
                let corrupt = |why| StoreError::Corrupt(format!("c2s {s} row {at}: {why}"));
                for (id, bytes) in node::decode(at, value.value()).map_err(corrupt)? {
                    if after.is_some_and(|after| id <= after) {
                        continue;
                    }
                    let entry = decode_entry(bytes).map_err(corrupt)?;
                    out.push(StreamEntry { id, entry });
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn store_offline(
        &self,
        app: AppCode,
        uids: &[String],
        message: &InboxMessage,
        max_len: u64,
    ) -> Result<Vec<u64>, StoreError> {
        check_max_len("offline inbox", max_len)?;
        let op = Op::StoreOffline {
            app: app.0,
            uids: uids.to_vec(),
            encoded: encode_inbox(message),
            expires_ms: message.expires_ms,
            max_len,
        };
        match self.write(op).await? {
            Done::Stored(evicted) => Ok(evicted),
            other => Err(mismatch("store_offline", &other)),
        }
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
        let uid = uid.to_string();
        self.read(move |txn| {
            let table = txn.open_table(INBOX).map_err(storage)?;
            let u = uid.as_str();
            let start = match after {
                Some(id) => Bound::Excluded((app.0, u, id.ms, id.seq)),
                None => Bound::Included((app.0, u, 0, 0)),
            };
            let range = (start, Bound::Included((app.0, u, u64::MAX, u64::MAX)));
            let mut scanned = Vec::with_capacity(limit.min(1024) + 1);
            for row in table.range(range).map_err(storage)?.take(limit + 1) {
                let (key, value) = row.map_err(storage)?;
                let (_, _, ms, seq) = key.value();
                let id = StreamId { ms, seq };
                let message = decode_inbox(value.value()).map_err(|why| {
                    StoreError::Corrupt(format!("inbox {app}:{u} entry {id}: {why}"))
                })?;
                scanned.push(InboxEntry { id, message });
            }
            Ok(inbox_page(scanned, limit, now_ms()))
        })
        .await
    }

    async fn ack_offline(
        &self,
        app: AppCode,
        uid: &str,
        up_to: StreamId,
    ) -> Result<u64, StoreError> {
        let op = Op::AckOffline {
            app: app.0,
            uid: uid.to_string(),
            up_to,
        };
        match self.write(op).await? {
            Done::Acked(n) => Ok(n),
            other => Err(mismatch("ack_offline", &other)),
        }
    }

    async fn add_reach(&self, deltas: &[ReachDelta]) -> Result<(), StoreError> {
        match self.write(Op::AddReach(deltas.to_vec())).await? {
            Done::Counted => Ok(()),
            other => Err(mismatch("add_reach", &other)),
        }
    }

    async fn reach_totals(
        &self,
        app: AppCode,
        msgtype: MsgType,
    ) -> Result<ReachCounts, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(REACH).map_err(storage)?;
            let row = table.get((app.0, msgtype.0)).map_err(storage)?;
            Ok(row.map_or_else(ReachCounts::default, |r| reach_from_row(r.value())))
        })
        .await
    }
}

/// A reach row as counters.
fn reach_from_row((a, b, c, d, e): ReachRow) -> ReachCounts {
    ReachCounts::from_fields(&[Some(a), Some(b), Some(c), Some(d), Some(e)])
}

/// Counters as a reach row.
fn reach_to_row(r: &ReachCounts) -> ReachRow {
    (r.sent, r.online, r.written, r.acked, r.stored)
}

/// Every presence record of one user (live gate or not), oldest epoch first.
fn user_sessions(
    table: &impl ReadableTable<(u16, &'static str, &'static str), (u64, &'static [u8])>,
    app: AppCode,
    uid: &str,
) -> Result<Vec<SessionRecord>, StoreError> {
    let mut out = Vec::new();
    for row in table.range((app.0, uid, "")..).map_err(storage)? {
        let (key, value) = row.map_err(storage)?;
        let (row_app, row_uid, field) = key.value();
        if row_app != app.0 || row_uid != uid {
            break;
        }
        let (epoch, row) = value.value();
        let record = session::decode(field, epoch, row)
            .map_err(|e| StoreError::Corrupt(format!("presence {app}:{uid} {field}: {e}")))?;
        out.push(record);
    }
    out.sort_by_key(|s| s.epoch);
    Ok(out)
}

fn mismatch(call: &str, got: &Done) -> StoreError {
    StoreError::Corrupt(format!("internal: writer answered {call} with {got:?}"))
}

/// Maps any redb failure: on-disk corruption is `Corrupt`, everything else
/// (I/O, full disk, locks) is worth retrying later.
fn storage(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(format!("embedded store: {m}")),
        e => StoreError::Unavailable(format!("embedded store: {e}")),
    }
}

/// `[v1][uid len u32][uid][ct len u32][ct][at_ms u64][content…]`, big-endian:
/// binary content is stored as is, with no base64 or JSON escaping.
fn encode_entry(e: &C2sEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + e.uid.len() + e.content_type.len() + e.content.len());
    out.push(ENTRY_V1);
    for text in [&e.uid, &e.content_type] {
        // Lengths beyond u32 cannot reach here: frames are capped far below 4 GiB.
        out.extend_from_slice(&(text.len() as u32).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&e.at_ms.to_be_bytes());
    out.extend_from_slice(&e.content);
    out
}

fn decode_entry(mut b: &[u8]) -> Result<C2sEntry, &'static str> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
        if b.len() < n {
            return Err("truncated");
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn text(b: &mut &[u8]) -> Result<String, &'static str> {
        let len = u32::from_be_bytes(take(b, 4)?.try_into().map_err(|_| "truncated")?);
        let raw = take(b, len as usize)?;
        String::from_utf8(raw.to_vec()).map_err(|_| "text is not UTF-8")
    }
    if take(&mut b, 1)? != [ENTRY_V1] {
        return Err("unknown entry version");
    }
    let uid = text(&mut b)?;
    let content_type = text(&mut b)?;
    let at_ms = u64::from_be_bytes(take(&mut b, 8)?.try_into().map_err(|_| "truncated")?);
    Ok(C2sEntry {
        uid,
        content_type,
        content: Bytes::copy_from_slice(b),
        at_ms,
    })
}

/// Byte offset of the expiry in an encoded inbox message.
const INBOX_EXPIRY_AT: usize = 3;
/// Bytes before an encoded inbox message's push.
const INBOX_HEADER: usize = INBOX_EXPIRY_AT + 8;

/// `[v1][msgtype u16][expires_ms u64][push…]`, big-endian.
fn encode_inbox(m: &InboxMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(INBOX_HEADER + m.push.len());
    out.push(ENTRY_V1);
    out.extend_from_slice(&m.msgtype.0.to_be_bytes());
    out.extend_from_slice(&m.expires_ms.to_be_bytes());
    out.extend_from_slice(&m.push);
    out
}

fn decode_inbox(b: &[u8]) -> Result<InboxMessage, &'static str> {
    if b.len() < INBOX_HEADER {
        return Err("truncated");
    }
    if b[0] != ENTRY_V1 {
        return Err("unknown entry version");
    }
    Ok(InboxMessage {
        msgtype: MsgType(u16::from_be_bytes([b[1], b[2]])),
        expires_ms: inbox_expiry_of(b),
        push: Bytes::copy_from_slice(&b[INBOX_HEADER..]),
    })
}

/// The expiry of an encoded inbox message (0 if truncated: swept at once).
fn inbox_expiry_of(b: &[u8]) -> u64 {
    b.get(INBOX_EXPIRY_AT..INBOX_HEADER)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_encoding_round_trips_and_rejects_garbage() {
        let m = InboxMessage {
            msgtype: MsgType(65535),
            expires_ms: 1_700_000_000_123,
            push: Bytes::from_static(&[0, 255, 1]),
        };
        let encoded = encode_inbox(&m);
        assert_eq!(decode_inbox(&encoded), Ok(m));
        assert!(decode_inbox(&encoded[..INBOX_HEADER - 1]).is_err());
        assert!(decode_inbox(&[2; INBOX_HEADER]).is_err());
    }

    #[tokio::test]
    async fn streams_written_before_nodes_read_and_grow_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let (app, mt) = (AppCode(1), MsgType(5));
        let old = |i: u8| C2sEntry {
            uid: format!("u{i}"),
            content_type: "t".into(),
            content: Bytes::from(vec![i; 3]),
            at_ms: 1,
        };
        // Rows as the store wrote them before nodes: one bare entry each.
        let stream = c2s_stream_key(app, mt);
        let txn = store.db.begin_write().unwrap();
        {
            let mut c2s = txn.open_table(C2S).unwrap();
            for i in 0..3u8 {
                c2s.insert(
                    (stream.as_str(), 10, u64::from(i)),
                    encode_entry(&old(i)).as_slice(),
                )
                .unwrap();
            }
            txn.open_table(C2S_META)
                .unwrap()
                .insert(stream.as_str(), (10, 2, 3))
                .unwrap();
        }
        txn.commit().unwrap();
        let id = |ms, seq| StreamId { ms, seq };
        let mid = store.read_c2s(app, mt, Some(id(10, 0)), 10).await.unwrap();
        assert_eq!(
            mid.iter()
                .map(|e| (e.id, e.entry.clone()))
                .collect::<Vec<_>>(),
            vec![(id(10, 1), old(1)), (id(10, 2), old(2))]
        );
        let new = store.append_c2s(app, mt, &old(9), 1_000).await.unwrap();
        assert!(new > id(10, 2));
        let all = store.read_c2s(app, mt, None, 10).await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].entry, old(9));
    }

    #[tokio::test]
    async fn sessions_written_as_json_rows_read_and_are_kicked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let app = AppCode(1);
        let old = SessionRecord {
            gate_id: "gate-a".into(),
            shard: 0,
            conn: 1,
            epoch: 4,
            device: "d1".into(),
            platform: "web".into(),
            since_ms: 5,
            incarnation: 6,
        };
        // A file as builds before the compact layout and the store-wide
        // epoch counter wrote it: a JSON row and a per-user epoch.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let json = serde_json::to_vec(&old).unwrap();
            let field = old.key().to_string();
            txn.open_table(PRESENCE)
                .unwrap()
                .insert((1, "u1", field.as_str()), (4, json.as_slice()))
                .unwrap();
            let mut epochs = txn.open_table(EPOCHS).unwrap();
            epochs.insert((1, "u1"), 4).unwrap();
            epochs.insert((1, "u2"), 9).unwrap();
        }
        txn.commit().unwrap();
        drop(db);
        let store = EmbeddedStore::open(&path).unwrap();
        let read = |store: &EmbeddedStore| {
            let txn = store.db.begin_read().unwrap();
            let table = txn.open_table(PRESENCE).unwrap();
            user_sessions(&table, app, "u1").unwrap()
        };
        assert_eq!(read(&store), vec![old.clone()]);
        let new = NewSession {
            key: SessionKey {
                gate_id: "gate-b".into(),
                shard: 1,
                conn: 2,
            },
            device: "d2".into(),
            platform: "ios".into(),
            since_ms: 7,
            incarnation: 8,
        };
        let outcome = store
            .add_session(app, "u1", new, DevicePolicy::Single)
            .await
            .unwrap();
        assert_eq!(outcome.kicked, vec![old]);
        // Above every epoch the old file handed out, not only u1's.
        assert_eq!(outcome.record.epoch, 10);
        assert_eq!(read(&store), vec![outcome.record]);
    }

    #[test]
    fn entry_encoding_round_trips_and_rejects_garbage() {
        let e = C2sEntry {
            uid: "ü:{x}".into(),
            content_type: "application/octet-stream".into(),
            content: Bytes::from_static(&[0, 255, 1, 254]),
            at_ms: 1_700_000_000_123,
        };
        let encoded = encode_entry(&e);
        assert_eq!(decode_entry(&encoded), Ok(e));
        for cut in 0..encoded.len() - 4 {
            assert!(decode_entry(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_entry(&[2, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn the_lease_mirror_ends_leases_on_time_and_follows_the_newest_incarnation() {
        let mut leases = Leases {
            rows: HashMap::new(),
            live: Arc::default(),
            valid_until_ms: 0,
        };
        leases.renewed("g", 0, 1_000, 7);
        leases.renewed("g", 1, 2_000, 7);
        leases.renewed("h", 0, 1_500, 9);
        let at = |l: &mut Leases, now| {
            let mut v: Vec<(String, u64)> =
                l.live(now).iter().map(|(g, i)| (g.clone(), *i)).collect();
            v.sort();
            v
        };
        assert_eq!(at(&mut leases, 999), [("g".into(), 7), ("h".into(), 9)]);
        assert_eq!(leases.valid_until_ms, 1_000, "the earliest end");
        assert_eq!(at(&mut leases, 1_600), [("g".to_string(), 7)], "h ended");
        // g restarted: its new process's heartbeat wins at once.
        leases.renewed("g", 0, 3_000, 8);
        assert_eq!(at(&mut leases, 1_700), [("g".to_string(), 8)]);
        assert!(at(&mut leases, 3_000).is_empty());
    }

    /// The directory `crash_child` writes in; set only for that child.
    const CRASH_DIR_ENV: &str = "TIDEGATE_TEST_CRASH_DIR";
    /// Which writes `crash_child` makes before it aborts.
    const CRASH_MODE_ENV: &str = "TIDEGATE_TEST_CRASH_MODE";

    fn login(uid: &str, conn: u64) -> NewSession {
        NewSession {
            key: SessionKey {
                gate_id: "gate-a".into(),
                shard: 0,
                conn,
            },
            device: format!("d-{uid}"),
            platform: "ios".into(),
            since_ms: 1,
            incarnation: 1,
        }
    }

    /// Logs in `uid{0..n}`; returns the last epoch handed out.
    async fn log_in_many(store: &EmbeddedStore, uid: &str, n: u64) -> u64 {
        let mut last = 0;
        for i in 0..n {
            let uid = format!("{uid}{i}");
            let out = store.add_session(AppCode(1), &uid, login(&uid, i), DevicePolicy::Multi);
            last = out.await.unwrap().record.epoch;
        }
        last
    }

    /// Run by [`crash`] as a child process: the writes of its mode, then an
    /// abort, so no destructor gets a chance to sync what is soft.
    #[tokio::test]
    #[ignore = "a child of the crash tests, not a test on its own"]
    async fn crash_child() {
        let (Ok(dir), Ok(mode)) = (std::env::var(CRASH_DIR_ENV), std::env::var(CRASH_MODE_ENV))
        else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let soft_sync = if mode == "strict" {
            std::time::Duration::ZERO
        } else {
            DEFAULT_SOFT_SYNC
        };
        let store = EmbeddedStore::open_with(&dir.join("s.redb"), soft_sync).unwrap();
        let last = match mode.as_str() {
            // `store.soft_sync_ms = 0`: every login is on disk at once.
            "strict" => log_in_many(&store, "a", 50).await,
            // Soft writes only, with a pause past the sync interval between.
            "soft" => {
                log_in_many(&store, "a", 50).await;
                tokio::time::sleep(DEFAULT_SOFT_SYNC * 3).await;
                log_in_many(&store, "b", 50).await
            }
            // The first login's ceiling raise is durable, the next is
            // soft: only the append's own commit can keep the append.
            "message" => {
                let last = log_in_many(&store, "a", 2).await;
                let entry = C2sEntry {
                    uid: "a0".into(),
                    content_type: "t".into(),
                    content: Bytes::from_static(b"kept"),
                    at_ms: 1,
                };
                store
                    .append_c2s(AppCode(1), MsgType(5), &entry, 100)
                    .await
                    .unwrap();
                last
            }
            other => panic!("unknown crash mode {other}"),
        };
        let mut f = std::fs::File::create(dir.join("last-epoch")).unwrap();
        std::io::Write::write_all(&mut f, last.to_string().as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::process::abort();
    }

    /// Runs `crash_child` in `mode` and reopens its store after the abort;
    /// returns it with the last epoch the child handed out.
    fn crash(mode: &str, dir: &Path) -> (EmbeddedStore, u64) {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::embedded::tests::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir)
            .env(CRASH_MODE_ENV, mode)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child aborts");
        let last = std::fs::read_to_string(dir.join("last-epoch"))
            .expect("the child ran to its abort")
            .parse()
            .unwrap();
        (EmbeddedStore::open(&dir.join("s.redb")).unwrap(), last)
    }

    #[tokio::test]
    async fn a_crash_keeps_idle_synced_presence_and_never_reuses_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, last) = crash("soft", dir.path());
        // The first logins were idle past the sync interval: on disk.
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(PRESENCE).unwrap();
        for i in 0..50 {
            let uid = format!("a{i}");
            assert_eq!(
                user_sessions(&table, AppCode(1), &uid).unwrap().len(),
                1,
                "{uid}"
            );
        }
        drop((table, txn));
        // The crash may roll the later logins back, never their epochs.
        let epoch = log_in_many(&store, "c", 1).await;
        assert!(epoch > last, "epoch {epoch} after the crash, {last} before");
    }

    #[tokio::test]
    async fn with_soft_sync_zero_a_crash_keeps_every_login() {
        let dir = tempfile::tempdir().unwrap();
        let (store, last) = crash("strict", dir.path());
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(PRESENCE).unwrap();
        for i in 0..50 {
            let uid = format!("a{i}");
            assert_eq!(
                user_sessions(&table, AppCode(1), &uid).unwrap().len(),
                1,
                "{uid}"
            );
        }
        drop((table, txn));
        assert!(log_in_many(&store, "c", 1).await > last);
    }

    #[tokio::test]
    async fn a_crash_keeps_every_acknowledged_message() {
        let dir = tempfile::tempdir().unwrap();
        let (store, last) = crash("message", dir.path());
        let c2s = store
            .read_c2s(AppCode(1), MsgType(5), None, 10)
            .await
            .unwrap();
        assert_eq!(c2s.len(), 1);
        assert_eq!(c2s[0].entry.content, Bytes::from_static(b"kept"));
        assert!(log_in_many(&store, "c", 1).await > last);
    }
}
