//! s2c push: find each target's sessions in presence (pipelined, a batch
//! per round trip), encode the S2C frame once, and send one LINK_DELIVER per
//! gate shard listing its connections (`deliver`, which also handles the
//! sessions a gate turns out not to hold). A push to every online user of an
//! app never reads presence: it sends one LINK_BROADCAST to every linked
//! gate shard, and each shard walks its own session table.

use crate::deliver::{self, OfflineCopy, Outgoing, Plan};
use crate::gates::ShardAddr;
use crate::reach::Stage;
use crate::store::timing::Op;
use crate::store::{InboxMessage, StoreError};
use crate::Logic;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header, MsgType, HEADER_LEN};

/// Users whose presence one store round trip reads.
const PRESENCE_BATCH: usize = 1000;
/// How long a broadcast waits for each gate shard's count.
const BROADCAST_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Who a push is for.
pub enum Audience {
    /// These uids (validated: 1 to `max_push_targets`).
    Users(Vec<String>),
    /// Every online user of the app.
    All,
}

/// One push, already validated by the API layer.
pub struct Push {
    /// Tenant.
    pub app: AppCode,
    /// Business line.
    pub msgtype: MsgType,
    /// Targets.
    pub to: Audience,
    /// App-chosen content type.
    pub content_type: String,
    /// Opaque content.
    pub content: Bytes,
    /// Keep the push for targets with no live session (list pushes only).
    pub store_if_offline: Option<OfflineStorage>,
}

/// How long a push stored for offline targets is kept.
#[derive(Debug, Clone, Copy)]
pub struct OfflineStorage {
    /// Lifetime in the inbox.
    pub ttl: Duration,
}

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Handed to at least one gate shard holding a session of the user.
    Delivered,
    /// No live session; kept in the user's offline inbox.
    Stored,
    /// No live session; nothing stored.
    Offline,
}

impl Delivery {
    /// The JSON / protobuf status string.
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Stored => "stored",
            Delivery::Offline => "offline",
        }
    }
}

/// Per-target outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushResult {
    /// Target.
    pub uid: String,
    /// Outcome.
    pub status: Delivery,
}

/// A broadcast's outcome on one gate shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateResult {
    /// Gate process id.
    pub gate_id: String,
    /// Shard index.
    pub shard: u32,
    /// `sent` (the shard answered), `unreachable` (link down or full) or
    /// `timeout` (no answer in time; it may still deliver).
    pub status: &'static str,
    /// Sessions the shard queued the frame to.
    pub delivered: u64,
}

/// The push's id and outcomes: per target for a list, per gate shard for
/// a broadcast.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushOutcome {
    /// Server-assigned message id (the client's S2C_ACK names it).
    pub msg_id: String,
    /// One entry per target, in request order (list pushes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<PushResult>>,
    /// One entry per linked gate shard (broadcasts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<GateResult>>,
    /// Broadcasts: sessions reached over all shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
}

impl PushOutcome {
    /// The protobuf form of the response.
    pub fn to_pb(&self) -> pb::PushResponse {
        pb::PushResponse {
            msg_id: self.msg_id.clone(),
            results: self
                .results
                .iter()
                .flatten()
                .map(|r| pb::PushTargetResult {
                    uid: r.uid.clone(),
                    status: r.status.name().into(),
                })
                .collect(),
            gates: self
                .gates
                .iter()
                .flatten()
                .map(|g| pb::PushGateResult {
                    gate_id: g.gate_id.clone(),
                    shard: g.shard,
                    status: g.status.into(),
                    delivered: g.delivered,
                })
                .collect(),
        }
    }
}

/// Delivers `push` to every online session of its targets.
pub async fn push(logic: &Arc<Logic>, push: Push) -> Result<PushOutcome, StoreError> {
    let msg_id = logic.next_msg_id(push.msgtype);
    let body = pb::Push {
        msg_id: msg_id.clone(),
        content_type: push.content_type,
        content: push.content,
        sent_at_ms: tidegate_proto::now_ms(),
    };
    let mut header = Header::new(Cmd::S2c, push.app, 0);
    header.msgtype = push.msgtype;
    // Encoded once; every delivery shares these bytes.
    let frame = Frame::encode_msg_to_bytes(header, &body);
    match push.to {
        Audience::Users(uids) => {
            let fallback = push.store_if_offline.map(|storage| {
                Arc::new(offline_copy(logic, push.app, push.msgtype, &frame, storage))
            });
            let out = Outgoing {
                app: push.app,
                msgtype: push.msgtype,
                frame,
                fallback,
            };
            to_users(logic, out, uids, msg_id).await
        }
        Audience::All => Ok(broadcast(logic, push.app, push.msgtype, frame, msg_id).await),
    }
}

/// The inbox copy of a push: the Push body inside the S2C frame, stored as
/// it would go out live.
fn offline_copy(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    frame: &Bytes,
    storage: OfflineStorage,
) -> OfflineCopy {
    let message = InboxMessage {
        msgtype,
        expires_ms: tidegate_proto::now_ms()
            .saturating_add(u64::try_from(storage.ttl.as_millis()).unwrap_or(u64::MAX)),
        push: frame.slice(HEADER_LEN..),
    };
    let max_len = logic
        .app(app)
        .and_then(|a| a.offline_max_len)
        .unwrap_or(logic.cfg.offline_max_len);
    OfflineCopy { message, max_len }
}

async fn to_users(
    logic: &Arc<Logic>,
    push: Outgoing,
    uids: Vec<String>,
    msg_id: String,
) -> Result<PushOutcome, StoreError> {
    let (app, msgtype) = (push.app, push.msgtype);
    let mut plan = Plan::default();
    for batch in uids.chunks(PRESENCE_BATCH) {
        let found = logic
            .store_timings
            .time(Op::SessionsMany, logic.store.sessions_many(app, batch))
            .await?;
        for (uid, sessions) in batch.iter().zip(found) {
            plan.add_target(uid, sessions);
        }
    }
    let online = plan.online();
    let sent = deliver::deliver(logic, &push, plan);

    let mut results: Vec<PushResult> = uids
        .into_iter()
        .zip(sent)
        .map(|(uid, sent)| PushResult {
            uid,
            status: if sent {
                Delivery::Delivered
            } else {
                Delivery::Offline
            },
        })
        .collect();
    if let Some(copy) = &push.fallback {
        store_offline(logic, app, msgtype, copy, &mut results).await;
    }
    let label = app.to_string();
    for status in [Delivery::Delivered, Delivery::Stored, Delivery::Offline] {
        let n = results.iter().filter(|r| r.status == status).count() as u64;
        // A registry lookup (labels formatted and hashed) only for a count
        // that moves: most pushes have one status.
        if n > 0 {
            metrics::counter!("tidegate_logic_push_targets_total", "app" => label.clone(), "status" => status.name())
                .increment(n);
        }
    }
    logic
        .reach
        .add(app, msgtype, Stage::Sent, results.len() as u64);
    logic.reach.add(app, msgtype, Stage::Online, online);
    Ok(PushOutcome {
        msg_id,
        results: Some(results),
        gates: None,
        delivered: None,
    })
}

/// Puts the push into the inbox of every target that was not delivered, and
/// marks them `stored`. If the store fails they stay `offline` (the response
/// says what happened; the app-server may retry), and the failure is counted.
async fn store_offline(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    copy: &OfflineCopy,
    results: &mut [PushResult],
) {
    let offline: Vec<String> = results
        .iter()
        .filter(|r| r.status == Delivery::Offline)
        .map(|r| r.uid.clone())
        .collect();
    if offline.is_empty() {
        return;
    }
    match copy.store_for(logic, app, msgtype, &offline).await {
        Ok(()) => {
            for r in results.iter_mut().filter(|r| r.status == Delivery::Offline) {
                r.status = Delivery::Stored;
            }
        }
        Err(e) => {
            tracing::warn!(app = %app, targets = offline.len(), "offline store: {e}");
            metrics::counter!("tidegate_logic_offline_store_failures_total", "app" => app.to_string())
                .increment(offline.len() as u64);
        }
    }
}

/// One LINK_BROADCAST per linked gate shard, then their counts (waiting at
/// most [`BROADCAST_REPLY_TIMEOUT`] for all of them together).
async fn broadcast(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    frame: Bytes,
    msg_id: String,
) -> PushOutcome {
    let body = pb::LinkBroadcast { frame };
    let mut waiting = Vec::new();
    let mut gates = Vec::new();
    for addr in logic.gates.linked() {
        let make = |seq| {
            let mut h = Header::new(Cmd::LinkBroadcast, app, seq);
            h.msgtype = msgtype;
            Frame::encode_msg_to_bytes(h, &body)
        };
        match logic.gates.request(&addr, None, make) {
            Some(pending) => waiting.push((addr, pending)),
            None => gates.push(gate_result(addr, "unreachable", 0)),
        }
    }
    let deadline = tokio::time::Instant::now() + BROADCAST_REPLY_TIMEOUT;
    for (addr, (seq, rx)) in waiting {
        let reply = tokio::time::timeout_at(deadline, rx).await;
        let counted = match reply {
            Ok(Ok(f)) => f.decode_body::<pb::LinkBroadcastReply>().ok(),
            _ => None,
        };
        match counted {
            Some(r) => gates.push(gate_result(addr, "sent", r.delivered)),
            None => {
                logic.gates.forget(seq);
                gates.push(gate_result(addr, "timeout", 0));
            }
        }
    }
    gates.sort_by(|a, b| (&a.gate_id, a.shard).cmp(&(&b.gate_id, b.shard)));
    let total = gates.iter().map(|g| g.delivered).sum();
    // A broadcast has no target list: every reached session counts as a
    // target that was online and written.
    for stage in [Stage::Sent, Stage::Online, Stage::Written] {
        logic.reach.add(app, msgtype, stage, total);
    }
    metrics::counter!("tidegate_logic_broadcasts_total", "app" => app.to_string()).increment(1);
    PushOutcome {
        msg_id,
        results: None,
        gates: Some(gates),
        delivered: Some(total),
    }
}

fn gate_result(addr: ShardAddr, status: &'static str, delivered: u64) -> GateResult {
    GateResult {
        gate_id: addr.gate_id,
        shard: addr.shard,
        status,
        delivered,
    }
}
