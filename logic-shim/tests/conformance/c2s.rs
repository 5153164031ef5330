//! c2s stream cases: ids, paging, trimming, concurrency.

use super::*;

pub(super) async fn c2s_ids_strictly_increase(store: Arc<dyn Store>) {
    let mut last = StreamId { ms: 0, seq: 0 };
    for i in 0..200 {
        let id = store.append_c2s(APP, MT, &entry(i), 10_000).await.unwrap();
        assert!(id > last, "id {id} after {last}");
        last = id;
    }
}

pub(super) async fn read_c2s_pages_exact_binary_entries(store: Arc<dyn Store>) {
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

pub(super) async fn trim_keeps_about_max_len(store: Arc<dyn Store>) {
    let max_len = 100;
    let mut last = None;
    for i in 0..500 {
        last = Some(store.append_c2s(APP, MT, &entry(i), max_len).await.unwrap());
    }
    assert_newest_kept(&store, max_len, last, 500).await;
}

/// Checks that the stream was trimmed to about `max_len` and that what is
/// left is the newest suffix: entries up to `entry(end - 1)`, last id `last`.
async fn assert_newest_kept(
    store: &Arc<dyn Store>,
    max_len: u64,
    last: Option<StreamId>,
    end: u32,
) {
    let left = store.read_c2s(APP, MT, None, 10_000).await.unwrap();
    let n = left.len();
    assert!(
        n >= max_len as usize && n <= max_len as usize + TRIM_SLACK,
        "{n} entries left"
    );
    assert_eq!(left.last().map(|e| e.id), last);
    assert_eq!(left[0].entry, entry(end - n as u32));
}

pub(super) async fn concurrent_appends_get_unique_ids(store: Arc<dyn Store>) {
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

pub(super) async fn zero_max_len_is_bad_input(store: Arc<dyn Store>) {
    let got = store.append_c2s(APP, MT, &entry(0), 0).await;
    assert!(matches!(got, Err(StoreError::BadInput(_))), "{got:?}");
}

pub(super) async fn a_batch_appends_in_order_and_refuses_items_alone(store: Arc<dyn Store>) {
    let append = |app, msgtype, i, max_len| C2sAppend {
        app,
        msgtype,
        entry: entry(i),
        max_len,
    };
    let first = store.append_c2s(APP, MT, &entry(0), 10_000).await.unwrap();
    let batch: Vec<C2sAppend> = (1..=300)
        .map(|i| match i {
            7 => append(APP, MT, i, 0),
            8 => append(OTHER_APP, MT, i, 10_000),
            _ => append(APP, MT, i, 10_000),
        })
        .collect();
    let got = store.append_c2s_many(&batch).await;
    assert_eq!(got.len(), batch.len(), "one result per item");
    assert!(
        matches!(got[6], Err(StoreError::BadInput(_))),
        "{:?}",
        got[6]
    );
    let ids: Vec<StreamId> = got
        .iter()
        .enumerate()
        .filter(|(i, _)| ![6, 7].contains(i))
        .map(|(_, r)| *r.as_ref().unwrap())
        .collect();
    assert!(ids[0] > first && ids.windows(2).all(|w| w[0] < w[1]));
    let stream = store.read_c2s(APP, MT, Some(first), 1_000).await.unwrap();
    assert_eq!(stream.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let contents: Vec<C2sEntry> = (1..=300)
        .filter(|i| ![7, 8].contains(i))
        .map(entry)
        .collect();
    assert_eq!(
        stream.into_iter().map(|e| e.entry).collect::<Vec<_>>(),
        contents,
        "in batch order, intact"
    );
    let other = store.read_c2s(OTHER_APP, MT, None, 10).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].entry, entry(8));
    assert!(store.append_c2s_many(&[]).await.is_empty());
}

pub(super) async fn batched_streams_page_and_trim_like_single_appends(store: Arc<dyn Store>) {
    let batch = |from: u32, n: u32, max_len| -> Vec<C2sAppend> {
        (from..from + n)
            .map(|i| C2sAppend {
                app: APP,
                msgtype: MT,
                entry: entry(i),
                max_len,
            })
            .collect()
    };
    for from in [0, 300] {
        let got = store.append_c2s_many(&batch(from, 300, 10_000)).await;
        assert!(got.iter().all(Result::is_ok));
    }
    let all = store.read_c2s(APP, MT, None, 10_000).await.unwrap();
    assert_eq!(all.len(), 600);
    // Pages that start anywhere, inside a batch or across two, in steps
    // that are no batch's or node's size.
    let mut after = None;
    let mut paged = Vec::new();
    loop {
        let page = store.read_c2s(APP, MT, after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    for start in [0, 1, 127, 128, 129, 299, 300, 301, 598] {
        let page = store
            .read_c2s(APP, MT, Some(all[start].id), 3)
            .await
            .unwrap();
        let want: Vec<_> = all[start + 1..].iter().take(3).cloned().collect();
        assert_eq!(page, want, "after entry {start}");
    }

    let max_len = 100;
    let mut last = None;
    for round in 0..5 {
        let got = store
            .append_c2s_many(&batch(1_000 + round * 300, 300, max_len))
            .await;
        last = got.last().cloned().map(Result::unwrap);
    }
    assert_newest_kept(&store, max_len, last, 1_000 + 1_500).await;
}
