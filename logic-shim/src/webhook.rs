//! The c2s webhook (issue 6 item 4): an app that configures
//! `[[apps]] c2s_webhook` gets its c2s messages as batched JSON POSTs
//! instead of (or, with `also_stream`, as well as) the c2s stream.
//!
//! One task per app and logic instance owns a bounded queue: a message that
//! finds it full is refused (the client gets BUSY and may retry) and counted
//! as dropped, so a slow or dead receiver costs bounded memory. The task
//! sends a batch when `batch_max` messages are waiting or the first has
//! waited `batch_wait_ms`, retries a failed POST with exponential backoff,
//! and counts the batch as failed after `retries`. The queue is in memory:
//! delivery is at most once across a logic crash, and at least once across
//! retries (a POST that timed out may have been processed), so receivers
//! should tolerate duplicates.
//!
//! Body: `{"app": 1, "messages": [{"uid", "msgtype", "content_type",
//! "content" | "content_b64", "at_ms"}]}` (`content` when it is UTF-8).

use crate::config::WebhookConfig;
use crate::store::C2sEntry;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidegate_proto::{AppCode, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Retry delays double up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A message waiting for its POST.
struct Queued {
    msgtype: MsgType,
    entry: C2sEntry,
}

/// Counts of one app's webhook, in messages (also exported as metrics).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Accepted by the receiver (2xx).
    pub delivered: AtomicU64,
    /// Given up on after the retries, or refused with a permanent 4xx.
    pub failed: AtomicU64,
    /// Refused because the queue was full.
    pub dropped: AtomicU64,
    /// POST attempts retried (in requests, not messages).
    pub retries: AtomicU64,
}

/// The queue was full; the message was not taken.
#[derive(Debug, thiserror::Error)]
#[error("c2s webhook queue of app {0} is full")]
pub struct QueueFull(pub AppCode);

/// One app's webhook: the sending side of its queue.
pub struct Webhook {
    app: AppCode,
    tx: mpsc::Sender<Queued>,
    stats: Arc<WebhookStats>,
}

impl Webhook {
    /// Starts the app's delivery task on the current tokio runtime.
    pub fn start(app: AppCode, cfg: WebhookConfig) -> Result<Webhook, reqwest::Error> {
        let (tx, rx) = mpsc::channel(cfg.queue_max);
        let stats = Arc::new(WebhookStats::default());
        // Built without TLS (default features off): http:// only, which
        // config validation enforces.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()?;
        tokio::spawn(run(app, cfg, rx, stats.clone(), client));
        Ok(Webhook { app, tx, stats })
    }

    /// Queues one message; `QueueFull` (counted as dropped) if the queue is full.
    pub fn offer(&self, msgtype: MsgType, entry: C2sEntry) -> Result<(), QueueFull> {
        self.tx.try_send(Queued { msgtype, entry }).map_err(|_| {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tidegate_logic_webhook_dropped_total", "app" => self.app.to_string())
                    .increment(1);
            QueueFull(self.app)
        })
    }

    /// The counts so far.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }
}

/// Collects batches and delivers them until every sender is gone.
async fn run(
    app: AppCode,
    cfg: WebhookConfig,
    mut rx: mpsc::Receiver<Queued>,
    stats: Arc<WebhookStats>,
    client: reqwest::Client,
) {
    let wait = Duration::from_millis(cfg.batch_wait_ms);
    let mut batch = Vec::with_capacity(cfg.batch_max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = Instant::now() + wait;
        while batch.len() < cfg.batch_max {
            // `recv` is cancel-safe: a timeout never loses a message.
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => batch.push(m),
                Ok(None) | Err(_) => break,
            }
        }
        deliver(app, &cfg, &client, &stats, &batch).await;
        batch.clear();
    }
}

/// Why one POST did not succeed.
enum Attempt {
    /// Worth retrying: transport error, timeout, 408, 429, 5xx.
    Temporary(String),
    /// The receiver refused the batch itself (other 4xx): retrying repeats it.
    Permanent(String),
}

/// POSTs one batch with retries; counts the outcome.
async fn deliver(
    app: AppCode,
    cfg: &WebhookConfig,
    client: &reqwest::Client,
    stats: &WebhookStats,
    batch: &[Queued],
) {
    let label = app.to_string();
    let n = batch.len() as u64;
    let body = encode_batch(app, batch);
    let mut backoff = Duration::from_millis(cfg.backoff_ms);
    let mut attempt = 0;
    let why = loop {
        match post(client, &cfg.url, body.clone()).await {
            Ok(()) => {
                stats.delivered.fetch_add(n, Ordering::Relaxed);
                metrics::counter!("tidegate_logic_webhook_delivered_total", "app" => label)
                    .increment(n);
                return;
            }
            Err(Attempt::Permanent(why)) => break why,
            Err(Attempt::Temporary(why)) if attempt >= cfg.retries => break why,
            Err(Attempt::Temporary(why)) => {
                tracing::debug!(%app, attempt, "c2s webhook: {why}; retrying in {backoff:?}");
                attempt += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tidegate_logic_webhook_retries_total", "app" => label.clone())
                    .increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    tracing::warn!(%app, messages = n, "c2s webhook gave up on a batch: {why}");
    stats.failed.fetch_add(n, Ordering::Relaxed);
    metrics::counter!("tidegate_logic_webhook_failed_total", "app" => label).increment(n);
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), Attempt> {
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Attempt::Temporary(format!("POST {url}: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let why = format!("POST {url}: {status}");
    let temporary = status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    Err(if temporary {
        Attempt::Temporary(why)
    } else {
        Attempt::Permanent(why)
    })
}

/// The JSON body of one batch.
fn encode_batch(app: AppCode, batch: &[Queued]) -> Vec<u8> {
    let messages: Vec<Value> = batch
        .iter()
        .map(|q| {
            let e = &q.entry;
            let mut m = json!({
                "uid": e.uid,
                "msgtype": q.msgtype.0,
                "content_type": e.content_type,
                "at_ms": e.at_ms,
            });
            match std::str::from_utf8(&e.content) {
                Ok(text) => m["content"] = text.into(),
                Err(_) => {
                    m["content_b64"] = base64::engine::general_purpose::STANDARD
                        .encode(&e.content)
                        .into()
                }
            }
            m
        })
        .collect();
    serde_json::to_vec(&json!({"app": app.0, "messages": messages})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn batch_body_has_text_or_base64_content() {
        let q = |content: &'static [u8]| Queued {
            msgtype: MsgType(5),
            entry: C2sEntry {
                uid: "u".into(),
                content_type: "ct".into(),
                content: Bytes::from_static(content),
                at_ms: 9,
            },
        };
        let body: Value =
            serde_json::from_slice(&encode_batch(AppCode(3), &[q(b"hi"), q(&[0xff, 0])]))
                .expect("json");
        assert_eq!(body["app"], 3);
        assert_eq!(body["messages"][0]["content"], "hi");
        assert_eq!(body["messages"][0]["msgtype"], 5);
        assert_eq!(body["messages"][1]["content_b64"], "/wA=");
        assert!(body["messages"][1].get("content").is_none());
    }
}
