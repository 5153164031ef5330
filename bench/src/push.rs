//! `tidegate bench push`: HTTP push → client socket, end to end. N clients
//! log in; targets are pushed through `POST /v1/push`; every client
//! timestamps what it receives against the send time carried in the
//! content. Two loads: closed-loop batches (`--requests`, `--concurrency`:
//! delivered targets per second at saturation) and, with `--rate`, an open
//! loop of requests on a fixed schedule (`rate.rs`: latency at a given load).
//! Past one process's descriptor limit the clients are spread over
//! `--procs` bench processes; every push carries a [`Stamp`] on the
//! monotonic clock all of them share, and each process counts what its
//! clients received ([`Fleet`]), told by this one how many to expect.

mod pool;
mod rate;

use crate::fleet::{self, StormPlan};
use crate::procs::Share;
use crate::receipts::{mono_ns, Stamp};
use crate::report::{self, Server, SharedRecorder};
use crate::spread::{self, Fleet, HoldPlan, StormSummary};
use crate::Percentiles;
use serde::Serialize;
use std::path::PathBuf;
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
    /// Clients to log in (≤ 1,000,000).
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Bench processes holding the clients (default: as few as the
    /// open-files limit allows, ~19,000 connections each here).
    #[arg(long)]
    pub procs: Option<usize>,
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
    /// Open loop: HTTP connections to the push API, all opened before the
    /// clock starts; a request finding all busy waits for one. Default:
    /// what the rate keeps busy at 10 ms a request (16 to 1024).
    #[arg(long)]
    pub http_connections: Option<usize>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How held connections wait for bytes: `uring` (tokio-uring, a
    /// receive in flight per connection) or `epoll` (a task per connection
    /// woken by readiness).
    #[arg(long, value_enum, default_value_t)]
    pub holder_io: crate::hold::HolderIo,
    /// Seconds between a held connection's keepalives; keep it below the
    /// gateway's `idle_timeout_s`. Each is a frame both ways: at a million
    /// clients, 20 s is 50,000 keepalives/s competing with what is measured.
    #[arg(long, default_value_t = 20)]
    pub keepalive_s: u64,
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
    /// Bench processes holding them.
    pub bench_procs: usize,
    /// How the bench held its connections (`--holder-io`).
    pub holder_io: &'static str,
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

/// Logins in flight while the fleet comes up (over all processes).
const LOGIN_CONCURRENCY: usize = 256;
/// A login slower than this fails the run.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long receivers wait for the last push after the last request.
const DRAIN: Duration = Duration::from_secs(60);
/// Every push of a run is stamp message 0: receivers count pushes and
/// their latency, not which request they came from.
const RECEIPT_SLOTS: usize = 1;

/// Runs the scenario.
pub async fn run(args: PushArgs) -> anyhow::Result<PushReport> {
    args.server.ensure_loopback()?;
    report::ensure_range("--connections", args.connections, 1, 1_000_000)?;
    let procs = spread::procs_for(args.connections, args.procs);
    report::ensure_range("--procs", procs, 1, 1_000)?;
    report::ensure_range("--keepalive-s", args.keepalive_s, 1, 3600)?;
    spread::ensure_capacity(args.connections, procs)?;
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
    // This process holds the clients only when it is the one process.
    let here = if procs == 1 { args.connections } else { 0 };
    match args.rate {
        Some(rate) => {
            let load = rate::RateLoad::from_args(&args, rate)?;
            fleet::check_fd_budget(here + load.max_in_flight + procs * 3)?;
            let limit = plan.worst_case() + load.worst_case();
            let r = report::within(limit, rate::run(&args, &plan, procs, load, limit)).await?;
            report::write_json(args.json.as_deref(), &r)?;
            Ok(PushReport::Rate(r))
        }
        None => {
            let batch = args.batch.unwrap_or(1000);
            report::ensure_range("--batch", batch, 1, 10_000)?;
            report::ensure_range("--requests", args.requests, 0, 100_000)?;
            report::ensure_range("--concurrency", args.concurrency, 1, 1024)?;
            fleet::check_fd_budget(here + args.concurrency + procs * 3)?;
            // Each request waits at most the HTTP timeout, then the drain.
            let waves = args.requests.div_ceil(args.concurrency) as u32;
            let limit = plan.worst_case() + HTTP_TIMEOUT * waves + DRAIN;
            let load = Batches {
                batch,
                requests: args.requests,
                concurrency: args.concurrency,
            };
            let r = report::within(limit, batches(&args, &plan, procs, load, limit)).await?;
            report::write_json(args.json.as_deref(), &r)?;
            Ok(PushReport::Batches(r))
        }
    }
}

/// One push request slower than this fails (closed loop) or counts as
/// `timeout` (open loop).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The validated closed-loop load.
struct Batches {
    batch: usize,
    requests: usize,
    concurrency: usize,
}

/// Logs the clients in over `procs` processes and holds them, counting pushes.
async fn receivers(
    args: &PushArgs,
    plan: &StormPlan,
    procs: usize,
    limit: Duration,
) -> anyhow::Result<(StormSummary, Fleet)> {
    let hold = HoldPlan {
        keepalive: Duration::from_secs(args.keepalive_s),
        max_hold: limit,
        io: args.holder_io,
    };
    let (storm, fleet) = Fleet::start(plan, procs, hold, Some(RECEIPT_SLOTS)).await?;
    storm.require_all(plan.connections)?;
    Ok((storm, fleet))
}

/// Pushes each client is named in, given the requests that were answered
/// 2xx: request `r` names clients `r × batch … r × batch + batch - 1`,
/// round-robin over `connections`.
fn expected_per_client(
    answered: impl Iterator<Item = usize>,
    batch: usize,
    connections: usize,
) -> Vec<u32> {
    let mut expected = vec![0u32; connections];
    for r in answered {
        for k in 0..batch {
            expected[(r * batch + k) % connections] += 1;
        }
    }
    expected
}

/// How many pushes a share's clients should receive.
fn expected_in(expected: &[u32], share: &Share) -> u64 {
    expected[share.first..share.first + share.count]
        .iter()
        .map(|&n| u64::from(n))
        .sum()
}

/// The JSON body of a push to `to`, carrying `stamp`.
fn push_body(app: u16, to: &[String], stamp: Stamp) -> String {
    // Formatted directly: building a serde_json::Value per request cost ~5%
    // of bench's CPU. Uids and base64 need no escaping beyond what
    // `to_string` of the list gives.
    let to = serde_json::to_string(to).unwrap_or_default();
    let content = stamp.content_b64();
    format!(r#"{{"app":{app},"to":{to},"content_b64":"{content}"}}"#)
}

async fn batches(
    args: &PushArgs,
    plan: &StormPlan,
    procs: usize,
    load: Batches,
    limit: Duration,
) -> anyhow::Result<BatchReport> {
    let (_, mut fleet) = receivers(args, plan, procs, limit).await?;
    let Batches {
        batch,
        requests,
        concurrency,
    } = load;
    let connections = args.connections;
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
    let url = format!("http://{}/v1/push", args.server.http);
    let gate = Arc::new(Semaphore::new(concurrency));
    let http_latency = Arc::new(SharedRecorder::new());
    let started_ns = mono_ns();
    let mut senders = JoinSet::new();
    for r in 0..requests {
        let permit = gate.clone().acquire_owned().await?;
        let to: Vec<String> = (0..batch)
            .map(|k| fleet::uid((r * batch + k) % connections))
            .collect();
        let (http, url, key, rec, app) = (
            http.clone(),
            url.clone(),
            args.server.api_key.clone(),
            http_latency.clone(),
            args.server.app,
        );
        senders.spawn(async move {
            let stamp = Stamp {
                message: 0,
                due_ns: mono_ns(),
            };
            let body = push_body(app, &to, stamp);
            let t0 = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(&key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            drop(permit);
            let ok = matches!(&resp, Ok(resp) if resp.status().is_success());
            rec.record(r, t0.elapsed());
            ok
        });
    }
    while let Some(ok) = senders.join_next().await {
        anyhow::ensure!(ok?, "a push request failed (check --api-key and --app)");
    }
    let expected = expected_per_client(0..requests, batch, connections);
    fleet
        .wait_complete(
            |share, _| expected_in(&expected, share),
            tokio::time::Instant::now() + DRAIN,
        )
        .await?;
    let tally = fleet.release().await?.tally.unwrap_or_default();
    let delivered = tally.counts.iter().sum::<u64>();
    // First request to last receipt (to now, if nothing arrived).
    let last_ns = tally.last_ns.iter().copied().max().unwrap_or(0);
    let end_ns = if delivered > 0 { last_ns } else { mono_ns() };
    let duration = Duration::from_nanos(end_ns.saturating_sub(started_ns));
    Ok(BatchReport {
        connections,
        bench_procs: procs,
        holder_io: args.holder_io.as_arg(),
        targets_sent: (requests * batch) as u64,
        delivered,
        duration_s: duration.as_secs_f64(),
        targets_per_s: delivered as f64 / duration.as_secs_f64().max(1e-9),
        latency: tally.latency()?.percentiles(),
        http_latency: http_latency.merged().percentiles(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_follow_the_round_robin_and_split_by_share() {
        // 3 requests of 4 over 5 clients name 0-3, 4 0 1 2, 3 4 0 1.
        let e = expected_per_client(0..3, 4, 5);
        assert_eq!(e, vec![3, 3, 2, 2, 2]);
        assert_eq!(expected_in(&e, &Share { first: 0, count: 5 }), 12);
        assert_eq!(expected_in(&e, &Share { first: 3, count: 2 }), 4);
        // An unanswered request names no one.
        let skip = expected_per_client([0, 2].into_iter(), 4, 5);
        assert_eq!(skip.iter().sum::<u32>(), 8);
    }

    #[test]
    fn the_push_body_is_json_carrying_the_stamp() {
        let to = vec!["bench-1".to_string(), "bench-2".to_string()];
        let stamp = Stamp {
            message: 0,
            due_ns: 42,
        };
        let body: serde_json::Value = serde_json::from_str(&push_body(3, &to, stamp)).unwrap();
        assert_eq!(body["app"], 3);
        assert_eq!(body["to"], serde_json::json!(["bench-1", "bench-2"]));
        let raw = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            body["content_b64"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(Stamp::parse(&raw), Some(stamp));
    }
}
