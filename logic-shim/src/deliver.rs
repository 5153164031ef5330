//! A list push's LINK_DELIVERs, and what to do when a gate shard answers
//! that some listed sessions did not get the frame (ARCHITECTURE §5 case
//! 2). A shard lists the connections it no longer holds (`gone`: a close
//! that never reached the store left presence behind) and those not logged
//! in yet (`not_ready`). The gone sessions are removed from presence,
//! fenced by their epochs; the push goes to the inbox of each target that
//! missed it, when the push asked for offline storage.
//!
//! The push's answer does not wait for the gates: a target handed to a
//! linked shard is `delivered`, and the rare correction runs on the link's
//! task when the shard's confirmation comes (see `Gates::request_watched`).
//! Waiting would put a task wake-up and a timer on every push for a case
//! that almost never happens (measured: +25 µs of server CPU per push at
//! 10,000/s).

use crate::gates::ShardAddr;
use crate::presence;
use crate::reach::Stage;
use crate::store::{InboxMessage, SessionKey, SessionRecord, StoreError};
use crate::Logic;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tidegate_proto::{pb, AppCode, Cmd, Flags, Frame, Header, MsgType};

/// One gate process's shard: where a LINK_DELIVER goes. Connection ids are
/// only meaningful to the incarnation that issued them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ShardOf {
    addr: ShardAddr,
    incarnation: u64,
}

/// A listed connection's session: what a correction needs to know.
struct Owner {
    conn: u64,
    uid: Arc<str>,
    epoch: u64,
    /// All of the user's live sessions are on this shard: if they all miss
    /// the push, the user did not get it anywhere.
    only_shard: bool,
}

/// The connections one LINK_DELIVER lists.
struct ShardPart {
    to: ShardOf,
    owners: Vec<Owner>,
}

/// The sessions of a push's targets, grouped by the gate shard holding them.
#[derive(Default)]
pub struct Plan {
    parts: Vec<ShardPart>,
    index: HashMap<ShardOf, usize>,
    /// Per target, in request order: the parts holding its sessions.
    targets: Vec<Vec<usize>>,
}

impl Plan {
    /// Adds the next target with its live sessions (none: offline).
    pub fn add_target(&mut self, uid: &str, sessions: Vec<SessionRecord>) {
        if sessions.is_empty() {
            self.targets.push(Vec::new());
            return;
        }
        // (part, conn, epoch) per session; the gate id moves into the part
        // key, cloned only when a part is new.
        let placed: Vec<(usize, u64, u64)> = sessions
            .into_iter()
            .map(|s| {
                let to = ShardOf {
                    addr: ShardAddr {
                        gate_id: s.gate_id,
                        shard: s.shard,
                    },
                    incarnation: s.incarnation,
                };
                let part = match self.index.get(&to) {
                    Some(&part) => part,
                    None => {
                        self.parts.push(ShardPart {
                            to: to.clone(),
                            owners: Vec::new(),
                        });
                        self.index.insert(to, self.parts.len() - 1);
                        self.parts.len() - 1
                    }
                };
                (part, s.conn, s.epoch)
            })
            .collect();
        let uid: Arc<str> = Arc::from(uid);
        let only_shard = placed.windows(2).all(|w| w[0].0 == w[1].0);
        let mut parts = Vec::with_capacity(placed.len());
        for (part, conn, epoch) in placed {
            self.parts[part].owners.push(Owner {
                conn,
                uid: uid.clone(),
                epoch,
                only_shard,
            });
            parts.push(part);
        }
        parts.dedup();
        self.targets.push(parts);
    }

    /// Targets with at least one live session in presence.
    pub fn online(&self) -> u64 {
        self.targets.iter().filter(|t| !t.is_empty()).count() as u64
    }
}

/// A push as the gates get it.
pub struct Outgoing {
    /// Tenant.
    pub app: AppCode,
    /// Business line.
    pub msgtype: MsgType,
    /// The encoded S2C frame.
    pub frame: Bytes,
    /// Where a target that misses it live gets it instead, if anywhere.
    pub fallback: Option<Arc<OfflineCopy>>,
}

/// The inbox copy of a push.
pub struct OfflineCopy {
    /// As stored.
    pub message: InboxMessage,
    /// The app's inbox bound.
    pub max_len: u64,
}

impl OfflineCopy {
    /// Puts the copy in each of `uids`' inboxes and counts it (reach
    /// `stored`, evictions); on failure nothing is counted and the caller
    /// says what became of the targets.
    pub async fn store_for(
        &self,
        logic: &Logic,
        app: AppCode,
        msgtype: MsgType,
        uids: &[String],
    ) -> Result<(), StoreError> {
        let evicted = logic
            .store
            .store_offline(app, uids, &self.message, self.max_len)
            .await?;
        logic
            .reach
            .add(app, msgtype, Stage::Stored, uids.len() as u64);
        metrics::counter!("tidegate_logic_offline_evicted_total", "app" => app.to_string())
            .increment(evicted.iter().sum());
        Ok(())
    }
}

/// Sends the push as one LINK_DELIVER per gate shard of `plan`; returns,
/// per target in request order, whether a linked shard took it for at
/// least one of its sessions.
pub fn deliver(logic: &Arc<Logic>, push: &Outgoing, plan: Plan) -> Vec<bool> {
    let within = Duration::from_millis(logic.cfg.deliver_confirm_ms);
    let mut sent = Vec::with_capacity(plan.parts.len());
    for part in plan.parts {
        let deliver = pb::LinkDeliver {
            conns: part.owners.iter().map(|o| o.conn).collect(),
            frame: push.frame.clone(),
            incarnation: part.to.incarnation,
        };
        // The header's msgtype lets the link count the answer's "written"
        // reach figure without any state.
        let make = |seq| {
            let mut h = Header::new(Cmd::LinkDeliver, push.app, seq);
            h.msgtype = push.msgtype;
            h.flags = Flags::ACK_REQUESTED;
            Frame::encode_msg_to_bytes(h, &deliver)
        };
        let missed = Missed {
            logic: logic.clone(),
            app: push.app,
            msgtype: push.msgtype,
            gate: part.to.addr.clone(),
            owners: part.owners,
            fallback: push.fallback.clone(),
        };
        let on_reply = move |reply: Frame| missed.check(&reply);
        let incarnation = Some(part.to.incarnation);
        sent.push(
            logic
                .gates
                .request_watched(&part.to.addr, incarnation, within, on_reply, make),
        );
    }
    plan.targets
        .iter()
        .map(|parts| parts.iter().any(|&p| sent[p]))
        .collect()
}

/// Stale-session removals one correction keeps in flight.
const STALE_REMOVALS_IN_FLIGHT: usize = 64;

/// One LINK_DELIVER's sessions, kept until its confirmation comes.
struct Missed {
    logic: Arc<Logic>,
    app: AppCode,
    msgtype: MsgType,
    gate: ShardAddr,
    owners: Vec<Owner>,
    fallback: Option<Arc<OfflineCopy>>,
}

impl Missed {
    /// Runs on the link's task: a confirmation that missed nobody (the
    /// normal case) costs one decode; otherwise the correction is spawned.
    fn check(self, reply: &Frame) {
        let Ok(r) = reply.decode_body::<pb::LinkDeliverReply>() else {
            return;
        };
        if r.gone.is_empty() && r.not_ready.is_empty() {
            return;
        }
        tokio::spawn(self.correct(r));
    }

    async fn correct(self, r: pb::LinkDeliverReply) {
        let gone: HashSet<u64> = r.gone.into_iter().collect();
        let missed: HashSet<u64> = gone.iter().copied().chain(r.not_ready).collect();
        // Concurrently, so the embedded store commits them together and
        // Redis pipelines them: a shard that lost thousands of connections
        // is corrected in a few round trips, not one per session.
        let (logic, app, gate) = (&*self.logic, self.app, &self.gate);
        let gone_owners = self.owners.iter().filter(|o| gone.contains(&o.conn));
        futures_util::stream::iter(gone_owners)
            .for_each_concurrent(STALE_REMOVALS_IN_FLIGHT, |o| async move {
                let key = SessionKey {
                    gate_id: gate.gate_id.clone(),
                    shard: gate.shard,
                    conn: o.conn,
                };
                presence::drop_stale(logic, app, &o.uid, &key, o.epoch).await;
            })
            .await;
        let unreached = unreached(&self.owners, &missed);
        if unreached.is_empty() {
            return;
        }
        let app = self.app.to_string();
        let outcome = match &self.fallback {
            None => "dropped",
            Some(copy) => match copy
                .store_for(&self.logic, self.app, self.msgtype, &unreached)
                .await
            {
                Ok(()) => "stored",
                Err(e) => {
                    tracing::warn!(app = %self.app, targets = unreached.len(), "offline store of missed push: {e}");
                    "store_error"
                }
            },
        };
        metrics::counter!("tidegate_logic_push_missed_total", "app" => app, "outcome" => outcome)
            .increment(unreached.len() as u64);
    }
}

/// Users none of whose sessions got the push: every one of their sessions
/// is on this shard and each was missed.
fn unreached(owners: &[Owner], missed: &HashSet<u64>) -> Vec<String> {
    let mut reached: HashSet<&str> = HashSet::new();
    let mut candidates: Vec<&str> = Vec::new();
    for o in owners {
        if !o.only_shard || !missed.contains(&o.conn) {
            reached.insert(&o.uid);
        } else {
            candidates.push(&o.uid);
        }
    }
    // `reached` doubles as the set of users already listed, so a user with
    // several missed sessions is listed once, in first-seen order.
    let mut out: Vec<String> = Vec::new();
    for uid in candidates {
        if reached.insert(uid) {
            out.push(uid.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(gate: &str, shard: u32, conn: u64) -> SessionRecord {
        SessionRecord {
            gate_id: gate.into(),
            shard,
            conn,
            epoch: conn,
            device: "d".into(),
            platform: "android".into(),
            since_ms: 0,
            incarnation: 1,
        }
    }

    #[test]
    fn a_plan_groups_sessions_by_shard_in_target_order() {
        let mut plan = Plan::default();
        plan.add_target("a", vec![session("g", 0, 10), session("g", 1, 11)]);
        plan.add_target("b", vec![]);
        plan.add_target("c", vec![session("g", 0, 12), session("g", 0, 13)]);
        assert_eq!(plan.online(), 2);
        let conns = |p: usize| {
            plan.parts[p]
                .owners
                .iter()
                .map(|o| o.conn)
                .collect::<Vec<_>>()
        };
        assert_eq!(conns(0), vec![10, 12, 13]);
        assert_eq!(conns(1), vec![11]);
        assert_eq!(plan.targets, vec![vec![0, 1], vec![], vec![0]]);
        let only: Vec<bool> = plan.parts[0].owners.iter().map(|o| o.only_shard).collect();
        assert_eq!(
            only,
            vec![false, true, true],
            "a has a session on another shard"
        );
    }

    #[test]
    fn a_user_is_unreached_only_when_every_session_missed_the_push() {
        let mut plan = Plan::default();
        plan.add_target("multi", vec![session("g", 0, 1), session("g", 1, 2)]);
        plan.add_target("both", vec![session("g", 0, 3), session("g", 0, 4)]);
        plan.add_target("half", vec![session("g", 0, 5), session("g", 0, 6)]);
        plan.add_target("one", vec![session("g", 0, 7)]);
        plan.add_target("fine", vec![session("g", 0, 8)]);
        let missed: HashSet<u64> = [1, 3, 4, 5, 7].into_iter().collect();
        assert_eq!(
            unreached(&plan.parts[0].owners, &missed),
            vec!["both".to_string(), "one".to_string()]
        );
    }
}
