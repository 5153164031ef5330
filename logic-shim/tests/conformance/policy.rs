//! Device policy cases: which older sessions a login replaces, decided
//! atomically with the login.

use super::*;

pub(super) async fn single_device_policy_kicks_every_other_session(store: Arc<dyn Store>) {
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

pub(super) async fn per_platform_policy_kicks_only_the_same_platform(store: Arc<dyn Store>) {
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

pub(super) async fn concurrent_single_device_logins_leave_exactly_one(store: Arc<dyn Store>) {
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
