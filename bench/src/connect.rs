//! `tidegate bench connect`: a connect+login storm and nothing else. N
//! clients connect and log in, at `--rate` per second on an open-loop
//! schedule or as fast as `--concurrency` allows; the report gives logins
//! per second, failures by reason and login latency, then every client
//! disconnects. It is the storm `idle`, `push`, `broadcast` and `c2s` start
//! with (`fleet::storm`), reported on its own.

use crate::fleet::{self, StormPlan};
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
}

/// Runs the scenario.
pub async fn run(args: ConnectArgs) -> anyhow::Result<ConnectReport> {
    report::ensure_loopback(args.target, "--target")?;
    report::ensure_range("--connections", args.connections, 1, 100_000)?;
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
    let limit = plan.worst_case() + Duration::from_secs(30);
    let r = report::within(limit, storm_and_leave(&args, &plan)).await?;
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

async fn storm_and_leave(args: &ConnectArgs, plan: &StormPlan) -> anyhow::Result<ConnectReport> {
    let storm = fleet::storm(plan).await?;
    let logged_in = storm.members.len();
    let logins_per_s = storm.logins_per_s();
    // Dropping a client closes its socket (FIN); the gateway then ends the
    // session and tells logic, as for any client that goes away.
    drop(storm.members);
    Ok(ConnectReport {
        requested: args.connections,
        logged_in,
        failures: storm.failures,
        rate_per_s: args.rate,
        concurrency: args.concurrency,
        duration_s: storm.elapsed.as_secs_f64(),
        logins_per_s,
        login_latency: storm.latency.percentiles(),
        connect_latency: storm.connect_latency.percentiles(),
    })
}
