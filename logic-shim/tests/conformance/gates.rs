//! Gate lease cases: expired gates and restarted gates (incarnations)
//! read offline, and the directory of live gates.

use super::*;

pub(super) async fn sessions_of_expired_gates_read_offline_and_are_cleaned(store: Arc<dyn Store>) {
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
pub(super) async fn restarted_gate_sessions_read_offline_and_are_cleaned(store: Arc<dyn Store>) {
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
pub(super) async fn directory_counts_only_the_current_incarnation(store: Arc<dyn Store>) {
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

pub(super) async fn live_gates_sum_shards_and_drop_expired_ones(store: Arc<dyn Store>) {
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
