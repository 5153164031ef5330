//! The c2s bus: a device's C2S payload appended to its app's stream
//! (`c2s:<app>:<msgtype>` on Redis, the same log on the embedded store), or
//! queued for the app's webhook (`webhook.rs`) when it configures one.
//!
//! Each gate link's C2S frames are ingested in batches: one store call per
//! batch (one transaction and one fsync on the embedded store, one
//! pipelined round trip on Redis), so the store's per-call cost is shared
//! by every frame that arrived while the previous batch was being stored.
//! Batches size themselves: an idle link stores each frame at once.
//! Measured (1,000 clients × 16 in flight, embedded): one frame per store
//! call, at most 128 calls in flight over two gate shards, 28,717 frames/s;
//! batched, 147,964.

use crate::store::timing::Op;
use crate::store::{C2sAppend, C2sEntry, StoreError};
use crate::Logic;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidegate_proto::prost::Message;
use tidegate_proto::{pb, ErrorCode, Frame, Header};
use tokio::sync::mpsc;

/// Most frames ingested in one store call; bounds one batch's latency.
pub const BATCH_MAX: usize = 4096;

/// Ingests one link's C2S frames in arrival order, a batch per store call,
/// and queues each reply to `replies`. Ends when the link's reader drops
/// its sender, or with an error on a body that is not a `LinkC2s`.
pub async fn pipeline(
    logic: Arc<Logic>,
    mut frames: mpsc::Receiver<Frame>,
    replies: mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while frames.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let forwarded = batch
            .drain(..)
            .map(|f| Ok((f.header, f.decode_body::<pb::LinkC2s>()?)))
            .collect::<Result<Vec<_>, tidegate_proto::DecodeError>>()?;
        // The batch's replies leave as one buffer: one queue hand-off, and
        // the link writer copies it once.
        let mut out = BytesMut::new();
        for (header, reply) in ingest(&logic, forwarded).await {
            Frame::encode_msg(header.reply(), &reply, &mut out);
        }
        replies.send(out.freeze()).await?;
    }
    Ok(())
}

/// Appends a batch of forwarded C2S, in order, and builds each gate reply.
pub async fn ingest(
    logic: &Logic,
    forwarded: Vec<(Header, pb::LinkC2s)>,
) -> Vec<(Header, pb::LinkC2sReply)> {
    let mut appends = Vec::new();
    // One receive time for the batch: it arrived together.
    let at_ms = tidegate_proto::now_ms();
    let plans: Vec<_> = forwarded
        .iter()
        .map(|(h, req)| plan(logic, h, req, at_ms, &mut appends))
        .collect();
    let mut failed: Vec<Option<StoreError>> = if appends.is_empty() {
        Vec::new()
    } else {
        let stored = logic
            .store_timings
            .time(Op::AppendC2sMany, logic.store.append_c2s_many(&appends))
            .await;
        stored.into_iter().map(Result::err).collect()
    };
    let mut results: BTreeMap<&'static str, u64> = BTreeMap::new();
    let replies = forwarded
        .into_iter()
        .zip(plans)
        .map(|((h, req), plan)| {
            let outcome = plan.and_then(|p| {
                if let Some(e) = p.slot.and_then(|i| failed[i].take()) {
                    tracing::warn!("c2s append: {e}");
                    return Err((
                        ErrorCode::Unavailable,
                        "c2s bus unavailable; retry".to_string(),
                    ));
                }
                // Stream first: if it failed the client retries before
                // anything reached the webhook queue.
                match (logic.webhook(h.appcode), p.for_webhook) {
                    (Some(hook), Some(entry)) => hook
                        .offer(h.msgtype, entry)
                        .map_err(|e| (ErrorCode::Busy, format!("{e}; retry later"))),
                    _ => Ok(()),
                }
            });
            let error = outcome.err().map(|(code, message)| pb::Error {
                code: code.code(),
                message,
            });
            let result = error
                .as_ref()
                .and_then(|e| ErrorCode::from_u32(e.code))
                .map_or("ok", |c| c.name());
            *results.entry(result).or_default() += 1;
            let reply = pb::LinkC2sReply {
                conn: req.conn,
                client_seq: req.client_seq,
                error,
                ack_requested: req.ack_requested,
            };
            (h, reply)
        })
        .collect();
    for (result, n) in results {
        metrics::counter!("tidegate_logic_c2s_total", "result" => result).increment(n);
    }
    replies
}

/// Why a C2S was not taken: the code and message the client gets.
type Refusal = (ErrorCode, String);

/// Where an accepted C2S goes.
struct Plan {
    /// Its index in the batch's stream appends, if it goes on the stream.
    slot: Option<usize>,
    /// The entry, if the app's webhook takes it too.
    for_webhook: Option<C2sEntry>,
}

/// Checks one C2S and queues its stream append onto `appends`.
fn plan(
    logic: &Logic,
    h: &Header,
    req: &pb::LinkC2s,
    at_ms: u64,
    appends: &mut Vec<C2sAppend>,
) -> Result<Plan, Refusal> {
    let cfg = logic
        .app(h.appcode)
        .ok_or((ErrorCode::UnknownApp, format!("unknown app {}", h.appcode)))?;
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
        at_ms,
    };
    let hooked = logic.webhook(h.appcode).is_some();
    let also_stream = cfg.c2s_webhook.as_ref().is_some_and(|w| w.also_stream);
    let (to_stream, for_webhook) = match (hooked, also_stream) {
        (false, _) => (Some(entry), None),
        (true, true) => (Some(entry.clone()), Some(entry)),
        (true, false) => (None, Some(entry)),
    };
    let slot = to_stream.map(|entry| {
        appends.push(C2sAppend {
            app: h.appcode,
            msgtype: h.msgtype,
            entry,
            max_len: cfg.c2s_max_len.unwrap_or(logic.cfg.c2s_max_len),
        });
        appends.len() - 1
    });
    Ok(Plan { slot, for_webhook })
}
