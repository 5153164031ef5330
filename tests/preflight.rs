//! `tidegate preflight` on the real binary. It judges this host's live
//! settings, so these tests assert only what holds on any machine that can
//! run the gateway: a small target passes, an impossible one is blocked by
//! memory and `fs.nr_open` (no kernel lets one process hold 10^10 files),
//! and bad input is refused. Advisory statuses are the host's business.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

/// Small enough for a default 1024-descriptor soft limit with the 256 reserve.
const SMALL: &str = "500";
const IMPOSSIBLE: &str = "10000000000";

/// Every setting the report covers.
const SETTINGS: [&str; 15] = [
    "fs.file-max",
    "fs.nr_open",
    "nofile (RLIMIT_NOFILE)",
    "memory",
    "memlock (RLIMIT_MEMLOCK)",
    "io_uring",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_migrate_req",
    "net.ipv4.tcp_ehash_entries",
];

fn preflight(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("preflight")
        .args(args)
        .output()
        .expect("run tidegate preflight")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_small_target_passes_and_its_json_parses() {
    let out = preflight(&["--connections", SMALL, "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], true);
    assert_eq!(v["target"]["connections"], 500);
    assert_eq!(v["target"]["workers"], 1);
    assert_eq!(v["target"]["peers"], "remote");
    assert_eq!(v["target"]["fd_reserve"], 256);
    assert!(v["target"]["shards"].as_u64().unwrap() >= 1);
    assert_eq!(v["blocking"].as_array().unwrap().len(), 0);
    assert_eq!(v["estimate"]["fds_per_worker"], 756);
    assert!(v["estimate"]["memory_bytes"].as_u64().unwrap() > 500 * 1443);
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["setting"].as_str().unwrap())
        .collect();
    assert_eq!(names, SETTINGS);
    for c in checks {
        assert!(c["now"].is_string() && c["recommended"].is_string(), "{c}");
        assert!(c["why"].as_str().is_some_and(|w| !w.is_empty()), "{c}");
        let status = c["status"].as_str().unwrap();
        assert!(["ok", "advisory"].contains(&status), "{c}");
        // Whatever is not ok says how to fix it.
        assert_eq!(status == "ok", c["fix"].is_null(), "{c}");
    }
}

#[test]
fn the_gateway_shape_comes_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tidegate.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nshards = 3\nio_memory_kib = 256\nfd_reserve = 100\n",
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let out = preflight(&["--config", &cfg, "--connections", SMALL, "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target"]["shards"], 3);
    assert_eq!(v["target"]["io_memory_kib"], 256);
    assert_eq!(v["estimate"]["fds_per_worker"], 600);
}

#[test]
fn the_table_names_every_setting() {
    let out = preflight(&["--connections", SMALL, "--workers", "2"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.starts_with("tidegate preflight: 500 connections, 2 gateway processes"),
        "{table}"
    );
    let header = table.lines().find(|l| l.starts_with("setting")).unwrap();
    for column in ["now", "recommended", "status", "fix"] {
        assert!(header.contains(column), "{header}");
    }
    for setting in SETTINGS {
        assert!(
            table.lines().any(|l| l.starts_with(setting)),
            "{setting} missing:\n{table}"
        );
    }
    assert!(
        table.contains("result: nothing blocks the target"),
        "{table}"
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn an_impossible_target_exits_1_and_names_what_blocks() {
    let out = preflight(&["--connections", IMPOSSIBLE]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one summary line: {stderr}");
    for setting in ["memory", "fs.nr_open", "nofile (RLIMIT_NOFILE)"] {
        assert!(stderr.contains(setting), "{setting} not named: {stderr}");
    }
    let table = text(&out.stdout);
    let memory = table.lines().find(|l| l.starts_with("memory")).unwrap();
    assert!(memory.contains("BLOCKING"), "{memory}");

    let out = preflight(&["--connections", IMPOSSIBLE, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], false);
    let blocking: Vec<&str> = v["blocking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(blocking.contains(&"memory"), "{blocking:?}");
    assert!(blocking.contains(&"fs.nr_open"), "{blocking:?}");
    let nr_open = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["setting"] == "fs.nr_open")
        .unwrap();
    assert_eq!(nr_open["status"], "blocking");
    // Past what any kernel allows one process, only more processes help.
    assert!(
        nr_open["fix"].as_str().unwrap().contains("--workers"),
        "{nr_open}"
    );
}

#[test]
fn zero_connections_or_workers_are_refused() {
    let out = preflight(&["--connections", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--connections"), "{stderr}");
    assert!(stderr.contains("at least 1"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = preflight(&["--connections", "1000", "--workers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--workers"), "{stderr}");
    assert!(stderr.contains("1 to 64"), "{stderr}");

    let out = preflight(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--connections"));
}
