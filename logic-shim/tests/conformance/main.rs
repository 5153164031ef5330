//! One conformance suite for every [`Store`] backend: each case is written
//! once against `Arc<dyn Store>` and instantiated per backend by
//! `conformance!`, so tests read `embedded::epochs_increase`,
//! `redis::epochs_increase`. Redis cases run a real redis-server from the
//! testkit. Run: `cargo test -p tidegate-logic --features testkit`.
//!
//! This file holds the fixtures, the instantiating macros and shared
//! helpers; the cases live by concern in `presence.rs`, `policy.rs`,
//! `gates.rs`, `c2s.rs` and `offline.rs`, backend-specific tests in `backends.rs`.

use bytes::Bytes;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidegate_logic::store::embedded::EmbeddedStore;
use tidegate_logic::store::redis::RedisStore;
use tidegate_logic::store::{
    C2sAppend, C2sEntry, DevicePolicy, GateShardStatus, InboxEntry, InboxMessage, InboxPage,
    LoginOutcome, NewSession, ReachCounts, ReachDelta, SessionKey, SessionRecord, Store,
    StoreError, StreamId,
};
use tidegate_logic::testkit::{free_port, RedisCluster, RedisServer};
use tidegate_proto::{AppCode, MsgType};
use tokio::time::timeout;

mod backends;
mod c2s;
mod gates;
mod offline;
mod policy;
mod presence;

use c2s::*;
use gates::*;
use offline::*;
use policy::*;
use presence::*;

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
                a_batch_appends_in_order_and_refuses_items_alone,
                batched_streams_page_and_trim_like_single_appends,
                sessions_of_expired_gates_read_offline_and_are_cleaned,
                restarted_gate_sessions_read_offline_and_are_cleaned,
                directory_counts_only_the_current_incarnation,
                single_device_policy_kicks_every_other_session,
                per_platform_policy_kicks_only_the_same_platform,
                concurrent_single_device_logins_leave_exactly_one,
                sessions_many_matches_sessions,
                live_gates_sum_shards_and_drop_expired_ones,
                offline_store_read_ack_round_trip,
                offline_inboxes_are_per_app,
                offline_inbox_evicts_the_oldest_beyond_max_len,
                expired_offline_messages_are_skipped_but_cursor_moves,
                concurrent_offline_stores_keep_every_message,
                reach_totals_add_up_per_app_and_msgtype,
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

/// A login on `gate` shard 0 from `platform`, with a device id naming both.
fn on(gate: &str, conn: u64, platform: &str) -> NewSession {
    NewSession {
        key: key(gate, 0, conn),
        device: format!("{platform}-{conn}"),
        platform: platform.into(),
        since_ms: 1,
        incarnation: INC,
    }
}
