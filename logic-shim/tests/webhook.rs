//! The c2s webhook against a real local HTTP receiver (axum on
//! 127.0.0.1:0): batching, retries with backoff, giving up, permanent
//! refusals, and the bounded queue's overflow.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidegate_logic::config::WebhookConfig;
use tidegate_logic::store::C2sEntry;
use tidegate_logic::webhook::Webhook;
use tidegate_proto::{AppCode, MsgType};

/// What the receiver does with request number n (0-based).
type Behaviour = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers (within any test's time).
    Hang,
}

#[derive(Clone)]
struct Receiver {
    requests: Arc<AtomicUsize>,
    /// Bodies answered 2xx.
    accepted: Arc<Mutex<Vec<Value>>>,
    behaviour: Behaviour,
}

impl Receiver {
    fn accepted_messages(&self) -> Vec<Value> {
        let bodies = self.accepted.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| b["messages"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

async fn handle(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    let n = r.requests.fetch_add(1, Ordering::SeqCst);
    match (r.behaviour)(n) {
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            if status.is_success() {
                r.accepted.lock().unwrap().push(body);
            }
            status
        }
    }
}

/// Starts a receiver; returns it and its URL.
async fn receiver(
    behaviour: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> (Receiver, String) {
    let r = Receiver {
        requests: Default::default(),
        accepted: Default::default(),
        behaviour: Arc::new(behaviour),
    };
    let app = Router::new()
        .route("/c2s", post(handle))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/c2s", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        batch_max: 10,
        batch_wait_ms: 20,
        queue_max: 1000,
        retries: 5,
        backoff_ms: 10,
        timeout_ms: 10_000,
        also_stream: false,
    }
}

fn entry(i: usize) -> C2sEntry {
    C2sEntry {
        uid: format!("u{i}"),
        content_type: "text/plain".into(),
        content: Bytes::from(format!("m{i}")),
        at_ms: i as u64,
    }
}

/// Polls `cond` for up to 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test]
async fn messages_arrive_in_order_as_batched_json_posts() {
    let (r, url) = receiver(|_| Reply::Status(200)).await;
    let hook = Webhook::start(AppCode(4), config(&url)).unwrap();
    for i in 0..25 {
        hook.offer(MsgType(5), entry(i)).unwrap();
    }
    eventually("25 delivered", || {
        hook.stats().delivered.load(Ordering::Relaxed) == 25
    })
    .await;
    let messages = r.accepted_messages();
    let uids: Vec<_> = messages.iter().map(|m| m["uid"].clone()).collect();
    let want: Vec<Value> = (0..25).map(|i| format!("u{i}").into()).collect();
    assert_eq!(uids, want);
    assert_eq!(messages[3]["content"], "m3");
    assert_eq!(messages[3]["msgtype"], 5);
    let bodies = r.accepted.lock().unwrap().clone();
    assert!(bodies.len() >= 3, "batch_max 10 splits 25 messages");
    assert!(bodies.iter().all(|b| b["app"] == 4));
    assert!(bodies
        .iter()
        .all(|b| b["messages"].as_array().unwrap().len() <= 10));
}

#[tokio::test]
async fn failed_posts_are_retried_until_accepted() {
    // 503 twice, then a 429, then accepted.
    let (r, url) = receiver(|n| Reply::Status([503, 503, 429, 200][n.min(3)])).await;
    let hook = Webhook::start(AppCode(4), config(&url)).unwrap();
    for i in 0..3 {
        hook.offer(MsgType(5), entry(i)).unwrap();
    }
    eventually("3 delivered", || {
        hook.stats().delivered.load(Ordering::Relaxed) == 3
    })
    .await;
    assert_eq!(hook.stats().retries.load(Ordering::Relaxed), 3);
    assert_eq!(hook.stats().failed.load(Ordering::Relaxed), 0);
    assert_eq!(r.accepted_messages().len(), 3, "each message once");
}

#[tokio::test]
async fn a_batch_fails_after_its_retries_and_the_next_one_still_goes() {
    let (r, url) = receiver(|n| Reply::Status(if n < 3 { 500 } else { 200 })).await;
    let mut cfg = config(&url);
    cfg.retries = 2;
    let hook = Webhook::start(AppCode(4), cfg).unwrap();
    hook.offer(MsgType(5), entry(0)).unwrap();
    eventually("first batch failed", || {
        hook.stats().failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(r.requests.load(Ordering::SeqCst), 3, "one try + 2 retries");
    hook.offer(MsgType(5), entry(1)).unwrap();
    eventually("second delivered", || {
        hook.stats().delivered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(r.accepted_messages()[0]["uid"], "u1");
}

#[tokio::test]
async fn a_permanent_refusal_is_not_retried() {
    let (r, url) = receiver(|_| Reply::Status(400)).await;
    let hook = Webhook::start(AppCode(4), config(&url)).unwrap();
    hook.offer(MsgType(5), entry(0)).unwrap();
    eventually("failed", || {
        hook.stats().failed.load(Ordering::Relaxed) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.requests.load(Ordering::SeqCst), 1);
    assert_eq!(hook.stats().retries.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_full_queue_refuses_and_counts_drops() {
    let (r, url) = receiver(|_| Reply::Hang).await;
    let mut cfg = config(&url);
    cfg.batch_max = 1;
    cfg.queue_max = 5;
    let hook = Webhook::start(AppCode(4), cfg).unwrap();
    // The first message leaves the queue for a POST that never ends...
    hook.offer(MsgType(5), entry(0)).unwrap();
    eventually("receiver busy", || r.requests.load(Ordering::SeqCst) == 1).await;
    // ...so exactly queue_max more fit.
    for i in 1..=5 {
        hook.offer(MsgType(5), entry(i)).unwrap();
    }
    for i in 6..9 {
        let full = hook.offer(MsgType(5), entry(i));
        assert!(full.is_err(), "message {i} should not fit");
    }
    assert_eq!(hook.stats().dropped.load(Ordering::Relaxed), 3);
    assert_eq!(hook.stats().delivered.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_unreachable_receiver_counts_as_failed() {
    // A port nothing listens on: bind, read the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://127.0.0.1:{port}/c2s"));
    cfg.retries = 1;
    let hook = Webhook::start(AppCode(4), cfg).unwrap();
    hook.offer(MsgType(5), entry(0)).unwrap();
    eventually("failed", || {
        hook.stats().failed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(hook.stats().retries.load(Ordering::Relaxed), 1);
}
