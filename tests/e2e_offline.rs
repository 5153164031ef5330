//! End-to-end for offline storage through the real `tidegate up` binary, on
//! the embedded store and on a real redis-server: `store_if_offline` pushes
//! land in the inbox (`stored`), the client pulls them after login with
//! OFFLINE_PULL, pages with the cursor and deletes with OFFLINE_ACK; `ttl_s`
//! expires them, the per-app length bound evicts the oldest, and the CLI
//! client prints them. Bad options are 400s with JSON bodies.

mod common;

use common::{get_json, post_json, statuses, token, Backend, Tidegate, BIN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tidegate_logic::testkit::RedisServer;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// The dev app with a 3-message inbox bound, and a 1-hour ttl ceiling.
const CONFIG: &str = r#"
[logic]
offline_max_ttl_s = 3600
offline_ttl_s = 600

[[apps]]
code = 1
secrets = ["tidegate-dev-secret-app-1"]
api_key = "tidegate-dev-api-key-app-1"
offline_max_len = 3
"#;

async fn push(tg: &Tidegate, body: Value) -> (u16, Value) {
    post_json(&tg.url("/v1/push"), &body).await
}

async fn stored_then_pulled_acked_and_gone(tg: &Tidegate) {
    let mut alice = tg.logged_in("alice").await;
    let (status, body) = push(
        tg,
        json!({"app": 1, "msgtype": 4, "to": ["alice", "bob"], "content": "order 1",
               "content_type": "text/plain", "store_if_offline": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&body), ["delivered", "stored"]);
    let live = timeout(WAIT, alice.recv_push()).await.unwrap().unwrap();
    assert_eq!(&live.content[..], b"order 1");
    // Without the option an offline target is only reported.
    let (_, body) = push(tg, json!({"app": 1, "to": "bob", "content": "lost"})).await;
    assert_eq!(statuses(&body), ["offline"]);
    let (_, second) = push(
        tg,
        json!({"app": 1, "msgtype": 5, "to": "bob", "content": "order 2", "store_if_offline": true}),
    )
    .await;
    assert_eq!(statuses(&second), ["stored"]);

    let mut bob = tg.logged_in("bob").await;
    let page = bob.pull_offline("", 1).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(page.more);
    let m = &page.messages[0];
    let p = m.push.as_ref().unwrap();
    assert_eq!((m.msgtype, &p.content[..]), (4, &b"order 1"[..]));
    assert_eq!(p.content_type, "text/plain");
    assert_eq!(
        p.msg_id, live.msg_id,
        "one push, one msg id, live or stored"
    );
    let rest = bob.pull_offline(&page.cursor, 0).await.unwrap();
    assert_eq!(rest.messages.len(), 1);
    assert!(!rest.more);
    let p2 = rest.messages[0].push.as_ref().unwrap();
    assert_eq!(p2.msg_id, second["msg_id"].as_str().unwrap());
    assert_eq!(&p2.content[..], b"order 2");

    // A pull does not delete; an ack does, up to the cursor.
    assert_eq!(bob.pull_offline("", 0).await.unwrap().messages.len(), 2);
    bob.ack_offline(&page.cursor).await.unwrap();
    let after_ack = bob.pull_offline("", 0).await.unwrap();
    assert_eq!(after_ack.messages.len(), 1, "only the acked page is gone");
    bob.ack_offline(&after_ack.cursor).await.unwrap();
    let empty = bob.pull_offline("", 0).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.more);
    assert_eq!(empty.cursor, "", "nothing covered, nothing to ack");

    // A malformed cursor is a typed error, and the session lives on.
    match bob.pull_offline("not-a-cursor", 0).await {
        Err(tidegate_proto::client::ClientError::Server { code, .. }) => {
            assert_eq!(code, tidegate_proto::ErrorCode::BadBody.code())
        }
        other => panic!("expected bad_body, got {other:?}"),
    }
    bob.keepalive().await.unwrap();

    let reach = get_json(&tg.url("/v1/stats/reach?app=1&msgtype=4")).await;
    assert_eq!(reach["counts"]["stored"], 1, "{reach}");
}

async fn ttl_expires_and_the_bound_evicts(tg: &Tidegate) {
    let (_, body) = push(
        tg,
        json!({"app": 1, "to": "carol", "content": "short-lived", "store_if_offline": true, "ttl_s": 1}),
    )
    .await;
    assert_eq!(statuses(&body), ["stored"]);
    for i in 0..5 {
        let (_, body) = push(
            tg,
            json!({"app": 1, "to": "dave", "content": format!("m{i}"), "store_if_offline": true}),
        )
        .await;
        assert_eq!(statuses(&body), ["stored"]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut carol = tg.logged_in("carol").await;
    let page = carol.pull_offline("", 0).await.unwrap();
    assert!(page.messages.is_empty(), "expired: {page:?}");
    let mut dave = tg.logged_in("dave").await;
    let page = dave.pull_offline("", 0).await.unwrap();
    let got: Vec<_> = page
        .messages
        .iter()
        .map(|m| String::from_utf8(m.push.as_ref().unwrap().content.to_vec()).unwrap())
        .collect();
    assert_eq!(
        got,
        ["m2", "m3", "m4"],
        "offline_max_len = 3 keeps the newest"
    );
}

async fn bad_offline_options_are_400s(tg: &Tidegate) {
    for (body, needle) in [
        (
            json!({"app": 1, "to": "x", "content": "c", "ttl_s": 5}),
            "store_if_offline",
        ),
        (
            json!({"app": 1, "to": "all", "content": "c", "store_if_offline": true}),
            "list of users",
        ),
        (
            json!({"app": 1, "to": "x", "content": "c", "store_if_offline": true, "ttl_s": 3601}),
            "offline_max_ttl_s",
        ),
    ] {
        let (status, reply) = push(tg, body.clone()).await;
        assert_eq!(status, 400, "{body} → {reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
}

/// `tidegate client` prints the inbox after login and acknowledges it.
async fn cli_client_drains_the_inbox(tg: &Tidegate) {
    let (_, body) = push(
        tg,
        json!({"app": 1, "msgtype": 7, "to": "erin", "content": "while you were out",
               "content_type": "text/plain", "store_if_offline": true}),
    )
    .await;
    assert_eq!(statuses(&body), ["stored"]);
    let mut child = Command::new(BIN)
        .args(["client", "--addr", &tg.client.to_string(), "--count", "1"])
        .args(["--token", &token(1, "erin")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let stdout = child.stdout.take().unwrap();
        move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        }
    });
    let lines = timeout(WAIT, out).await.expect("client exits").unwrap();
    let _ = child.wait();
    let msg_id = body["msg_id"].as_str().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l
                == &format!("offline push {msg_id} msgtype 7 [text/plain] while you were out")),
        "{lines:?}"
    );
    // The CLI acknowledged it: a fresh session finds the inbox empty.
    let mut again = tg.logged_in("erin").await;
    assert!(again.pull_offline("", 0).await.unwrap().messages.is_empty());
}

macro_rules! backend_tests {
    ($name:ident, $redis:expr) => {
        mod $name {
            use super::*;

            /// Fields drop in order: tidegate stops before its Redis does.
            struct Harness {
                tg: Tidegate,
                _redis: Option<RedisServer>,
            }

            fn up() -> Harness {
                let redis: Option<RedisServer> = $redis;
                let backend = match &redis {
                    Some(r) => Backend::Redis(r.url()),
                    None => Backend::Embedded,
                };
                Harness {
                    tg: Tidegate::up(&backend, CONFIG),
                    _redis: redis,
                }
            }

            #[tokio::test]
            async fn stored_then_pulled_acked_and_gone() {
                super::stored_then_pulled_acked_and_gone(&up().tg).await;
            }

            #[tokio::test]
            async fn ttl_expires_and_the_bound_evicts() {
                super::ttl_expires_and_the_bound_evicts(&up().tg).await;
            }

            #[tokio::test]
            async fn bad_offline_options_are_400s() {
                super::bad_offline_options_are_400s(&up().tg).await;
            }

            #[tokio::test]
            async fn cli_client_drains_the_inbox() {
                super::cli_client_drains_the_inbox(&up().tg).await;
            }
        }
    };
}

backend_tests!(embedded, None);
backend_tests!(redis, Some(RedisServer::start()));
