//! The c2s bus: a device's C2S payload appended to its app's stream
//! (`c2s:<app>:<msgtype>` on Redis, the same log on the embedded store), or
//! queued for the app's webhook (`webhook.rs`) when it configures one.

use crate::store::C2sEntry;
use crate::Logic;
use tidegate_proto::prost::Message;
use tidegate_proto::{pb, AppCode, ErrorCode, MsgType};

/// Appends a forwarded C2S and builds the gate's reply.
pub async fn ingest(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    req: pb::LinkC2s,
) -> pb::LinkC2sReply {
    let error = match append(logic, app, msgtype, &req).await {
        Ok(()) => None,
        Err((code, message)) => Some(pb::Error {
            code: code.code(),
            message,
        }),
    };
    let result = error
        .as_ref()
        .and_then(|e| ErrorCode::from_u32(e.code))
        .map_or("ok", |c| c.name());
    metrics::counter!("tidegate_logic_c2s_total", "result" => result).increment(1);
    pb::LinkC2sReply {
        conn: req.conn,
        client_seq: req.client_seq,
        error,
        ack_requested: req.ack_requested,
    }
}

async fn append(
    logic: &Logic,
    app: AppCode,
    msgtype: MsgType,
    req: &pb::LinkC2s,
) -> Result<(), (ErrorCode, String)> {
    let cfg = logic
        .app(app)
        .ok_or((ErrorCode::UnknownApp, format!("unknown app {app}")))?;
    let payload = pb::Payload::decode(req.payload.clone()).map_err(|e| {
        (
            ErrorCode::BadBody,
            format!("C2S body is not a Payload: {e}"),
        )
    })?;
    let entry = C2sEntry {
        uid: req.uid.clone(),
        content_type: payload.content_type,
        content: payload.content,
        at_ms: tidegate_proto::now_ms(),
    };
    let hook = logic.webhook(app);
    if hook.is_none() || cfg.c2s_webhook.as_ref().is_some_and(|h| h.also_stream) {
        // Stream first: if it fails the client retries before anything
        // reached the webhook queue.
        let max_len = cfg.c2s_max_len.unwrap_or(logic.cfg.c2s_max_len);
        logic
            .store
            .append_c2s(app, msgtype, &entry, max_len)
            .await
            .map_err(|e| {
                tracing::warn!("c2s append: {e}");
                (
                    ErrorCode::Unavailable,
                    "c2s bus unavailable; retry".to_string(),
                )
            })?;
    }
    if let Some(hook) = hook {
        hook.offer(msgtype, entry)
            .map_err(|e| (ErrorCode::Busy, format!("{e}; retry later")))?;
    }
    Ok(())
}
