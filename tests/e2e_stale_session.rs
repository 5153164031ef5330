//! ARCHITECTURE §5 case 2, end to end through the real `tidegate up` on a
//! real redis-server: presence lists a session its gate no longer holds (a
//! close that never reached the store). The push is handed to the gate
//! (`delivered` in the answer, which does not wait for gates); the gate's
//! confirmation names the connection as gone, and logic then removes the
//! stale session from presence, fenced by its epoch, and puts the push in
//! the user's inbox when it asked for `store_if_offline` (pulled after the
//! next login). A user with a live session on the same shard still gets
//! it live and nothing is stored for them.

mod common;

use common::{get_json, metric, post_json, statuses, Backend, Tidegate};
use serde_json::json;
use std::time::Duration;
use tidegate_logic::store::redis::RedisStore;
use tidegate_logic::store::{DevicePolicy, NewSession, SessionKey, Store};
use tidegate_logic::testkit::RedisServer;
use tidegate_proto::AppCode;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const APP: AppCode = AppCode(1);

async fn online_sessions(tg: &Tidegate, uid: &str) -> usize {
    let body = get_json(&tg.url(&format!("/v1/presence?app=1&uid={uid}"))).await;
    body["presence"][0]["devices"]
        .as_array()
        .map_or(0, |d| d.len())
}

/// Writes a session for `uid` into presence on the same gate shard (and
/// process incarnation) as `live`'s, naming a connection that shard has
/// never had: what a lost close leaves behind.
async fn ghost(store: &RedisStore, uid: &str, live: &str) -> u64 {
    let real = store.sessions(APP, live).await.expect("read presence");
    let real = real.first().expect("live session");
    // Slot u32::MAX is never allocated: the shard's table holds no such id.
    let conn = (u64::from(u32::MAX) << 32) | 7;
    let new = NewSession {
        key: SessionKey {
            gate_id: real.gate_id.clone(),
            shard: real.shard,
            conn,
        },
        device: "ghost".into(),
        platform: "ios".into(),
        since_ms: tidegate_proto::now_ms(),
        incarnation: real.incarnation,
    };
    store
        .add_session(APP, uid, new, DevicePolicy::Multi)
        .await
        .expect("write ghost session");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_session_the_gate_lost_goes_to_the_inbox_and_presence_is_corrected() {
    let redis = RedisServer::start();
    let tg = Tidegate::up(&Backend::Redis(redis.url()), "");
    let store = RedisStore::connect(&redis.url()).await.expect("redis");
    let mut alice = tg.logged_in("alice").await;

    // bob: only a ghost. carol: a live session plus a ghost on the same shard.
    ghost(&store, "bob", "alice").await;
    let mut carol = tg.logged_in("carol").await;
    ghost(&store, "carol", "carol").await;
    assert_eq!(
        online_sessions(&tg, "bob").await,
        1,
        "presence lists the ghost"
    );
    assert_eq!(online_sessions(&tg, "carol").await, 2);

    let (status, body) = post_json(
        &tg.url("/v1/push"),
        &json!({"app": 1, "msgtype": 7, "to": ["alice", "bob", "carol"],
                "content": "order 1", "store_if_offline": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&body), ["delivered", "delivered", "delivered"]);
    let msg_id = body["msg_id"].as_str().unwrap().to_string();
    for client in [&mut alice, &mut carol] {
        let push = timeout(WAIT, client.recv_push()).await.unwrap().unwrap();
        assert_eq!(&push.content[..], b"order 1");
    }

    // Corrected once the gate confirms: the ghosts are gone, carol's live
    // session stays, and only bob (reached nowhere) has the push stored.
    until("bob's ghost removed", || async {
        online_sessions(&tg, "bob").await == 0
    })
    .await;
    until("carol's ghost removed", || async {
        online_sessions(&tg, "carol").await == 1
    })
    .await;
    until_missed(&tg, "stored").await;
    let text = tg.logic_metrics().await;
    let removed = metric(
        &text,
        "tidegate_logic_stale_sessions_total",
        "result=\"removed\"",
    );
    assert_eq!(removed, 2.0, "{text}");
    let mut bob = tg.logged_in("bob").await;
    let page = bob.pull_offline("", 0).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    let stored = page.messages[0].push.as_ref().expect("push");
    assert_eq!(stored.msg_id, msg_id);
    assert_eq!(&stored.content[..], b"order 1");
    assert!(carol.pull_offline("", 0).await.unwrap().messages.is_empty());

    // Without store_if_offline a ghost's push is dropped, and still cleaned.
    ghost(&store, "dave", "alice").await;
    let (_, body) = post_json(
        &tg.url("/v1/push"),
        &json!({"app": 1, "msgtype": 7, "to": ["dave"], "content": "order 2"}),
    )
    .await;
    assert_eq!(statuses(&body), ["delivered"]);
    until("dave's ghost removed", || async {
        online_sessions(&tg, "dave").await == 0
    })
    .await;
    until_missed(&tg, "dropped").await;
    let mut dave = tg.logged_in("dave").await;
    assert!(dave.pull_offline("", 0).await.unwrap().messages.is_empty());
}

/// Waits until logic has counted one missed push target with `outcome`.
async fn until_missed(tg: &Tidegate, outcome: &str) {
    let label = format!("outcome=\"{outcome}\"");
    until(&format!("{outcome} counted"), || async {
        let text = tg.logic_metrics().await;
        metric(&text, "tidegate_logic_push_missed_total", &label) == 1.0
    })
    .await;
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after [`WAIT`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
