//! Reach-rate statistics per app and msgtype (ARCHITECTURE §4 s2c): sent,
//! online at send, written to a socket (the gate's LINK_DELIVER reply),
//! acknowledged by the client (S2C_ACK), stored offline.
//!
//! Counted in memory first — a store write per push target would cost more
//! than the push — then added to the store's totals by a flusher every
//! `logic.reach_flush_ms` (one round trip for every changed counter), so
//! `GET /v1/stats/reach` answers totals over every logic instance: an ack
//! may reach another instance than the push did (gates spread frames over
//! links). Also exported as Prometheus counters
//! (`tidegate_logic_reach_total{app,msgtype,stage}`, per instance).
//!
//! The client's S2C_ACK carries only the msg id, so the msgtype travels
//! inside it: [`msg_id`] ends in `-m<msgtype>` and [`msgtype_of`] reads it.

use crate::store::{ReachDelta, Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use tidegate_proto::{AppCode, MsgType};

pub use crate::store::ReachCounts;

/// Which counter an event bumps.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// See [`ReachCounts::sent`].
    Sent,
    /// See [`ReachCounts::online`].
    Online,
    /// See [`ReachCounts::written`].
    Written,
    /// See [`ReachCounts::acked`].
    Acked,
    /// See [`ReachCounts::stored`].
    Stored,
}

impl Stage {
    /// In declaration order: `stage as usize` indexes this.
    const ALL: [Stage; 5] = [
        Stage::Sent,
        Stage::Online,
        Stage::Written,
        Stage::Acked,
        Stage::Stored,
    ];

    fn label(self) -> &'static str {
        match self {
            Stage::Sent => "sent",
            Stage::Online => "online",
            Stage::Written => "written",
            Stage::Acked => "acked",
            Stage::Stored => "stored",
        }
    }
}

/// This instance's counters: everything counted since start, and what the
/// store's totals do not hold yet.
///
/// A std `Mutex`: one short critical section per push or gate reply (not
/// per target), never held across an await.
#[derive(Default)]
pub struct Reach {
    counts: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    local: HashMap<(u16, u16), Local>,
    unflushed: HashMap<(u16, u16), ReachCounts>,
}

/// One app and msgtype's counts since start, with their Prometheus
/// counters: registered once, not looked up (labels formatted, hashed)
/// on every push.
struct Local {
    counts: ReachCounts,
    exported: [metrics::Counter; 5],
}

impl Local {
    fn new(app: u16, msgtype: u16) -> Local {
        let counter = |stage: Stage| {
            metrics::counter!(
                "tidegate_logic_reach_total",
                "app" => app.to_string(),
                "msgtype" => msgtype.to_string(),
                "stage" => stage.label()
            )
        };
        Local {
            counts: ReachCounts::default(),
            exported: Stage::ALL.map(counter),
        }
    }
}

impl Reach {
    /// Adds `n` to one counter.
    pub fn add(&self, app: AppCode, msgtype: MsgType, stage: Stage, n: u64) {
        if n == 0 {
            return;
        }
        let key = (app.0, msgtype.0);
        let mut guard = self.lock();
        let c = &mut *guard;
        let local = c
            .local
            .entry(key)
            .or_insert_with(|| Local::new(app.0, msgtype.0));
        local.exported[stage as usize].increment(n);
        *stage.field(&mut local.counts) += n;
        *stage.field(c.unflushed.entry(key).or_default()) += n;
    }

    /// This instance's counters of one app and msgtype since it started.
    pub fn local(&self, app: AppCode, msgtype: MsgType) -> ReachCounts {
        let c = self.lock();
        c.local
            .get(&(app.0, msgtype.0))
            .map(|l| l.counts)
            .unwrap_or_default()
    }

    /// Counted here but not yet in the store's totals.
    pub fn unflushed(&self, app: AppCode, msgtype: MsgType) -> ReachCounts {
        let c = self.lock();
        c.unflushed
            .get(&(app.0, msgtype.0))
            .copied()
            .unwrap_or_default()
    }

    /// Adds what is unflushed to the store's totals; on failure keeps it for
    /// the next try, so nothing is lost or counted twice by a retry.
    pub async fn flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let deltas: Vec<ReachDelta> = std::mem::take(&mut self.lock().unflushed)
            .into_iter()
            .map(|((app, msgtype), counts)| ReachDelta {
                app: AppCode(app),
                msgtype: MsgType(msgtype),
                counts,
            })
            .collect();
        if deltas.is_empty() {
            return Ok(());
        }
        let result = store.add_reach(&deltas).await;
        if result.is_err() {
            let mut c = self.lock();
            for d in deltas {
                c.unflushed
                    .entry((d.app.0, d.msgtype.0))
                    .or_default()
                    .add(&d.counts);
            }
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Stage {
    fn field(self, c: &mut ReachCounts) -> &mut u64 {
        match self {
            Stage::Sent => &mut c.sent,
            Stage::Online => &mut c.online,
            Stage::Written => &mut c.written,
            Stage::Acked => &mut c.acked,
            Stage::Stored => &mut c.stored,
        }
    }
}

/// Flushes `reach` to the store every `every` until the process ends.
pub async fn flush_forever(logic: std::sync::Arc<crate::Logic>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match logic.reach.flush(&*logic.store).await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!("reach totals flush: {e}");
                "store_error"
            }
        };
        metrics::counter!("tidegate_logic_reach_flushes_total", "result" => result).increment(1);
    }
}

/// A message id unique across instances that names its msgtype:
/// `<ms>-<instance>-<seq>-m<msgtype>`.
pub fn msg_id(ms: u64, instance: &str, seq: u64, msgtype: MsgType) -> String {
    format!("{ms}-{instance}-{seq}-m{}", msgtype.0)
}

/// The msgtype inside a [`msg_id`]; `None` for ids we did not mint.
pub fn msgtype_of(msg_id: &str) -> Option<MsgType> {
    let (_, t) = msg_id.rsplit_once("-m")?;
    t.parse().ok().map(MsgType)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgtype_round_trips_through_the_msg_id() {
        let id = msg_id(1, "logic-m-7", 3, MsgType(65535));
        assert_eq!(msgtype_of(&id), Some(MsgType(65535)));
        assert_eq!(msgtype_of("foreign"), None);
        assert_eq!(msgtype_of("x-m99999"), None);
    }

    #[test]
    fn counters_are_per_app_and_msgtype() {
        let r = Reach::default();
        r.add(AppCode(1), MsgType(7), Stage::Sent, 3);
        r.add(AppCode(1), MsgType(7), Stage::Acked, 1);
        r.add(AppCode(2), MsgType(7), Stage::Sent, 5);
        let want = ReachCounts {
            sent: 3,
            acked: 1,
            ..Default::default()
        };
        assert_eq!(r.local(AppCode(1), MsgType(7)), want);
        assert_eq!(r.unflushed(AppCode(1), MsgType(7)), want);
        assert_eq!(r.local(AppCode(1), MsgType(8)), ReachCounts::default());
    }
}
