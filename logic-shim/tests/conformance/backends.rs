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
