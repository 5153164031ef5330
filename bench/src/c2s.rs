//! `tidegate bench c2s`: device → app ingest. N clients log in and send
//! ack-requested C2S frames for `--duration-s`, either each at
//! `--per-client-rate` (a fleet reporting GPS every few seconds; open loop,
//! each frame timed from its due instant) or flat out with `--window` frames
//! in flight per client (closed loop, timed from the write). The report
//! gives the ingest rate (acknowledged frames per second), ack latency
//! percentiles and errors by code.
//!
//! Each client is split into a writer and a reader task so frames can be
//! pipelined; the writer packs every frame its window allows into one write.

use crate::fleet::{self, error_label, StormPlan};
use crate::pace::{self, Schedule, Slot};
use crate::procs::{self, Share, Workers};
use crate::receipts::mono_ns;
use crate::report::{self, SharedRecorder};
use crate::{spread, Percentiles, Recorder};
use anyhow::Context;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidegate_proto::client::{ClientError, ClientReader, ClientWriter};
use tidegate_proto::{pb, AppCode, Cmd, Flags, MsgType};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// Arguments of `tidegate bench c2s`.
#[derive(clap::Args, Debug, Clone)]
pub struct C2sArgs {
    /// Gateway client address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// The app's token secret (default: `tidegate up`'s development secret).
    #[arg(long, default_value = "tidegate-dev-secret-app-1")]
    pub secret: String,
    /// App code.
    #[arg(long, default_value_t = 1)]
    pub app: u16,
    /// Clients to log in.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Frames per second per client on a fixed schedule (0.2 = every 5 s);
    /// omit to send flat out within --window.
    #[arg(long)]
    pub per_client_rate: Option<f64>,
    /// Frames in flight per client (awaiting their ack), 1 to 1024.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Seconds of sending (1 to 600).
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Message type of the frames (the c2s stream is `c2s:<app>:<msgtype>`).
    #[arg(long, default_value_t = 5)]
    pub msgtype: u16,
    /// Payload bytes per frame (1 to 60000).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Bench processes to spread the clients over (default: as few as the
    /// open-files limit allows, ~19,000 clients each).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of the hidden `tidegate bench c2s-worker`: one share of a
/// `--procs` run. It logs its share in, says so, waits for the common start
/// instant on stdin, sends, and reports what came back.
#[derive(clap::Args, Debug, Clone)]
pub struct C2sWorkerArgs {
    /// The run's arguments (`--connections`, `--procs` and `--json` unused).
    #[command(flatten)]
    pub c2s: C2sArgs,
    /// First client index of the share.
    #[arg(long)]
    pub first: usize,
    /// Clients in the share.
    #[arg(long)]
    pub count: usize,
    /// Logins in flight in this worker.
    #[arg(long)]
    pub login_concurrency: usize,
}

/// What `bench c2s` measured.
#[derive(Debug, Clone, Serialize)]
pub struct C2sReport {
    /// Clients logged in.
    pub connections: usize,
    /// `per_client_rate` (open loop) or `window` (flat out).
    pub load: &'static str,
    /// Frames per second per client asked for (open loop).
    pub per_client_rate: Option<f64>,
    /// Frames in flight per client at most.
    pub window: usize,
    /// Seconds of sending.
    pub duration_s: u64,
    /// Payload bytes per frame.
    pub size: usize,
    /// Frames in the schedule (open loop).
    pub scheduled: Option<u64>,
    /// Frames written.
    pub sent: u64,
    /// Frames acknowledged.
    pub acked: u64,
    /// Frames answered with ERROR, by code name; `closed` / `kicked`:
    /// connections lost.
    pub errors: BTreeMap<String, u64>,
    /// Frames written but neither acknowledged nor refused by the end.
    pub unanswered: u64,
    /// Scheduled frames never sent: their client's backlog was full.
    pub backlog_dropped: u64,
    /// Scheduled frames never sent: their client's window stayed full
    /// until sending stopped.
    pub not_sent: Option<u64>,
    /// Acknowledged frames per second, first send to last ack.
    pub ingest_per_s: f64,
    /// Bench processes the clients were spread over.
    pub bench_procs: usize,
    /// Ack latency: from the due instant (open loop) or the write (flat out).
    pub ack_latency: Percentiles,
}

/// Logins in flight while the fleet comes up.
const LOGIN_CONCURRENCY: usize = 256;
/// A login slower than this fails the run.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long frames in flight may take to be answered after sending stops.
const DRAIN: Duration = Duration::from_secs(10);
/// Due frames a client may have waiting for its window before further ones
/// are dropped (and counted): bounds memory when the server stalls.
const BACKLOG: usize = 64;

/// Counters every client task adds to.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    /// Latest ack, ns after the start.
    last_ack_ns: AtomicU64,
}

/// Frames one client has in flight: seq → the instant its latency counts from.
type Pending = Arc<Mutex<HashMap<u32, Instant>>>;

/// Runs the scenario.
pub async fn run(args: C2sArgs) -> anyhow::Result<C2sReport> {
    report::ensure_loopback(args.target, "--target")?;
    report::ensure_range("--connections", args.connections, 1, 1_200_000)?;
    let procs = spread::procs_for(args.connections, args.procs);
    report::ensure_range("--procs", procs, 1, 200)?;
    spread::ensure_capacity(args.connections, procs)?;
    report::ensure_range("--window", args.window, 1, 1024)?;
    report::ensure_range("--duration-s", args.duration_s, 1, 600)?;
    report::ensure_range("--size", args.size, 1, 60_000)?;
    if let Some(r) = args.per_client_rate {
        report::ensure_range("--per-client-rate", r, 0.001, 10_000.0)?;
        let total = r * args.connections as f64;
        anyhow::ensure!(
            total <= 2_000_000.0,
            "--per-client-rate × --connections is {total} frames/s; at most 2,000,000"
        );
    }
    let plan = StormPlan {
        first: 0,
        target: args.target,
        connections: args.connections,
        app: AppCode(args.app),
        secret: args.secret.clone(),
        concurrency: LOGIN_CONCURRENCY,
        rate: None,
        timeout: LOGIN_TIMEOUT,
    };
    // Sending, then up to DRAIN of late paced frames, then DRAIN for answers.
    let limit = plan.worst_case()
        + Duration::from_secs(args.duration_s)
        + DRAIN * 2
        + Duration::from_secs(10);
    let r = if procs == 1 {
        report::within(limit, ingest(&args, &plan)).await?
    } else {
        report::within(limit + Duration::from_secs(30), ingest_spread(&args, procs)).await?
    };
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

/// What one process's clients sent and what came back, counted.
#[derive(Serialize, Deserialize)]
struct Counts {
    scheduled: Option<u64>,
    sent: u64,
    acked: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    backlog_dropped: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.scheduled = match (self.scheduled, other.scheduled) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.sent += other.sent;
        self.acked += other.acked;
        self.refused += other.refused;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.backlog_dropped += other.backlog_dropped;
    }
}

/// One process's counts, its last ack after the common start, and its ack latencies.
struct Outcome {
    counts: Counts,
    last_ack: Duration,
    latency: Recorder,
}

impl Outcome {
    /// Adds another process's outcome (histograms added, not averaged).
    fn merge(&mut self, other: Outcome) {
        self.counts.add(other.counts);
        self.last_ack = self.last_ack.max(other.last_ack);
        self.latency.merge(&other.latency);
    }

    fn report(self, args: &C2sArgs, bench_procs: usize) -> C2sReport {
        let c = self.counts;
        C2sReport {
            connections: args.connections,
            load: if args.per_client_rate.is_some() {
                "per_client_rate"
            } else {
                "window"
            },
            per_client_rate: args.per_client_rate,
            window: args.window,
            duration_s: args.duration_s,
            size: args.size,
            scheduled: c.scheduled,
            sent: c.sent,
            acked: c.acked,
            errors: c.errors,
            unanswered: c.sent.saturating_sub(c.acked + c.refused),
            backlog_dropped: c.backlog_dropped,
            not_sent: c
                .scheduled
                .map(|s| s.saturating_sub(c.sent + c.backlog_dropped)),
            ingest_per_s: c.acked as f64 / self.last_ack.as_secs_f64().max(1e-9),
            bench_procs,
            ack_latency: self.latency.percentiles(),
        }
    }
}

/// A worker's first line: its logins.
#[derive(Serialize, Deserialize)]
struct ShareLogin {
    logged_in: usize,
    failures: BTreeMap<String, u64>,
}

/// A worker's last line: its [`Outcome`], the histogram in V2 base64.
#[derive(Serialize, Deserialize)]
struct ShareOutcome {
    #[serde(flatten)]
    counts: Counts,
    last_ack_ns: u64,
    latency: String,
}

/// Spreads the clients over `procs` worker processes, starts them sending
/// at one instant, and merges what they report.
async fn ingest_spread(args: &C2sArgs, procs: usize) -> anyhow::Result<C2sReport> {
    let shares = procs::shares(args.connections, args.connections.div_ceil(procs));
    let n = shares.len();
    let concurrency = LOGIN_CONCURRENCY.div_ceil(n).max(16);
    let mut workers = Workers::spawn(&shares, |s| worker_args(args, s, concurrency))?;
    let login_limit = LOGIN_TIMEOUT * (args.connections.div_ceil(n * concurrency) as u32);
    let logins: Vec<ShareLogin> = workers.next_reports(login_limit).await?;
    let logged_in: usize = logins.iter().map(|l| l.logged_in).sum();
    if logged_in < args.connections {
        let mut failures = BTreeMap::new();
        for (k, v) in logins.into_iter().flat_map(|l| l.failures) {
            *failures.entry(k).or_insert(0u64) += v;
        }
        anyhow::bail!(
            "only {logged_in} of {} clients logged in; failures: {failures:?}",
            args.connections
        );
    }
    // Every worker starts on the same instant of the shared monotonic clock.
    let start_ns = mono_ns() + START_DELAY.as_nanos() as u64;
    for i in 0..n {
        workers.tell(i, &start_ns.to_string()).await?;
    }
    let within = START_DELAY + Duration::from_secs(args.duration_s) + DRAIN * 2 + WORKER_SLACK;
    let lines: Vec<ShareOutcome> = workers.next_reports(within).await?;
    workers.finish(WORKER_SLACK).await;
    let mut total: Option<Outcome> = None;
    for line in lines {
        let o = Outcome {
            counts: line.counts,
            last_ack: Duration::from_nanos(line.last_ack_ns),
            latency: Recorder::from_base64(&line.latency)?,
        };
        match &mut total {
            Some(t) => t.merge(o),
            None => total = Some(o),
        }
    }
    let total = total.context("no bench worker reported")?;
    Ok(total.report(args, n))
}

/// How long after the last worker is ready the common start is.
const START_DELAY: Duration = Duration::from_millis(200);
/// Extra time a worker gets for reporting and exiting.
const WORKER_SLACK: Duration = Duration::from_secs(30);

fn worker_args(args: &C2sArgs, share: &Share, login_concurrency: usize) -> Vec<String> {
    let mut flags = vec![
        ("--target", args.target.to_string()),
        ("--secret", args.secret.clone()),
        ("--app", args.app.to_string()),
        ("--window", args.window.to_string()),
        ("--duration-s", args.duration_s.to_string()),
        ("--msgtype", args.msgtype.to_string()),
        ("--size", args.size.to_string()),
        ("--first", share.first.to_string()),
        ("--count", share.count.to_string()),
        ("--login-concurrency", login_concurrency.to_string()),
    ];
    if let Some(r) = args.per_client_rate {
        flags.push(("--per-client-rate", r.to_string()));
    }
    let mut a = vec!["bench".to_string(), "c2s-worker".to_string()];
    for (flag, value) in flags {
        a.extend([flag.to_string(), value]);
    }
    a
}

/// Runs one worker of a `--procs` run.
pub async fn worker(a: C2sWorkerArgs) -> anyhow::Result<()> {
    // Only the parent draws progress on the shared terminal.
    report::set_quiet(true);
    let plan = StormPlan {
        first: a.first,
        target: a.c2s.target,
        connections: a.count,
        app: AppCode(a.c2s.app),
        secret: a.c2s.secret.clone(),
        concurrency: a.login_concurrency.max(1),
        rate: None,
        timeout: LOGIN_TIMEOUT,
    };
    let storm = fleet::storm(&plan).await?;
    spread::say(&ShareLogin {
        logged_in: storm.members.len(),
        failures: storm.failures,
    })?;
    let Some(line) = procs::next_instruction(plan.worst_case() * 2 + WORKER_SLACK).await? else {
        return Ok(()); // the parent gave up on the run
    };
    let start_ns: u64 = line
        .parse()
        .with_context(|| format!("start instant {line:?} from the parent"))?;
    let start = Instant::now() + Duration::from_nanos(start_ns.saturating_sub(mono_ns()));
    let o = drive(&a.c2s, storm.members, start).await?;
    spread::say(&ShareOutcome {
        counts: o.counts,
        last_ack_ns: o.last_ack.as_nanos() as u64,
        latency: o.latency.to_base64(),
    })
}

async fn ingest(args: &C2sArgs, plan: &StormPlan) -> anyhow::Result<C2sReport> {
    let storm = fleet::storm(plan).await?;
    storm.require_all(args.connections)?;
    let start = Instant::now() + Duration::from_millis(10);
    Ok(drive(args, storm.members, start).await?.report(args, 1))
}

/// Sends from `members` for the run's duration from `start`, then waits
/// for the answers still owed.
async fn drive(
    args: &C2sArgs,
    members: Vec<fleet::Member>,
    start: Instant,
) -> anyhow::Result<Outcome> {
    let n = members.len();
    let totals = Arc::new(Totals::default());
    let latency = Arc::new(SharedRecorder::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let payload = Arc::new(pb::Payload {
        content_type: "application/octet-stream".into(),
        content: vec![0x5a; args.size].into(),
    });
    let end = start + Duration::from_secs(args.duration_s);
    let mut writers = JoinSet::new();
    let mut readers = JoinSet::new();
    let mut backlogs = Vec::with_capacity(n);
    for m in members {
        let (reader, writer) = m.client.into_split();
        let window = Arc::new(Semaphore::new(args.window));
        let pending: Pending = Arc::default();
        let source = match args.per_client_rate {
            Some(_) => {
                let (tx, rx) = mpsc::channel(BACKLOG);
                backlogs.push(tx);
                Source::Paced(rx)
            }
            None => Source::FlatOut { start, end },
        };
        let w = Writer {
            writer,
            window: window.clone(),
            pending: pending.clone(),
            totals: totals.clone(),
            payload: payload.clone(),
            msgtype: MsgType(args.msgtype),
            max_batch: args.window,
            send_until: match args.per_client_rate {
                Some(_) => end + DRAIN,
                None => end,
            },
        };
        writers.spawn(w.run(source));
        let r = Reader {
            index: m.index,
            reader,
            window,
            pending,
            totals: totals.clone(),
            latency: latency.clone(),
            start,
        };
        readers.spawn(r.run(stop_rx.clone()));
    }

    let mut scheduled = None;
    let mut backlog_dropped = 0;
    if let Some(rate) = args.per_client_rate {
        let count = (rate * n as f64 * args.duration_s as f64).round() as u64;
        scheduled = Some(count);
        // One schedule for the fleet: slot k belongs to client k mod N, so
        // each client sends every 1/rate seconds and the clients' phases
        // are spread evenly instead of bursting together.
        // The pacing thread hands each slot straight to its client's writer:
        // a hop through this task would cost a wake-up per frame.
        let dropped = Arc::new(AtomicU64::new(0));
        let schedule = Schedule::at_rate(rate * n as f64, count, start);
        let pacer = {
            let dropped = dropped.clone();
            pace::run_each(schedule, move |slot| {
                if backlogs[slot.index as usize % n].try_send(slot).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                true
            })?
        };
        // The thread ends after the last slot, dropping the backlogs' senders.
        tokio::task::spawn_blocking(move || pacer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
        backlog_dropped = dropped.load(Ordering::Relaxed);
    }
    let mut write_halves = Vec::with_capacity(n);
    while let Some(done) = writers.join_next().await {
        write_halves.push(done?);
    }
    let drain_end = Instant::now() + DRAIN;
    while Instant::now() < drain_end {
        let answered =
            totals.acked.load(Ordering::Relaxed) + totals.refused.load(Ordering::Relaxed);
        if answered >= totals.sent.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut errors = BTreeMap::new();
    while let Some(done) = readers.join_next().await {
        for (k, v) in done? {
            *errors.entry(k).or_insert(0) += v;
        }
    }

    drop(write_halves);
    Ok(Outcome {
        counts: Counts {
            scheduled,
            sent: totals.sent.load(Ordering::Relaxed),
            acked: totals.acked.load(Ordering::Relaxed),
            refused: totals.refused.load(Ordering::Relaxed),
            errors,
            backlog_dropped,
        },
        last_ack: Duration::from_nanos(totals.last_ack_ns.load(Ordering::Relaxed)),
        latency: latency.merged(),
    })
}

/// Where a writer's frames come from.
enum Source {
    /// Due slots from the fleet's schedule.
    Paced(mpsc::Receiver<Slot>),
    /// As many as the window allows, from `start` until `end`.
    FlatOut { start: Instant, end: Instant },
}

/// One client's sending half.
struct Writer {
    writer: ClientWriter,
    window: Arc<Semaphore>,
    pending: Pending,
    totals: Arc<Totals>,
    payload: Arc<pb::Payload>,
    msgtype: MsgType,
    max_batch: usize,
    /// No frame is written after this, however far behind the schedule is.
    send_until: Instant,
}

impl Writer {
    /// Sends until the source ends; returns the write half, which must
    /// outlive the drain: dropping it shuts the socket's sending side, and
    /// the gateway closes a half-closed connection with acks still owed.
    async fn run(mut self, mut source: Source) -> ClientWriter {
        let mut buf = BytesMut::new();
        let mut dues = Vec::with_capacity(self.max_batch);
        if let Source::FlatOut { start, .. } = source {
            tokio::time::sleep_until(start.into()).await;
        }
        loop {
            // The first frame of a batch: wait for it to be due and for room
            // in the window (open loop: the wait counts in its latency).
            let first = match &mut source {
                Source::Paced(rx) => match rx.recv().await {
                    Some(slot) => slot.due,
                    None => return self.writer,
                },
                Source::FlatOut { end, .. } if Instant::now() >= *end => return self.writer,
                Source::FlatOut { .. } => Instant::now(),
            };
            let Ok(Ok(permit)) =
                tokio::time::timeout_at(self.send_until.into(), self.window.acquire()).await
            else {
                return self.writer; // the server stopped answering; see `unanswered`
            };
            permit.forget();
            dues.push(first);
            // Then every further frame that is due and fits, in the same write.
            while dues.len() < self.max_batch {
                let Ok(permit) = self.window.try_acquire() else {
                    break;
                };
                let due = match &mut source {
                    Source::Paced(rx) => rx.try_recv().ok().map(|s| s.due),
                    Source::FlatOut { .. } => Some(Instant::now()),
                };
                let Some(due) = due else {
                    break; // the permit goes back unused
                };
                permit.forget();
                dues.push(due);
            }
            let frames;
            {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                frames = dues.len() as u64;
                for due in dues.drain(..) {
                    let seq = self
                        .writer
                        .encode_c2s(self.msgtype, &self.payload, true, &mut buf);
                    pending.insert(seq, due);
                }
            }
            if self.writer.send_raw(&buf).await.is_err() {
                return self.writer; // the reader sees the close and reports it
            }
            self.totals.sent.fetch_add(frames, Ordering::Relaxed);
            buf.clear();
        }
    }
}

/// One client's receiving half.
struct Reader {
    index: usize,
    reader: ClientReader,
    window: Arc<Semaphore>,
    pending: Pending,
    totals: Arc<Totals>,
    latency: Arc<SharedRecorder>,
    start: Instant,
}

impl Reader {
    /// Reads answers until told to stop; returns this client's errors.
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        loop {
            let frame = tokio::select! {
                // Cancel-safe: ClientReader::recv keeps partial frames buffered.
                f = self.reader.recv() => f,
                _ = stop.changed() => break,
            };
            let f = match frame {
                Ok(f) => f,
                Err(e) => {
                    *errors.entry(lost_label(&e)).or_insert(0) += 1;
                    break;
                }
            };
            let h = f.header;
            match h.cmd {
                Cmd::C2s if h.flags.contains(Flags::RESPONSE) => {
                    if let Some(t0) = self.answered(h.seq) {
                        self.latency.record(self.index, t0.elapsed());
                        self.totals.acked.fetch_add(1, Ordering::Relaxed);
                        let at = Instant::now().saturating_duration_since(self.start);
                        self.totals
                            .last_ack_ns
                            .fetch_max(at.as_nanos() as u64, Ordering::Relaxed);
                    }
                }
                Cmd::Error => {
                    let code = f.decode_body::<pb::Error>().map_or(0, |e| e.code);
                    let label = error_label(code);
                    if self.answered(h.seq).is_some() {
                        self.totals.refused.fetch_add(1, Ordering::Relaxed);
                        *errors.entry(label).or_insert(0) += 1;
                    } else {
                        *errors.entry(format!("unsolicited_{label}")).or_insert(0) += 1;
                    }
                }
                Cmd::Kickout => {
                    *errors.entry("kicked".into()).or_insert(0) += 1;
                    break;
                }
                _ => {}
            }
        }
        errors
    }

    /// Takes `seq` off the pending set and frees its window slot.
    fn answered(&self, seq: u32) -> Option<Instant> {
        let t0 = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)?;
        self.window.add_permits(1);
        Some(t0)
    }
}

fn lost_label(e: &ClientError) -> String {
    match e {
        ClientError::Closed => "closed".into(),
        ClientError::Io(_) => "reset".into(),
        other => format!("other: {other}"),
    }
}
