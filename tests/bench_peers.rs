//! A seconds-long `tidegate bench peers` against Mosquitto (tests/run
//! installs the Debian package): both sides measured, ratios reported,
//! every server it started stopped afterwards, and the hard deadline holds.

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
    let out = peers(&["--connections", "200", "--messages", "3", "--settle-s", "1"]);
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
    assert!(r["peer"]["server"]
        .as_str()
        .unwrap()
        .starts_with("mosquitto version"));
    assert_eq!(r["ratios"]["connections_held"], 1.0);
    for k in ["bytes_per_conn", "fanout_msgs_per_s", "p99"] {
        assert!(r["ratios"][k].as_f64().unwrap() > 0.0, "ratio {k}: {r}");
    }
    assert_eq!(r["targets"]["all_delivered"], true);
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
