//! End-to-end for the logic shim's issue-6 features through the real
//! `tidegate up` binary: device policy kicks, app-wide broadcast, reach
//! statistics with the gate's confirmation and the client's ack, the gate
//! directory, the admin key, protobuf push bodies and cross-app isolation.

mod common;

use common::{token, Backend, GatewayProc, LogicProc, Tidegate, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use tidegate_logic::testkit::RedisServer;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::prost::Message;
use tidegate_proto::{pb, AppCode};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const ADMIN_KEY: &str = "tidegate-test-admin-key-0123";
const APP2_KEY: &str = "tidegate-test-api-key-app-2";

/// App 1 (the dev app's secret and key) with a single-device policy, app 2
/// with its own key, and the admin key.
const CONFIG: &str = r#"
[logic]
admin_key = "tidegate-test-admin-key-0123"

[[apps]]
code = 1
secrets = ["tidegate-dev-secret-app-1"]
api_key = "tidegate-dev-api-key-app-1"
device_policy = "single"

[[apps]]
code = 2
secrets = ["tidegate-test-secret-app-2"]
api_key = "tidegate-test-api-key-app-2"
"#;

struct Harness {
    tg: Tidegate,
    _redis: Option<RedisServer>,
}

fn up(redis: bool) -> Harness {
    let server = redis.then(RedisServer::start);
    let backend = match &server {
        Some(s) => Backend::Redis(s.url()),
        None => Backend::Embedded,
    };
    Harness {
        tg: Tidegate::up(&backend, CONFIG),
        _redis: server,
    }
}

async fn login(tg: &Tidegate, app: u16, uid: &str, platform: &str) -> Client {
    let mut c = Client::connect(tg.client).await.expect("connect");
    let tok = if app == 1 {
        token(1, uid)
    } else {
        app2_token(uid)
    };
    c.login(AppCode(app), &tok, "dev", platform)
        .await
        .expect("login");
    c
}

/// App 2's secret is only in [`CONFIG`], so mint with a config file.
fn app2_token(uid: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["token", "--app", "2", "--uid", uid, "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn call(
    tg: &Tidegate,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = match method {
        "POST" => c.post(tg.url(path)),
        _ => c.get(tg.url(path)),
    }
    .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

async fn device_policy_and_broadcast(tg: &Tidegate) {
    // Single device: the second login kicks the first with OTHER_DEVICE.
    let mut first = login(tg, 1, "dora", "android").await;
    let mut second = login(tg, 1, "dora", "ios").await;
    match timeout(WAIT, first.recv_push())
        .await
        .expect("kick in time")
    {
        Err(ClientError::Kicked { reason, .. }) => {
            assert_eq!(reason, pb::KickoutReason::OtherDevice as i32)
        }
        other => panic!("expected a kickout, got {other:?}"),
    }
    let (_, p) = call(tg, "GET", "/v1/presence?app=1&uid=dora", DEV_API_KEY, None).await;
    assert_eq!(p["presence"][0]["devices"].as_array().unwrap().len(), 1);
    assert_eq!(p["presence"][0]["devices"][0]["platform"], "ios");

    // Broadcast reaches every app-1 session on every shard, and no app-2 one.
    let mut others: Vec<Client> = Vec::new();
    for i in 0..4 {
        others.push(login(tg, 1, &format!("bc-{i}"), "web").await);
    }
    let mut outsider = login(tg, 2, "bc-0", "web").await;
    let (status, body) = call(
        tg,
        "POST",
        "/v1/push",
        DEV_API_KEY,
        Some(json!({"app": 1, "msgtype": 3, "to": "all", "content": "hello all"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 5, "{body}");
    assert_eq!(
        body["gates"].as_array().unwrap().len(),
        2,
        "two shards: {body}"
    );
    assert!(body.get("results").is_none());
    for c in others.iter_mut().chain([&mut second]) {
        let got = timeout(WAIT, c.recv_push())
            .await
            .expect("broadcast")
            .unwrap();
        assert_eq!(&got.content[..], b"hello all");
    }
    assert!(
        timeout(Duration::from_millis(300), outsider.recv_push())
            .await
            .is_err(),
        "app 2 got app 1's broadcast"
    );
}

async fn reach_counts_written_and_acked(tg: &Tidegate) {
    let mut c = login(tg, 1, "rhea", "android").await;
    let (_, body) = call(
        tg,
        "POST",
        "/v1/push",
        DEV_API_KEY,
        Some(json!({"app": 1, "msgtype": 9, "to": ["rhea", "nobody"], "content": "x"})),
    )
    .await;
    let got = timeout(WAIT, c.recv_push()).await.unwrap().unwrap();
    assert_eq!(got.msg_id, body["msg_id"].as_str().unwrap());
    c.ack_push(&got.msg_id).await.unwrap();
    let want = json!({"sent": 2, "online": 1, "written": 1, "acked": 1, "stored": 0});
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, r) = call(
            tg,
            "GET",
            "/v1/stats/reach?app=1&msgtype=9",
            DEV_API_KEY,
            None,
        )
        .await;
        assert_eq!(status, 200, "{r}");
        if r["counts"] == want {
            // Another app's key may not read app 1's statistics.
            let (status, _) =
                call(tg, "GET", "/v1/stats/reach?app=1&msgtype=9", APP2_KEY, None).await;
            assert_eq!(status, 403);
            // The presence write and read behind this were timed.
            let text = tg.logic_metrics().await;
            for op in ["add_session", "sessions_many"] {
                let label = format!("op=\"{op}\"");
                let n = common::metric(&text, "tidegate_logic_store_seconds_count", &label);
                assert!(n >= 1.0, "{op} not timed: {text}");
                // A histogram (buckets add up across logic instances), not a summary.
                let inf = common::metric_with(
                    &text,
                    "tidegate_logic_store_seconds_bucket",
                    &[&label, "le=\"+Inf\""],
                );
                assert_eq!(inf, n, "{op}: +Inf bucket != count: {text}");
            }
            return;
        }
        last = r;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("reach counts never reached {want}: {last}");
}

async fn directory_admin_and_protobuf(tg: &Tidegate) {
    // The directory fills once the gate's shards have linked (503 before).
    let mut resp = reqwest::get(tg.url("/v1/gate?app=1&uid=zed"))
        .await
        .unwrap();
    for _ in 0..100 {
        if resp.status() != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        resp = reqwest::get(tg.url("/v1/gate?app=1&uid=zed"))
            .await
            .unwrap();
    }
    assert_eq!(resp.status(), 200);
    let gate: Value = resp.json().await.unwrap();
    assert_eq!(gate["tcp"], tg.client.to_string(), "{gate}");
    let resp = reqwest::get(tg.url("/v1/gate?app=77&uid=zed"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let (status, _) = call(tg, "GET", "/v1/admin/gates", DEV_API_KEY, None).await;
    assert_eq!(status, 401, "an app key is not the admin key");
    let (status, gates) = call(tg, "GET", "/v1/admin/gates", ADMIN_KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(gates["gates"].as_array().unwrap().len(), 1, "{gates}");

    // Protobuf in, protobuf out; app 2's key cannot push to app 1.
    let mut c = login(tg, 1, "pia", "android").await;
    let req = pb::PushRequest {
        app: 1,
        msgtype: 4,
        to: vec!["pia".into()],
        content: bytes::Bytes::from_static(&[0, 1, 2]),
        ..Default::default()
    };
    let send = |key: &'static str| {
        reqwest::Client::new()
            .post(tg.url("/v1/push"))
            .bearer_auth(key)
            .header("content-type", "application/x-protobuf")
            .body(req.encode_to_vec())
            .send()
    };
    assert_eq!(send(APP2_KEY).await.unwrap().status(), 403);
    let resp = send(DEV_API_KEY).await.unwrap();
    assert_eq!(resp.status(), 200);
    let out = pb::PushResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(out.results[0].status, "delivered");
    let got = timeout(WAIT, c.recv_push()).await.unwrap().unwrap();
    assert_eq!(
        (&got.content[..], got.msg_id),
        (&[0u8, 1, 2][..], out.msg_id)
    );
}

macro_rules! cases {
    ($name:ident, $redis:expr) => {
        mod $name {
            #[tokio::test]
            async fn device_policy_and_broadcast() {
                super::device_policy_and_broadcast(&super::up($redis).tg).await;
            }
            #[tokio::test]
            async fn reach_counts_written_and_acked() {
                super::reach_counts_written_and_acked(&super::up($redis).tg).await;
            }
            #[tokio::test]
            async fn directory_admin_and_protobuf() {
                super::directory_admin_and_protobuf(&super::up($redis).tg).await;
            }
        }
    };
}

cases!(embedded, false);
cases!(redis, true);

/// Two logic instances on one Redis: the one the push and the ack went
/// through flushes its counters, and the other answers the totals.
#[tokio::test]
async fn reach_totals_span_logic_instances() {
    let redis = RedisServer::start();
    let backend = Backend::Redis(redis.url());
    // Flush often so the test need not wait a second per round.
    let config = CONFIG.replace("[logic]\n", "[logic]\nreach_flush_ms = 100\n");
    let a = LogicProc::start(&backend, &config);
    let b = LogicProc::start(&backend, &config);
    let gw = GatewayProc::start(a.link, "");
    let mut ann = gw.login("ann").await;
    let (status, body) = common::post_json(
        &a.url("/v1/push"),
        &json!({"app": 1, "msgtype": 11, "to": ["ann", "ben"], "content": "x", "store_if_offline": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = timeout(WAIT, ann.recv_push()).await.unwrap().unwrap();
    ann.ack_push(&got.msg_id).await.unwrap();
    let want = json!({"sent": 2, "online": 1, "written": 1, "acked": 1, "stored": 1});
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = common::get_json(&b.url("/v1/stats/reach?app=1&msgtype=11")).await;
        if r["counts"] == want {
            assert_eq!(r["instance"]["counts"]["sent"], 0, "b pushed nothing: {r}");
            return;
        }
        last = r;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("instance b never saw the totals {want}: {last}");
}
