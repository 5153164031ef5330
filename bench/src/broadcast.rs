//! `tidegate bench broadcast`: fan-out. N clients log in; M pushes with
//! `"to": "all"` go out `--interval-ms` apart (open loop: each is due at its
//! slot and timed from it). Every client timestamps each receipt; per
//! message the report gives deliveries out of N and the time from the
//! HTTP send to the last client's receipt (time to last delivery), and over
//! the run the percentiles of per-client delivery latency and of time to last.
//!
//! A broadcast reaches every online session of the app, so run it against a
//! gateway no other client of that app uses: strangers would be counted by
//! the server (`server_delivered`) but not by bench.

use crate::fleet::{self, StormPlan};
use crate::pace::{Pacer, Schedule};

use crate::report::{self, Server, SharedRecorder};
use crate::{Percentiles, Recorder};
use base64::Engine;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
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
    /// Clients logged in.
    pub connections: usize,
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
    /// Each broadcast.
    pub per_message: Vec<MessageReport>,
}

/// Logins in flight while the fleet comes up.
const LOGIN_CONCURRENCY: usize = 256;
/// A login slower than this fails the run.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A broadcast request slower than this counts as `timeout`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long receivers wait for stragglers after the last answer.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the scenario.
pub async fn run(args: BroadcastArgs) -> anyhow::Result<BroadcastReport> {
    args.server.ensure_loopback()?;
    report::ensure_range("--connections", args.connections, 1, 100_000)?;
    report::ensure_range("--messages", args.messages, 1, 10_000)?;
    report::ensure_range("--interval-ms", args.interval_ms, 0, 60_000)?;
    let schedule = Duration::from_millis(args.interval_ms) * args.messages as u32;
    anyhow::ensure!(
        schedule <= Duration::from_secs(600),
        "--messages × --interval-ms is {} s; at most 600 s per run",
        schedule.as_secs()
    );
    fleet::check_fd_budget(args.connections + args.messages.min(1024))?;
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
    let limit = plan.worst_case() + schedule + HTTP_TIMEOUT + DRAIN + Duration::from_secs(10);
    let r = report::within(limit, fan_out(&args, &plan)).await?;
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

/// Receipts of one broadcast, updated by every client's reader.
#[derive(Default)]
struct Track {
    receipts: AtomicU64,
    /// Latest receipt, ns since the run's epoch.
    last_ns: AtomicU64,
}

/// The HTTP side of one broadcast.
#[derive(Debug, Clone, Default)]
struct Answer {
    http: String,
    server_delivered: Option<u64>,
}

async fn fan_out(args: &BroadcastArgs, plan: &StormPlan) -> anyhow::Result<BroadcastReport> {
    let storm = fleet::storm(plan).await?;
    storm.require_all(args.connections)?;
    let n = args.connections as u64;
    let epoch = Instant::now();
    let tracks: Arc<Vec<Track>> = Arc::new((0..args.messages).map(|_| Track::default()).collect());
    let latency = Arc::new(SharedRecorder::new());
    let total = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    for m in storm.members {
        let (tracks, latency, total, mut client) =
            (tracks.clone(), latency.clone(), total.clone(), m.client);
        readers.spawn(async move {
            while let Ok(push) = client.recv_push().await {
                let Some(stamp) = Stamp::parse(&push.content) else {
                    continue;
                };
                let Some(track) = tracks.get(stamp.message) else {
                    continue;
                };
                let now_ns = epoch.elapsed().as_nanos() as u64;
                latency.record(
                    m.index,
                    Duration::from_nanos(now_ns.saturating_sub(stamp.due_ns)),
                );
                track.receipts.fetch_add(1, Ordering::Relaxed);
                track.last_ns.fetch_max(now_ns, Ordering::Relaxed);
                total.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

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
    let mut dues = vec![Duration::ZERO; args.messages];
    let mut sends = JoinSet::new();
    while let Some(slot) = pacer.next().await {
        let k = slot.index as usize;
        let due = slot.due.duration_since(epoch);
        dues[k] = due;
        let body = Stamp {
            message: k,
            due_ns: due.as_nanos() as u64,
        }
        .body(args.server.app);
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
    let drain_end = Instant::now() + DRAIN;
    while total.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    readers.abort_all();
    while readers.join_next().await.is_some() {}

    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|p| p.into_inner()));
    let mut time_to_last = Recorder::new();
    let per_message: Vec<MessageReport> = answers
        .into_iter()
        .enumerate()
        .map(|(k, a)| {
            let t = &tracks[k];
            let deliveries = t.receipts.load(Ordering::Relaxed);
            let ttl = (deliveries == n).then(|| {
                let last = Duration::from_nanos(t.last_ns.load(Ordering::Relaxed));
                let ttl = last.saturating_sub(dues[k]);
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
        messages: args.messages,
        interval_ms: args.interval_ms,
        expected,
        deliveries: total.load(Ordering::Relaxed),
        complete_messages: per_message
            .iter()
            .filter(|m| m.time_to_last_us.is_some())
            .count(),
        delivery_latency: latency.merged().percentiles(),
        time_to_last: time_to_last.percentiles(),
        http_latency: http_latency.merged().percentiles(),
        per_message,
    })
}

/// What a bench broadcast carries: its index and due instant.
struct Stamp {
    message: usize,
    /// Due instant, ns since the run's epoch.
    due_ns: u64,
}

impl Stamp {
    fn parse(content: &[u8]) -> Option<Stamp> {
        let message = u32::from_le_bytes(content.get(..4)?.try_into().ok()?) as usize;
        let due_ns = u64::from_le_bytes(content.get(4..12)?.try_into().ok()?);
        Some(Stamp { message, due_ns })
    }

    fn body(&self, app: u16) -> String {
        let mut raw = (self.message as u32).to_le_bytes().to_vec();
        raw.extend_from_slice(&self.due_ns.to_le_bytes());
        let content = base64::engine::general_purpose::STANDARD.encode(raw);
        serde_json::json!({"app": app, "to": "all", "content_b64": content}).to_string()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_through_the_push_body() {
        let s = Stamp {
            message: 7,
            due_ns: 123_456_789,
        };
        let body: serde_json::Value = serde_json::from_str(&s.body(1)).unwrap();
        assert_eq!(body["to"], "all");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body["content_b64"].as_str().unwrap())
            .unwrap();
        let back = Stamp::parse(&raw).unwrap();
        assert_eq!((back.message, back.due_ns), (7, 123_456_789));
        assert!(Stamp::parse(&raw[..11]).is_none());
    }
}
