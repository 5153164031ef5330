//! Parked connections end to end (`gateway.park_idle_s`): an idle session
//! gives up its task, and everything a session does still works while it is
//! parked, over real sockets against the real binary.

mod common;

use common::{metric, Backend, Tidegate, DEV_API_KEY};
use serde_json::json;
use std::time::{Duration, Instant};
use tidegate_proto::client::ClientError;
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header, MsgType};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
/// Parks after one to two seconds without input.
const PARK_FAST: &str = "[gateway]\npark_idle_s = 1\n";

async fn gauge(tg: &Tidegate, name: &str, label: &str) -> f64 {
    metric(&tg.gateway_metrics().await, name, label)
}

async fn parked(tg: &Tidegate) -> f64 {
    gauge(tg, "tidegate_gateway_parked_connections", "").await
}

/// Waits until `n` connections are parked.
async fn until_parked(tg: &Tidegate, n: f64) {
    let deadline = Instant::now() + WAIT;
    while parked(tg).await != n {
        assert!(
            Instant::now() < deadline,
            "{n} parked: {}",
            parked(tg).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn push(tg: &Tidegate, to: &str, content: &str) {
    let r = reqwest::Client::new()
        .post(tg.url("/v1/push"))
        .bearer_auth(DEV_API_KEY)
        .json(&json!({"app": 1, "to": to, "content": content}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "push: {}", r.status());
}

#[tokio::test]
async fn a_parked_session_still_answers_keepalives_c2s_and_pushes_without_a_task() {
    let tg = Tidegate::up(&Backend::Embedded, PARK_FAST);
    let mut c = tg.logged_in("sleeper").await;
    until_parked(&tg, 1.0).await;
    assert!(gauge(&tg, "tidegate_gateway_parks_total", "").await >= 1.0);

    c.keepalive()
        .await
        .expect("keepalive answered while parked");
    let seq = c
        .send_c2s(MsgType(7), "text/plain", "gps 1,2", true)
        .await
        .expect("c2s acked while parked");
    assert!(seq > 0);
    push(&tg, "sleeper", "order-1").await;
    let got = timeout(WAIT, c.recv_push()).await.unwrap().unwrap();
    assert_eq!(&got.content[..], b"order-1");

    let m = tg.gateway_metrics().await;
    assert_eq!(
        metric(&m, "tidegate_gateway_parked_connections", ""),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "tidegate_gateway_unparks_total", ""), 0.0, "{m}");
    assert!(
        metric(&m, "tidegate_gateway_parked_io_total", "read") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "tidegate_gateway_parked_io_total", "write") >= 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_frame_split_across_writes_wakes_a_parked_session_and_is_handled_once() {
    let tg = Tidegate::up(&Backend::Embedded, PARK_FAST);
    let mut c = tg.logged_in("split").await;
    until_parked(&tg, 1.0).await;
    let frame = Frame::empty(Header::new(Cmd::Keepalive, AppCode(1), 900)).to_bytes();
    c.send_raw(&frame[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_raw(&frame[5..]).await.unwrap();
    let reply = timeout(WAIT, c.recv()).await.unwrap().unwrap();
    assert_eq!((reply.header.cmd, reply.header.seq), (Cmd::Keepalive, 900));
    assert!(gauge(&tg, "tidegate_gateway_unparks_total", "input").await >= 1.0);
    // It parks again once quiet.
    until_parked(&tg, 1.0).await;
}

#[tokio::test]
async fn pushes_beyond_the_socket_buffer_reach_a_parked_reader_whole_and_in_order() {
    let tg = Tidegate::up(&Backend::Embedded, PARK_FAST);
    let mut c = tg.logged_in("bulk").await;
    until_parked(&tg, 1.0).await;
    // Several MB while the client reads nothing: the parking task's send
    // takes part of a batch, the connection's task the rest.
    let body = |i: usize| format!("{i:05}-{}", "y".repeat(50_000));
    let n = 120;
    for i in 0..n {
        push(&tg, "bulk", &body(i)).await;
    }
    for i in 0..n {
        let got = timeout(WAIT, c.recv_push()).await.unwrap().unwrap();
        assert_eq!(got.content.len(), body(i).len(), "push {i} whole");
        assert_eq!(
            &got.content[..5],
            format!("{i:05}").as_bytes(),
            "push {i} in order"
        );
    }
    assert!(gauge(&tg, "tidegate_gateway_unparks_total", "output").await >= 1.0);
}

#[tokio::test]
async fn a_parked_session_is_kicked_by_its_idle_timeout_and_cleaned_up_on_close() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway]\npark_idle_s = 1\nkeepalive_s = 1\nidle_timeout_s = 4\n",
    );
    let mut quiet = tg.logged_in("quiet").await;
    let leaver = tg.logged_in("leaver").await;
    until_parked(&tg, 2.0).await;
    drop(leaver);
    let deadline = Instant::now() + WAIT;
    while gauge(&tg, "tidegate_gateway_sessions", "").await != 1.0 {
        assert!(Instant::now() < deadline, "the leaver's session stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kick = timeout(WAIT, quiet.recv()).await.unwrap().unwrap();
    assert_eq!(kick.header.cmd, Cmd::Kickout);
    assert_eq!(
        kick.decode_body::<pb::Kickout>().unwrap().reason,
        pb::KickoutReason::IdleTimeout as i32
    );
    assert!(matches!(
        timeout(WAIT, quiet.recv()).await.unwrap(),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    let m = tg.gateway_metrics().await;
    assert_eq!(metric(&m, "tidegate_gateway_connections", ""), 0.0, "{m}");
    assert_eq!(
        metric(&m, "tidegate_gateway_parked_connections", ""),
        0.0,
        "{m}"
    );
    assert!(
        metric(&m, "tidegate_gateway_unparks_total", "close") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn parking_off_keeps_every_session_in_its_task() {
    let tg = Tidegate::up(&Backend::Embedded, "[gateway]\npark_idle_s = 0\n");
    let mut c = tg.logged_in("awake").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.keepalive().await.unwrap();
    assert_eq!(parked(&tg).await, 0.0);
    assert_eq!(gauge(&tg, "tidegate_gateway_parks_total", "").await, 0.0);
}

#[tokio::test]
async fn sigterm_drains_parked_sessions() {
    let mut tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway]\npark_idle_s = 1\ndrain_timeout_s = 5\n",
    );
    let mut a = tg.logged_in("a").await;
    let mut b = tg.logged_in("b").await;
    until_parked(&tg, 2.0).await;
    common::signal(tg.pid(), "TERM");
    for c in [&mut a, &mut b] {
        let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
        assert_eq!(f.header.cmd, Cmd::Kickout);
        assert_eq!(
            f.decode_body::<pb::Kickout>().unwrap().reason,
            pb::KickoutReason::Draining as i32
        );
    }
    assert_eq!(tg.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn garbage_to_a_parked_session_gets_an_error_and_a_close() {
    let tg = Tidegate::up(&Backend::Embedded, PARK_FAST);
    let mut c = tg.logged_in("vandal").await;
    until_parked(&tg, 1.0).await;
    c.send_raw(b"\x00\x01 not a frame at all, just bytes")
        .await
        .unwrap();
    let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
    assert_eq!(f.header.cmd, Cmd::Error);
    assert!(matches!(
        timeout(WAIT, c.recv()).await.unwrap(),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    let m = tg.gateway_metrics().await;
    assert!(
        metric(&m, "tidegate_gateway_decode_errors_total", "bad_magic") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "tidegate_gateway_parked_connections", ""),
        0.0,
        "{m}"
    );
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn parking_and_closing_leaks_no_descriptor() {
    let tg = Tidegate::up(&Backend::Embedded, PARK_FAST);
    // Warm up: the first sessions open the store's and links' files.
    drop(tg.logged_in("warm").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = fds(tg.pid());
    for round in 0..3 {
        let mut clients = Vec::new();
        for i in 0..20 {
            clients.push(tg.logged_in(&format!("u{round}-{i}")).await);
        }
        until_parked(&tg, 20.0).await;
        // Half are woken by input first, half leave while parked.
        for c in clients.iter_mut().take(10) {
            c.keepalive().await.unwrap();
        }
        drop(clients);
        let deadline = Instant::now() + WAIT;
        while gauge(&tg, "tidegate_gateway_connections", "").await != 0.0 {
            assert!(Instant::now() < deadline, "connections left open");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The admin HTTP connections of the polls above close a moment after
    // the client's; a leak per parked connection would be 60 or more.
    let deadline = Instant::now() + Duration::from_secs(3);
    while fds(tg.pid()) > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fds(tg.pid()) <= before,
        "{} descriptors, {before} before",
        fds(tg.pid())
    );
}
