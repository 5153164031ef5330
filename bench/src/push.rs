//! `tidegate bench push`: HTTP push → client socket, end to end. N clients
//! log in; targets are pushed through `POST /v1/push`; every client
//! timestamps what it receives against the send time carried in the
//! content. Two loads: closed-loop batches (`--requests`, `--concurrency`:
//! delivered targets per second at saturation) and, with `--rate`, an open
//! loop of requests on a fixed schedule (`rate.rs`: latency at a given load).

mod pool;
mod rate;

use crate::fleet::{self, StormPlan};

use crate::report::{self, Server, SharedRecorder};
use crate::Percentiles;
use base64::Engine;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_proto::AppCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Arguments of `tidegate bench push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// Where the gateway and logic listen, and the app's credentials.
    #[command(flatten)]
    pub server: Server,
    /// Clients to log in.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Targets per push request (default 1000; 1 with --rate).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Push requests to send (closed loop).
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// Push requests in flight at once (closed loop).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Open loop: push requests per second on a fixed schedule, each timed
    /// from its due instant (1 to 200000).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: seconds of schedule (1 to 600).
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Open loop: most push requests in flight; beyond it sends wait (and
    /// count as late).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `bench push` measured, by load.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PushReport {
    /// Closed-loop batches.
    Batches(BatchReport),
    /// Open loop at `--rate`.
    Rate(rate::RateReport),
}

/// What closed-loop `bench push` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// Clients logged in.
    pub connections: usize,
    /// Targets named in all requests.
    pub targets_sent: u64,
    /// Pushes received by clients.
    pub delivered: u64,
    /// First request to last receipt, seconds.
    pub duration_s: f64,
    /// delivered / duration.
    pub targets_per_s: f64,
    /// HTTP send → client receive.
    pub latency: Percentiles,
    /// HTTP request round trip.
    pub http_latency: Percentiles,
}

/// Logins in flight while the fleet comes up.
const LOGIN_CONCURRENCY: usize = 256;
/// A login slower than this fails the run.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long receivers wait for the last push after the last request.
const DRAIN: Duration = Duration::from_secs(60);

/// Runs the scenario.
pub async fn run(args: PushArgs) -> anyhow::Result<PushReport> {
    args.server.ensure_loopback()?;
    report::ensure_range("--connections", args.connections, 1, 100_000)?;
    let plan = StormPlan {
        first: 0,
        target: args.server.target,
        connections: args.connections,
        app: AppCode(args.server.app),
        secret: args.server.secret.clone(),
        concurrency: LOGIN_CONCURRENCY,
        rate: None,
        timeout: LOGIN_TIMEOUT,
    };
    match args.rate {
        Some(rate) => {
            let load = rate::RateLoad::from_args(&args, rate)?;
            fleet::check_fd_budget(args.connections + load.max_in_flight)?;
            let limit = plan.worst_case() + load.worst_case();
            let r = report::within(limit, rate::run(&args, &plan, load)).await?;
            report::write_json(args.json.as_deref(), &r)?;
            Ok(PushReport::Rate(r))
        }
        None => {
            let batch = args.batch.unwrap_or(1000);
            report::ensure_range("--batch", batch, 1, 10_000)?;
            report::ensure_range("--requests", args.requests, 0, 100_000)?;
            report::ensure_range("--concurrency", args.concurrency, 1, 1024)?;
            fleet::check_fd_budget(args.connections + args.concurrency)?;
            // Each request waits at most the HTTP timeout, then the drain.
            let waves = args.requests.div_ceil(args.concurrency) as u32;
            let limit = plan.worst_case() + HTTP_TIMEOUT * waves + DRAIN;
            let r = report::within(limit, batches(&args, &plan, batch)).await?;
            report::write_json(args.json.as_deref(), &r)?;
            Ok(PushReport::Batches(r))
        }
    }
}

/// One push request slower than this fails (closed loop) or counts as
/// `timeout` (open loop).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

async fn batches(args: &PushArgs, plan: &StormPlan, batch: usize) -> anyhow::Result<BatchReport> {
    let storm = fleet::storm(plan).await?;
    storm.require_all(args.connections)?;
    let clients = storm.members.into_iter().map(|m| m.client);

    // Request r names the next `batch` clients round-robin.
    let mut expected = vec![0u64; args.connections];
    for r in 0..args.requests {
        for k in 0..batch {
            expected[(r * batch + k) % args.connections] += 1;
        }
    }
    let epoch = Instant::now();
    let latency = Arc::new(SharedRecorder::new());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    for (i, (mut c, want)) in clients.zip(expected).enumerate() {
        let (latency, delivered) = (latency.clone(), delivered.clone());
        readers.spawn(async move {
            for _ in 0..want {
                let Ok(Ok(push)) = tokio::time::timeout(DRAIN, c.recv_push()).await else {
                    break;
                };
                if let Some(sent) = push.content.get(..8) {
                    let sent_ns = u64::from_le_bytes(sent.try_into().unwrap_or([0; 8]));
                    let now_ns = epoch.elapsed().as_nanos() as u64;
                    latency.record(i, Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                }
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
    let url = format!("http://{}/v1/push", args.server.http);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let http_latency = Arc::new(SharedRecorder::new());
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for r in 0..args.requests {
        let permit = gate.clone().acquire_owned().await?;
        let to: Vec<String> = (0..batch)
            .map(|k| fleet::uid((r * batch + k) % args.connections))
            .collect();
        let (http, url, key, rec, app) = (
            http.clone(),
            url.clone(),
            args.server.api_key.clone(),
            http_latency.clone(),
            args.server.app,
        );
        senders.spawn(async move {
            let sent_ns = epoch.elapsed().as_nanos() as u64;
            let content = base64::engine::general_purpose::STANDARD.encode(sent_ns.to_le_bytes());
            let body = serde_json::json!({"app": app, "to": to, "content_b64": content});
            let t0 = Instant::now();
            let resp = http.post(&url).bearer_auth(&key).json(&body).send().await;
            drop(permit);
            let ok = matches!(&resp, Ok(resp) if resp.status().is_success());
            rec.record(r, t0.elapsed());
            ok
        });
    }
    while let Some(ok) = senders.join_next().await {
        anyhow::ensure!(ok?, "a push request failed (check --api-key and --app)");
    }
    while readers.join_next().await.is_some() {}
    let duration = started.elapsed();
    let delivered = delivered.load(Ordering::Relaxed);
    Ok(BatchReport {
        connections: args.connections,
        targets_sent: (args.requests * batch) as u64,
        delivered,
        duration_s: duration.as_secs_f64(),
        targets_per_s: delivered as f64 / duration.as_secs_f64(),
        latency: latency.merged().percentiles(),
        http_latency: http_latency.merged().percentiles(),
    })
}
