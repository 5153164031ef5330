//! Seconds-long `tidegate bench peers` runs against Mosquitto and against
//! nginx + nchan (tests/run installs the Debian packages): both sides
//! measured, ratios reported, every server it started (and nginx's workers)
//! stopped afterwards, and the hard deadline holds.

mod common;

use common::BIN;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn peers(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["bench", "peers"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tidegate bench peers")
}

#[test]
fn peers_run_reports_both_sides_and_ratios_then_stops_its_servers() {
    peer_run(&[], "mosquitto version");
}

#[test]
fn nchan_peer_run_reports_both_sides_and_stops_nginx_and_its_workers() {
    let r = peer_run(&["--peer", "nchan"], "nginx/");
    assert_eq!(r["peer_kind"], "nchan");
}

/// A 200-connection, 3-message run against the peer `args` choose: both
/// sides hold every connection and get every message, ratios are reported,
/// and every process the run started is gone afterwards.
fn peer_run(args: &[&str], peer_server: &str) -> Value {
    let mut all = vec!["--connections", "200", "--messages", "3", "--settle-s", "1"];
    all.extend_from_slice(args);
    let started_before = nginx_workers();
    let out = peers(&all);
    assert!(
        out.status.success(),
        "bench peers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    for side in ["tidegate", "peer"] {
        let s = &r[side];
        assert_eq!(s["idle"]["held"], 200, "{side}: {s}");
        assert!(
            s["idle"]["bytes_per_conn"].as_f64().is_some(),
            "{side}: {s}"
        );
        assert_eq!(s["fanout"]["expected"], 600, "{side}: {s}");
        assert_eq!(s["fanout"]["delivered"], 600, "{side}: {s}");
        assert_eq!(s["fanout"]["latency"]["count"], 600, "{side}: {s}");
        assert_eq!(s["fanout"]["send_latency"]["count"], 3, "{side}: {s}");
        assert!(s["fanout"]["msgs_per_s"].as_f64().unwrap() > 0.0);
        // The server it started is gone (killed and reaped).
        let pid = s["pid"].as_u64().expect("pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{side} server {pid} still running"
        );
    }
    let server = r["peer"]["server"].as_str().unwrap();
    assert!(server.starts_with(peer_server), "{server}");
    // No worker process outlived its server (nginx's would, if its master
    // were SIGKILLed). Other tests' runs may start and stop their own.
    let orphans: Vec<u32> = nginx_workers()
        .into_iter()
        .filter(|p| !started_before.contains(p))
        .filter(|p| parent_of(*p) == Some(1))
        .collect();
    assert!(orphans.is_empty(), "orphaned nginx workers: {orphans:?}");
    assert_eq!(r["ratios"]["connections_held"], 1.0);
    for k in ["bytes_per_conn", "fanout_msgs_per_s", "p99"] {
        assert!(r["ratios"][k].as_f64().unwrap() > 0.0, "ratio {k}: {r}");
    }
    assert_eq!(r["targets"]["all_delivered"], true);
    r
}

/// Pids of processes named `nginx` (master or worker).
fn nginx_workers() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "nginx")
        })
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn peers_run_stops_at_its_hard_deadline() {
    // A "gateway" that accepts and never answers: the login storm hangs
    // until the deadline ends the run.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let t0 = Instant::now();
    let out = peers(&[
        "--target",
        &target,
        "--http",
        &target,
        "--connections",
        "1",
        "--settle-s",
        "0",
        "--deadline-s",
        "10",
    ]);
    let took = t0.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hard deadline"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    drop(silent);
}

#[test]
fn peers_refuses_non_loopback_and_unbounded_runs() {
    let out = peers(&["--target", "192.0.2.1:7000", "--http", "192.0.2.1:7180"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let out = peers(&["--connections", "100001"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connections is 1 to 100000"));
}
