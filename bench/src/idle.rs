//! `tidegate bench idle`: connect and log in N clients, hold them, and
//! measure what an idle connection costs the gateway (RSS delta / N, summed
//! over a supervisor's worker processes) beside what it costs the kernel
//! (/proc/net/sockstat, /proc/slabinfo, /proc/meminfo). Past one process's
//! descriptor limit the clients are spread over `--procs` bench processes
//! (the C1M run: a million connections, ~53 of them).

use crate::fleet::StormPlan;
use crate::procfs::{self, SockStat};
use crate::spread::{self, Fleet, HoldPlan};
use crate::{report, Percentiles};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidegate_proto::AppCode;

/// Arguments of `tidegate bench idle`.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    /// Gateway client address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Connections to open and hold (≤ 1,200,000).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// The gateway's pid (a `--workers` supervisor counts with its
    /// workers), to read its RSS; omit to skip the gateway's figures.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// App code to log in to.
    #[arg(long, default_value_t = 1)]
    pub app: u16,
    /// The app's token secret (default: `tidegate up`'s development secret).
    #[arg(long, default_value = "tidegate-dev-secret-app-1")]
    pub secret: String,
    /// Seconds to hold the connections after the last login (≤ 600).
    #[arg(long, default_value_t = 10)]
    pub hold_s: u64,
    /// Connects+logins in flight at once (over all bench processes).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Attempts started per second over all processes (open loop); omit
    /// to go as fast as --concurrency allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bench processes holding the clients (default: as few as the
    /// open-files limit allows, ~19,000 connections each here).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Seconds between a held connection's keepalives; keep it below the
    /// gateway's `idle_timeout_s`.
    #[arg(long, default_value_t = 20)]
    pub keepalive_s: u64,
    /// An attempt not logged in after this many milliseconds counts as `timeout`.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How held connections wait for bytes: `uring` (tokio-uring, a
    /// receive in flight per connection) or `epoll` (a task per connection
    /// woken by readiness).
    #[arg(long, value_enum, default_value_t)]
    pub holder_io: crate::hold::HolderIo,
}

/// A memory sample during the hold.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first connect.
    pub t_s: f64,
    /// Gateway RSS (all its processes), bytes.
    pub gateway_rss: Option<u64>,
    /// Kernel TCP sockets in use.
    pub tcp_inuse: u64,
    /// Kernel TCP buffer memory, bytes.
    pub tcp_mem_bytes: u64,
}

/// What `bench idle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections logged in.
    pub logged_in: usize,
    /// Connections still open when the hold ended (the gateway closed none).
    pub held_at_end: usize,
    /// Seconds the connections were held after the last login.
    pub hold_s: u64,
    /// Bench processes that held the clients.
    pub bench_procs: usize,
    /// How the bench held its connections (`--holder-io`).
    pub holder_io: &'static str,
    /// Gateway processes measured (a supervisor and its workers).
    pub gateway_procs: Option<usize>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Attempts per second asked for (`None`: as fast as possible).
    pub rate_per_s: Option<f64>,
    /// Seconds from the first attempt (starting the bench processes
    /// included) to the last login.
    pub storm_s: f64,
    /// Logins per second during the storm.
    pub login_rate_per_s: f64,
    /// Connect+login latency.
    pub login_latency: Percentiles,
    /// The TCP connect alone.
    pub connect_latency: Percentiles,
    /// Gateway RSS before the first connect.
    pub gateway_rss_before: Option<u64>,
    /// Gateway RSS with every connection idle.
    pub gateway_rss_idle: Option<u64>,
    /// (idle − before) / logged_in.
    pub gateway_bytes_per_conn: Option<f64>,
    /// Gateway RSS at the end of the hold, after `hold_s` more seconds idle
    /// (by then idle connections have parked: `gateway.park_idle_s`).
    pub gateway_rss_end: Option<u64>,
    /// (end − before) / logged_in.
    pub gateway_bytes_per_conn_end: Option<f64>,
    /// Kernel TCP buffer memory delta / logged_in (both ends of loopback).
    pub kernel_tcp_mem_bytes_per_conn: f64,
    /// Kernel slab delta of socket caches / logged_in (both ends), if readable.
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// Delta of /proc/meminfo `Slab:` / logged_in (both ends, every cache).
    pub kernel_meminfo_slab_bytes_per_conn: Option<f64>,
    /// Bench RSS (all its processes) delta / logged_in: the client side.
    pub bench_bytes_per_conn: Option<f64>,
    /// Samples over the hold.
    pub samples: Vec<Sample>,
}

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> anyhow::Result<IdleReport> {
    report::ensure_range("--hold-s", args.hold_s, 0, 600)?;
    report::ensure_range("--connections", args.connections, 1, 1_200_000)?;
    report::ensure_range("--concurrency", args.concurrency, 1, 100_000)?;
    report::ensure_range("--keepalive-s", args.keepalive_s, 1, 3600)?;
    report::ensure_range("--timeout-ms", args.timeout_ms, 1, 120_000)?;
    report::ensure_loopback(args.target, "--target")?;
    if let Some(rate) = args.rate {
        report::ensure_range("--rate", rate, 1.0, 1_000_000.0)?;
    }
    let procs = spread::procs_for(args.connections, args.procs);
    report::ensure_range("--procs", procs, 1, 200)?;
    let plan = StormPlan {
        target: args.target,
        first: 0,
        connections: args.connections,
        app: AppCode(args.app),
        secret: args.secret.clone(),
        concurrency: args.concurrency,
        rate: args.rate,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let limit = plan.worst_case() + Duration::from_secs(args.hold_s + 90);
    report::within(limit, hold(args, plan, procs, limit)).await
}

async fn hold(
    args: IdleArgs,
    plan: StormPlan,
    procs: usize,
    limit: Duration,
) -> anyhow::Result<IdleReport> {
    let gateway = |pid: Option<u32>| pid.and_then(|p| procfs::tree_rss_bytes(p).ok());
    let bench = || procfs::tree_rss_bytes(std::process::id()).ok();
    let before = gateway(args.gateway_pid);
    let bench_before = bench();
    let sock_before = procfs::sockstat()?;
    let slab_before = procfs::tcp_slab_bytes();
    let meminfo_before = procfs::meminfo_slab_bytes();
    let started = Instant::now();
    let hold_plan = HoldPlan {
        keepalive: Duration::from_secs(args.keepalive_s),
        max_hold: limit,
        io: args.holder_io,
    };
    let (storm, held) = Fleet::start(&plan, procs, hold_plan, None).await?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = gateway(args.gateway_pid);
    let bench_idle = bench();
    let sock_idle = procfs::sockstat()?;
    let slab_idle = procfs::tcp_slab_bytes();
    let meminfo_idle = procfs::meminfo_slab_bytes();
    let mut samples = Vec::new();
    let hold_start = Instant::now();
    let hold_end = hold_start + Duration::from_secs(args.hold_s);
    let bar = report::progress(args.hold_s, "hold (s)");
    bar.set_message(format!("{} connections idle", storm.logged_in));
    loop {
        bar.set_position(hold_start.elapsed().as_secs());
        let sock = procfs::sockstat().unwrap_or_default();
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            gateway_rss: gateway(args.gateway_pid),
            tcp_inuse: sock.inuse,
            tcp_mem_bytes: sock.mem_bytes,
        });
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - now)).await;
    }
    bar.finish_and_clear();
    let end = samples.last().and_then(|s| s.gateway_rss);
    let held_at_end = held.release().await?.open;

    let n = storm.logged_in.max(1) as f64;
    let per_conn =
        |b: Option<u64>, i: Option<u64>| b.zip(i).map(|(b, i)| (i as f64 - b as f64) / n);
    let report = IdleReport {
        requested: args.connections,
        logged_in: storm.logged_in,
        held_at_end,
        hold_s: args.hold_s,
        bench_procs: procs,
        holder_io: args.holder_io.as_arg(),
        gateway_procs: args.gateway_pid.map(|p| 1 + procfs::children(p).len()),
        failures: storm.failures.clone(),
        rate_per_s: args.rate,
        storm_s: storm.elapsed.as_secs_f64(),
        login_rate_per_s: storm.logins_per_s(),
        login_latency: storm.latency.percentiles(),
        connect_latency: storm.connect_latency.percentiles(),
        gateway_rss_before: before,
        gateway_rss_idle: idle,
        gateway_bytes_per_conn: per_conn(before, idle),
        gateway_rss_end: end,
        gateway_bytes_per_conn_end: per_conn(before, end),
        kernel_tcp_mem_bytes_per_conn: delta(sock_before, sock_idle) / n,
        kernel_slab_bytes_per_conn: per_conn(slab_before, slab_idle),
        kernel_meminfo_slab_bytes_per_conn: per_conn(meminfo_before, meminfo_idle),
        bench_bytes_per_conn: per_conn(bench_before, bench_idle),
        samples,
    };
    report::write_json(args.json.as_deref(), &report)?;
    Ok(report)
}

fn delta(before: SockStat, after: SockStat) -> f64 {
    after.mem_bytes as f64 - before.mem_bytes as f64
}
