//! `tidegate bench idle`: connect and log in N clients, hold them, and
//! measure what an idle connection costs the gateway (RSS delta / N) beside
//! what it costs the kernel (/proc/net/sockstat, /proc/slabinfo).

use crate::procfs::{self, SockStat};
use crate::{sources, Percentiles, Recorder};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_logic::auth::Auth;
use tidegate_logic::config::AppConfig;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::AppCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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
    anyhow::ensure!(args.hold_s <= 600, "--hold-s is at most 600");
    anyhow::ensure!(
        args.target.ip().is_loopback(),
        "bench targets loopback addresses only, not {}",
        args.target
    );
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    check_fd_budget(args.connections)?;
    let auth = Arc::new(minting_auth(args.app, &args.secret));
    let rss = |pid: Option<u32>| pid.and_then(|p| procfs::rss_bytes(p).ok());
    let before = rss(args.gateway_pid);
    let sock_before = procfs::sockstat()?;
    let slab_before = procfs::tcp_slab_bytes();
    let started = Instant::now();

    let (target, app) = (args.target, AppCode(args.app));
    let Storm {
        clients,
        failures,
        latency,
        took,
    } = storm(args.connections, args.concurrency, move |i| {
        let auth = auth.clone();
        async move { connect_and_login(target, i, app, &auth).await }
    })
    .await?;
    let logged_in = clients.len();

    // Keep every session alive (keepalive below the idle timeout) while
    // holding; the tasks end with the hold.
    let mut holders = JoinSet::new();
    for mut c in clients {
        holders.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if c.keepalive().await.is_err() {
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
    let hold_end = Instant::now() + Duration::from_secs(args.hold_s);
    while Instant::now() < hold_end {
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            gateway_rss: rss(args.gateway_pid),
            tcp_inuse: procfs::sockstat().map(|s| s.inuse).unwrap_or(0),
        });
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - Instant::now())).await;
    }
    holders.abort_all();

    let n = logged_in.max(1) as f64;
    let report = IdleReport {
        requested: args.connections,
        logged_in,
        failures,
        login_rate_per_s: logged_in as f64 / took.as_secs_f64(),
        login_latency: latency.percentiles(),
        gateway_rss_before: before,
        gateway_rss_idle: idle,
        gateway_bytes_per_conn: before.zip(idle).map(|(b, i)| (i as f64 - b as f64) / n),
        kernel_tcp_mem_bytes_per_conn: delta(sock_before, sock_idle) / n,
        kernel_slab_bytes_per_conn: slab_before
            .zip(slab_idle)
            .map(|(b, i)| (i as f64 - b as f64) / n),
        samples,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// The clients a connection storm opened, and what opening them took.
pub(crate) struct Storm<C> {
    /// Clients that connected (and logged in or subscribed).
    pub clients: Vec<C>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Per-client open latency.
    pub latency: Recorder,
    /// First connect to last answer.
    pub took: Duration,
}

/// Opens `connections` clients with `open(i)`, at most `concurrency` at once.
pub(crate) async fn storm<C, F, Fut>(
    connections: usize,
    concurrency: usize,
    open: F,
) -> anyhow::Result<Storm<C>>
where
    C: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<C, String>> + Send + 'static,
{
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut opens = JoinSet::new();
    for i in 0..connections {
        let permit = gate.clone().acquire_owned().await?;
        let opening = open(i);
        opens.spawn(async move {
            let t0 = Instant::now();
            let r = opening.await;
            drop(permit);
            r.map(|c| (c, t0.elapsed()))
        });
    }
    let mut clients = Vec::with_capacity(connections);
    let mut failures = BTreeMap::new();
    let mut latency = Recorder::new();
    while let Some(r) = opens.join_next().await {
        match r? {
            Ok((c, took)) => {
                latency.record(took);
                clients.push(c);
            }
            Err(reason) => *failures.entry(reason).or_insert(0) += 1,
        }
    }
    Ok(Storm {
        clients,
        failures,
        latency,
        took: started.elapsed(),
    })
}

fn delta(before: SockStat, after: SockStat) -> f64 {
    after.mem_bytes as f64 - before.mem_bytes as f64
}

pub(crate) async fn connect_and_login(
    target: SocketAddr,
    i: usize,
    app: AppCode,
    auth: &Auth,
) -> Result<Client, String> {
    let stream = sources::connect(target, i)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = Client::from_stream(stream).map_err(|e| format!("connect: {e}"))?;
    let token = auth
        .mint(app, &format!("idle-{i}"), 3600)
        .map_err(|e| e.to_string())?;
    match c.login(app, &token, &format!("dev-{i}"), "bench").await {
        Ok(_) => Ok(c),
        Err(ClientError::Server { code, .. }) => Err(format!("error_{code}")),
        Err(e) => Err(format!("login: {e}")),
    }
}

/// Token minting for the bench's clients: the app's secret, nothing else.
pub(crate) fn minting_auth(app: u16, secret: &str) -> Auth {
    let app = AppConfig {
        code: app,
        name: String::new(),
        secrets: vec![secret.to_string()],
        api_key: String::new(),
        c2s_max_len: None,
        offline_max_len: None,
        device_policy: Default::default(),
        c2s_webhook: None,
    };
    Auth::new(&[app], 0)
}

/// Refuses a run that would exceed this process's descriptor limit.
pub(crate) fn check_fd_budget(connections: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        anyhow::ensure!(
            connections + 64 <= soft,
            "{connections} connections need more descriptors than this process may open ({soft}); \
             use fewer connections per bench process"
        );
    }
    Ok(())
}
