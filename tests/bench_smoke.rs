//! A seconds-long smoke of each `tidegate bench` scenario against a real
//! `tidegate up` (the long runs are README commands, not tests).

mod common;

use common::{Backend, Tidegate, BIN};
use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .output()
        .expect("tidegate bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?}: {stderr}");
    // stderr is a pipe here, not a terminal: no progress bar may be drawn.
    assert!(
        !stderr.contains("connect+login") && !stderr.contains("hold (s)"),
        "bench {args:?} drew a progress bar off a terminal: {stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[test]
fn idle_and_push_scenarios_run_and_report() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let target = tg.client.to_string();
    let idle = bench(&[
        "idle",
        "--target",
        &target,
        "--connections",
        "50",
        "--hold-s",
        "1",
        "--gateway-pid",
        &tg.pid().to_string(),
    ]);
    assert_eq!(idle["logged_in"], 50);
    assert!(idle["gateway_bytes_per_conn"].as_f64().is_some());
    assert!(idle["login_latency"]["p99_us"].as_u64().unwrap() > 0);

    let http = tg.http.to_string();
    let push = bench(&[
        "push",
        "--target",
        &target,
        "--http",
        &http,
        "--connections",
        "20",
        "--batch",
        "10",
        "--requests",
        "10",
    ]);
    assert_eq!(push["delivered"], 100, "{push}");
    assert!(push["targets_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(push["latency"]["count"], 100);
}

#[test]
fn idle_broadcast_and_push_spread_over_worker_processes() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let (target, http) = (tg.client.to_string(), tg.http.to_string());
    let idle = bench(&[
        "idle",
        "--target",
        &target,
        "--connections",
        "60",
        "--procs",
        "3",
        "--hold-s",
        "1",
        "--gateway-pid",
        &tg.pid().to_string(),
    ]);
    assert_eq!(idle["bench_procs"], 3, "{idle}");
    assert_eq!(idle["logged_in"], 60, "{idle}");
    // Merged histograms: every worker's logins, not one worker's.
    assert_eq!(idle["login_latency"]["count"], 60, "{idle}");
    assert_eq!(idle["held_at_end"], 60, "{idle}");

    let b = bench(&[
        "broadcast",
        "--target",
        &target,
        "--http",
        &http,
        "--connections",
        "40",
        "--procs",
        "2",
        "--messages",
        "2",
        "--interval-ms",
        "100",
    ]);
    assert_eq!(b["bench_procs"], 2, "{b}");
    assert_eq!(b["deliveries"], 80, "{b}");
    assert_eq!(b["complete_messages"], 2, "{b}");
    assert_eq!(b["delivery_latency"]["count"], 80, "{b}");
    assert_eq!(b["time_to_last"]["count"], 2, "{b}");

    // Push, both loads, with the receivers in worker processes: each is
    // told how many pushes its share should get, and the counts and
    // histograms come back merged.
    let push = bench(&[
        "push",
        "--target",
        &target,
        "--http",
        &http,
        "--connections",
        "50",
        "--procs",
        "2",
        "--batch",
        "20",
        "--requests",
        "7",
        "--concurrency",
        "2",
    ]);
    assert_eq!(push["bench_procs"], 2, "{push}");
    assert_eq!(push["delivered"], 140, "{push}");
    assert_eq!(push["latency"]["count"], 140, "{push}");
    let rated = bench(&[
        "push",
        "--target",
        &target,
        "--http",
        &http,
        "--connections",
        "30",
        "--procs",
        "3",
        "--rate",
        "100",
        "--duration-s",
        "2",
        "--batch",
        "2",
    ]);
    assert_eq!(rated["bench_procs"], 3, "{rated}");
    assert_eq!(rated["requests_ok"], 200, "{rated}");
    assert_eq!(rated["delivered"], 400, "{rated}");
    assert_eq!(rated["latency"]["count"], 400, "{rated}");
}

#[test]
fn connect_storm_reports_logins_and_failures_by_reason() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let target = tg.client.to_string();
    let ok = bench(&[
        "connect",
        "--target",
        &target,
        "--connections",
        "100",
        "--rate",
        "400",
    ]);
    assert_eq!(ok["logged_in"], 100, "{ok}");
    assert_eq!(ok["failures"], serde_json::json!({}), "{ok}");
    assert_eq!(ok["login_latency"]["count"], 100);
    assert!(ok["login_latency"]["p50_us"].as_u64().unwrap() > 0);
    assert!(ok["logins_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(ok["bench_procs"], 1, "{ok}");

    // Spread over worker processes: every worker's logins merged.
    let spread = bench(&[
        "connect",
        "--target",
        &target,
        "--connections",
        "90",
        "--procs",
        "3",
    ]);
    assert_eq!(spread["bench_procs"], 3, "{spread}");
    assert_eq!(spread["logged_in"], 90, "{spread}");
    assert_eq!(spread["login_latency"]["count"], 90, "{spread}");
    assert_eq!(spread["connect_latency"]["count"], 90, "{spread}");

    let refused = bench(&[
        "connect",
        "--target",
        &target,
        "--connections",
        "10",
        "--secret",
        "not-the-secret-of-app-1",
    ]);
    assert_eq!(refused["logged_in"], 0, "{refused}");
    assert_eq!(refused["failures"]["auth_failed"], 10, "{refused}");
}

#[test]
fn rate_driven_push_delivers_every_scheduled_push() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let push = bench(&[
        "push",
        "--target",
        &tg.client.to_string(),
        "--http",
        &tg.http.to_string(),
        "--connections",
        "20",
        "--rate",
        "200",
        "--duration-s",
        "2",
    ]);
    assert_eq!(push["requests_scheduled"], 400, "{push}");
    assert_eq!(push["requests_ok"], 400, "{push}");
    assert_eq!(push["delivered"], 400, "{push}");
    assert_eq!(push["latency"]["count"], 400);
    assert_eq!(push["http_latency"]["count"], 400);
    assert_eq!(push["sender_lag"]["count"], 400);
    assert!(push["latency"]["p99_us"].as_u64().unwrap() > 0);
    let achieved = push["achieved_rate_per_s"].as_f64().unwrap();
    assert!((150.0..=250.0).contains(&achieved), "{push}");
}

#[test]
fn rate_driven_push_waits_for_the_in_flight_cap_and_counts_late_starts() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let push = bench(&[
        "push",
        "--target",
        &tg.client.to_string(),
        "--http",
        &tg.http.to_string(),
        "--connections",
        "10",
        "--rate",
        "10000",
        "--duration-s",
        "1",
        "--max-in-flight",
        "1",
    ]);
    // One request at a time cannot keep 10,000/s (100 µs per HTTP round
    // trip; loopback HTTP takes ~150 µs here in a release build): sends
    // wait for the one permit and start late. Whatever was sent arrives,
    // and what the grace after the schedule did not reach is counted.
    let ok = push["requests_ok"].as_u64().unwrap();
    assert!(ok > 0, "{push}");
    assert_eq!(ok + push["not_sent"].as_u64().unwrap(), 10_000, "{push}");
    assert_eq!(push["delivered"], ok, "{push}");
    assert!(push["late_starts"].as_u64().unwrap() > 0, "{push}");
    assert!(
        push["sender_lag"]["max_us"].as_u64().unwrap() > 1000,
        "{push}"
    );
}

#[test]
fn broadcast_reaches_every_client_and_times_the_last() {
    let tg = Tidegate::up(&Backend::Embedded, "");
    let b = bench(&[
        "broadcast",
        "--target",
        &tg.client.to_string(),
        "--http",
        &tg.http.to_string(),
        "--connections",
        "30",
        "--messages",
        "4",
        "--interval-ms",
        "200",
    ]);
    assert_eq!(b["expected"], 120, "{b}");
    assert_eq!(b["deliveries"], 120, "{b}");
    assert_eq!(b["complete_messages"], 4, "{b}");
    assert_eq!(b["delivery_latency"]["count"], 120);
    assert_eq!(b["time_to_last"]["count"], 4);
    let ttl = b["time_to_last"]["p50_us"].as_u64().unwrap();
    assert!(ttl > 0 && ttl >= b["delivery_latency"]["p50_us"].as_u64().unwrap());
    for m in b["per_message"].as_array().unwrap() {
        assert_eq!(m["server_delivered"], 30, "{m}");
        assert_eq!(m["deliveries"], 30, "{m}");
    }

    // The same with receivers on tokio-uring completions instead of epoll
    // readiness (the default above).
    let uring = bench(&[
        "broadcast",
        "--target",
        &tg.client.to_string(),
        "--http",
        &tg.http.to_string(),
        "--connections",
        "30",
        "--messages",
        "2",
        "--interval-ms",
        "100",
        "--holder-io",
        "uring",
    ]);
    assert_eq!(uring["deliveries"], 60, "{uring}");
    assert_eq!(uring["complete_messages"], 2, "{uring}");
}

/// Frames per second per connection are unlimited, so c2s measures ingest.
const UNTHROTTLED: &str = "[gateway.flow]\nframes_per_s = 0\n";

#[test]
fn c2s_acks_every_frame_flat_out_and_on_schedule() {
    let tg = Tidegate::up(&Backend::Embedded, UNTHROTTLED);
    let target = tg.client.to_string();
    let flat = bench(&[
        "c2s",
        "--target",
        &target,
        "--connections",
        "20",
        "--window",
        "4",
        "--duration-s",
        "2",
    ]);
    let sent = flat["sent"].as_u64().unwrap();
    assert!(sent > 0, "{flat}");
    assert_eq!(flat["acked"], sent, "{flat}");
    assert_eq!(flat["errors"], serde_json::json!({}), "{flat}");
    assert_eq!(flat["unanswered"], 0, "{flat}");
    assert_eq!(flat["ack_latency"]["count"], sent);
    assert!(flat["ingest_per_s"].as_f64().unwrap() > 0.0);

    let paced = bench(&[
        "c2s",
        "--target",
        &target,
        "--connections",
        "20",
        "--per-client-rate",
        "5",
        "--duration-s",
        "2",
    ]);
    assert_eq!(paced["scheduled"], 200, "{paced}");
    assert_eq!(paced["acked"], 200, "{paced}");
    assert_eq!(paced["backlog_dropped"], 0, "{paced}");
    assert!(paced["ack_latency"]["p99_us"].as_u64().unwrap() > 0);

    // Over worker processes: their schedules and histograms add up.
    let spread = bench(&[
        "c2s",
        "--target",
        &target,
        "--connections",
        "30",
        "--procs",
        "3",
        "--per-client-rate",
        "5",
        "--duration-s",
        "2",
    ]);
    assert_eq!(spread["bench_procs"], 3, "{spread}");
    assert_eq!(spread["scheduled"], 300, "{spread}");
    assert_eq!(spread["acked"], 300, "{spread}");
    assert_eq!(spread["ack_latency"]["count"], 300, "{spread}");
    assert_eq!(spread["errors"], serde_json::json!({}), "{spread}");
    let rate = spread["ingest_per_s"].as_f64().unwrap();
    assert!((100.0..=200.0).contains(&rate), "150/s asked: {spread}");
}

#[test]
fn c2s_reports_refusals_by_error_code() {
    // One frame per second per connection: nearly every frame is throttled.
    let tg = Tidegate::up(
        &Backend::Embedded,
        "[gateway.flow]\nframes_per_s = 1\nframes_burst = 2\nclose_after_violations = 0\n",
    );
    let r = bench(&[
        "c2s",
        "--target",
        &tg.client.to_string(),
        "--connections",
        "5",
        "--window",
        "4",
        "--duration-s",
        "1",
    ]);
    let throttled = r["errors"]["throttled"].as_u64().unwrap_or(0);
    assert!(throttled > 0, "{r}");
    assert_eq!(
        r["acked"].as_u64().unwrap() + throttled,
        r["sent"].as_u64().unwrap(),
        "{r}"
    );
}

#[test]
fn report_renders_result_files_as_one_html_page() {
    let dir = tempfile::tempdir().unwrap();
    let idle = dir.path().join("idle.json");
    std::fs::write(
        &idle,
        r#"{"requested": 50, "logged_in": 50, "failures": {}, "login_rate_per_s": 900.5,
            "login_latency": {"count": 50, "p50_us": 800, "p90_us": 1500, "p99_us": 2100, "p999_us": 2100, "max_us": 2100},
            "gateway_bytes_per_conn": 1500.0,
            "samples": [{"t_s": 1.0, "gateway_rss": 9000000, "tcp_inuse": 100},
                        {"t_s": 2.0, "gateway_rss": 9100000, "tcp_inuse": 100}]}"#,
    )
    .unwrap();
    let other = dir.path().join("other <b>.json");
    std::fs::write(&other, r#"{"what": "<script>alert(1)</script>", "n": 3}"#).unwrap();
    let out = dir.path().join("report.html");
    let run = Command::new(BIN)
        .args(["bench", "report", "--title", "smoke", "--out"])
        .arg(&out)
        .arg(&idle)
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(&out).expect("the report was written");
    assert!(html.contains("<svg"), "{html}");
    assert!(html.contains("idle.json") && html.contains("other &lt;b&gt;.json"));
    assert!(!html.contains("<script") && !html.contains("https://"));

    let missing = Command::new(BIN)
        .args(["bench", "report", "--out"])
        .arg(&out)
        .arg(dir.path().join("missing.json"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.json"));
}

#[test]
fn floor_measures_the_kernel_alone_over_two_worker_processes() {
    // No server: the scenario opens its own loopback pairs.
    let r = bench(&["floor", "--pairs", "400", "--procs", "2", "--rounds", "3"]);
    assert_eq!(r["pairs"], 400);
    assert_eq!(r["procs"], 2);
    assert_eq!(r["short"], 0, "{r}");
    for key in [
        "connect_cpu_us",
        "roundtrip_cpu_us",
        "send_cpu_us",
        "recv_cpu_us",
    ] {
        let us = r[key].as_f64().unwrap();
        assert!(us > 0.0 && us < 10_000.0, "{key}: {r}");
    }
    let fanout = r["fanout_s"].as_f64().unwrap();
    assert!(fanout > 0.0 && fanout < 30.0, "{r}");
    assert!(r["login_bound_per_s"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn hiccup_probes_every_cpu_without_a_server() {
    let r = bench(&["hiccup", "--duration-s", "1"]);
    let cpus = r["per_cpu"].as_array().unwrap();
    assert!(!cpus.is_empty(), "{r}");
    let total: u64 = cpus
        .iter()
        .map(|c| c["stall"]["count"].as_u64().unwrap())
        .sum();
    assert!(total > 100, "{r}");
    assert_eq!(r["stall"]["count"].as_u64().unwrap(), total, "{r}");
    assert!(r["host_open_files_start"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn bench_refuses_absurd_values_up_front() {
    for args in [
        &["push", "--rate", "1000000000", "--duration-s", "1"][..],
        &["push", "--rate", "100", "--duration-s", "100000"],
        &["c2s", "--window", "0"],
        &["broadcast", "--messages", "1000000"],
        &["connect", "--connections", "0"],
        &["floor", "--pairs", "0"],
        &["floor", "--bytes", "100000"],
        &["hiccup", "--duration-s", "0"],
        &["hiccup", "--sleep-us", "1"],
        &["push", "--rate", "10", "--http", "192.0.2.1:7180"],
    ] {
        let out = Command::new(BIN).arg("bench").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--") || err.contains("loopback"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn bench_refuses_non_loopback_targets() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "idle",
            "--target",
            "192.0.2.1:7000",
            "--connections",
            "1",
            "--hold-s",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
