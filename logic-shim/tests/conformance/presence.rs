//! Presence cases: epochs, fencing, isolation between users and apps,
//! awkward uids, and batched reads.

use super::*;

pub(super) async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    assert!(["redis", "embedded"].contains(&store.backend()));
}

pub(super) async fn epochs_increase(store: Arc<dyn Store>) {
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

pub(super) async fn concurrent_logins_get_distinct_epochs(store: Arc<dyn Store>) {
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

pub(super) async fn users_and_apps_are_isolated(store: Arc<dyn Store>) {
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

pub(super) async fn add_then_sessions_returns_the_record(store: Arc<dyn Store>) {
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

pub(super) async fn remove_is_fenced_by_epoch(store: Arc<dyn Store>) {
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

pub(super) async fn remove_unknown_session_is_false(store: Arc<dyn Store>) {
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

pub(super) async fn special_uids_work_and_do_not_collide(store: Arc<dyn Store>) {
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

pub(super) async fn sessions_many_matches_sessions(store: Arc<dyn Store>) {
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
