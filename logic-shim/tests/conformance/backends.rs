//! Backend-specific cases: embedded durability across reopen, Redis
//! unavailability and recovery.

use super::*;

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

/// Redis only: each logic instance keeps the gate leases it last read for a
/// moment (`store/redis/leases.rs`). Two instances on one server: what one
/// does to the leases never makes the other read a live session as
/// offline, and never keeps an ended lease's sessions online.
#[tokio::test]
async fn redis_lease_views_never_hide_a_live_session_nor_keep_an_ended_lease() {
    let server = RedisServer::start();
    let reader: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    let writer: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    lease_test_gates(&*writer).await;
    let on_g = writer
        .add_session_multi(APP, "hal", login(key("g", 0, 1), "d"))
        .await
        .unwrap();
    // The reader's view now knows the test gates only.
    assert_eq!(
        reader.sessions(APP, "hal").await.unwrap(),
        vec![on_g.clone()]
    );

    // A gate the view has never seen comes up (through the other instance)
    // and a session logs in on it: online at once for the reader.
    writer
        .renew_gate(&status("fresh", 0, 1), 600_000)
        .await
        .unwrap();
    let on_fresh = writer
        .add_session_multi(APP, "hal", login(key("fresh", 0, 2), "d2"))
        .await
        .unwrap();
    assert_eq!(
        reader.sessions(APP, "hal").await.unwrap(),
        vec![on_g.clone(), on_fresh.clone()]
    );

    // A short lease the reader has viewed ends: offline at once after its
    // end, though the view is younger than its age.
    writer
        .renew_gate(&status("brief", 0, 1), 150)
        .await
        .unwrap();
    let on_brief = writer
        .add_session_multi(APP, "ida", login(key("brief", 0, 3), "d"))
        .await
        .unwrap();
    assert_eq!(reader.sessions(APP, "ida").await.unwrap(), vec![on_brief]);
    tokio::time::sleep(Duration::from_millis(160)).await;
    assert!(reader.sessions(APP, "ida").await.unwrap().is_empty());

    // A gate restarts under the same id, renewed through the other
    // instance: its new incarnation's sessions are online for the reader
    // at once, and the old one's are offline once the view is past its age.
    writer
        .renew_gate(
            &GateShardStatus {
                incarnation: INC + 1,
                ..status("fresh", 0, 1)
            },
            600_000,
        )
        .await
        .unwrap();
    let reborn = writer
        .add_session_multi(
            APP,
            "jay",
            NewSession {
                incarnation: INC + 1,
                ..login(key("fresh", 0, 2), "d")
            },
        )
        .await
        .unwrap();
    assert_eq!(reader.sessions(APP, "jay").await.unwrap(), vec![reborn]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(reader.sessions(APP, "hal").await.unwrap(), vec![on_g]);
    // Renewed through the reader itself, a restart drops its view at once.
    reader
        .renew_gate(
            &GateShardStatus {
                incarnation: INC + 2,
                ..status("fresh", 0, 1)
            },
            600_000,
        )
        .await
        .unwrap();
    assert!(reader.sessions(APP, "jay").await.unwrap().is_empty());
}
