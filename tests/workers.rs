//! Gateway processes end to end: `--workers K` supervision and restarts,
//! the descriptor budget across workers, logic outages, and the directory
//! during a drain. Logic and gateways run as separate processes.

mod common;

use common::{free_port, line_addr, signal, token, Backend, LogicProc, Proc};
use std::net::SocketAddr;
use std::time::Duration;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::AppCode;

const APPS: &str = "[[apps]]\ncode = 1\nsecrets = [\"tidegate-dev-secret-app-1\"]\napi_key = \"tidegate-dev-api-key-app-1\"\n";
const START: Duration = Duration::from_secs(30);

async fn login(addr: SocketAddr, uid: &str) -> Result<Client, ClientError> {
    let mut c = Client::connect(addr).await?;
    c.login(AppCode(1), &token(1, uid), "d", "ios").await?;
    Ok(c)
}

/// Logs in, retrying for up to `tries` × 100 ms while gateways (re)start or
/// their links come up.
async fn login_retrying(addr: SocketAddr, uid: &str, tries: u32) -> Client {
    let mut left = tries;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), login(addr, uid)).await {
            Ok(Ok(c)) => return c,
            _ if left > 0 => {
                left -= 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => panic!("{uid} could not log in: {e}"),
            Err(_) => panic!("{uid} could not log in: timed out"),
        }
    }
}

/// A config file in `dir` holding `text`; its path.
fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("tidegate.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `tidegate gateway` linked to `logic` on an ephemeral client port.
fn gateway(cfg: &str, logic: &LogicProc) -> (Proc, SocketAddr) {
    let link = logic.link.to_string();
    let gw = Proc::start(&[
        "gateway",
        "--config",
        cfg,
        "--logic",
        &link,
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let client = gw.wait_line(START, |l| line_addr(l, "client tcp"));
    (gw, client)
}

/// `tidegate gateway --workers 2` on a fixed client port, through `sh` so a
/// test can set limits first (`prefix`, e.g. `ulimit -n 160 &&`).
fn supervisor(cfg: &str, logic: &LogicProc, prefix: &str) -> (Proc, SocketAddr, [u32; 2]) {
    let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Admin port 0: each worker binds its own. A fixed one would give worker
    // 1 the next port up, which another test's process may hold.
    let script = format!(
        "{prefix} exec {} gateway --config {cfg} --workers 2 --shards 1 --logic {} --client-addr {client} --admin-addr 127.0.0.1:0",
        common::BIN,
        logic.link
    );
    let sup = Proc::start_shell(&script);
    let mut pids = [0u32; 2];
    sup.wait_line(START, |l| {
        for (i, pid) in pids.iter_mut().enumerate() {
            if let Some(p) = worker_started(l, i) {
                *pid = p;
            }
        }
        (l == "ready").then_some(())
    });
    assert!(pids.iter().all(|p| *p != 0), "{pids:?}");
    (sup, client, pids)
}

fn worker_started(line: &str, index: usize) -> Option<u32> {
    let rest = line.strip_prefix(&format!("worker {index} pid "))?;
    rest.strip_suffix(" started")?.parse().ok()
}

#[tokio::test]
async fn a_killed_worker_is_restarted_and_its_clients_log_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&dir, APPS);
    let logic = LogicProc::start(&Backend::Embedded, APPS);
    let (mut sup, client, pids) = supervisor(&cfg, &logic, "");

    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(login_retrying(client, &format!("u{i}"), 50).await);
    }

    signal(pids[0], "KILL");
    let restarted = sup.wait_line(START, |l| worker_started(l, 0));
    assert_ne!(restarted, pids[0]);

    // Clients of the killed worker lost their connection; everyone can log
    // in again (SO_REUSEPORT sends them to a live listener).
    let mut lost = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        if c.keepalive().await.is_err() {
            lost += 1;
            *c = login_retrying(client, &format!("u{i}"), 100).await;
        }
    }
    assert!(
        lost > 0,
        "SO_REUSEPORT should have given worker 0 some of 20 clients"
    );
    for c in &mut clients {
        c.keepalive()
            .await
            .expect("every client has a live session again");
    }

    signal(sup.pid(), "TERM");
    assert_eq!(
        sup.wait_exit(Duration::from_secs(20)),
        Some(0),
        "supervisor drains and exits"
    );
}

#[tokio::test]
async fn a_worker_near_its_descriptor_limit_hands_new_connections_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    // Each worker stops accepting at 160 - 40 = 120 clients and resumes at 100.
    let cfg = config_file(
        &dir,
        &format!("[gateway]\nfd_reserve = 40\nfd_low_water_gap = 20\n{APPS}"),
    );
    let logic = LogicProc::start(&Backend::Embedded, APPS);
    let (_sup, client, _) = supervisor(&cfg, &logic, "ulimit -n 160 &&");

    // 200 clients: more than one worker may hold, fewer than two.
    let mut clients = Vec::new();
    for i in 0..200 {
        clients.push(login_retrying(client, &format!("f{i}"), 30).await);
    }
    for c in &mut clients {
        c.keepalive().await.expect("every client is served");
    }
}

#[tokio::test]
async fn without_logic_sessions_stay_up_and_new_logins_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&dir, APPS);
    let logic = LogicProc::start(&Backend::Embedded, APPS);
    let (_gw, client) = gateway(&cfg, &logic);
    let mut alice = login_retrying(client, "alice", 50).await;

    drop(logic); // SIGKILL: no goodbye on the link.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice
        .keepalive()
        .await
        .expect("keepalives are answered by the gateway alone");
    match login(client, "bob").await {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, tidegate_proto::ErrorCode::Unavailable.code())
        }
        Ok(_) => panic!("login without logic must fail"),
        Err(e) => panic!("expected ERROR(unavailable), got {e}"),
    }
    alice.keepalive().await.expect("still up");
}

#[tokio::test]
async fn a_draining_gateway_leaves_the_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Its lease outlives the drain (15 s default); the directory must still
    // stop handing the gateway out the moment it starts draining.
    let cfg = config_file(&dir, &format!("[gateway]\ndrain_timeout_s = 30\n{APPS}"));
    let logic = LogicProc::start(&Backend::Embedded, APPS);
    let (mut gw, client) = gateway(&cfg, &logic);
    // A connected client, kicked with KICKOUT(draining) on SIGTERM.
    let _client = login_retrying(client, "stayer", 50).await;
    let listed_port = || async {
        let r = reqwest::get(logic.url("/v1/gate?app=1&uid=x"))
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        body["tcp"]
            .as_str()
            .and_then(|s| s.rsplit(':').next())
            .map(str::to_string)
    };
    let port = client.port().to_string();
    let mut listed = false;
    for _ in 0..100 {
        if listed_port().await.as_deref() == Some(&port) {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "the gateway is in the directory");

    signal(gw.pid(), "TERM");
    let started = std::time::Instant::now();
    while listed_port().await.as_deref() == Some(&port) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still handed out while draining"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = gw.wait_exit(Duration::from_secs(1));
}
