//! The embedded store's single writer thread and its group commit (see the
//! parent module's doc for why). It owns every write transaction; callers
//! reach it only through [`Job`]s on a bounded channel.

use super::{
    inbox_expiry_of, node, reach_from_row, reach_to_row, session, storage, ReachRow, C2S, C2S_META,
    EPOCHS, EPOCH_CEILING_KEY, EPOCH_LAST, EPOCH_LAST_KEY, GATES, INBOX, INBOX_EXPIRY, INBOX_META,
    PRESENCE, REACH,
};
use crate::store::{
    DevicePolicy, LoginOutcome, NewSession, ReachCounts, ReachDelta, SessionRecord, StoreError,
    StreamId,
};
use redb::{Database, Durability, ReadableTable, WriteTransaction};
use std::time::{Duration, Instant};
use tidegate_proto::now_ms;
use tokio::sync::{mpsc, oneshot};

/// Most ops committed in one transaction; bounds a batch's latency.
pub(super) const MAX_BATCH: usize = 1024;
/// How often the writer deletes expired inbox messages (in a batch's
/// transaction, when one is due), and how many at most per sweep: reads
/// skip expired messages anyway, so sweeping only reclaims space.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const SWEEP_MAX: usize = 10_000;
/// The default longest wait of soft state (presence, gate leases, reach
/// counters) in non-durable commits for the next fsync: what a crash can
/// roll back, a fifth of Redis's `appendfsync everysec` (`store.soft_sync_ms`).
pub const DEFAULT_SOFT_SYNC: Duration = Duration::from_millis(200);
/// Epochs reserved by each durable raise of the epoch ceiling: logins hand
/// out epochs below the ceiling from non-durable commits, and one in 65,536
/// forces an fsync.
const EPOCH_RESERVE: u64 = 1 << 16;

/// One write, as queued for the writer thread.
pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// What a [`Job`] asks the writer to do.
pub(super) enum Op {
    AddSession {
        app: u16,
        uid: String,
        new: NewSession,
        policy: DevicePolicy,
    },
    RenewGate {
        gate_id: String,
        shard: u32,
        expires_ms: u64,
        json: Vec<u8>,
    },
    RemoveSession {
        app: u16,
        uid: String,
        key: String,
        epoch: u64,
    },
    /// Appended in order, in one transaction.
    AppendC2s(Vec<C2sRow>),
    StoreOffline {
        app: u16,
        uids: Vec<String>,
        encoded: Vec<u8>,
        expires_ms: u64,
        max_len: u64,
    },
    AckOffline {
        app: u16,
        uid: String,
        up_to: StreamId,
    },
    AddReach(Vec<ReachDelta>),
}

impl Op {
    /// Whether this write may wait up to the soft-sync interval for its fsync.
    /// Presence, leases and counters are rebuilt by logins, heartbeats and
    /// traffic; messages (c2s appends, offline inboxes and their acks) are
    /// what a caller was told is kept, so their commit is durable.
    fn is_soft(&self) -> bool {
        match self {
            Op::AddSession { .. }
            | Op::RenewGate { .. }
            | Op::RemoveSession { .. }
            | Op::AddReach(_) => true,
            Op::AppendC2s(_) | Op::StoreOffline { .. } | Op::AckOffline { .. } => false,
        }
    }
}

/// One c2s stream append.
pub(super) struct C2sRow {
    pub(super) stream: String,
    pub(super) encoded: Vec<u8>,
    pub(super) max_len: u64,
}

/// An op's result, sent only after its transaction committed.
#[derive(Debug)]
pub(super) enum Done {
    Added(LoginOutcome),
    Renewed,
    Removed(bool),
    Appended(Vec<StreamId>),
    Stored(Vec<u64>),
    Acked(u64),
    Counted,
}

/// Creates any missing table, in one committed transaction, and starts the
/// epoch counter above every epoch handed out before (see [`EPOCH_RESERVE`]).
pub(super) fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut tables = Tables::open(&txn)?;
        let last = match tables.epoch_last.get(EPOCH_LAST_KEY).map_err(storage)? {
            Some(last) => last.value(),
            None => {
                // A new file, or one from before the store-wide counter:
                // start above every per-user epoch it holds.
                let legacy = txn.open_table(EPOCHS).map_err(storage)?;
                let mut last = 0;
                for row in legacy.iter().map_err(storage)? {
                    last = last.max(row.map_err(storage)?.1.value());
                }
                last
            }
        };
        // The counter may have rolled back with a crash below epochs that
        // non-durable commits handed out; the ceiling is durable and above
        // all of them. A file from before the ceiling has none to skip.
        let ceiling = tables
            .epoch_last
            .get(EPOCH_CEILING_KEY)
            .map_err(storage)?
            .map_or(last, |c| c.value());
        let start = last.max(ceiling);
        for key in [EPOCH_LAST_KEY, EPOCH_CEILING_KEY] {
            tables.epoch_last.insert(key, start).map_err(storage)?;
        }
    }
    txn.commit().map_err(storage)
}

/// The writer thread: one receive, then drain the queue, then one commit
/// for the whole batch (the rumqttd router's pattern, STYLE §6). Soft state
/// waits at most `soft_sync` for its fsync (zero: every commit is durable);
/// `clock` is a current-thread runtime with timers, so an idle writer can
/// wake to fsync soft state that is still waiting.
pub(super) fn run_writer(
    db: &Database,
    soft_sync: Duration,
    clock: &tokio::runtime::Runtime,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_sweep = Instant::now();
    // When the oldest commit not yet fsynced was made.
    let mut unsynced: Option<Instant> = None;
    loop {
        let received = match unsynced {
            None => clock.block_on(rx.recv()),
            Some(since) => {
                let due = tokio::time::Instant::from_std(since + soft_sync);
                match clock.block_on(async { tokio::time::timeout_at(due, rx.recv()).await }) {
                    Ok(received) => received,
                    Err(_idle) => {
                        unsynced = sync(db).err().map(|()| Instant::now());
                        continue;
                    }
                }
            }
        };
        let Some(job) = received else { break };
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
        if sweep {
            last_sweep = Instant::now();
        }
        let sync_due =
            soft_sync.is_zero() || unsynced.is_some_and(|since| since.elapsed() >= soft_sync);
        match commit_batch(db, &mut batch, sweep, sync_due) {
            Some(Committed::Durable) => unsynced = None,
            Some(Committed::Soft) => {
                unsynced.get_or_insert_with(Instant::now);
            }
            None => {}
        }
    }
    // The queue closed (the store is dropping): nothing may stay unsynced.
    if unsynced.is_some() {
        let _ = sync(db);
    }
}

/// How a batch was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// fsynced before `commit` returned, with every commit before it.
    Durable,
    /// Visible to readers, on disk at the next durable commit.
    Soft,
}

impl Committed {
    fn label(self) -> &'static str {
        match self {
            Committed::Durable => "immediate",
            Committed::Soft => "none",
        }
    }
}

/// Makes every non-durable commit durable: an empty durable commit.
fn sync(db: &Database) -> Result<(), ()> {
    let result = db
        .begin_write()
        .map_err(redb::Error::from)
        .and_then(|txn| txn.commit().map_err(redb::Error::from));
    match result {
        Ok(()) => {
            let durable = Committed::Durable.label();
            metrics::counter!("tidegate_logic_store_commits_total", "durability" => durable)
                .increment(1);
            Ok(())
        }
        Err(e) => {
            tracing::warn!("embedded store: fsync of soft state failed: {e}");
            Err(())
        }
    }
}

/// Applies and commits `batch`, then answers every job. An op that is
/// refused (it checks before it writes) fails alone; a storage failure fails
/// the whole batch, since redb poisons a transaction that failed part way.
/// No job is answered before the commit that holds it returned. The commit
/// is durable unless every op is soft and neither `sync_due` nor an epoch
/// ceiling raise asks for one; returns which it was, `None` if it failed.
fn commit_batch(
    db: &Database,
    batch: &mut Vec<Job>,
    sweep: bool,
    sync_due: bool,
) -> Option<Committed> {
    let result = (|| {
        let mut txn = db.begin_write().map_err(storage)?;
        let mut done = Vec::with_capacity(batch.len());
        let ceiling_raised = {
            let mut tables = Tables::open(&txn)?;
            for job in batch.iter() {
                done.push(tables.apply(&job.op).map_err(storage)?);
            }
            if sweep {
                let swept = tables.sweep_expired(now_ms()).map_err(storage)?;
                metrics::counter!("tidegate_logic_offline_expired_total").increment(swept);
            }
            tables.ceiling_raised
        };
        let committed = if sync_due || ceiling_raised || batch.iter().any(|job| !job.op.is_soft()) {
            Committed::Durable
        } else {
            txn.set_durability(Durability::None).map_err(storage)?;
            Committed::Soft
        };
        txn.commit().map_err(storage)?;
        Ok::<_, StoreError>((done, committed))
    })();
    match result {
        Ok((done, committed)) => {
            metrics::counter!("tidegate_logic_store_commits_total", "durability" => committed.label())
                .increment(1);
            for (job, done) in batch.drain(..).zip(done) {
                let _ = job.reply.send(done);
            }
            Some(committed)
        }
        Err(e) => {
            tracing::warn!(
                "embedded store: batch of {} writes failed: {e}",
                batch.len()
            );
            let message = e.to_string();
            for job in batch.drain(..) {
                let _ = job
                    .reply
                    .send(Err(StoreError::Unavailable(message.clone())));
            }
            None
        }
    }
}

/// The tables of one write transaction.
struct Tables<'txn> {
    presence: redb::Table<'txn, (u16, &'static str, &'static str), (u64, &'static [u8])>,
    gates: redb::Table<'txn, (&'static str, u32), (u64, &'static [u8])>,
    epoch_last: redb::Table<'txn, &'static str, u64>,
    c2s: redb::Table<'txn, (&'static str, u64, u64), &'static [u8]>,
    meta: redb::Table<'txn, &'static str, (u64, u64, u64)>,
    inbox: redb::Table<'txn, (u16, &'static str, u64, u64), &'static [u8]>,
    inbox_meta: redb::Table<'txn, (u16, &'static str), (u64, u64, u64)>,
    inbox_expiry: redb::Table<'txn, (u64, u16, &'static str, u64, u64), ()>,
    reach: redb::Table<'txn, (u16, u16), ReachRow>,
    /// A login in this transaction raised the durable epoch ceiling, so
    /// its commit must be durable.
    ceiling_raised: bool,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            presence: txn.open_table(PRESENCE).map_err(storage)?,
            gates: txn.open_table(GATES).map_err(storage)?,
            epoch_last: txn.open_table(EPOCH_LAST).map_err(storage)?,
            c2s: txn.open_table(C2S).map_err(storage)?,
            meta: txn.open_table(C2S_META).map_err(storage)?,
            inbox: txn.open_table(INBOX).map_err(storage)?,
            inbox_meta: txn.open_table(INBOX_META).map_err(storage)?,
            inbox_expiry: txn.open_table(INBOX_EXPIRY).map_err(storage)?,
            reach: txn.open_table(REACH).map_err(storage)?,
            ceiling_raised: false,
        })
    }

    /// Outer error: storage failed (abort the batch); inner: this op was
    /// refused before it wrote anything.
    fn apply(&mut self, op: &Op) -> Result<Result<Done, StoreError>, redb::Error> {
        Ok(match op {
            Op::AddSession {
                app,
                uid,
                new,
                policy,
            } => self.add_session(*app, uid, new, *policy)?.map(Done::Added),
            Op::RenewGate {
                gate_id,
                shard,
                expires_ms,
                json,
            } => {
                // Never shorten a lease another logic instance just extended.
                let old = self
                    .gates
                    .get((gate_id.as_str(), *shard))?
                    .map(|g| g.value().0);
                if old.is_none_or(|old| old <= *expires_ms) {
                    self.gates
                        .insert((gate_id.as_str(), *shard), (*expires_ms, json.as_slice()))?;
                }
                Ok(Done::Renewed)
            }
            Op::RemoveSession {
                app,
                uid,
                key,
                epoch,
            } => Ok(Done::Removed(self.remove_session(*app, uid, key, *epoch)?)),
            Op::AppendC2s(rows) => Ok(Done::Appended(self.append(rows)?)),
            Op::StoreOffline {
                app,
                uids,
                encoded,
                expires_ms,
                max_len,
            } => {
                let mut evicted = Vec::with_capacity(uids.len());
                for uid in uids {
                    evicted.push(self.store_offline(*app, uid, encoded, *expires_ms, *max_len)?);
                }
                Ok(Done::Stored(evicted))
            }
            Op::AckOffline { app, uid, up_to } => {
                let through = (*app, uid.as_str(), up_to.ms, up_to.seq);
                let acked = self.remove_inbox_range(*app, uid, through, usize::MAX)?;
                Ok(Done::Acked(acked))
            }
            Op::AddReach(deltas) => {
                for d in deltas {
                    let key = (d.app.0, d.msgtype.0);
                    let mut total = self
                        .reach
                        .get(key)?
                        .map_or_else(ReachCounts::default, |r| reach_from_row(r.value()));
                    total.add(&d.counts);
                    self.reach.insert(key, reach_to_row(&total))?;
                }
                Ok(Done::Counted)
            }
        })
    }

    /// Appends to one user's inbox and evicts its oldest messages beyond
    /// `max_len` (exactly: the count is what the push API reports).
    fn store_offline(
        &mut self,
        app: u16,
        uid: &str,
        encoded: &[u8],
        expires_ms: u64,
        max_len: u64,
    ) -> Result<u64, redb::Error> {
        let (last_ms, last_seq, count) = self
            .inbox_meta
            .get((app, uid))?
            .map_or((0, 0, 0), |g| g.value());
        let id = next_id(last_ms, last_seq, now_ms());
        self.inbox.insert((app, uid, id.ms, id.seq), encoded)?;
        self.inbox_expiry
            .insert((expires_ms, app, uid, id.ms, id.seq), ())?;
        self.inbox_meta
            .insert((app, uid), (id.ms, id.seq, count + 1))?;
        let excess = usize::try_from((count + 1).saturating_sub(max_len)).unwrap_or(usize::MAX);
        if excess == 0 {
            return Ok(0);
        }
        self.remove_inbox_range(app, uid, (app, uid, u64::MAX, u64::MAX), excess)
    }

    /// Deletes up to `max` of the user's oldest inbox messages at or before
    /// `through`, with their expiry index rows; returns how many.
    fn remove_inbox_range(
        &mut self,
        app: u16,
        uid: &str,
        through: (u16, &str, u64, u64),
        max: usize,
    ) -> Result<u64, redb::Error> {
        let doomed = self
            .inbox
            .range((app, uid, 0, 0)..=through)?
            .take(max)
            .map(|row| {
                row.map(|(k, v)| {
                    let (_, _, ms, seq) = k.value();
                    (ms, seq, inbox_expiry_of(v.value()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for &(ms, seq, expires_ms) in &doomed {
            self.inbox.remove((app, uid, ms, seq))?;
            self.inbox_expiry.remove((expires_ms, app, uid, ms, seq))?;
        }
        self.uncount_inbox(app, uid, doomed.len() as u64)?;
        Ok(doomed.len() as u64)
    }

    /// Lowers the user's inbox count after `removed` deletions.
    fn uncount_inbox(&mut self, app: u16, uid: &str, removed: u64) -> Result<(), redb::Error> {
        if removed == 0 {
            return Ok(());
        }
        let meta = self.inbox_meta.get((app, uid))?.map(|g| g.value());
        if let Some((ms, seq, count)) = meta {
            let count = count.saturating_sub(removed);
            self.inbox_meta.insert((app, uid), (ms, seq, count))?;
        }
        Ok(())
    }

    /// Deletes up to [`SWEEP_MAX`] messages that expired before `now`.
    fn sweep_expired(&mut self, now: u64) -> Result<u64, redb::Error> {
        let expired = self
            .inbox_expiry
            .range(..(now, 0, "", 0, 0))?
            .take(SWEEP_MAX)
            .map(|row| {
                row.map(|(k, _)| {
                    let (expires_ms, app, uid, ms, seq) = k.value();
                    (expires_ms, app, uid.to_string(), ms, seq)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (expires_ms, app, uid, ms, seq) in &expired {
            self.inbox_expiry
                .remove((*expires_ms, *app, uid.as_str(), *ms, *seq))?;
            let gone = self
                .inbox
                .remove((*app, uid.as_str(), *ms, *seq))?
                .is_some();
            self.uncount_inbox(*app, uid, u64::from(gone))?;
        }
        Ok(expired.len() as u64)
    }

    fn add_session(
        &mut self,
        app: u16,
        uid: &str,
        new: &NewSession,
        policy: DevicePolicy,
    ) -> Result<Result<LoginOutcome, StoreError>, redb::Error> {
        let last = self
            .epoch_last
            .get(EPOCH_LAST_KEY)?
            .map_or(0, |g| g.value());
        let Some(epoch) = last.checked_add(1) else {
            let why = format!("the store's epoch counter is at u64::MAX (login of {app}:{uid})");
            return Ok(Err(StoreError::Corrupt(why)));
        };
        let ceiling = self
            .epoch_last
            .get(EPOCH_CEILING_KEY)?
            .map_or(0, |g| g.value());
        if epoch > ceiling {
            let raised = epoch.saturating_add(EPOCH_RESERVE);
            self.epoch_last.insert(EPOCH_CEILING_KEY, raised)?;
            self.ceiling_raised = true;
        }
        let record = SessionRecord {
            gate_id: new.key.gate_id.clone(),
            shard: new.key.shard,
            conn: new.key.conn,
            epoch,
            device: new.device.clone(),
            platform: new.platform.clone(),
            since_ms: new.since_ms,
            incarnation: new.incarnation,
        };
        let row = session::encode(&record);
        let field = new.key.to_string();
        let mut kicked = Vec::new();
        if policy != DevicePolicy::Multi {
            let mut doomed = Vec::new();
            for row in self.presence.range((app, uid, "")..)? {
                let (key, value) = row?;
                let (row_app, row_uid, row_field) = key.value();
                if row_app != app || row_uid != uid {
                    break;
                }
                if row_field == field {
                    continue;
                }
                let (old_epoch, old_row) = value.value();
                // An unreadable record is replaced under any policy but multi.
                let old = session::decode(row_field, old_epoch, old_row).ok();
                if old
                    .as_ref()
                    .is_none_or(|o| policy.replaces(&new.platform, o))
                {
                    doomed.push((row_field.to_string(), old));
                }
            }
            for (f, old) in doomed {
                self.presence.remove((app, uid, f.as_str()))?;
                kicked.extend(old);
            }
            kicked.sort_by_key(|s| s.epoch);
        }
        self.epoch_last.insert(EPOCH_LAST_KEY, epoch)?;
        self.presence
            .insert((app, uid, field.as_str()), (epoch, row.as_slice()))?;
        Ok(Ok(LoginOutcome { record, kicked }))
    }

    fn remove_session(
        &mut self,
        app: u16,
        uid: &str,
        key: &str,
        epoch: u64,
    ) -> Result<bool, redb::Error> {
        let stored = self.presence.get((app, uid, key))?.map(|g| g.value().0);
        if stored != Some(epoch) {
            return Ok(false);
        }
        self.presence.remove((app, uid, key))?;
        Ok(true)
    }

    /// Appends `rows` in order: each stream's rows get consecutive
    /// [`next_id`] ids and are written as nodes (`node.rs`), then the stream
    /// is trimmed to about its `max_len`. Returns the ids in row order.
    fn append(&mut self, rows: &[C2sRow]) -> Result<Vec<StreamId>, redb::Error> {
        let mut ids = vec![StreamId { ms: 0, seq: 0 }; rows.len()];
        let mut streams: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            // A batch names few streams: a scan beats hashing each row.
            match streams.iter_mut().find(|(s, _)| *s == row.stream) {
                Some((_, members)) => members.push(i),
                None => streams.push((&row.stream, vec![i])),
            }
        }
        let now = now_ms();
        for (stream, members) in streams {
            let (mut last_ms, mut last_seq, mut count) =
                self.meta.get(stream)?.map_or((0, 0, 0), |g| g.value());
            let max_len = rows[*members.last().expect("a stream has rows")].max_len;
            for run in members.chunks(node_capacity(max_len)) {
                let mut entries = Vec::with_capacity(run.len());
                for &i in run {
                    let id = next_id(last_ms, last_seq, now);
                    (last_ms, last_seq) = (id.ms, id.seq);
                    ids[i] = id;
                    entries.push((id, rows[i].encoded.as_slice()));
                }
                let first = entries[0].0;
                self.c2s.insert(
                    (stream, first.ms, first.seq),
                    node::encode(&entries).as_slice(),
                )?;
                count += run.len() as u64;
            }
            let count = self.trim(stream, count, max_len)?;
            self.meta.insert(stream, (last_ms, last_seq, count))?;
        }
        Ok(ids)
    }

    /// Drops the stream's oldest nodes while at least `max_len` entries
    /// stay, once it is `trim_slack` past `max_len` (so the delete cost is
    /// amortized, like Redis's `MAXLEN ~`, which also drops whole nodes).
    /// Returns the entries left.
    fn trim(&mut self, stream: &str, count: u64, max_len: u64) -> Result<u64, redb::Error> {
        if count <= max_len + trim_slack(max_len) {
            return Ok(count);
        }
        let mut left = count;
        let mut oldest = Vec::new();
        for row in self
            .c2s
            .range((stream, 0, 0)..=(stream, u64::MAX, u64::MAX))?
        {
            let (key, value) = row?;
            // A row that does not parse counts as one entry: it goes first.
            let n = node::len(value.value()).unwrap_or(1);
            if left - n.min(left) < max_len {
                break;
            }
            left -= n;
            oldest.push((key.value().1, key.value().2));
        }
        for (ms, seq) in &oldest {
            self.c2s.remove((stream, *ms, *seq))?;
        }
        Ok(left)
    }
}

/// Entries per node for a stream trimmed to about `max_len`: whole nodes
/// are trimmed, so a node is never bigger than the trim slack.
fn node_capacity(max_len: u64) -> usize {
    usize::try_from(trim_slack(max_len)).map_or(node::NODE_MAX, |s| s.min(node::NODE_MAX))
}

/// A Redis-style id after `(last_ms, last_seq)`: `ms` follows the clock but
/// never goes back (a clock step backwards keeps the last `ms`, bumps `seq`).
fn next_id(last_ms: u64, last_seq: u64, now: u64) -> StreamId {
    if now > last_ms {
        StreamId { ms: now, seq: 0 }
    } else {
        StreamId {
            ms: last_ms,
            seq: last_seq + 1,
        }
    }
}

/// How far past `max_len` a stream may grow before a trim: ~6 %, at most 1000.
fn trim_slack(max_len: u64) -> u64 {
    (max_len / 16).clamp(1, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    #[test]
    fn sweep_deletes_only_expired_messages_and_fixes_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        create_tables(&db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&txn).unwrap();
            let now = now_ms();
            // Interleaved: expired, live, expired: a sweep must not take the
            // live one with it.
            for (i, expires) in [now - 1, now + 60_000, now - 2].into_iter().enumerate() {
                let encoded = [1, 0, 7, 0, 0, 0, 0, 0, 0, 0, i as u8];
                let mut encoded = encoded.to_vec();
                encoded[3..11].copy_from_slice(&expires.to_be_bytes());
                t.store_offline(1, "u", &encoded, expires, 100).unwrap();
            }
            assert_eq!(t.sweep_expired(now).unwrap(), 2);
            assert_eq!(t.inbox.len().unwrap(), 1);
            assert_eq!(t.inbox_expiry.len().unwrap(), 1);
            assert_eq!(t.inbox_meta.get((1, "u")).unwrap().unwrap().value().2, 1);
            assert_eq!(t.sweep_expired(now).unwrap(), 0);
        }
        txn.commit().unwrap();
    }

    #[test]
    fn slack_is_small_but_positive() {
        assert_eq!(trim_slack(1), 1);
        assert_eq!(trim_slack(100), 6);
        assert_eq!(trim_slack(100_000), 1000);
    }
}
