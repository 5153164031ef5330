//! End-to-end for ARCHITECTURE §5 case 4 with real processes: `tidegate
//! logic` and `tidegate gateway` run apart, the gateway is killed with
//! SIGKILL (no close notices reach logic), and presence must read offline
//! within the gate lease; a gateway restarted under the same `gate_id` must
//! make the old process's sessions offline at once (gate incarnation) and
//! never receive pushes meant for them on reused connection ids.

mod common;

use common::{Backend, GatewayProc, LogicProc, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tidegate_logic::testkit::RedisServer;
use tokio::time::timeout;

/// Short enough to keep the test fast, long enough for 2 shared cores.
const LEASE_MS: u64 = 3_000;

fn logic_config(lease_ms: u64) -> String {
    format!(
        r#"
[logic]
gate_lease_ms = {lease_ms}

[[apps]]
code = 1
secrets = ["tidegate-dev-secret-app-1"]
api_key = "tidegate-dev-api-key-app-1"
"#
    )
}

async fn get(logic: &LogicProc, path: &str) -> Value {
    common::get_json(&logic.url(path)).await
}

async fn online(logic: &LogicProc, uid: &str) -> bool {
    let p = get(logic, &format!("/v1/presence?app=1&uid={uid}")).await;
    p["presence"][0]["online"] == json!(true)
}

async fn push(logic: &LogicProc, uid: &str, content: &str) -> Value {
    reqwest::Client::new()
        .post(logic.url("/v1/push"))
        .bearer_auth(DEV_API_KEY)
        .json(&json!({"app": 1, "msgtype": 7, "to": [uid], "content": content}))
        .send()
        .await
        .expect("push")
        .json()
        .await
        .expect("push json")
}

/// Polls until `uid` reads offline; returns how long it took.
async fn until_offline(logic: &LogicProc, uid: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if !online(logic, uid).await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{uid} still online {within:?} after the gateway died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_reads_offline_within_the_lease_and_a_new_one_serves() {
    let logic = LogicProc::start(&Backend::Embedded, &logic_config(LEASE_MS));
    let gw = GatewayProc::start(logic.link, "");
    let _alice = gw.login("alice").await;
    assert!(online(&logic, "alice").await);

    gw.kill9();
    // The lease was last renewed at most LEASE_MS ago; allow for scheduling.
    let took = until_offline(&logic, "alice", Duration::from_millis(LEASE_MS + 1_500)).await;
    assert!(took <= Duration::from_millis(LEASE_MS + 1_500), "{took:?}");

    let gw2 = GatewayProc::start(logic.link, "");
    let mut bob = gw2.login("bob").await;
    assert!(online(&logic, "bob").await);
    let r = push(&logic, "bob", "hi").await;
    assert_eq!(r["results"][0]["status"], "delivered", "{r}");
    let got = timeout(Duration::from_secs(5), bob.recv_push())
        .await
        .expect("push in time")
        .expect("push");
    assert_eq!(&got.content[..], b"hi");
}

/// The correctness case the incarnation exists for: same `gate_id`, lease
/// far from expiry, a new user on what is likely the very same conn id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_restarted_under_the_same_id_drops_old_sessions_at_once() {
    let redis = RedisServer::start();
    let logic = LogicProc::start(&Backend::Redis(redis.url()), &logic_config(60_000));
    let gate = "[gateway]\ngate_id = \"edge-1\"\n";
    let gw = GatewayProc::start(logic.link, gate);
    let _alice = gw.login("alice").await;
    assert!(online(&logic, "alice").await);

    gw.kill9();
    let gw2 = GatewayProc::start(logic.link, gate);
    let mut bob = gw2.login("bob").await;
    // Offline long before the 60 s lease could end: the new process's
    // HELLO already put its incarnation in the lease.
    until_offline(&logic, "alice", Duration::from_secs(5)).await;
    assert!(online(&logic, "bob").await);

    let r = push(&logic, "alice", "for alice").await;
    assert_eq!(r["results"][0]["status"], "offline", "{r}");
    let r = push(&logic, "bob", "for bob").await;
    assert_eq!(r["results"][0]["status"], "delivered", "{r}");
    let got = timeout(Duration::from_secs(5), bob.recv_push())
        .await
        .expect("push in time")
        .expect("push");
    assert_eq!(&got.content[..], b"for bob", "bob never sees alice's push");
}
