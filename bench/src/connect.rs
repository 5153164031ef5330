//! `tidegate bench connect`: a connect+login storm and nothing else. N
//! clients connect and log in, at `--rate` per second on an open-loop
//! schedule or as fast as `--concurrency` allows; the report gives logins
//! per second, failures by reason and login latency, then every client
//! disconnects. It is the storm `idle`, `push`, `broadcast` and `c2s` start
//! with (`fleet::storm`), reported on its own. Past one process's
//! descriptor limit the storm is spread over `--procs` bench processes
//! (`spread::storm`), whose histograms are added.

use crate::fleet::{self, StormPlan};
use crate::spread::{self, HoldPlan};
use crate::{report, Percentiles};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tidegate_proto::AppCode;

/// Arguments of `tidegate bench connect`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Gateway client address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Clients to connect and log in.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// App code to log in to.
    #[arg(long, default_value_t = 1)]
    pub app: u16,
    /// The app's token secret (default: `tidegate up`'s development secret).
    #[arg(long, default_value = "tidegate-dev-secret-app-1")]
    pub secret: String,
    /// Connects+logins in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Attempts started per second (open loop, latency from each attempt's
    /// due instant); omit to go as fast as --concurrency allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// An attempt not logged in after this many milliseconds counts as `timeout`.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Bench processes running the storm (default: as few as the
    /// open-files limit allows, ~19,000 connections each here).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `bench connect` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Clients asked for.
    pub requested: usize,
    /// Clients logged in.
    pub logged_in: usize,
    /// Failed attempts by reason: `refused`, `timeout`, `reset`, `closed`,
    /// an ERROR code's name (`auth_failed`, `busy`, `banned`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Attempts per second asked for (`None`: as fast as possible).
    pub rate_per_s: Option<f64>,
    /// Attempts in flight at most.
    pub concurrency: usize,
    /// First attempt to last answer, seconds.
    pub duration_s: f64,
    /// Logged-in clients per second over the storm.
    pub logins_per_s: f64,
    /// Connect+login (from the due instant with --rate).
    pub login_latency: Percentiles,
    /// The TCP connect alone.
    pub connect_latency: Percentiles,
    /// Bench processes that ran the storm (with several, `duration_s`
    /// includes starting them, so `logins_per_s` is never flattered).
    pub bench_procs: usize,
}

/// Runs the scenario.
pub async fn run(args: ConnectArgs) -> anyhow::Result<ConnectReport> {
    report::ensure_loopback(args.target, "--target")?;
    report::ensure_range("--connections", args.connections, 1, 1_200_000)?;
    report::ensure_range("--concurrency", args.concurrency, 1, 20_000)?;
    report::ensure_range("--timeout-ms", args.timeout_ms, 1, 120_000)?;
    if let Some(rate) = args.rate {
        report::ensure_range("--rate", rate, 1.0, 1_000_000.0)?;
    }
    let plan = StormPlan {
        first: 0,
        target: args.target,
        connections: args.connections,
        app: AppCode(args.app),
        secret: args.secret.clone(),
        concurrency: args.concurrency,
        rate: args.rate,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let procs = spread::procs_for(args.connections, args.procs);
    report::ensure_range("--procs", procs, 1, 200)?;
    spread::ensure_capacity(args.connections, procs)?;
    let limit = plan.worst_case() + Duration::from_secs(60);
    let r = report::within(limit, storm_and_leave(&args, &plan, procs)).await?;
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

async fn storm_and_leave(
    args: &ConnectArgs,
    plan: &StormPlan,
    procs: usize,
) -> anyhow::Result<ConnectReport> {
    let storm = if procs == 1 {
        let (summary, members) = fleet::storm(plan).await?.into_parts();
        // Dropping a client closes its socket (FIN); the gateway then ends
        // the session and tells logic, as for any client that goes away.
        drop(members);
        summary
    } else {
        // Workers hold their clients only until released, right away.
        let hold = HoldPlan {
            keepalive: Duration::from_secs(3600),
            max_hold: plan.worst_case() + Duration::from_secs(60),
            io: crate::hold::HolderIo::default(),
        };
        let (summary, workers) = spread::storm(plan, procs, hold, None).await?;
        workers.release().await?;
        summary
    };
    Ok(ConnectReport {
        requested: args.connections,
        logged_in: storm.logged_in,
        logins_per_s: storm.logins_per_s(),
        failures: storm.failures,
        rate_per_s: args.rate,
        concurrency: args.concurrency,
        duration_s: storm.elapsed.as_secs_f64(),
        login_latency: storm.latency.percentiles(),
        connect_latency: storm.connect_latency.percentiles(),
        bench_procs: procs,
    })
}
