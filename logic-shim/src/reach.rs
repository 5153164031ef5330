//! Reach-rate statistics per app and msgtype (ARCHITECTURE §4 s2c): sent,
//! online at send, written to a socket (the gate's LINK_DELIVER reply),
//! acknowledged by the client (S2C_ACK), stored offline.
//!
//! Counted in this logic instance only — a store write per push target
//! would cost more than the push — and exported twice: as Prometheus
//! counters (`tidegate_logic_reach_total{app,msgtype,stage}`, summed across
//! instances by the scraper) and by `GET /v1/stats/reach`. An ack may reach
//! another instance than the push did (gates spread frames over links), so
//! only sums over all instances are exact.
//!
//! The client's S2C_ACK carries only the msg id, so the msgtype travels
//! inside it: [`msg_id`] ends in `-m<msgtype>` and [`msgtype_of`] reads it.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use tidegate_proto::{AppCode, MsgType};

/// The counters of one app and msgtype.
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

/// This instance's counters.
///
/// A std `Mutex`: one short critical section per push or gate reply (not
/// per target), never held across an await.
#[derive(Default)]
pub struct Reach {
    counts: Mutex<HashMap<(u16, u16), ReachCounts>>,
}

impl Reach {
    /// Adds `n` to one counter.
    pub fn add(&self, app: AppCode, msgtype: MsgType, stage: Stage, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!(
            "tidegate_logic_reach_total",
            "app" => app.to_string(),
            "msgtype" => msgtype.0.to_string(),
            "stage" => stage.label()
        )
        .increment(n);
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = map.entry((app.0, msgtype.0)).or_default();
        let field = match stage {
            Stage::Sent => &mut c.sent,
            Stage::Online => &mut c.online,
            Stage::Written => &mut c.written,
            Stage::Acked => &mut c.acked,
            Stage::Stored => &mut c.stored,
        };
        *field += n;
    }

    /// The counters of one app and msgtype.
    pub fn get(&self, app: AppCode, msgtype: MsgType) -> ReachCounts {
        let map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(app.0, msgtype.0)).copied().unwrap_or_default()
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
        assert_eq!(
            r.get(AppCode(1), MsgType(7)),
            ReachCounts {
                sent: 3,
                acked: 1,
                ..Default::default()
            }
        );
        assert_eq!(r.get(AppCode(1), MsgType(8)), ReachCounts::default());
    }
}
