//! `tidegate bench broadcast`: fan-out. N clients log in; M pushes with
//! `"to": "all"` go out `--interval-ms` apart (open loop: each is due at its
//! slot and timed from it). Every client timestamps each receipt; per
//! message the report gives deliveries out of N and the time from the
//! HTTP send to the last client's receipt (time to last delivery), and over
//! the run the percentiles of per-client delivery latency and of time to last.
//! Past one process's descriptor limit the clients are spread over
//! `--procs` bench processes; each counts its own receipts on the host's
//! monotonic clock and the parent merges them (broadcast to a million).
//!
//! A broadcast reaches every online session of the app, so run it against a
//! gateway no other client of that app uses: strangers would be counted by
//! the server (`server_delivered`) but not by bench.

use crate::fleet::StormPlan;
use crate::pace::{Pacer, Schedule};
use crate::receipts::{mono_ns, Stamp};
use crate::report::{self, Server, SharedRecorder};
use crate::spread::{self, Fleet, HoldPlan, ShareEnd};
use crate::{Percentiles, Recorder};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidegate_proto::AppCode;
use tokio::task::JoinSet;

/// Arguments of `tidegate bench broadcast`.
#[derive(clap::Args, Debug, Clone)]
pub struct BroadcastArgs {
    /// Where the gateway and logic listen, and the app's credentials.
    #[command(flatten)]
    pub server: Server,
    /// Clients to log in.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Broadcasts to send (1 to 10000).
    #[arg(long, default_value_t = 10)]
    pub messages: usize,
    /// Milliseconds between two broadcasts (0: all at once).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Bench processes holding the clients (default: as few as the
    /// open-files limit allows, ~19,000 connections each here).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Connects+logins in flight at once (over all bench processes).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Login attempts per second over all processes (open loop); omit to
    /// go as fast as --concurrency allows.
    #[arg(long)]
    pub login_rate: Option<f64>,
    /// Seconds to wait for stragglers after the last HTTP answer (≤ 600).
    #[arg(long, default_value_t = 10)]
    pub drain_s: u64,
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

/// One broadcast's fate.
#[derive(Debug, Clone, Serialize)]
pub struct MessageReport {
    /// Position in the run.
    pub index: usize,
    /// `ok`, or why the HTTP request failed (`http_<status>`, `timeout`, ...).
    pub http: String,
    /// Sessions the server says it queued the frame to.
    pub server_delivered: Option<u64>,
    /// Bench clients that received it.
    pub deliveries: u64,
    /// Due instant → the last bench client's receipt, µs (all N received it).
    pub time_to_last_us: Option<u64>,
}

/// What `bench broadcast` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastReport {
    /// Clients asked for.
    pub connections: usize,
    /// Clients logged in (the broadcasts' audience).
    pub logged_in: usize,
    /// Failed logins by reason.
    pub login_failures: std::collections::BTreeMap<String, u64>,
    /// Bench processes that held them.
    pub bench_procs: usize,
    /// How the bench held its connections (`--holder-io`).
    pub holder_io: &'static str,
    /// Logins per second while the fleet came up.
    pub logins_per_s: f64,
    /// Broadcasts sent.
    pub messages: usize,
    /// Spacing, ms.
    pub interval_ms: u64,
    /// connections × messages.
    pub expected: u64,
    /// Receipts counted by bench clients.
    pub deliveries: u64,
    /// Broadcasts every client received.
    pub complete_messages: usize,
    /// Due instant → each client's receipt, over all receipts.
    pub delivery_latency: Percentiles,
    /// Due instant → last client's receipt, over complete broadcasts.
    pub time_to_last: Percentiles,
    /// Due instant → HTTP answer.
    pub http_latency: Percentiles,
    /// Held connections still open when the run ended (the gateway
    /// closed the others).
    pub open_at_end: usize,
    /// Bench processes that counted fewer receipts than their clients
    /// should have had (empty when every broadcast reached everyone).
    pub short_shares: Vec<ShareEnd>,
    /// Each broadcast.
    pub per_message: Vec<MessageReport>,
}

/// A login slower than this fails the run.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A broadcast request slower than this counts as `timeout`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the scenario.
pub async fn run(args: BroadcastArgs) -> anyhow::Result<BroadcastReport> {
    args.server.ensure_loopback()?;
    report::ensure_range("--connections", args.connections, 1, 1_200_000)?;
    report::ensure_range("--concurrency", args.concurrency, 1, 100_000)?;
    report::ensure_range("--messages", args.messages, 1, 10_000)?;
    report::ensure_range("--interval-ms", args.interval_ms, 0, 60_000)?;
    report::ensure_range("--drain-s", args.drain_s, 0, 600)?;
    report::ensure_range("--keepalive-s", args.keepalive_s, 1, 3600)?;
    let drain = Duration::from_secs(args.drain_s);
    let schedule = Duration::from_millis(args.interval_ms) * args.messages as u32;
    anyhow::ensure!(
        schedule <= Duration::from_secs(600),
        "--messages × --interval-ms is {} s; at most 600 s per run",
        schedule.as_secs()
    );
    let procs = spread::procs_for(args.connections, args.procs);
    report::ensure_range("--procs", procs, 1, 200)?;
    let plan = StormPlan {
        first: 0,
        target: args.server.target,
        connections: args.connections,
        app: AppCode(args.server.app),
        secret: args.server.secret.clone(),
        concurrency: args.concurrency,
        rate: args.login_rate,
        timeout: LOGIN_TIMEOUT,
    };
    let limit = plan.worst_case() + schedule + HTTP_TIMEOUT + drain + Duration::from_secs(10);
    let r = report::within(limit, fan_out(&args, &plan, procs, limit)).await?;
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

/// The HTTP side of one broadcast.
#[derive(Debug, Clone, Default)]
struct Answer {
    http: String,
    server_delivered: Option<u64>,
}

async fn fan_out(
    args: &BroadcastArgs,
    plan: &StormPlan,
    procs: usize,
    limit: Duration,
) -> anyhow::Result<BroadcastReport> {
    let hold = HoldPlan {
        keepalive: Duration::from_secs(args.keepalive_s),
        max_hold: limit,
        io: args.holder_io,
    };
    let (storm, mut receivers) = Fleet::start(plan, procs, hold, Some(args.messages)).await?;
    // At a million, a few logins may fail on a saturated host: broadcast to
    // those that made it and say how many did not.
    anyhow::ensure!(
        storm.logged_in > 0,
        "no client logged in; failures: {:?}",
        storm.failures
    );
    let n = storm.logged_in as u64;

    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .tcp_nodelay(true)
        .build()?;
    let url: Arc<str> = format!("http://{}/v1/push", args.server.http).into();
    let key: Arc<str> = args.server.api_key.as_str().into();
    let answers = Arc::new(Mutex::new(vec![Answer::default(); args.messages]));
    let http_latency = Arc::new(SharedRecorder::new());
    let start = Instant::now() + Duration::from_millis(10);
    let mut pacer = Pacer::start(Schedule::spaced(
        Duration::from_millis(args.interval_ms),
        args.messages as u64,
        start,
    ))?;
    // Due instants on the clock every bench process shares.
    let (epoch, epoch_ns) = (Instant::now(), mono_ns());
    let mut dues = vec![0u64; args.messages];
    let mut sends = JoinSet::new();
    while let Some(slot) = pacer.next().await {
        let k = slot.index as usize;
        let due_ns = epoch_ns + slot.due.saturating_duration_since(epoch).as_nanos() as u64;
        dues[k] = due_ns;
        let body = Stamp { message: k, due_ns }.body(args.server.app);
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        let (answers, http_latency) = (answers.clone(), http_latency.clone());
        sends.spawn(async move {
            let answer = post(&http, &url, &key, body).await;
            http_latency.record(k, slot.due.elapsed());
            answers.lock().unwrap_or_else(|p| p.into_inner())[k] = answer;
        });
    }
    while let Some(done) = sends.join_next().await {
        done?;
    }
    let expected = n * args.messages as u64;
    let messages = args.messages as u64;
    receivers
        .wait_complete(
            |_, logged_in| logged_in as u64 * messages,
            tokio::time::Instant::now() + Duration::from_secs(args.drain_s),
        )
        .await?;
    let released = receivers.release().await?;
    let short_shares = released
        .shares
        .iter()
        .filter(|s| s.received < s.logged_in as u64 * messages)
        .copied()
        .collect();
    let tally = released.tally.unwrap_or_default();

    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|p| p.into_inner()));
    let mut time_to_last = Recorder::new();
    let per_message: Vec<MessageReport> = answers
        .into_iter()
        .enumerate()
        .map(|(k, a)| {
            let deliveries = tally.counts.get(k).copied().unwrap_or(0);
            let ttl = (deliveries == n).then(|| {
                let last = tally.last_ns.get(k).copied().unwrap_or(0);
                let ttl = Duration::from_nanos(last.saturating_sub(dues[k]));
                time_to_last.record(ttl);
                ttl.as_micros() as u64
            });
            MessageReport {
                index: k,
                http: a.http,
                server_delivered: a.server_delivered,
                deliveries,
                time_to_last_us: ttl,
            }
        })
        .collect();
    Ok(BroadcastReport {
        connections: args.connections,
        logged_in: storm.logged_in,
        login_failures: storm.failures.clone(),
        bench_procs: procs,
        holder_io: args.holder_io.as_arg(),
        logins_per_s: storm.logins_per_s(),
        messages: args.messages,
        interval_ms: args.interval_ms,
        expected,
        deliveries: tally.counts.iter().sum(),
        complete_messages: per_message
            .iter()
            .filter(|m| m.time_to_last_us.is_some())
            .count(),
        delivery_latency: tally.latency()?.percentiles(),
        time_to_last: time_to_last.percentiles(),
        http_latency: http_latency.merged().percentiles(),
        open_at_end: released.open,
        short_shares,
        per_message,
    })
}

/// The server's broadcast answer, the part bench reads.
#[derive(serde::Deserialize)]
struct Reply {
    delivered: Option<u64>,
}

async fn post(http: &reqwest::Client, url: &str, key: &str, body: String) -> Answer {
    let sent = http
        .post(url)
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return failed("timeout"),
        Err(e) if e.is_connect() => return failed("connect"),
        Err(e) => return failed(&format!("other: {e}")),
    };
    let status = resp.status();
    if !status.is_success() {
        return failed(&format!("http_{}", status.as_u16()));
    }
    match resp.json::<Reply>().await {
        Ok(r) => Answer {
            http: "ok".into(),
            server_delivered: r.delivered,
        },
        Err(e) => failed(&format!("bad answer: {e}")),
    }
}

fn failed(reason: &str) -> Answer {
    Answer {
        http: reason.into(),
        server_delivered: None,
    }
}
