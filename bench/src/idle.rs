//! `tidegate bench idle`: connect and log in N clients, hold them, and
//! measure what an idle connection costs the gateway (RSS delta / N) beside
//! what it costs the kernel (/proc/net/sockstat, /proc/slabinfo).

use crate::fleet::{self, Member, StormPlan};
use crate::procfs::{self, SockStat};
use crate::{report, Percentiles};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidegate_proto::AppCode;
use tokio::task::JoinSet;

/// A connect+login slower than this counts as a failure (`timeout`).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `tidegate bench idle`.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    /// Gateway client address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// The gateway's pid, to read its RSS (omit to skip memory figures).
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
    /// Connects+logins in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A memory sample during the hold.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first connect.
    pub t_s: f64,
    /// Gateway RSS, bytes.
    pub gateway_rss: Option<u64>,
    /// Kernel TCP sockets in use.
    pub tcp_inuse: u64,
}

/// What `bench idle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections logged in.
    pub logged_in: usize,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Logins per second during the storm.
    pub login_rate_per_s: f64,
    /// Connect+login latency.
    pub login_latency: Percentiles,
    /// Gateway RSS before the first connect.
    pub gateway_rss_before: Option<u64>,
    /// Gateway RSS with every connection idle.
    pub gateway_rss_idle: Option<u64>,
    /// (idle − before) / logged_in.
    pub gateway_bytes_per_conn: Option<f64>,
    /// Kernel TCP buffer memory delta / logged_in (both ends of loopback).
    pub kernel_tcp_mem_bytes_per_conn: f64,
    /// Kernel slab delta of socket caches / logged_in (both ends), if readable.
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// Samples over the hold.
    pub samples: Vec<Sample>,
}

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> anyhow::Result<IdleReport> {
    report::ensure_range("--hold-s", args.hold_s, 0, 600)?;
    report::ensure_loopback(args.target, "--target")?;
    let plan = StormPlan {
        target: args.target,
        connections: args.connections,
        app: AppCode(args.app),
        secret: args.secret.clone(),
        concurrency: args.concurrency,
        rate: None,
        timeout: LOGIN_TIMEOUT,
    };
    let limit = plan.worst_case() + Duration::from_secs(args.hold_s + 10);
    report::within(limit, hold(args, plan)).await
}

async fn hold(args: IdleArgs, plan: StormPlan) -> anyhow::Result<IdleReport> {
    let rss = |pid: Option<u32>| pid.and_then(|p| procfs::rss_bytes(p).ok());
    let before = rss(args.gateway_pid);
    let sock_before = procfs::sockstat()?;
    let slab_before = procfs::tcp_slab_bytes();
    let started = Instant::now();
    let storm = fleet::storm(&plan).await?;
    let logged_in = storm.members.len();

    // Keep every session alive (keepalive below the idle timeout) while
    // holding; the tasks end with the hold.
    let mut holders = JoinSet::new();
    for Member { mut client, .. } in storm.members {
        holders.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if client.keepalive().await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss(args.gateway_pid);
    let sock_idle = procfs::sockstat()?;
    let slab_idle = procfs::tcp_slab_bytes();
    let mut samples = Vec::new();
    let hold_start = Instant::now();
    let hold_end = hold_start + Duration::from_secs(args.hold_s);
    let bar = report::progress(args.hold_s, "hold (s)");
    bar.set_message(format!("{logged_in} connections idle"));
    while Instant::now() < hold_end {
        bar.set_position(hold_start.elapsed().as_secs());
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            gateway_rss: rss(args.gateway_pid),
            tcp_inuse: procfs::sockstat().map(|s| s.inuse).unwrap_or(0),
        });
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - Instant::now())).await;
    }
    bar.finish_and_clear();
    holders.abort_all();

    let n = logged_in.max(1) as f64;
    let report = IdleReport {
        requested: args.connections,
        logged_in,
        failures: storm.failures,
        login_rate_per_s: logged_in as f64 / storm.elapsed.as_secs_f64(),
        login_latency: storm.latency.percentiles(),
        gateway_rss_before: before,
        gateway_rss_idle: idle,
        gateway_bytes_per_conn: before.zip(idle).map(|(b, i)| (i as f64 - b as f64) / n),
        kernel_tcp_mem_bytes_per_conn: delta(sock_before, sock_idle) / n,
        kernel_slab_bytes_per_conn: slab_before
            .zip(slab_idle)
            .map(|(b, i)| (i as f64 - b as f64) / n),
        samples,
    };
    report::write_json(args.json.as_deref(), &report)?;
    Ok(report)
}

fn delta(before: SockStat, after: SockStat) -> f64 {
    after.mem_bytes as f64 - before.mem_bytes as f64
}
