//! Offline inbox cases (store to many users, paging with a cursor,
//! acknowledgement, exact eviction, expiry, isolation) and the reach totals
//! that count what pushes did.

use super::*;

pub(super) async fn offline_store_read_ack_round_trip(store: Arc<dyn Store>) {
    let users = uids(&["alice", "bob", "x}y{z"]);
    for i in 0..5 {
        let evicted = store
            .store_offline(APP, &users, &inbox_msg(i, 60_000), 100)
            .await
            .unwrap();
        assert_eq!(evicted, vec![0, 0, 0]);
    }
    for uid in &users {
        let page = store.read_offline(APP, uid, None, 100).await.unwrap();
        assert_eq!(page.entries.len(), 5, "{uid}");
        assert!(!page.more);
        assert_eq!(page.cursor, page.entries.last().map(|e| e.id));
        for (i, e) in page.entries.iter().enumerate() {
            assert_eq!(e.message, inbox_msg(i as u32, 60_000).with_expiry(e));
        }
        let ids: Vec<_> = page.entries.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    }

    // Paging: 2 at a time with the cursor.
    let first = store.read_offline(APP, "alice", None, 2).await.unwrap();
    assert_eq!(first.entries.len(), 2);
    assert!(first.more);
    let second = store
        .read_offline(APP, "alice", first.cursor, 2)
        .await
        .unwrap();
    assert_eq!(second.entries[0].message.push, inbox_msg(2, 0).push);

    // Acknowledging the first page deletes exactly it, for alice only.
    let acked = store
        .ack_offline(APP, "alice", first.cursor.unwrap())
        .await
        .unwrap();
    assert_eq!(acked, 2);
    let rest = store.read_offline(APP, "alice", None, 100).await.unwrap();
    assert_eq!(rest.entries.len(), 3);
    assert_eq!(rest.entries[0].message.push, inbox_msg(2, 0).push);
    assert_eq!(
        store
            .read_offline(APP, "bob", None, 100)
            .await
            .unwrap()
            .entries
            .len(),
        5
    );
    // Acking again (a retransmitted ack) deletes nothing more.
    assert_eq!(
        store
            .ack_offline(APP, "alice", first.cursor.unwrap())
            .await
            .unwrap(),
        0
    );
    let last = rest.cursor.unwrap();
    assert_eq!(store.ack_offline(APP, "alice", last).await.unwrap(), 3);
    let empty = store.read_offline(APP, "alice", None, 100).await.unwrap();
    assert_eq!(empty, InboxPage::default());
    assert_eq!(
        store.read_offline(APP, "bob", None, 0).await.unwrap(),
        InboxPage::default()
    );
}

pub(super) async fn offline_inboxes_are_per_app(store: Arc<dyn Store>) {
    store
        .store_offline(APP, &uids(&["carol"]), &inbox_msg(1, 60_000), 10)
        .await
        .unwrap();
    let other = store
        .read_offline(OTHER_APP, "carol", None, 10)
        .await
        .unwrap();
    assert!(other.entries.is_empty(), "app 2 sees nothing of app 1");
    let up_to = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };
    assert_eq!(
        store.ack_offline(OTHER_APP, "carol", up_to).await.unwrap(),
        0
    );
    assert_eq!(
        store
            .read_offline(APP, "carol", None, 10)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    // The largest possible cursor acknowledges everything.
    assert_eq!(store.ack_offline(APP, "carol", up_to).await.unwrap(), 1);
}

pub(super) async fn offline_inbox_evicts_the_oldest_beyond_max_len(store: Arc<dyn Store>) {
    let dave = uids(&["dave"]);
    let mut evicted = 0;
    for i in 0..10 {
        evicted += store
            .store_offline(APP, &dave, &inbox_msg(i, 60_000), 4)
            .await
            .unwrap()[0];
    }
    assert_eq!(evicted, 6, "exactly the excess is evicted and counted");
    let page = store.read_offline(APP, "dave", None, 100).await.unwrap();
    let kept: Vec<_> = page
        .entries
        .iter()
        .map(|e| e.message.push.clone())
        .collect();
    let want: Vec<_> = (6..10).map(|i| inbox_msg(i, 0).push).collect();
    assert_eq!(kept, want, "the newest 4 are kept, in order");
    assert!(matches!(
        store
            .store_offline(APP, &dave, &inbox_msg(0, 60_000), 0)
            .await,
        Err(StoreError::BadInput(_))
    ));
}

pub(super) async fn expired_offline_messages_are_skipped_but_cursor_moves(store: Arc<dyn Store>) {
    let erin = uids(&["erin"]);
    store
        .store_offline(APP, &erin, &inbox_msg(0, 60_000), 100)
        .await
        .unwrap();
    store
        .store_offline(APP, &erin, &inbox_msg(1, 150), 100)
        .await
        .unwrap();
    store
        .store_offline(APP, &erin, &inbox_msg(2, 60_000), 100)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let page = store.read_offline(APP, "erin", None, 2).await.unwrap();
    assert_eq!(page.entries.len(), 1, "message 1 expired: {page:?}");
    assert_eq!(page.entries[0].message.push, inbox_msg(0, 0).push);
    assert!(page.more);
    // The cursor covers the expired message, so the next page starts after it.
    let next = store
        .read_offline(APP, "erin", page.cursor, 2)
        .await
        .unwrap();
    assert_eq!(next.entries.len(), 1);
    assert_eq!(next.entries[0].message.push, inbox_msg(2, 0).push);
    assert!(!next.more);
}

pub(super) async fn concurrent_offline_stores_keep_every_message(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .store_offline(APP, &uids(&["frank"]), &inbox_msg(i, 60_000), 1000)
                .await
                .unwrap()
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), vec![0]);
    }
    let page = store.read_offline(APP, "frank", None, 1000).await.unwrap();
    let mut seen: Vec<_> = page
        .entries
        .iter()
        .map(|e| e.message.push.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 50, "no message lost or merged");
}

fn uids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// An inbox message `i` that expires `ttl_ms` from now; its push bytes
/// cover every byte value.
fn inbox_msg(i: u32, ttl_ms: u64) -> InboxMessage {
    let mut push: Vec<u8> = (0..=255u8).collect();
    push.extend_from_slice(&i.to_be_bytes());
    InboxMessage {
        msgtype: MT,
        expires_ms: tidegate_proto::now_ms() + ttl_ms,
        push: Bytes::from(push),
    }
}

trait WithExpiry {
    /// The same message with the stored entry's expiry (set at store time).
    fn with_expiry(self, stored: &InboxEntry) -> InboxMessage;
}

impl WithExpiry for InboxMessage {
    fn with_expiry(self, stored: &InboxEntry) -> InboxMessage {
        InboxMessage {
            expires_ms: stored.message.expires_ms,
            ..self
        }
    }
}

pub(super) async fn reach_totals_add_up_per_app_and_msgtype(store: Arc<dyn Store>) {
    let counts = |sent, acked| ReachCounts {
        sent,
        acked,
        ..Default::default()
    };
    let delta = |app, msgtype, counts| ReachDelta {
        app,
        msgtype,
        counts,
    };
    assert_eq!(
        store.reach_totals(APP, MT).await.unwrap(),
        ReachCounts::default()
    );
    store
        .add_reach(&[
            delta(APP, MT, counts(3, 1)),
            delta(OTHER_APP, MT, counts(100, 0)),
        ])
        .await
        .unwrap();
    // A second instance's flush adds to the same totals.
    store
        .add_reach(&[
            delta(APP, MT, counts(2, 2)),
            delta(APP, MsgType(8), counts(1, 0)),
        ])
        .await
        .unwrap();
    store.add_reach(&[]).await.unwrap();
    assert_eq!(store.reach_totals(APP, MT).await.unwrap(), counts(5, 3));
    assert_eq!(
        store.reach_totals(APP, MsgType(8)).await.unwrap(),
        counts(1, 0)
    );
    assert_eq!(
        store.reach_totals(OTHER_APP, MT).await.unwrap(),
        counts(100, 0)
    );
}
