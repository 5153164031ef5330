//! One conformance suite for every [`Store`] backend: each case is written
//! once against `Arc<dyn Store>` and instantiated per backend by
//! `conformance!`, so tests read `embedded::epochs_increase`,
//! `redis::epochs_increase`. Redis cases run a real redis-server from the
//! testkit. Run: `cargo test -p tidegate-logic --features testkit`.

use bytes::Bytes;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidegate_logic::store::embedded::EmbeddedStore;
use tidegate_logic::store::redis::RedisStore;
use tidegate_logic::store::{
    C2sEntry, DevicePolicy, GateShardStatus, LoginOutcome, NewSession, SessionKey, SessionRecord,
    Store, StoreError, StreamId,
};
use tidegate_logic::testkit::{free_port, RedisCluster, RedisServer};
use tidegate_proto::{AppCode, MsgType};
use tokio::time::timeout;

const APP: AppCode = AppCode(1);
const OTHER_APP: AppCode = AppCode(2);
const MT: MsgType = MsgType(7);
/// The incarnation of every test gate process unless a case says otherwise.
const INC: u64 = 0x5eed;
/// Redis's `MAXLEN ~` drops only whole stream nodes (`stream-node-max-entries`,
/// 100 by default), so a trimmed stream may hold up to this many extra entries.
const TRIM_SLACK: usize = 100;
/// Every store call must answer within this, even with the backend gone.
const NO_HANG: Duration = Duration::from_secs(15);

/// A backend under test plus whatever must live as long as it.
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _redis: Option<RedisServer>,
}

fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("nested/store.redb")).expect("open embedded");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        _redis: None,
    }
}

async fn redis_fixture() -> Fixture {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("connect redis");
    Fixture {
        store: Arc::new(store),
        _dir: None,
        _redis: Some(server),
    }
}

/// Calls `$m!(<args> case, case, …)` with every shared case.
macro_rules! every_case {
    ($m:ident, $($args:tt)*) => {
        $m!($($args)*;
                ping_answers,
                epochs_increase,
                concurrent_logins_get_distinct_epochs,
                users_and_apps_are_isolated,
                add_then_sessions_returns_the_record,
                remove_is_fenced_by_epoch,
                remove_unknown_session_is_false,
                special_uids_work_and_do_not_collide,
                c2s_ids_strictly_increase,
                read_c2s_pages_exact_binary_entries,
                trim_keeps_about_max_len,
                concurrent_appends_get_unique_ids,
                zero_max_len_is_bad_input,
                sessions_of_expired_gates_read_offline_and_are_cleaned,
                restarted_gate_sessions_read_offline_and_are_cleaned,
                directory_counts_only_the_current_incarnation,
                single_device_policy_kicks_every_other_session,
                per_platform_policy_kicks_only_the_same_platform,
                concurrent_single_device_logins_leave_exactly_one,
                sessions_many_matches_sessions,
                live_gates_sum_shards_and_drop_expired_ones,
        );
    };
}

/// Instantiates every shared case for one backend.
macro_rules! conformance {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;
            every_case!(conformance, @cases $fixture);
        }
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                #[allow(clippy::redundant_closure_call)]
                let fx = $fixture;
                lease_test_gates(&*fx.store).await;
                timeout(Duration::from_secs(60), super::$case(fx.store.clone()))
                    .await
                    .expect("case finished in time");
            }
        )*
    };
}

conformance!(embedded, embedded_fixture());
conformance!(redis, redis_fixture().await);
/// A cluster takes seconds to form, so the cluster run shares one across
/// the cases, run one after another with every node flushed (and the test
/// gates re-leased) before each: no case sees another's state.
macro_rules! cluster_cases {
    (; $($case:ident),* $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cluster_runs_every_case() {
            let cluster = tokio::task::spawn_blocking(RedisCluster::start)
                .await
                .expect("cluster start");
            let store: Arc<dyn Store> = Arc::new(
                RedisStore::connect(&cluster.url())
                    .await
                    .expect("connect cluster"),
            );
            $(
                cluster.flush();
                lease_test_gates(&*store).await;
                timeout(Duration::from_secs(60), $case(store.clone()))
                    .await
                    .expect(concat!(stringify!($case), " finished in time"));
            )*
        }
    };
}

every_case!(cluster_cases,);

/// Gates the cases put sessions on; presence only counts sessions on gates
/// with a lease, so every fixture leases these for the whole case.
const TEST_GATES: [&str; 5] = ["g", "g1", "g2", "h", "gate-7/a"];

async fn lease_test_gates(store: &dyn Store) {
    for gate in TEST_GATES {
        store
            .renew_gate(&status(gate, 0, 0), 600_000)
            .await
            .expect("lease test gate");
    }
}

fn status(gate: &str, shard: u32, connections: u64) -> GateShardStatus {
    GateShardStatus {
        gate_id: gate.into(),
        shard,
        connections,
        draining: false,
        client_addr: format!("10.0.0.1:{}", 7000 + shard),
        http_addr: String::new(),
        incarnation: INC,
    }
}

/// `add_session` under the multi-device policy, returning just the record:
/// what most cases need.
trait AddMulti {
    fn add_session_multi(
        &self,
        app: AppCode,
        uid: &str,
        new: NewSession,
    ) -> impl Future<Output = Result<SessionRecord, StoreError>> + Send;
}

impl AddMulti for Arc<dyn Store> {
    fn add_session_multi(
        &self,
        app: AppCode,
        uid: &str,
        new: NewSession,
    ) -> impl Future<Output = Result<SessionRecord, StoreError>> + Send {
        let (store, uid) = (self.clone(), uid.to_string());
        async move {
            let out = store
                .add_session(app, &uid, new, DevicePolicy::Multi)
                .await?;
            assert!(out.kicked.is_empty(), "multi-device kicks nobody");
            Ok(out.record)
        }
    }
}

fn key(gate: &str, shard: u32, conn: u64) -> SessionKey {
    SessionKey {
        gate_id: gate.into(),
        shard,
        conn,
    }
}

fn login(key: SessionKey, device: &str) -> NewSession {
    NewSession {
        key,
        device: device.into(),
        platform: "android".into(),
        since_ms: 1_700_000_000_000,
        incarnation: INC,
    }
}

/// A c2s entry whose content covers every byte value (not valid UTF-8).
fn entry(i: u32) -> C2sEntry {
    let mut content: Vec<u8> = (0..=255u8).collect();
    content.extend_from_slice(&i.to_be_bytes());
    C2sEntry {
        uid: format!("driver-{i}"),
        content_type: "application/x-gps".into(),
        content: Bytes::from(content),
        at_ms: 1_700_000_000_000 + u64::from(i),
    }
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    assert!(["redis", "embedded"].contains(&store.backend()));
}

async fn epochs_increase(store: Arc<dyn Store>) {
    let mut last = 0;
    for conn in 0..5 {
        let rec = store
            .add_session_multi(APP, "alice", login(key("g1", 0, conn), "d"))
            .await
            .unwrap();
        assert!(rec.epoch > last, "epoch {} after {last}", rec.epoch);
        last = rec.epoch;
    }
    // Logging out does not reset the counter: a later login still fences older ones.
    for s in store.sessions(APP, "alice").await.unwrap() {
        assert!(store
            .remove_session(APP, "alice", &s.key(), s.epoch)
            .await
            .unwrap());
    }
    assert!(store.sessions(APP, "alice").await.unwrap().is_empty());
    let rec = store
        .add_session_multi(APP, "alice", login(key("g1", 0, 0), "d"))
        .await
        .unwrap();
    assert!(
        rec.epoch > last,
        "epoch {} reused after logout (last {last})",
        rec.epoch
    );
}

async fn concurrent_logins_get_distinct_epochs(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..50)
        .map(|conn| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .add_session_multi(APP, "bob", login(key("g", 1, conn), "d"))
                    .await
            })
        })
        .collect();
    let mut epochs = HashSet::new();
    for t in tasks {
        assert!(
            epochs.insert(t.await.unwrap().unwrap().epoch),
            "duplicate epoch"
        );
    }
    let sessions = store.sessions(APP, "bob").await.unwrap();
    assert_eq!(sessions.len(), 50);
    assert!(
        sessions.windows(2).all(|w| w[0].epoch < w[1].epoch),
        "sorted by epoch"
    );
}

async fn users_and_apps_are_isolated(store: Arc<dyn Store>) {
    let a1 = store
        .add_session_multi(APP, "alice", login(key("g", 0, 1), "a1"))
        .await
        .unwrap();
    let b1 = store
        .add_session_multi(APP, "bob", login(key("g", 0, 2), "b1"))
        .await
        .unwrap();
    let a2 = store
        .add_session_multi(OTHER_APP, "alice", login(key("g", 0, 3), "a2"))
        .await
        .unwrap();
    assert_eq!(
        store.sessions(APP, "alice").await.unwrap(),
        vec![a1.clone()]
    );
    assert_eq!(store.sessions(APP, "bob").await.unwrap(), vec![b1]);
    assert_eq!(
        store.sessions(OTHER_APP, "alice").await.unwrap(),
        vec![a2.clone()]
    );
    assert!(store.sessions(OTHER_APP, "bob").await.unwrap().is_empty());
    // Same uid, other app: removal must not reach across.
    assert!(!store
        .remove_session(OTHER_APP, "alice", &a1.key(), a1.epoch)
        .await
        .unwrap());
    assert!(!store
        .remove_session(APP, "bob", &a1.key(), a1.epoch)
        .await
        .unwrap());
    assert_eq!(store.sessions(APP, "alice").await.unwrap(), vec![a1]);
    assert_eq!(store.sessions(OTHER_APP, "alice").await.unwrap(), vec![a2]);
}

async fn add_then_sessions_returns_the_record(store: Arc<dyn Store>) {
    let new = NewSession {
        key: key("gate-7/a", 3, u64::MAX - 1),
        device: "pixel".into(),
        platform: "android".into(),
        since_ms: 1_234_567,
        incarnation: INC,
    };
    let rec = store
        .add_session_multi(APP, "carol", new.clone())
        .await
        .unwrap();
    assert_eq!(rec.key(), new.key);
    assert_eq!(
        (rec.device.as_str(), rec.platform.as_str(), rec.since_ms),
        ("pixel", "android", 1_234_567)
    );
    assert_eq!(
        store.sessions(APP, "carol").await.unwrap(),
        vec![rec.clone()]
    );

    let web = store
        .add_session_multi(APP, "carol", login(key("g2", 0, 9), "web"))
        .await
        .unwrap();
    assert_eq!(store.sessions(APP, "carol").await.unwrap(), vec![rec, web]);
}

async fn remove_is_fenced_by_epoch(store: Arc<dyn Store>) {
    let k = key("g", 0, 42);
    let old = store
        .add_session_multi(APP, "dave", login(k.clone(), "d"))
        .await
        .unwrap();
    assert!(!store
        .remove_session(APP, "dave", &k, old.epoch + 1)
        .await
        .unwrap());
    assert!(!store.remove_session(APP, "dave", &k, 0).await.unwrap());
    assert_eq!(
        store.sessions(APP, "dave").await.unwrap(),
        vec![old.clone()]
    );

    // A re-login on the same address replaces the record; the stale close
    // (old epoch) must not remove the new one (ARCHITECTURE §5).
    let new = store
        .add_session_multi(APP, "dave", login(k.clone(), "d"))
        .await
        .unwrap();
    assert!(!store
        .remove_session(APP, "dave", &k, old.epoch)
        .await
        .unwrap());
    assert_eq!(
        store.sessions(APP, "dave").await.unwrap(),
        vec![new.clone()]
    );

    assert!(store
        .remove_session(APP, "dave", &k, new.epoch)
        .await
        .unwrap());
    assert!(store.sessions(APP, "dave").await.unwrap().is_empty());
    assert!(!store
        .remove_session(APP, "dave", &k, new.epoch)
        .await
        .unwrap());
}

async fn remove_unknown_session_is_false(store: Arc<dyn Store>) {
    assert!(!store
        .remove_session(APP, "nobody", &key("g", 0, 1), 1)
        .await
        .unwrap());
    let rec = store
        .add_session_multi(APP, "erin", login(key("g", 0, 1), "d"))
        .await
        .unwrap();
    assert!(!store
        .remove_session(APP, "erin", &key("g", 0, 2), rec.epoch)
        .await
        .unwrap());
    assert!(!store
        .remove_session(APP, "erin", &key("g", 1, 1), rec.epoch)
        .await
        .unwrap());
    assert!(!store
        .remove_session(APP, "erin", &key("h", 0, 1), rec.epoch)
        .await
        .unwrap());
    assert_eq!(store.sessions(APP, "erin").await.unwrap(), vec![rec]);
}

async fn special_uids_work_and_do_not_collide(store: Arc<dyn Store>) {
    let uids = [
        "",
        ":",
        "a",
        "a:b",
        "a:b:p",
        "{",
        "}",
        "{a}",
        "a}b",
        "}{",
        "%",
        "%7B",
        "%7D",
        "%25",
        "x}:p",
        "x}:epoch",
        "ü",
        "司机-🚚",
        "a b",
        "a\nb",
        "1:a",
    ];
    for (i, uid) in uids.iter().enumerate() {
        store
            .add_session_multi(APP, uid, login(key("g", 0, i as u64), uid))
            .await
            .unwrap();
    }
    for (i, uid) in uids.iter().enumerate() {
        let sessions = store.sessions(APP, uid).await.unwrap();
        assert_eq!(sessions.len(), 1, "uid {uid:?} sees {sessions:?}");
        assert_eq!(
            (sessions[0].device.as_str(), sessions[0].conn),
            (*uid, i as u64)
        );
        assert!(store.sessions(OTHER_APP, uid).await.unwrap().is_empty());
    }
    let first = &store.sessions(APP, "{a}").await.unwrap()[0];
    assert!(store
        .remove_session(APP, "{a}", &first.key(), first.epoch)
        .await
        .unwrap());
    assert!(store.sessions(APP, "{a}").await.unwrap().is_empty());
    assert_eq!(store.sessions(APP, "a").await.unwrap().len(), 1);
    assert_eq!(store.sessions(APP, "%7B").await.unwrap().len(), 1);
}

fn on(gate: &str, conn: u64, platform: &str) -> NewSession {
    NewSession {
        key: key(gate, 0, conn),
        device: format!("{platform}-{conn}"),
        platform: platform.into(),
        since_ms: 1,
        incarnation: INC,
    }
}

async fn sessions_of_expired_gates_read_offline_and_are_cleaned(store: Arc<dyn Store>) {
    store.renew_gate(&status("brief", 0, 1), 400).await.unwrap();
    let doomed = store
        .add_session_multi(APP, "gina", login(key("brief", 0, 1), "d"))
        .await
        .unwrap();
    let kept = store
        .add_session_multi(APP, "gina", login(key("g", 0, 2), "d"))
        .await
        .unwrap();
    assert_eq!(
        store.sessions(APP, "gina").await.unwrap(),
        vec![doomed.clone(), kept.clone()]
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // At once after expiry: the dead gate's session is not online.
    assert_eq!(
        store.sessions(APP, "gina").await.unwrap(),
        vec![kept.clone()]
    );
    // And it was removed lazily: a gate coming back under the same id does
    // not resurrect it.
    let mut cleaned = false;
    for _ in 0..50 {
        store
            .renew_gate(&status("brief", 0, 1), 60_000)
            .await
            .unwrap();
        if store.sessions(APP, "gina").await.unwrap() == vec![kept.clone()] {
            cleaned = true;
            break;
        }
        // Expire it again so the next read cleans (a race with the cleanup).
        store.renew_gate(&status("brief", 0, 1), 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = store.sessions(APP, "gina").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cleaned, "expired gate's session still in presence");
}

fn incarnated(gate: &str, incarnation: u64) -> GateShardStatus {
    GateShardStatus {
        incarnation,
        ..status(gate, 0, 1)
    }
}

/// A gate restarted under the same id before its lease ended: the old
/// process's sessions read as offline at once (the lease now carries the new
/// incarnation), even though a new connection reuses the same conn id, and
/// they are removed lazily so the old incarnation never resurrects them.
async fn restarted_gate_sessions_read_offline_and_are_cleaned(store: Arc<dyn Store>) {
    store
        .renew_gate(&incarnated("re", 1), 600_000)
        .await
        .unwrap();
    let old = NewSession {
        incarnation: 1,
        ..login(key("re", 0, 5), "d")
    };
    let stale = store.add_session_multi(APP, "ivy", old).await.unwrap();
    assert_eq!(store.sessions(APP, "ivy").await.unwrap(), vec![stale]);

    store
        .renew_gate(&incarnated("re", 2), 600_000)
        .await
        .unwrap();
    assert!(store.sessions(APP, "ivy").await.unwrap().is_empty());
    // Another user on the same (slot, generation) of the new process.
    let new = NewSession {
        incarnation: 2,
        ..login(key("re", 0, 5), "d")
    };
    let fresh = store.add_session_multi(APP, "jon", new).await.unwrap();
    let both = store
        .sessions_many(APP, &["ivy".into(), "jon".into()])
        .await
        .unwrap();
    assert_eq!(both, vec![vec![], vec![fresh]]);

    // Cleaned lazily: even the old incarnation's lease back would not show it.
    let mut cleaned = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        store
            .renew_gate(&incarnated("re", 1), 600_000)
            .await
            .unwrap();
        let ivy = store.sessions(APP, "ivy").await.unwrap();
        store
            .renew_gate(&incarnated("re", 2), 600_000)
            .await
            .unwrap();
        if ivy.is_empty() {
            cleaned = true;
            break;
        }
        let _ = store.sessions(APP, "ivy").await.unwrap();
    }
    assert!(cleaned, "old incarnation's session still in presence");
}

/// The directory sums only the shards of the newest incarnation: shards the
/// old process had and the new one has not yet renewed are not counted.
async fn directory_counts_only_the_current_incarnation(store: Arc<dyn Store>) {
    let shard = |n: u32, conns: u64, incarnation: u64| GateShardStatus {
        incarnation,
        ..status("rd", n, conns)
    };
    store.renew_gate(&shard(0, 3, 7), 60_000).await.unwrap();
    store.renew_gate(&shard(1, 4, 7), 60_000).await.unwrap();
    let find = |gates: Vec<tidegate_logic::store::GateInfo>| {
        gates
            .into_iter()
            .find(|g| g.gate_id == "rd")
            .expect("rd live")
    };
    let before = find(store.live_gates().await.unwrap());
    assert_eq!((before.connections, before.incarnation), (7, 7));
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.renew_gate(&shard(0, 1, 8), 60_000).await.unwrap();
    let after = find(store.live_gates().await.unwrap());
    assert_eq!((after.connections, after.incarnation), (1, 8));
}

async fn single_device_policy_kicks_every_other_session(store: Arc<dyn Store>) {
    let a = store
        .add_session_multi(APP, "hal", on("g", 1, "android"))
        .await
        .unwrap();
    let b = store
        .add_session_multi(APP, "hal", on("g1", 2, "ios"))
        .await
        .unwrap();
    let other_app = store
        .add_session_multi(OTHER_APP, "hal", on("g", 9, "ios"))
        .await
        .unwrap();
    let LoginOutcome { record: c, kicked } = store
        .add_session(APP, "hal", on("g2", 3, "web"), DevicePolicy::Single)
        .await
        .unwrap();
    assert_eq!(kicked, vec![a, b]);
    assert!(c.epoch > kicked[1].epoch);
    assert_eq!(store.sessions(APP, "hal").await.unwrap(), vec![c]);
    assert_eq!(
        store.sessions(OTHER_APP, "hal").await.unwrap(),
        vec![other_app]
    );
}

async fn per_platform_policy_kicks_only_the_same_platform(store: Arc<dyn Store>) {
    let a = store
        .add_session_multi(APP, "ivy", on("g", 1, "android"))
        .await
        .unwrap();
    let b = store
        .add_session_multi(APP, "ivy", on("g", 2, "ios"))
        .await
        .unwrap();
    let out = store
        .add_session(APP, "ivy", on("g", 3, "android"), DevicePolicy::PerPlatform)
        .await
        .unwrap();
    assert_eq!(out.kicked, vec![a]);
    assert_eq!(
        store.sessions(APP, "ivy").await.unwrap(),
        vec![b, out.record]
    );
}

async fn concurrent_single_device_logins_leave_exactly_one(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|conn| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .add_session(APP, "jon", on("g", conn, "android"), DevicePolicy::Single)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut logins = Vec::new();
    for t in tasks {
        logins.push(t.await.unwrap());
    }
    let left = store.sessions(APP, "jon").await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    let newest = logins.iter().map(|l| l.record.epoch).max().unwrap();
    assert_eq!(left[0].epoch, newest, "the last login wins");
    // Every other login was kicked exactly once, by some later login.
    let mut kicked: Vec<u64> = logins
        .iter()
        .flat_map(|l| l.kicked.iter().map(|k| k.epoch))
        .collect();
    kicked.sort();
    let mut expected: Vec<u64> = logins
        .iter()
        .map(|l| l.record.epoch)
        .filter(|&e| e != newest)
        .collect();
    expected.sort();
    assert_eq!(kicked, expected);
}

async fn sessions_many_matches_sessions(store: Arc<dyn Store>) {
    for (i, uid) in ["k1", "k2", "k2"].iter().enumerate() {
        store
            .add_session_multi(APP, uid, on("g", i as u64, "ios"))
            .await
            .unwrap();
    }
    let uids: Vec<String> = ["k2", "nobody", "k1", "k2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let many = store.sessions_many(APP, &uids).await.unwrap();
    assert_eq!(many.len(), 4);
    for (uid, got) in uids.iter().zip(&many) {
        assert_eq!(got, &store.sessions(APP, uid).await.unwrap(), "{uid}");
    }
    assert_eq!(many[0].len(), 2);
    assert!(many[1].is_empty());
    assert!(store.sessions_many(APP, &[]).await.unwrap().is_empty());
}

async fn live_gates_sum_shards_and_drop_expired_ones(store: Arc<dyn Store>) {
    store.renew_gate(&status("x", 0, 3), 60_000).await.unwrap();
    store.renew_gate(&status("x", 1, 4), 60_000).await.unwrap();
    let mut drain = status("y", 0, 0);
    drain.draining = true;
    store.renew_gate(&drain, 60_000).await.unwrap();
    store.renew_gate(&status("z", 0, 1), 200).await.unwrap();
    let gates = store.live_gates().await.unwrap();
    let find = |id: &str| gates.iter().find(|g| g.gate_id == id).cloned();
    let x = find("x").expect("x live");
    assert_eq!((x.connections, x.draining), (7, false));
    assert!(x.client_addr.starts_with("10.0.0.1:700"));
    assert!(find("y").expect("y live").draining);
    assert!(find("z").is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gates = store.live_gates().await.unwrap();
    assert!(
        gates.iter().all(|g| g.gate_id != "z"),
        "z expired: {gates:?}"
    );
    assert!(gates.iter().any(|g| g.gate_id == "x"));
}

async fn c2s_ids_strictly_increase(store: Arc<dyn Store>) {
    let mut last = StreamId { ms: 0, seq: 0 };
    for i in 0..200 {
        let id = store.append_c2s(APP, MT, &entry(i), 10_000).await.unwrap();
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
}

async fn read_c2s_pages_exact_binary_entries(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(store.append_c2s(APP, MT, &entry(i), 1_000).await.unwrap());
    }
    store
        .append_c2s(OTHER_APP, MT, &entry(99), 1_000)
        .await
        .unwrap();
    store
        .append_c2s(APP, MsgType(8), &entry(98), 1_000)
        .await
        .unwrap();

    let all = store.read_c2s(APP, MT, None, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.id, ids[i]);
        assert_eq!(e.entry, entry(i as u32), "entry {i} content intact");
    }
    let page = store.read_c2s(APP, MT, Some(ids[3]), 4).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), ids[4..8]);
    assert_eq!(store.read_c2s(APP, MT, None, 2).await.unwrap(), all[..2]);
    assert!(store
        .read_c2s(APP, MT, Some(ids[9]), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.read_c2s(APP, MT, None, 0).await.unwrap().is_empty());
    // A position that is no entry's id still starts right after it.
    let before_first = StreamId {
        ms: ids[0].ms - 1,
        seq: 7,
    };
    let got = store
        .read_c2s(APP, MT, Some(before_first), 1)
        .await
        .unwrap();
    assert_eq!(got[0].id, ids[0]);
    assert!(store
        .read_c2s(AppCode(3), MT, None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.read_c2s(OTHER_APP, MT, None, 10).await.unwrap()[0].entry,
        entry(99)
    );
}

async fn trim_keeps_about_max_len(store: Arc<dyn Store>) {
    let max_len = 100;
    let mut last = None;
    for i in 0..500 {
        last = Some(store.append_c2s(APP, MT, &entry(i), max_len).await.unwrap());
    }
    let left = store.read_c2s(APP, MT, None, 10_000).await.unwrap();
    let n = left.len();
    assert!(
        n >= max_len as usize && n <= max_len as usize + TRIM_SLACK,
        "{n} entries left"
    );
    // Trimming drops the oldest: what is left is the newest suffix.
    assert_eq!(left.last().map(|e| e.id), last);
    assert_eq!(left[0].entry, entry(500 - n as u32));
}

async fn concurrent_appends_get_unique_ids(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_c2s(APP, MT, &entry(i), 100_000).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap().unwrap()), "duplicate id");
    }
    let all = store.read_c2s(APP, MT, None, 1_000).await.unwrap();
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all.iter().map(|e| e.id).collect::<HashSet<_>>(), ids);
}

async fn zero_max_len_is_bad_input(store: Arc<dyn Store>) {
    let got = store.append_c2s(APP, MT, &entry(0), 0).await;
    assert!(matches!(got, Err(StoreError::BadInput(_))), "{got:?}");
}

/// Embedded only: everything acknowledged is on disk; the epoch counter and
/// stream ids continue where they left off.
#[tokio::test]
async fn embedded_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
    lease_test_gates(&*store).await;
    let rec = store
        .add_session_multi(APP, "fay", login(key("g", 0, 1), "d"))
        .await
        .unwrap();
    let id = store.append_c2s(APP, MT, &entry(1), 100).await.unwrap();
    drop(store);

    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
    assert_eq!(store.sessions(APP, "fay").await.unwrap(), vec![rec.clone()]);
    let read = store.read_c2s(APP, MT, None, 10).await.unwrap();
    assert_eq!((read.len(), read[0].id, &read[0].entry), (1, id, &entry(1)));
    let next = store
        .add_session_multi(APP, "fay", login(key("g", 0, 2), "d"))
        .await
        .unwrap();
    assert!(next.epoch > rec.epoch);
    assert!(store.append_c2s(APP, MT, &entry(2), 100).await.unwrap() > id);
}

/// Redis only: nothing listening → `Unavailable`, promptly.
#[tokio::test]
async fn redis_connect_to_nothing_is_unavailable() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let got = timeout(NO_HANG, RedisStore::connect(&url))
        .await
        .expect("no hang");
    assert!(
        matches!(got, Err(StoreError::Unavailable(_))),
        "{:?}",
        got.err()
    );
}

/// Redis only: the server dies under a connected store → every call answers
/// `Unavailable` within a bounded time instead of hanging; once it is back,
/// the same store works again without being rebuilt (§5 case 1).
#[tokio::test]
async fn redis_server_death_is_unavailable_then_recovers() {
    let mut server = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    lease_test_gates(&*store).await;
    store
        .add_session_multi(APP, "gus", login(key("g", 0, 1), "d"))
        .await
        .unwrap();
    server.stop();

    let got = timeout(NO_HANG, store.sessions(APP, "gus"))
        .await
        .expect("no hang");
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let new = login(key("g", 0, 2), "d");
    let got = timeout(NO_HANG, store.add_session_multi(APP, "gus", new))
        .await
        .expect("no hang");
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let got = timeout(NO_HANG, store.append_c2s(APP, MT, &entry(0), 10))
        .await
        .expect("no hang");
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let got = timeout(NO_HANG, store.ping()).await.expect("no hang");
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");

    server.restart();
    let deadline = tokio::time::Instant::now() + NO_HANG;
    while timeout(NO_HANG, store.ping())
        .await
        .expect("no hang")
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted server is empty (no persistence); the store works again
    // (gates re-lease on their next heartbeat, which this stands in for).
    lease_test_gates(&*store).await;
    let rec = store
        .add_session_multi(APP, "gus", login(key("g", 0, 3), "d"))
        .await
        .unwrap();
    assert_eq!(store.sessions(APP, "gus").await.unwrap(), vec![rec]);
}
