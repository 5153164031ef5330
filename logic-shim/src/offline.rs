//! The client side of offline inboxes (ARCHITECTURE §4 offline): after
//! login a client pages through its inbox with OFFLINE_PULL(after, limit)
//! and deletes what it has handled with OFFLINE_ACK(up_to). Both arrive as
//! LINK_FORWARD; the answer is a client frame the gate queues to the
//! connection. A lost ack only makes the next pull return messages again,
//! which the client drops by msg_id.

use crate::store::{InboxPage, StoreError, StreamId};
use crate::Logic;
use bytes::Bytes;
use tidegate_proto::prost::Message;
use tidegate_proto::{pb, AppCode, Cmd, ErrorCode, Frame, Header, MsgType};

/// Answers one forwarded client request.
pub async fn forward(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    req: pb::LinkForward,
) -> pb::LinkForwardReply {
    let cmd = u16::try_from(req.cmd).ok().and_then(Cmd::from_u16);
    let mut client = Header::new(cmd.unwrap_or(Cmd::Error), app, req.seq);
    client.msgtype = msgtype;
    let result = match cmd {
        Some(Cmd::OfflinePull) => pull(logic, app, &req, &client).await,
        Some(Cmd::OfflineAck) => ack(logic, app, &req, &client).await,
        _ => Err(Refusal::new(
            ErrorCode::UnknownCmd,
            format!("command {:#06x} is not forwarded to logic", req.cmd),
        )),
    };
    let (label, frame) = match result {
        Ok(frame) => ("ok", frame),
        Err(r) => (
            r.code.name(),
            Frame::error_reply(&client, r.code, &r.message),
        ),
    };
    let name = cmd.map_or("unknown", Cmd::name);
    metrics::counter!("tidegate_logic_offline_requests_total", "cmd" => name, "result" => label)
        .increment(1);
    pb::LinkForwardReply {
        conn: req.conn,
        frame,
    }
}

/// Why a request was refused: the ERROR frame's code and message.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        tracing::warn!("offline inbox: {e}");
        match e {
            StoreError::BadInput(m) => Refusal::new(ErrorCode::BadBody, m),
            _ => Refusal::new(ErrorCode::Unavailable, "offline inbox unavailable; retry"),
        }
    }
}

async fn pull(
    logic: &Logic,
    app: AppCode,
    req: &pb::LinkForward,
    client: &Header,
) -> Result<Bytes, Refusal> {
    let pull = pb::OfflinePull::decode(req.body.clone())
        .map_err(|e| Refusal::new(ErrorCode::BadBody, format!("OfflinePull: {e}")))?;
    let after = cursor(&pull.after)?;
    let max = logic.cfg.offline_pull_max;
    let limit = if pull.limit == 0 {
        max
    } else {
        pull.limit.min(max)
    };
    let page = logic
        .store
        .read_offline(app, &req.uid, after, limit as usize)
        .await?;
    let batch = to_batch(page, after)?;
    let mut h = client.reply();
    h.cmd = Cmd::OfflineBatch;
    Ok(Frame::encode_msg_to_bytes(h, &batch))
}

async fn ack(
    logic: &Logic,
    app: AppCode,
    req: &pb::LinkForward,
    client: &Header,
) -> Result<Bytes, Refusal> {
    let ack = pb::OfflineAck::decode(req.body.clone())
        .map_err(|e| Refusal::new(ErrorCode::BadBody, format!("OfflineAck: {e}")))?;
    let up_to = cursor(&ack.up_to)?
        .ok_or_else(|| Refusal::new(ErrorCode::BadBody, "OfflineAck.up_to is empty"))?;
    let removed = logic.store.ack_offline(app, &req.uid, up_to).await?;
    metrics::counter!("tidegate_logic_offline_acked_total").increment(removed);
    Ok(if req.ack_requested {
        Frame::empty(client.reply()).to_bytes()
    } else {
        Bytes::new()
    })
}

/// A client cursor: empty = from the start, else `<ms>-<seq>`.
fn cursor(text: &str) -> Result<Option<StreamId>, Refusal> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e: StoreError| Refusal::new(ErrorCode::BadBody, e.to_string()))
}

/// The OFFLINE_BATCH of a page; its cursor stays `after` when the page
/// covered nothing, so a client can always pass it back.
fn to_batch(page: InboxPage, after: Option<StreamId>) -> Result<pb::OfflineBatch, Refusal> {
    let messages = page
        .entries
        .into_iter()
        .map(|e| {
            let push = pb::Push::decode(e.message.push).map_err(|err| {
                tracing::warn!(id = %e.id, "offline inbox entry is not a Push: {err}");
                Refusal::new(ErrorCode::Internal, "offline inbox entry is corrupt")
            })?;
            Ok(pb::OfflineMessage {
                id: e.id.to_string(),
                msgtype: u32::from(e.message.msgtype.0),
                push: Some(push),
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    Ok(pb::OfflineBatch {
        messages,
        cursor: page
            .cursor
            .or(after)
            .map_or_else(String::new, |c| c.to_string()),
        more: page.more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_or_refuse() {
        assert_eq!(cursor("").ok().flatten(), None);
        assert_eq!(
            cursor("17-3").ok().flatten(),
            Some(StreamId { ms: 17, seq: 3 })
        );
        for bad in ["x", "1-x", "-", "1-2-3"] {
            assert!(cursor(bad).is_err(), "{bad}");
        }
    }
}
