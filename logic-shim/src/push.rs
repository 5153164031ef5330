//! s2c push: find each target's sessions in presence, encode the S2C frame
//! once, and send one LINK_DELIVER per gate shard listing its connections.

use crate::store::StoreError;
use crate::Logic;
use bytes::Bytes;
use std::collections::HashMap;
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header, MsgType};

/// One push, already validated by the API layer.
pub struct Push {
    /// Tenant.
    pub app: AppCode,
    /// Business line.
    pub msgtype: MsgType,
    /// Target uids.
    pub to: Vec<String>,
    /// App-chosen content type.
    pub content_type: String,
    /// Opaque content.
    pub content: Bytes,
}

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Handed to at least one gate shard holding a session of the user.
    Delivered,
    /// No live session; nothing stored.
    Offline,
}

/// Per-target outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushResult {
    /// Target.
    pub uid: String,
    /// Outcome.
    pub status: Delivery,
}

/// The push's id and per-target outcomes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushOutcome {
    /// Server-assigned message id (the client's S2C_ACK names it).
    pub msg_id: String,
    /// One entry per target, in request order.
    pub results: Vec<PushResult>,
}

/// Delivers `push` to every online session of its targets.
pub async fn push(logic: &Logic, push: Push) -> Result<PushOutcome, StoreError> {
    let msg_id = logic.next_msg_id();
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

    // (gate, shard) -> connections, and each target's shards.
    let mut by_shard: HashMap<(String, u32), Vec<u64>> = HashMap::new();
    let mut targets: Vec<Vec<(String, u32)>> = Vec::with_capacity(push.to.len());
    for uid in &push.to {
        let sessions = logic.store.sessions(push.app, uid).await?;
        let shards = sessions
            .into_iter()
            .map(|s| {
                let key = (s.gate_id, s.shard);
                by_shard.entry(key.clone()).or_default().push(s.conn);
                key
            })
            .collect();
        targets.push(shards);
    }

    let mut sent: HashMap<(String, u32), bool> = HashMap::with_capacity(by_shard.len());
    for ((gate_id, shard), conns) in by_shard {
        let deliver = pb::LinkDeliver {
            conns,
            frame: frame.clone(),
        };
        let link_frame =
            Frame::encode_msg_to_bytes(Header::new(Cmd::LinkDeliver, push.app, 0), &deliver);
        let ok = logic.gates.send(&gate_id, shard, link_frame);
        sent.insert((gate_id, shard), ok);
    }

    let app = push.app.to_string();
    let results = push
        .to
        .into_iter()
        .zip(targets)
        .map(|(uid, shards)| {
            let status = if shards.iter().any(|k| sent.get(k) == Some(&true)) {
                Delivery::Delivered
            } else {
                Delivery::Offline
            };
            let label = match status {
                Delivery::Delivered => "delivered",
                Delivery::Offline => "offline",
            };
            metrics::counter!("tidegate_logic_push_targets_total", "app" => app.clone(), "status" => label)
                .increment(1);
            PushResult { uid, status }
        })
        .collect();
    Ok(PushOutcome { msg_id, results })
}
