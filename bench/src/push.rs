//! `tidegate bench push`: HTTP push → client socket, end to end. N clients
//! log in; batches of targets are pushed through `POST /v1/push`; every
//! client timestamps what it receives against the send time carried in the
//! content. Reports delivered targets per second and latency percentiles.

use crate::{idle, Percentiles, Recorder};
use anyhow::Context;
use base64::Engine;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidegate_proto::AppCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Arguments of `tidegate bench push`.
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// Gateway client address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Logic HTTP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7180")]
    pub http: SocketAddr,
    /// The app's API key (default: `tidegate up`'s development key).
    #[arg(long, default_value = "tidegate-dev-api-key-app-1")]
    pub api_key: String,
    /// The app's token secret (default: `tidegate up`'s development secret).
    #[arg(long, default_value = "tidegate-dev-secret-app-1")]
    pub secret: String,
    /// App code.
    #[arg(long, default_value_t = 1)]
    pub app: u16,
    /// Clients to log in.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Targets per push request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Push requests to send.
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// Push requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `bench push` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
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

/// Runs the scenario.
pub async fn run(args: PushArgs) -> anyhow::Result<PushReport> {
    anyhow::ensure!(
        args.http.ip().is_loopback(),
        "bench targets loopback addresses only"
    );
    anyhow::ensure!(
        args.batch >= 1 && args.batch <= 10_000,
        "--batch is 1 to 10000"
    );
    anyhow::ensure!(
        args.connections >= 1 && args.concurrency >= 1,
        "--connections and --concurrency are at least 1"
    );
    anyhow::ensure!(args.requests <= 100_000, "--requests is at most 100000");
    idle::check_fd_budget(args.connections)?;
    let auth = idle::minting_auth(args.app, &args.secret);
    let app = AppCode(args.app);
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let c = idle::connect_and_login(args.target, i, app, &auth)
            .await
            .map_err(|e| anyhow::anyhow!("client {i}: {e}"))?;
        clients.push(c);
    }

    // Request r names the next `batch` clients round-robin.
    let mut expected = vec![0u64; args.connections];
    for r in 0..args.requests {
        for k in 0..args.batch {
            expected[(r * args.batch + k) % args.connections] += 1;
        }
    }
    let epoch = Instant::now();
    let latency = Arc::new(Mutex::new(Recorder::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs(60);
    let mut readers = JoinSet::new();
    for (mut c, want) in clients.into_iter().zip(expected) {
        let (latency, delivered) = (latency.clone(), delivered.clone());
        readers.spawn(async move {
            let mut local = Recorder::new();
            for _ in 0..want {
                let Ok(Ok(push)) = tokio::time::timeout(deadline, c.recv_push()).await else {
                    break;
                };
                if let Some(sent) = push.content.get(..8) {
                    let sent_ns = u64::from_le_bytes(sent.try_into().unwrap_or([0; 8]));
                    let now_ns = epoch.elapsed().as_nanos() as u64;
                    local.record(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                }
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut l) = latency.lock() {
                l.merge(&local);
            }
        });
    }

    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/push", args.http);
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let http_latency = Arc::new(Mutex::new(Recorder::new()));
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for r in 0..args.requests {
        let permit = gate.clone().acquire_owned().await?;
        let to: Vec<String> = (0..args.batch)
            .map(|k| format!("idle-{}", (r * args.batch + k) % args.connections))
            .collect();
        let (http, url, key, rec) = (
            http.clone(),
            url.clone(),
            args.api_key.clone(),
            http_latency.clone(),
        );
        senders.spawn(async move {
            let sent_ns = epoch.elapsed().as_nanos() as u64;
            let content = base64::engine::general_purpose::STANDARD.encode(sent_ns.to_le_bytes());
            let body = serde_json::json!({"app": args.app, "to": to, "content_b64": content});
            let t0 = Instant::now();
            let r = http.post(&url).bearer_auth(&key).json(&body).send().await;
            drop(permit);
            let ok = matches!(&r, Ok(resp) if resp.status().is_success());
            if let Ok(mut h) = rec.lock() {
                h.record(t0.elapsed());
            }
            ok
        });
    }
    while let Some(ok) = senders.join_next().await {
        anyhow::ensure!(ok?, "a push request failed (check --api-key and --app)");
    }
    while readers.join_next().await.is_some() {}
    let duration = started.elapsed();
    let delivered = delivered.load(Ordering::Relaxed);
    let pct = |r: &Arc<Mutex<Recorder>>| {
        r.lock()
            .map(|r| r.percentiles())
            .map_err(|_| anyhow::anyhow!("poisoned"))
    };
    let report = PushReport {
        connections: args.connections,
        targets_sent: (args.requests * args.batch) as u64,
        delivered,
        duration_s: duration.as_secs_f64(),
        targets_per_s: delivered as f64 / duration.as_secs_f64(),
        latency: pct(&latency)?,
        http_latency: pct(&http_latency)?,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
