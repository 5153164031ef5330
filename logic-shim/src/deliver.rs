//! A list push's LINK_DELIVERs and the gate shards' answers: which targets
//! the frame was queued for, and which sessions presence still lists but
//! the gate no longer holds (ARCHITECTURE §5 case 2: the gate lost the
//! socket and its close never reached the store). Those targets count as
//! not delivered, so the push can go to their inbox, and the caller removes
//! the stale sessions, fenced by their epochs.

use crate::gates::ShardAddr;
use crate::store::{SessionKey, SessionRecord};
use crate::Logic;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tidegate_proto::{pb, AppCode, Cmd, Flags, Frame, Header, MsgType};

/// One gate process's shard: where a LINK_DELIVER goes. Connection ids are
/// only meaningful to the incarnation that issued them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ShardOf {
    addr: ShardAddr,
    incarnation: u64,
}

/// The connections one LINK_DELIVER lists.
struct ShardPart {
    to: ShardOf,
    conns: Vec<u64>,
}

/// One session of a target, placed in its shard's part.
struct Placed {
    part: usize,
    conn: u64,
    epoch: u64,
}

/// The sessions of a push's targets, grouped by the gate shard holding them.
#[derive(Default)]
pub struct Plan {
    parts: Vec<ShardPart>,
    index: HashMap<ShardOf, usize>,
    /// Per target, in request order: where each of its sessions lives.
    targets: Vec<Vec<Placed>>,
}

impl Plan {
    /// Adds the next target with its live sessions (none: offline).
    pub fn add_target(&mut self, sessions: Vec<SessionRecord>) {
        let placed = sessions
            .into_iter()
            .map(|s| {
                let to = ShardOf {
                    addr: ShardAddr {
                        gate_id: s.gate_id,
                        shard: s.shard,
                    },
                    incarnation: s.incarnation,
                };
                let part = *self.index.entry(to.clone()).or_insert_with(|| {
                    self.parts.push(ShardPart {
                        to,
                        conns: Vec::new(),
                    });
                    self.parts.len() - 1
                });
                self.parts[part].conns.push(s.conn);
                Placed {
                    part,
                    conn: s.conn,
                    epoch: s.epoch,
                }
            })
            .collect();
        self.targets.push(placed);
    }

    /// Targets with at least one live session in presence.
    pub fn online(&self) -> u64 {
        self.targets.iter().filter(|t| !t.is_empty()).count() as u64
    }
}

/// What one shard said about its LINK_DELIVER.
enum Answer {
    /// Not linked, another incarnation linked, or its queue was full.
    Unsent,
    /// Queued, but no answer within `logic.deliver_confirm_ms`. The shard
    /// has the frame, so its sessions count as reached: storing the push
    /// offline as well could deliver it twice.
    Silent,
    /// The shard's answer: the listed connections it did not queue to, and
    /// which of those it no longer holds at all.
    Confirmed {
        missed: HashSet<u64>,
        gone: HashSet<u64>,
    },
}

impl Answer {
    fn reached(&self, conn: u64) -> bool {
        match self {
            Answer::Unsent => false,
            Answer::Silent => true,
            Answer::Confirmed { missed, .. } => !missed.contains(&conn),
        }
    }

    fn gone(&self, conn: u64) -> bool {
        matches!(self, Answer::Confirmed { gone, .. } if gone.contains(&conn))
    }
}

/// A session presence lists but its gate no longer holds.
pub struct StaleSession {
    /// Index of its target in the push's list.
    pub target: usize,
    /// Where presence says it lives.
    pub key: SessionKey,
    /// Its fencing epoch: only this login's record is removed.
    pub epoch: u64,
}

/// The outcome of a list push's deliveries.
pub struct Reached {
    /// Per target, in request order: queued to at least one of its sessions.
    pub targets: Vec<bool>,
    /// Sessions to remove from presence.
    pub stale: Vec<StaleSession>,
}

/// Sends `frame` (an encoded S2C) as one LINK_DELIVER per gate shard of
/// `plan`, each asking for a confirmation, and waits for them all together
/// for at most `logic.deliver_confirm_ms`.
pub async fn deliver(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    frame: &Bytes,
    plan: Plan,
) -> Reached {
    let mut waiting = Vec::with_capacity(plan.parts.len());
    for part in &plan.parts {
        let deliver = pb::LinkDeliver {
            conns: part.conns.clone(),
            frame: frame.clone(),
            incarnation: part.to.incarnation,
        };
        // The header's msgtype lets the link count the answer's "written"
        // reach figure without any state, even after we stop waiting.
        let make = |seq| {
            let mut h = Header::new(Cmd::LinkDeliver, app, seq);
            h.msgtype = msgtype;
            h.flags = Flags::ACK_REQUESTED;
            Frame::encode_msg_to_bytes(h, &deliver)
        };
        let incarnation = Some(part.to.incarnation);
        waiting.push(logic.gates.request(&part.to.addr, incarnation, make));
    }

    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(logic.cfg.deliver_confirm_ms);
    let mut answers = Vec::with_capacity(waiting.len());
    for pending in waiting {
        let answer = match pending {
            None => Answer::Unsent,
            Some((seq, rx)) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(reply)) => confirmed(&reply),
                _ => {
                    logic.gates.forget(seq);
                    metrics::counter!("tidegate_logic_deliver_unconfirmed_total").increment(1);
                    Answer::Silent
                }
            },
        };
        answers.push(answer);
    }

    let mut stale = Vec::new();
    let targets = plan
        .targets
        .iter()
        .enumerate()
        .map(|(target, sessions)| {
            let mut reached = false;
            for s in sessions {
                let part = &plan.parts[s.part];
                reached |= answers[s.part].reached(s.conn);
                if answers[s.part].gone(s.conn) {
                    stale.push(StaleSession {
                        target,
                        key: SessionKey {
                            gate_id: part.to.addr.gate_id.clone(),
                            shard: part.to.addr.shard,
                            conn: s.conn,
                        },
                        epoch: s.epoch,
                    });
                }
            }
            reached
        })
        .collect();
    Reached { targets, stale }
}

/// A shard's LinkDeliverReply. One that does not decode counts as silent:
/// the shard got the frame, what it did with it is unknown.
fn confirmed(reply: &Frame) -> Answer {
    match reply.decode_body::<pb::LinkDeliverReply>() {
        Ok(r) => Answer::Confirmed {
            gone: r.gone.iter().copied().collect(),
            missed: r.gone.into_iter().chain(r.not_ready).collect(),
        },
        Err(_) => Answer::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(gate: &str, shard: u32, conn: u64, epoch: u64) -> SessionRecord {
        SessionRecord {
            gate_id: gate.into(),
            shard,
            conn,
            epoch,
            device: "d".into(),
            platform: "android".into(),
            since_ms: 0,
            incarnation: 1,
        }
    }

    #[test]
    fn a_plan_groups_sessions_by_shard_in_target_order() {
        let mut plan = Plan::default();
        plan.add_target(vec![session("g", 0, 10, 1), session("g", 1, 11, 2)]);
        plan.add_target(vec![]);
        plan.add_target(vec![session("g", 0, 12, 3)]);
        assert_eq!(plan.online(), 2);
        assert_eq!(plan.parts.len(), 2);
        assert_eq!(plan.parts[0].conns, vec![10, 12]);
        assert_eq!(plan.parts[1].conns, vec![11]);
    }

    #[test]
    fn gone_and_not_ready_connections_are_missed_but_only_gone_ones_are_stale() {
        let reply = pb::LinkDeliverReply {
            delivered: 1,
            stale: 2,
            gone: vec![10],
            not_ready: vec![11],
        };
        let h = Header::new(Cmd::LinkDeliver, AppCode(1), 5).reply();
        let answer = confirmed(&Frame::new(h, &reply));
        assert!(!answer.reached(10) && answer.gone(10));
        assert!(!answer.reached(11) && !answer.gone(11));
        assert!(answer.reached(12) && !answer.gone(12));
        assert!(Answer::Silent.reached(10) && !Answer::Silent.gone(10));
        assert!(!Answer::Unsent.reached(10));
    }
}
