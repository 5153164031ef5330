//! End-to-end: the real `tidegate up` binary over real sockets, on the
//! embedded store and on a real `redis-server` each test starts itself.

mod common;

use common::{metric, token, Backend, Tidegate, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::{pb, AppCode, Cmd, ErrorCode, MsgType};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn login(tg: &Tidegate, uid: &str) -> Client {
    let mut c = Client::connect(tg.client).await.expect("connect");
    let ok = c
        .login(AppCode(1), &token(1, uid), "dev-1", "android")
        .await
        .expect("login");
    assert_eq!(ok.uid, uid);
    c
}

async fn push(tg: &Tidegate, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(tg.url("/v1/push"))
        .bearer_auth(DEV_API_KEY)
        .json(&body)
        .send()
        .await
        .expect("push");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

async fn get(tg: &Tidegate, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(tg.url(path))
        .bearer_auth(DEV_API_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.expect("json")
}

async fn push_reaches_only_its_target(tg: &Tidegate) {
    let mut alice = login(tg, "alice").await;
    let mut bob = login(tg, "bob").await;
    let presence = get(tg, "/v1/presence?app=1&uid=alice&uid=bob&uid=carol").await;
    let online: Vec<bool> = presence["presence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["online"].as_bool().unwrap())
        .collect();
    assert_eq!(online, [true, true, false]);

    let (status, body) = push(
        tg,
        json!({"app": 1, "msgtype": 7, "to": "alice", "content_type": "text/plain", "content": "order-42"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][0],
        json!({"uid": "alice", "status": "delivered"})
    );
    let got = timeout(WAIT, alice.recv_push())
        .await
        .expect("alice waited")
        .unwrap();
    assert_eq!(&got.content[..], b"order-42");
    assert_eq!(got.msg_id, body["msg_id"].as_str().unwrap());
    alice.ack_push(&got.msg_id).await.unwrap();

    let (_, body) = push(
        tg,
        json!({"app": 1, "to": ["bob", "carol"], "content_b64": "AAEC"}),
    )
    .await;
    assert_eq!(
        body["results"][1],
        json!({"uid": "carol", "status": "offline"})
    );
    let got = timeout(WAIT, bob.recv_push())
        .await
        .expect("bob waited")
        .unwrap();
    assert_eq!(
        &got.content[..],
        &[0, 1, 2],
        "bob gets his push, not alice's"
    );

    alice.logout().await.unwrap();
    // Presence is removed when logic has handled the close notice.
    for _ in 0..100 {
        let p = get(tg, "/v1/presence?app=1&uid=alice").await;
        if p["presence"][0]["online"] == json!(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("alice still online after logout");
}

async fn c2s_is_readable_from_the_stream(tg: &Tidegate) {
    let mut driver = login(tg, "driver-7").await;
    for i in 0..3 {
        let gps = format!("{{\"lat\":39.9,\"lng\":116.{i}}}");
        driver
            .send_c2s(MsgType(5), "application/json", gps.into_bytes(), true)
            .await
            .expect("acked c2s");
    }
    let page = get(tg, "/v1/streams/c2s?app=1&msgtype=5&limit=2").await;
    assert_eq!(page["stream"], "c2s:1:5");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["uid"], "driver-7");
    assert_eq!(entries[0]["content"], "{\"lat\":39.9,\"lng\":116.0}");
    let after = page["last_id"].as_str().unwrap();
    let rest = get(
        tg,
        &format!("/v1/streams/c2s?app=1&msgtype=5&after={after}"),
    )
    .await;
    let rest = rest["entries"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["content"], "{\"lat\":39.9,\"lng\":116.2}");
}

/// Frames logic stores as one batch: a bad one is refused alone, and the
/// others are stored in the order they were sent.
async fn a_bad_c2s_in_a_batch_is_refused_alone(tg: &Tidegate) {
    let mut c = login(tg, "driver-9").await;
    let mut burst = Vec::new();
    for seq in 1..=6u32 {
        let mut h = tidegate_proto::Header::new(Cmd::C2s, AppCode(1), seq);
        h.msgtype = MsgType(6);
        h.flags = tidegate_proto::Flags::ACK_REQUESTED;
        let frame = if seq == 3 {
            // Not a Payload: field 1 as a varint where a string belongs.
            tidegate_proto::Frame {
                header: h,
                body: bytes::Bytes::from_static(&[0x08, 0x01]),
            }
        } else {
            let body = pb::Payload {
                content_type: "text/plain".into(),
                content: format!("fix {seq}").into_bytes().into(),
            };
            tidegate_proto::Frame::new(h, &body)
        };
        burst.extend_from_slice(&frame.to_bytes());
    }
    c.send_raw(&burst).await.unwrap();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 6 {
        let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
        let answer = match f.header.cmd {
            Cmd::C2s => "ack".to_string(),
            Cmd::Error => ErrorCode::from_u32(f.decode_body::<pb::Error>().unwrap().code)
                .map_or("?", |c| c.name())
                .to_string(),
            other => panic!("unexpected {other:?}"),
        };
        answers.insert(f.header.seq, answer);
    }
    let want: Vec<(u32, &str)> = (1..=6)
        .map(|s| (s, if s == 3 { "bad_body" } else { "ack" }))
        .collect();
    let got: Vec<(u32, &str)> = answers.iter().map(|(s, a)| (*s, a.as_str())).collect();
    assert_eq!(got, want);
    let page = get(tg, "/v1/streams/c2s?app=1&msgtype=6&limit=10").await;
    let stored: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["fix 1", "fix 2", "fix 4", "fix 5", "fix 6"]);
}

async fn bad_tokens_get_typed_errors(tg: &Tidegate) {
    let mut c = Client::connect(tg.client).await.unwrap();
    match c.login(AppCode(1), "not-a-token", "d", "ios").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::AuthFailed.code()),
        other => panic!("expected auth_failed, got {other:?}"),
    }
    // The same connection may retry; a token for another app is refused.
    match c.login(AppCode(2), &token(1, "eve"), "d", "ios").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownApp.code()),
        other => panic!("expected unknown_app, got {other:?}"),
    }
    c.login(AppCode(1), &token(1, "eve"), "d", "ios")
        .await
        .expect("good token after bad ones");
    c.keepalive().await.expect("keepalive answered");
}

macro_rules! backend_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            /// Fields drop in order: tidegate stops before its Redis does.
            struct Harness {
                tg: Tidegate,
                _redis: Option<tidegate_logic::testkit::RedisServer>,
            }

            async fn up() -> Harness {
                let (backend, redis) = $backend;
                Harness {
                    tg: Tidegate::up(&backend, ""),
                    _redis: redis,
                }
            }

            #[tokio::test]
            async fn push_reaches_only_its_target() {
                super::push_reaches_only_its_target(&up().await.tg).await;
            }

            #[tokio::test]
            async fn c2s_is_readable_from_the_stream() {
                super::c2s_is_readable_from_the_stream(&up().await.tg).await;
            }

            #[tokio::test]
            async fn a_bad_c2s_in_a_batch_is_refused_alone() {
                super::a_bad_c2s_in_a_batch_is_refused_alone(&up().await.tg).await;
            }

            #[tokio::test]
            async fn bad_tokens_get_typed_errors() {
                super::bad_tokens_get_typed_errors(&up().await.tg).await;
            }
        }
    };
}

backend_tests!(embedded, (Backend::Embedded, None));
backend_tests!(redis, {
    let server = tidegate_logic::testkit::RedisServer::start();
    (Backend::Redis(server.url()), Some(server))
});

#[tokio::test]
async fn garbage_bytes_close_the_connection_and_are_counted() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let mut c = Client::connect(tg.client).await.unwrap();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let f = timeout(WAIT, c.recv())
        .await
        .unwrap()
        .expect("an ERROR before close");
    assert_eq!(f.header.cmd, Cmd::Error);
    assert_eq!(
        f.decode_body::<pb::Error>().unwrap().code,
        ErrorCode::BadFrame.code()
    );
    assert!(matches!(
        timeout(WAIT, c.recv()).await.unwrap(),
        Err(ClientError::Closed)
    ));
    let m = tg.gateway_metrics().await;
    assert!(
        metric(&m, "tidegate_gateway_decode_errors_total", "bad_magic") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "tidegate_gateway_closed_total", "bad_magic") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn oversize_and_bad_version_frames_are_refused() {
    let tg = Tidegate::up(&Backend::Embedded, "[gateway]\nmax_body = 1024\n");
    for (hex, code) in [
        // body_len 2048 > max_body 1024: refused on the header alone.
        (
            "54470100000100010000000000000001".to_string() + "00000800",
            ErrorCode::BodyTooLarge,
        ),
        (
            "5447090000030001000000000000000100000000".to_string(),
            ErrorCode::UnsupportedVersion,
        ),
    ] {
        let mut c = Client::connect(tg.client).await.unwrap();
        c.send_raw(&hex_bytes(&hex)).await.unwrap();
        let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
        assert_eq!(f.decode_body::<pb::Error>().unwrap().code, code.code());
        assert!(matches!(
            timeout(WAIT, c.recv()).await.unwrap(),
            Err(ClientError::Closed)
        ));
    }
}

#[tokio::test]
async fn silent_connections_hit_the_auth_timeout() {
    let tg = Tidegate::up(&Backend::Embedded, "[gateway]\nauth_timeout_s = 1\n");
    let mut c = Client::connect(tg.client).await.unwrap();
    let started = std::time::Instant::now();
    let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
    assert_eq!(
        f.decode_body::<pb::Error>().unwrap().code,
        ErrorCode::AuthTimeout.code()
    );
    assert!(matches!(
        timeout(WAIT, c.recv()).await.unwrap(),
        Err(ClientError::Closed)
    ));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn http_errors_are_json_with_a_code() {
    let tg = Tidegate::up(&Backend::Embedded, "[logic]\nmax_http_body = 2048\n");
    let http = reqwest::Client::new();
    let cases = [
        (
            http.post(tg.url("/v1/push"))
                .json(&json!({"app": 1, "to": "a", "content": "x"})),
            401,
            "unauthorized",
        ),
        (
            http.post(tg.url("/v1/push"))
                .bearer_auth(DEV_API_KEY)
                .json(&json!({"app": 2, "to": "a", "content": "x"})),
            403,
            "forbidden",
        ),
        (
            http.post(tg.url("/v1/push"))
                .bearer_auth(DEV_API_KEY)
                .header("content-type", "application/json")
                .body("{nope"),
            400,
            "bad_json",
        ),
        (
            http.post(tg.url("/v1/push"))
                .bearer_auth(DEV_API_KEY)
                .json(&json!({"app": 1, "to": "a", "content": "x".repeat(4096)})),
            413,
            "body_too_large",
        ),
        (
            http.post(tg.url("/v1/push"))
                .bearer_auth(DEV_API_KEY)
                .json(&json!({"app": 1, "to": [], "content": "x"})),
            400,
            "bad_request",
        ),
        (
            http.get(tg.url("/v1/presence?app=x&uid=a"))
                .bearer_auth(DEV_API_KEY),
            400,
            "bad_request",
        ),
        (http.get(tg.url("/v1/nothing")), 404, "not_found"),
    ];
    for (req, status, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let body: Value = resp.json().await.expect("JSON error body");
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[gateway]\nmax_body = 0\n", "gateway.max_body"),
        ("[gateway]\nmax_bdy = 10\n", "max_bdy"),
        (
            "[[apps]]\ncode = 1\nsecrets = [\"short\"]\napi_key = \"0123456789abcdef\"\n",
            "apps[0].secrets",
        ),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(common::BIN)
            .arg("up")
            .arg("--config")
            .arg(&cfg)
            .arg("--data")
            .arg(dir.path().join("data"))
            .args([
                "--client-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(["--link-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "stderr for {key}: {err}");
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
