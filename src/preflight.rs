//! `tidegate preflight --connections N`: can this host hold N client
//! connections as it is configured now? It reads the live kernel settings
//! and process limits ([`live`]), judges them for the target with pure
//! functions ([`files`], [`memory`] and [`ring`] for what can block the
//! target, [`network`] for what only costs performance), and prints each
//! setting with its fix ([`render`]). The production values and their
//! reasons live in `tuning/`, whose README sizes every setting per
//! connection count the same way this module does.

mod files;
mod live;
mod memory;
mod network;
mod render;
mod ring;

use live::{PortRange, Readings, RingProbe, Triple};

use clap::{Args, ValueEnum};
use serde::Serialize;

/// `tidegate preflight` arguments.
#[derive(Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    common: crate::CommonArgs,
    /// Concurrent client connections this host must hold.
    #[arg(long, value_name = "N", value_parser = parse_connections)]
    connections: u64,
    /// Gateway processes you will run (`tidegate gateway --workers K`); without it, one.
    #[arg(long, value_name = "K", value_parser = parse_workers)]
    workers: Option<u64>,
    /// Where the clients run: other hosts, or this one (a loopback bench: both ends count).
    #[arg(long, value_enum, default_value_t = Peers::Remote)]
    peers: Peers,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where the client end of each connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peers {
    /// On other hosts: this host holds one socket per connection.
    Remote,
    /// On this host (`tidegate bench`): two sockets per connection.
    Local,
}

impl Peers {
    /// Sockets this host holds per connection.
    fn ends(self) -> u64 {
        match self {
            Peers::Remote => 1,
            Peers::Local => 2,
        }
    }
}

/// What the host must hold: the operator's target and the gateway's shape.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// Concurrent client connections.
    pub connections: u64,
    /// Gateway processes.
    pub workers: u64,
    /// Shards (glommio executors) per gateway process.
    pub shards: u64,
    /// `gateway.io_memory_kib`: registered buffer memory per shard.
    pub io_memory_kib: u64,
    /// `gateway.fd_reserve`: descriptors each process keeps for non-clients.
    pub fd_reserve: u64,
    /// Where the clients run.
    pub peers: Peers,
}

impl Target {
    /// Client connections the busiest gateway process holds.
    fn per_worker(&self) -> u64 {
        self.connections.div_ceil(self.workers)
    }

    /// Descriptors the busiest gateway process needs.
    fn per_worker_fds(&self) -> u64 {
        self.per_worker().saturating_add(self.fd_reserve)
    }

    /// SO_REUSEPORT listeners on the client port, host-wide.
    fn listeners(&self) -> u64 {
        self.workers * self.shards
    }
}

/// How a setting stands against the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Enough for the target.
    Ok,
    /// The target is reachable, but slower or with less headroom.
    Advisory,
    /// The target cannot be reached as configured.
    Blocking,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Advisory => "advisory",
            Status::Blocking => "BLOCKING",
        }
    }
}

/// One setting judged for the target.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The sysctl key or limit name.
    pub setting: &'static str,
    /// Its value now.
    pub now: String,
    /// What the target needs.
    pub recommended: String,
    /// How it stands.
    pub status: Status,
    /// The command or change that fixes it, when not ok.
    pub fix: Option<String>,
    /// Why the target needs it.
    pub why: String,
}

impl Check {
    /// A setting that could not be read: advisory, never blocking, since
    /// preflight cannot tell.
    fn unreadable(setting: &'static str, recommended: String, why: &str) -> Check {
        Check {
            setting,
            now: "unreadable".into(),
            recommended,
            status: Status::Advisory,
            fix: Some(format!("check {setting} by hand")),
            why: why.into(),
        }
    }
}

/// The estimate behind the memory and descriptor checks.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Kernel socket memory per connection on this host (both ends with local peers).
    pub kernel_bytes_per_conn: u64,
    /// Gateway user-space memory per connection.
    pub gateway_bytes_per_conn: u64,
    /// Memory the target needs: connections plus each worker's base.
    pub memory_bytes: u64,
    /// Open files the target needs host-wide.
    pub files: u64,
    /// Descriptors the busiest worker needs.
    pub fds_per_worker: u64,
    /// Fewest workers that fit under the hard nofile limit (none: it is at or below the reserve).
    pub min_workers: Option<u64>,
}

/// Everything preflight found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when nothing blocks the target.
    pub ok: bool,
    /// The target judged.
    pub target: Target,
    /// The estimate it was judged with.
    pub estimate: Estimate,
    /// Every setting, blocking kinds first.
    pub checks: Vec<Check>,
    /// The settings that block the target.
    pub blocking: Vec<&'static str>,
}

/// Judges `readings` for `target`.
pub fn assess(target: &Target, readings: &Readings) -> Report {
    let mut checks = files::checks(target, readings);
    checks.extend(memory::checks(target, readings));
    checks.push(ring::check(readings));
    checks.extend(network::checks(target, readings));
    let blocking: Vec<&'static str> = checks
        .iter()
        .filter(|c| c.status == Status::Blocking)
        .map(|c| c.setting)
        .collect();
    Report {
        ok: blocking.is_empty(),
        target: target.clone(),
        estimate: estimate(target, readings),
        checks,
        blocking,
    }
}

/// The figures the checks use, for the report.
fn estimate(t: &Target, r: &Readings) -> Estimate {
    Estimate {
        kernel_bytes_per_conn: memory::kernel_bytes_per_conn(t),
        gateway_bytes_per_conn: memory::GATEWAY_BYTES_PER_CONN,
        memory_bytes: memory::memory_needed(t),
        files: files::files_needed(t),
        fds_per_worker: t.per_worker_fds(),
        min_workers: r.nofile.and_then(|l| files::min_workers(t, l.hard)),
    }
}

/// Runs `tidegate preflight`: exits 1 when something blocks the target.
pub fn run(args: PreflightArgs) -> anyhow::Result<()> {
    let cfg = crate::config::Config::load(args.common.config.as_deref())?;
    // The gateway would refuse to start on it: say so rather than judge it.
    cfg.gateway.validate()?;
    let readings = live::read();
    let shards = match cfg.gateway.shards {
        // Gateway::start runs one shard per CPU it may use.
        0 => readings.cpus,
        n => n as u64,
    };
    let target = Target {
        connections: args.connections,
        workers: args.workers.unwrap_or(1),
        shards,
        io_memory_kib: cfg.gateway.io_memory_kib as u64,
        fd_reserve: cfg.gateway.fd_reserve as u64,
        peers: args.peers,
    };
    let report = assess(&target, &readings);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::table(&report));
    }
    if !report.ok {
        eprintln!(
            "tidegate preflight: {} connections cannot be reached as configured; blocking: {} (see the fix column)",
            target.connections,
            report.blocking.join(", ")
        );
        std::process::exit(1);
    }
    Ok(())
}

/// `--connections`: at least one.
fn parse_connections(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of connections"))?;
    if n == 0 {
        return Err("0 connections: give the number of concurrent client connections this host must hold (at least 1)".into());
    }
    Ok(n)
}

/// `--workers`: what the supervisor accepts.
fn parse_workers(s: &str) -> Result<u64, String> {
    let max = crate::workers::MAX_WORKERS as u64;
    let k: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of workers"))?;
    if !(1..=max).contains(&k) {
        return Err(format!(
            "{k} workers: `tidegate gateway --workers` runs 1 to {max}"
        ));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::live::{Caps, Rlimit};
    use super::*;

    /// A host with room for millions of connections.
    pub(super) fn roomy() -> Readings {
        Readings {
            nr_open: Some(4_194_304),
            file_max: Some(8_388_608),
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(65_535),
            netdev_max_backlog: Some(16_384),
            ip_local_port_range: Some(PortRange {
                first: 10_240,
                last: 65_535,
            }),
            tcp_ehash_entries: Some(4_194_304),
            tcp_mem: Some(Triple {
                low: 2_097_152,
                mid: 4_194_304,
                high: 8_388_608,
            }),
            tcp_rmem: Some(Triple {
                low: 4096,
                mid: 4096,
                high: 6_291_456,
            }),
            tcp_wmem: Some(Triple {
                low: 4096,
                mid: 4096,
                high: 4_194_304,
            }),
            tcp_migrate_req: Some(1),
            nofile: Some(Rlimit {
                soft: 2_097_152,
                hard: 2_097_152,
            }),
            memlock: Some(Rlimit {
                soft: u64::MAX,
                hard: u64::MAX,
            }),
            mem_total: Some(128 << 30),
            mem_available: Some(120 << 30),
            io_uring_disabled: Some(0),
            ring_probe: RingProbe::Created,
            caps: Caps {
                can_raise_nofile: true,
                ipc_lock: false,
            },
            page_size: 4096,
            cpus: 16,
        }
    }

    /// The gateway's defaults for `n` connections over `workers` processes.
    pub(super) fn target(n: u64, workers: u64) -> Target {
        Target {
            connections: n,
            workers,
            shards: 2,
            io_memory_kib: 512,
            fd_reserve: 256,
            peers: Peers::Remote,
        }
    }

    #[test]
    fn a_roomy_host_holds_a_million_with_nothing_to_fix() {
        let r = assess(&target(1_000_000, 1), &roomy());
        assert!(r.ok, "{:#?}", r.checks);
        for c in &r.checks {
            assert_eq!(c.status, Status::Ok, "{c:#?}");
            assert!(c.fix.is_none(), "{c:#?}");
        }
    }

    #[test]
    fn a_small_established_hash_is_advisory_with_the_boot_and_netns_fixes() {
        let mut h = roomy();
        h.tcp_ehash_entries = Some(262_144);
        let mut t = target(1_000_000, 51);
        t.peers = Peers::Local;
        let r = assess(&t, &h);
        let c = r
            .checks
            .iter()
            .find(|c| c.setting == "net.ipv4.tcp_ehash_entries")
            .unwrap();
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(c.recommended, "2097152", "two loopback ends per connection");
        let fix = c.fix.as_deref().unwrap();
        assert!(fix.contains("thash_entries=2097152"), "{fix}");
        assert!(fix.contains("tcp_child_ehash_entries=2097152"), "{fix}");
        assert!(r.ok, "advisory never blocks");
    }

    #[test]
    fn blocking_settings_are_listed_by_name() {
        let mut h = roomy();
        h.file_max = Some(100_000);
        h.io_uring_disabled = Some(2);
        let r = assess(&target(1_000_000, 1), &h);
        assert!(!r.ok);
        assert_eq!(r.blocking, ["fs.file-max", "io_uring"]);
    }

    #[test]
    fn the_json_report_has_the_documented_fields() {
        let mut h = roomy();
        h.somaxconn = Some(128);
        let v = serde_json::to_value(assess(&target(1_000_000, 4), &h)).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["target"]["connections"], 1_000_000);
        assert_eq!(v["target"]["workers"], 4);
        assert_eq!(v["target"]["peers"], "remote");
        assert_eq!(v["estimate"]["fds_per_worker"], 250_256);
        let somax = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["setting"] == "net.core.somaxconn")
            .unwrap();
        assert_eq!(somax["status"], "advisory");
        assert_eq!(somax["now"], "128");
        assert_eq!(somax["fix"], "sysctl -w net.core.somaxconn=65535");
        assert!(v["blocking"].as_array().unwrap().is_empty());
    }

    #[test]
    fn bad_targets_are_refused_with_what_to_give() {
        assert!(parse_connections("0").unwrap_err().contains("at least 1"));
        assert!(parse_connections("lots").is_err());
        assert_eq!(parse_connections("10000000000"), Ok(10_000_000_000));
        assert!(parse_workers("0").unwrap_err().contains("1 to 64"));
        assert!(parse_workers("65").unwrap_err().contains("1 to 64"));
        assert_eq!(parse_workers("55"), Ok(55));
    }

    #[test]
    fn an_unreadable_value_is_advisory_never_blocking() {
        let mut h = roomy();
        h.file_max = None;
        h.mem_available = None;
        let r = assess(&target(1000, 1), &h);
        assert!(r.ok);
        for setting in ["fs.file-max", "memory"] {
            let c = r.checks.iter().find(|c| c.setting == setting).unwrap();
            assert_eq!(c.status, Status::Advisory, "{c:#?}");
            assert_eq!(c.now, "unreadable");
        }
    }
}
