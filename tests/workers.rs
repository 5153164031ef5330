//! `tidegate gateway --workers K`: worker processes on one client port,
//! supervised and restarted.

mod common;

use common::{free_port, line_addr, signal, token, Proc};
use std::net::SocketAddr;
use std::time::Duration;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::AppCode;

const APPS: &str = "[[apps]]\ncode = 1\nsecrets = [\"tidegate-dev-secret-app-1\"]\napi_key = \"tidegate-dev-api-key-app-1\"\n";

fn worker_started(line: &str, index: usize) -> Option<u32> {
    let rest = line.strip_prefix(&format!("worker {index} pid "))?;
    rest.strip_suffix(" started")?.parse().ok()
}

async fn login(addr: SocketAddr, uid: &str) -> Result<Client, ClientError> {
    let mut c = Client::connect(addr).await?;
    c.login(AppCode(1), &token(1, uid), "d", "ios").await?;
    Ok(c)
}

#[tokio::test]
async fn a_killed_worker_is_restarted_and_its_clients_log_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tidegate.toml");
    std::fs::write(&cfg, APPS).unwrap();
    let cfg = cfg.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let logic = Proc::start(&[
        "logic",
        "--config",
        &cfg,
        "--data",
        &data,
        "--link-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let link = logic.wait_line(Duration::from_secs(30), |l| line_addr(l, "logic link"));

    let client_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut sup = Proc::start(&[
        "gateway",
        "--config",
        &cfg,
        "--workers",
        "2",
        "--shards",
        "1",
        "--logic",
        &link.to_string(),
        "--client-addr",
        &client_addr.to_string(),
        "--admin-addr",
        &admin,
    ]);
    let mut pids = [0u32; 2];
    sup.wait_line(Duration::from_secs(30), |l| {
        for (i, pid) in pids.iter_mut().enumerate() {
            if let Some(p) = worker_started(l, i) {
                *pid = p;
            }
        }
        (l == "ready").then_some(())
    });
    assert!(pids.iter().all(|p| *p != 0), "{pids:?}");

    // Links come up right after the workers listen; retry briefly.
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut tries = 0;
        loop {
            match login(client_addr, &format!("u{i}")).await {
                Ok(c) => break clients.push(c),
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("login u{i}: {e}"),
            }
        }
    }

    signal(pids[0], "KILL");
    let restarted = sup.wait_line(Duration::from_secs(30), |l| worker_started(l, 0));
    assert_ne!(restarted, pids[0]);

    // Clients of the killed worker lost their connection; everyone can log
    // in again (SO_REUSEPORT sends them to a live listener).
    let mut lost = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        if c.keepalive().await.is_ok() {
            continue;
        }
        lost += 1;
        let mut tries = 0;
        *c = loop {
            match login(client_addr, &format!("u{i}")).await {
                Ok(c) => break c,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("u{i} could not log in again: {e}"),
            }
        };
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
async fn without_logic_sessions_stay_up_and_new_logins_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tidegate.toml");
    std::fs::write(&cfg, APPS).unwrap();
    let cfg = cfg.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let logic = Proc::start(&[
        "logic",
        "--config",
        &cfg,
        "--data",
        &data,
        "--link-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let link = logic.wait_line(Duration::from_secs(30), |l| line_addr(l, "logic link"));
    let gw = Proc::start(&[
        "gateway",
        "--config",
        &cfg,
        "--logic",
        &link.to_string(),
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let client = gw.wait_line(Duration::from_secs(30), |l| line_addr(l, "client tcp"));
    let mut alice = {
        let mut tries = 0;
        loop {
            match login(client, "alice").await {
                Ok(c) => break c,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("login: {e}"),
            }
        }
    };

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
async fn a_worker_near_its_descriptor_limit_hands_new_connections_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tidegate.toml");
    // Each worker stops accepting at 160 - 40 = 120 clients and resumes at 100.
    std::fs::write(
        &cfg,
        format!("[gateway]\nfd_reserve = 40\nfd_low_water_gap = 20\n{APPS}"),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let logic = Proc::start(&[
        "logic",
        "--config",
        &cfg,
        "--data",
        &data,
        "--link-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let link = logic.wait_line(Duration::from_secs(30), |l| line_addr(l, "logic link"));
    let client_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let script = format!(
        "ulimit -n 160 && exec {} gateway --config {cfg} --workers 2 --shards 1 --logic {link} --client-addr {client_addr} --admin-addr {admin}",
        common::BIN
    );
    let sup = Proc::start_shell(&script);
    sup.wait_line(Duration::from_secs(30), |l| (l == "ready").then_some(()));

    // 200 clients: more than one worker may hold, fewer than two.
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut tries = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), login(client_addr, &format!("f{i}")))
                .await
            {
                Ok(Ok(c)) => break clients.push(c),
                _ if tries < 30 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("client {i} never got in: {:?}", other.map(|r| r.map(drop))),
            }
        }
        if i % 50 == 0 {
            eprintln!("{i} clients in");
        }
    }
    for c in &mut clients {
        c.keepalive().await.expect("every client is served");
    }
}

#[tokio::test]
async fn a_draining_gateway_leaves_the_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tidegate.toml");
    // Its lease outlives the drain (15 s default); the directory must still
    // stop handing the gateway out the moment it starts draining.
    std::fs::write(&cfg, format!("[gateway]\ndrain_timeout_s = 30\n{APPS}")).unwrap();
    let cfg = cfg.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let logic = Proc::start(&[
        "logic",
        "--config",
        &cfg,
        "--data",
        &data,
        "--link-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    let (mut link, mut http) = (None, None);
    logic.wait_line(Duration::from_secs(30), |l| {
        link = link.or(line_addr(l, "logic link"));
        http = http.or(line_addr(l, "logic http"));
        (l == "ready").then_some(())
    });
    let (link, http) = (link.unwrap(), http.unwrap());
    let mut gw = Proc::start(&[
        "gateway",
        "--config",
        &cfg,
        "--logic",
        &link.to_string(),
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    let client = gw.wait_line(Duration::from_secs(30), |l| line_addr(l, "client tcp"));
    // A connected client, kicked with KICKOUT(draining) on SIGTERM.
    let mut tries = 0;
    let _stayer = loop {
        match login(client, "stayer").await {
            Ok(c) => break c,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("login: {e}"),
        }
    };
    let gate = || async {
        let r = reqwest::get(format!("http://{http}/v1/gate?app=1&uid=x"))
            .await
            .unwrap();
        let ok = r.status().is_success();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (
            ok,
            body["tcp"]
                .as_str()
                .map(|s| s.rsplit(':').next().unwrap().to_string()),
        )
    };
    let port = client.port().to_string();
    let mut listed = false;
    for _ in 0..100 {
        if gate().await.1.as_deref() == Some(&port) {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "the gateway is in the directory");

    signal(gw.pid(), "TERM");
    let started = std::time::Instant::now();
    loop {
        if gate().await.1.as_deref() != Some(&port) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still handed out while draining"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = gw.wait_exit(Duration::from_secs(1));
}
