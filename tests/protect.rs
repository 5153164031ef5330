//! Gateway protections end to end (issue: gateway at scale and under
//! attack): each over real sockets against the real binary.

mod common;

use common::{connect_from, metric, signal, token, Backend, Tidegate, DEV_API_KEY};
use serde_json::json;
use std::time::{Duration, Instant};
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::{pb, AppCode, Cmd, ErrorCode, Frame};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn login(c: &mut Client, uid: &str) -> Result<pb::LoginOk, ClientError> {
    c.login(AppCode(1), &token(1, uid), "dev", "ios").await
}

/// The next frame, which must be ERROR; its code.
async fn error_code(c: &mut Client) -> u32 {
    let f = timeout(WAIT, c.recv())
        .await
        .expect("a frame in time")
        .expect("a frame");
    assert_eq!(f.header.cmd, Cmd::Error, "{f:?}");
    f.decode_body::<pb::Error>().unwrap().code
}

async fn closed(c: &mut Client) -> bool {
    loop {
        match timeout(WAIT, c.recv()).await {
            Ok(Err(ClientError::Closed | ClientError::Io(_))) => return true,
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

async fn admin(
    tg: &Tidegate,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .request(method, format!("http://{}{path}", tg.admin))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_flooding_connection_is_throttled_then_closed() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.flow]\nframes_per_s = 5\nframes_burst = 10\naction = \"error\"\nclose_after_violations = 5\n",
    );
    let mut c = tg.logged_in("flooder").await;
    let ka = Frame::empty(tidegate_proto::Header::new(Cmd::Keepalive, AppCode(1), 9)).to_bytes();
    let flood: Vec<u8> = (0..100).flat_map(|_| ka.iter().copied()).collect();
    c.send_raw(&flood).await.unwrap();
    let (mut replies, mut throttled) = (0, 0);
    loop {
        match timeout(WAIT, c.recv()).await.expect("frames, then close") {
            Ok(f) if f.header.cmd == Cmd::Keepalive => replies += 1,
            Ok(f) if f.header.cmd == Cmd::Error => {
                assert_eq!(
                    f.decode_body::<pb::Error>().unwrap().code,
                    ErrorCode::Throttled.code()
                );
                throttled += 1;
            }
            Ok(f) => panic!("unexpected {f:?}"),
            Err(_) => break,
        }
    }
    // The burst passes (login took one token), then 5 violations close it.
    assert_eq!(replies, 9);
    assert_eq!(throttled, 5);
    let m = tg.gateway_metrics().await;
    assert!(
        metric(&m, "tidegate_gateway_closed_total", "throttled") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "tidegate_gateway_throttled_total", "close") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn delay_action_slows_a_sender_without_errors() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.flow]\nframes_per_s = 20\nframes_burst = 5\naction = \"delay\"\n",
    );
    let mut c = tg.logged_in("eager").await;
    let started = Instant::now();
    for _ in 0..24 {
        c.keepalive().await.expect("delayed, not refused");
    }
    // 4 burst tokens left after login, then 20 frames at 20/s: about 1 s.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_per_ip_cap_refuses_extra_connections_and_allowed_ips_bypass_it() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.guard]\nmax_conns_per_ip = 3\n",
    );
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(tg.logged_in(&format!("u{i}")).await);
    }
    let mut fourth = Client::connect(tg.client).await.unwrap();
    assert_eq!(error_code(&mut fourth).await, ErrorCode::Banned.code());
    assert!(closed(&mut fourth).await);
    let m = tg.gateway_metrics().await;
    assert!(
        metric(&m, "tidegate_gateway_rejected_total", "ip_cap") >= 1.0,
        "{m}"
    );

    admin(
        &tg,
        reqwest::Method::PUT,
        "/admin/lists/allow_ips",
        json!({"value": "127.0.0.1"}),
    )
    .await;
    let _fifth = tg.logged_in("u5").await;
    held.pop();
}

#[tokio::test]
async fn blacklists_apply_at_accept_and_login_and_lift_live() {
    let lists_dir = tempfile::tempdir().unwrap();
    let lists = lists_dir.path().join("lists.toml");
    std::fs::write(&lists, "deny_ips = [\"127.0.0.5/32\"]\n").unwrap();
    let tg = Tidegate::up(
        &Backend::Embedded,
        &format!("[gateway.guard]\nlists_file = \"{}\"\n", lists.display()),
    );
    let refused_at_accept = async {
        for _ in 0..50 {
            let stream = connect_from("127.0.0.5", tg.client).await.unwrap();
            let mut c = Client::from_stream(stream).unwrap();
            if let Ok(Ok(f)) = timeout(Duration::from_millis(300), c.recv()).await {
                if f.header.cmd == Cmd::Error {
                    return f.decode_body::<pb::Error>().unwrap().code;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        0
    };
    assert_eq!(refused_at_accept.await, ErrorCode::Banned.code());
    // Other addresses are untouched.
    let stream = connect_from("127.0.0.6", tg.client).await.unwrap();
    let mut ok = Client::from_stream(stream).unwrap();
    login(&mut ok, "bystander")
        .await
        .expect("127.0.0.6 may log in");

    // Lift it by editing the file: no restart, existing sessions stay.
    std::fs::write(&lists, "deny_ips = []\n").unwrap();
    let lifted = async {
        for _ in 0..50 {
            let stream = connect_from("127.0.0.5", tg.client).await.unwrap();
            let mut c = Client::from_stream(stream).unwrap();
            if login(&mut c, "returner").await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(lifted.await, "un-blacklisted within seconds");
    ok.keepalive()
        .await
        .expect("the bystander's session survived the reload");

    // uid list through the admin API: a live session is kicked, a new login refused.
    let mut mallory = tg.logged_in("mallory").await;
    admin(
        &tg,
        reqwest::Method::PUT,
        "/admin/lists/deny_uids",
        json!({"value": "1:mallory"}),
    )
    .await;
    let kick = timeout(WAIT, mallory.recv()).await.unwrap().unwrap();
    assert_eq!(kick.header.cmd, Cmd::Kickout);
    assert_eq!(
        kick.decode_body::<pb::Kickout>().unwrap().reason,
        pb::KickoutReason::Banned as i32
    );
    let mut again = Client::connect(tg.client).await.unwrap();
    match login(&mut again, "mallory").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Banned.code()),
        other => panic!("expected banned, got {other:?}"),
    }
    // The kicked session's close and the refused login's undo reach logic
    // asynchronously; neither may leave mallory online.
    let mut online = true;
    for _ in 0..100 {
        let presence = reqwest::Client::new()
            .get(tg.url("/v1/presence?app=1&uid=mallory"))
            .bearer_auth(DEV_API_KEY)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        online = presence["presence"][0]["online"] == true;
        if !online {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !online,
        "a kicked session and a refused login leave no presence"
    );
    admin(
        &tg,
        reqwest::Method::DELETE,
        "/admin/lists/deny_uids",
        json!({"value": "1:mallory"}),
    )
    .await;
    login(&mut again, "mallory").await.expect("un-banned live");
}

#[tokio::test]
async fn repeated_malformed_frames_earn_a_temporary_ban_that_expires() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.guard]\nban_after_violations = 3\nban_s = 2\n",
    );
    for _ in 0..3 {
        let mut c = Client::connect(tg.client).await.unwrap();
        c.send_raw(b"\x00\x01garbage").await.unwrap();
        assert_eq!(error_code(&mut c).await, ErrorCode::BadFrame.code());
        assert!(closed(&mut c).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut banned = Client::connect(tg.client).await.unwrap();
    assert_eq!(error_code(&mut banned).await, ErrorCode::Banned.code());
    let lists = admin(&tg, reqwest::Method::GET, "/admin/lists", json!({})).await;
    assert_eq!(lists["bans"][0]["ip"], "127.0.0.1");
    let m = tg.gateway_metrics().await;
    assert!(metric(&m, "tidegate_gateway_bans_total", "") >= 1.0, "{m}");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _back = tg.logged_in("reformed").await;
}

#[tokio::test]
async fn a_slow_reader_is_disconnected_and_its_queue_stays_bounded() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway]\nmax_outbound_frames = 16\n[gateway.flow]\nslow_consumer = \"disconnect\"\n",
    );
    let mut sloth = tg.logged_in("sloth").await;
    let http = reqwest::Client::new();
    let content = "x".repeat(60_000);
    // Far more than the socket buffers hold: the queue must fill.
    for _ in 0..400 {
        let r = http
            .post(tg.url("/v1/push"))
            .bearer_auth(DEV_API_KEY)
            .json(&json!({"app": 1, "to": "sloth", "content": content}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let m = tg.gateway_metrics().await;
        if metric(&m, "tidegate_gateway_closed_total", "slow_consumer") >= 1.0 {
            assert!(metric(&m, "tidegate_gateway_queue_full_total", "disconnect") >= 1.0);
            // The slow reader finds its connection gone after what was sent.
            assert!(closed(&mut sloth).await);
            return;
        }
    }
    panic!("the slow reader was never disconnected");
}

#[tokio::test]
async fn sigterm_drains_connected_clients() {
    let mut tg = Tidegate::up(&Backend::Embedded, "[gateway]\ndrain_timeout_s = 5\n");
    let mut a = tg.logged_in("a").await;
    let mut b = tg.logged_in("b").await;
    signal(tg.pid(), "TERM");
    for c in [&mut a, &mut b] {
        let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
        assert_eq!(f.header.cmd, Cmd::Kickout);
        assert_eq!(
            f.decode_body::<pb::Kickout>().unwrap().reason,
            pb::KickoutReason::Draining as i32
        );
        assert!(closed(c).await);
    }
    assert_eq!(
        tg.wait_exit(Duration::from_secs(10)),
        Some(0),
        "exits cleanly after the drain"
    );
}

#[tokio::test]
async fn requests_beyond_the_in_flight_bound_get_busy() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.flow]\nmax_inflight_logic = 1\n",
    );
    let mut c = tg.logged_in("burst").await;
    // 30 acked C2S in one write: the shard decodes them all before logic can
    // answer the first, so all but the first exceed the bound of 1.
    let mut batch = Vec::new();
    for seq in 100..130 {
        let mut h = tidegate_proto::Header::new(Cmd::C2s, AppCode(1), seq);
        h.flags = tidegate_proto::Flags::ACK_REQUESTED;
        let body = pb::Payload {
            content_type: "text/plain".into(),
            content: bytes::Bytes::from_static(b"gps"),
        };
        batch.extend_from_slice(&Frame::new(h, &body).to_bytes());
    }
    c.send_raw(&batch).await.unwrap();
    let (mut acked, mut busy) = (0, 0);
    while acked + busy < 30 {
        let f = timeout(WAIT, c.recv()).await.unwrap().unwrap();
        match f.header.cmd {
            Cmd::C2s => acked += 1,
            Cmd::Error => {
                assert_eq!(
                    f.decode_body::<pb::Error>().unwrap().code,
                    ErrorCode::Busy.code()
                );
                busy += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(acked >= 1 && busy >= 20, "acked {acked}, busy {busy}");
    let m = tg.gateway_metrics().await;
    assert!(
        metric(&m, "tidegate_gateway_rejected_total", "busy") >= 20.0,
        "{m}"
    );
    // Shedding is not fatal: the session goes on once logic has answered.
    c.send_c2s(tidegate_proto::MsgType(0), "text/plain", "later", true)
        .await
        .expect("accepted once the burst is over");
}

#[tokio::test]
async fn accepts_are_shaped_to_the_configured_rate() {
    // Two shards (the harness runs two), each 5 accepts/s after a burst of 1.
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.flow]\naccept_per_s = 5\naccept_burst = 1\n",
    );
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(tg.logged_in(&format!("s{i}")).await);
    }
    // 12 connections at 10/s with 2 in the bursts: at least ~1 s.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn drop_oldest_keeps_a_slow_reader_connected_with_a_bounded_queue() {
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway]\nmax_outbound_frames = 16\n[gateway.flow]\nslow_consumer = \"drop_oldest\"\n",
    );
    let mut sloth = tg.logged_in("sloth").await;
    let http = reqwest::Client::new();
    let content = "x".repeat(60_000);
    let mut pushed = 0;
    while pushed < 400 {
        http.post(tg.url("/v1/push"))
            .bearer_auth(DEV_API_KEY)
            .json(&json!({"app": 1, "to": "sloth", "content": content}))
            .send()
            .await
            .unwrap();
        pushed += 1;
        let m = tg.gateway_metrics().await;
        if metric(&m, "tidegate_gateway_queue_full_total", "drop_oldest") >= 10.0 {
            break;
        }
    }
    let m = tg.gateway_metrics().await;
    assert!(
        metric(&m, "tidegate_gateway_queue_full_total", "drop_oldest") >= 10.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "tidegate_gateway_closed_total", "slow_consumer"),
        0.0
    );
    // The reader wakes up: it gets fewer pushes than were sent, then its
    // keepalive reply — the connection survived.
    sloth.keepalive().await.expect("still connected");
    let mut received = 0;
    while let Ok(Ok(f)) = timeout(Duration::from_millis(300), sloth.recv()).await {
        assert_eq!(f.header.cmd, Cmd::S2c);
        received += 1;
    }
    assert!(
        received < pushed,
        "received {received} of {pushed}: the oldest were dropped"
    );
}
