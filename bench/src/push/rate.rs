//! `bench push --rate R --duration-s D`: an open loop of push requests.
//! Request k is due at `start + k / R` whatever happened to earlier ones; it
//! is sent from its own task (a slow response never holds the next send
//! back) over a pool of HTTP connections opened before the clock starts
//! (`pool.rs`), and
//! both its latencies are measured from its due instant (`pace.rs` explains
//! why that is the coordinated-omission correction, and why `Recorder::record`
//! rather than `record_corrected` goes with it).

use super::pool::Pool;
use super::{
    expected_in, expected_per_client, push_body, receivers, PushArgs, DRAIN, HTTP_TIMEOUT,
};
use crate::fleet::{self, StormPlan};
use crate::pace::{self, Schedule, Slot};
use crate::receipts::{mono_ns, Stamp, TimelinePoint};
use crate::report::{self, SharedRecorder};
use crate::Percentiles;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request that starts later than this after its due instant counts as
/// late (sender lag: the pacer, the runtime or the in-flight cap held it).
const LATE_AFTER: Duration = Duration::from_millis(1);
/// Requests not started this long after the schedule's end are abandoned
/// and counted as `not_sent`, so a stuck server cannot stretch the run.
const SEND_GRACE: Duration = Duration::from_secs(10);

/// The validated open-loop load.
pub(super) struct RateLoad {
    rate: f64,
    duration: Duration,
    batch: usize,
    /// Most requests in flight (and the pool's upper bound).
    pub(super) max_in_flight: usize,
    /// `--http-connections`, if given.
    http_connections: Option<usize>,
    requests: u64,
}

impl RateLoad {
    /// Checks the flags of an open-loop run.
    pub(super) fn from_args(args: &PushArgs, rate: f64) -> anyhow::Result<RateLoad> {
        report::ensure_range("--rate", rate, 1.0, 200_000.0)?;
        report::ensure_range("--duration-s", args.duration_s, 1, 600)?;
        report::ensure_range("--max-in-flight", args.max_in_flight, 1, 10_000)?;
        if let Some(n) = args.http_connections {
            report::ensure_range("--http-connections", n, 1, 10_000)?;
        }
        let batch = args.batch.unwrap_or(1);
        report::ensure_range("--batch", batch, 1, 10_000)?;
        let requests = (rate * args.duration_s as f64).round() as u64;
        anyhow::ensure!(
            requests as f64 * batch as f64 <= 100_000_000.0,
            "--rate × --duration-s × --batch names {} targets; at most 100,000,000 per run",
            requests as f64 * batch as f64
        );
        Ok(RateLoad {
            rate,
            duration: Duration::from_secs(args.duration_s),
            batch,
            max_in_flight: args.max_in_flight,
            http_connections: args.http_connections,
            requests,
        })
    }

    /// The longest the load can take after the logins.
    pub(super) fn worst_case(&self) -> Duration {
        HTTP_TIMEOUT * self.warm_connections() as u32
            + self.duration
            + SEND_GRACE
            + HTTP_TIMEOUT
            + DRAIN
    }

    /// HTTP connections, all opened before the clock starts: what the rate
    /// keeps in flight if each request took 10 ms (five times the target
    /// latency), within sane bounds, or `--http-connections`.
    fn warm_connections(&self) -> usize {
        self.http_connections
            .unwrap_or_else(|| ((self.rate * 0.01).ceil() as usize).clamp(16, 1024))
            .min(self.max_in_flight)
    }
}

/// What open-loop `bench push` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RateReport {
    /// Clients logged in.
    pub connections: usize,
    /// Bench processes holding them.
    pub bench_procs: usize,
    /// How the bench held its connections (`--holder-io`).
    pub holder_io: &'static str,
    /// Requests per second asked for.
    pub rate_per_s: f64,
    /// Seconds of schedule.
    pub duration_s: f64,
    /// Targets per request.
    pub batch: usize,
    /// Requests in the schedule.
    pub requests_scheduled: u64,
    /// Requests started.
    pub requests_sent: u64,
    /// Requests answered 2xx.
    pub requests_ok: u64,
    /// Failed requests by reason (`http_<status>`, `timeout`, `connect`, ...).
    pub request_failures: BTreeMap<String, u64>,
    /// Requests abandoned because the run fell too far behind.
    pub not_sent: u64,
    /// Requests started per second, first due instant to last start.
    pub achieved_rate_per_s: f64,
    /// Targets named in requests answered 2xx.
    pub targets_ok: u64,
    /// Pushes received by clients.
    pub delivered: u64,
    /// Due instant → client receipt.
    pub latency: Percentiles,
    /// Receipts, late ones (> 2 ms) and the worst latency per 100 ms of due
    /// time: a tail made of periodic stalls shows as a few bad windows.
    pub timeline: Vec<TimelinePoint>,
    /// Where the timeline's 0 ms lies on CLOCK_MONOTONIC, ns (none without
    /// receipts): to line it up with `perf record -k mono` or other traces.
    pub timeline_start_mono_ns: Option<u64>,
    /// Due instant → HTTP response read.
    pub http_latency: Percentiles,
    /// Due instant → request start.
    pub sender_lag: Percentiles,
    /// Requests that started more than `late_after_us` after their due instant.
    pub late_starts: u64,
    /// The lateness threshold, µs.
    pub late_after_us: u64,
    /// HTTP connections, all opened before the clock started; requests
    /// never opened more.
    pub warm_connections: usize,
}

/// What the sending side counts, shared by the request tasks.
#[derive(Default)]
struct Sent {
    started: AtomicU64,
    ok: AtomicU64,
    /// Which requests were answered 2xx (bit k: request k), so each
    /// process can be told how many pushes its clients should get.
    answered: Answered,
    late: AtomicU64,
    /// Nanoseconds from the schedule start to the latest request start.
    last_start_ns: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

/// A set of request indices, one bit each (100,000,000 requests at most:
/// 12.5 MB).
#[derive(Default)]
struct Answered {
    bits: Vec<AtomicU64>,
}

impl Answered {
    fn with_capacity(requests: u64) -> Answered {
        Answered {
            bits: (0..requests.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn insert(&self, k: usize) {
        if let Some(word) = self.bits.get(k / 64) {
            word.fetch_or(1 << (k % 64), Ordering::Relaxed);
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, word)| {
            let word = word.load(Ordering::Relaxed);
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

impl Sent {
    fn fail(&self, reason: String) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *f.entry(reason).or_insert(0) += 1;
    }
}

/// What every request task shares.
struct Shots {
    pool: Arc<Pool>,
    sent: Sent,
    http_latency: SharedRecorder,
    lag: SharedRecorder,
    /// The schedule's first due instant.
    start: Instant,
}

impl Shots {
    /// Sends one scheduled request and records how it went.
    async fn fire(self: Arc<Self>, slot: Slot, body: String, permit: OwnedSemaphorePermit) {
        let k = slot.index as usize;
        let started = Instant::now();
        let late_by = started.saturating_duration_since(slot.due);
        self.lag.record(k, late_by);
        if late_by > LATE_AFTER {
            self.sent.late.fetch_add(1, Ordering::Relaxed);
        }
        self.sent.started.fetch_add(1, Ordering::Relaxed);
        self.sent.last_start_ns.fetch_max(
            started.saturating_duration_since(self.start).as_nanos() as u64,
            Ordering::Relaxed,
        );
        match self.pool.post_json("/v1/push", body).await {
            Ok(()) => {
                self.http_latency.record(k, slot.due.elapsed());
                self.sent.ok.fetch_add(1, Ordering::Relaxed);
                self.sent.answered.insert(k);
            }
            Err(reason) => self.sent.fail(reason),
        }
        // Our share of `Shots` goes before the permit: once every permit is
        // back, the run takes `Shots` apart.
        drop(self);
        drop(permit);
    }
}

/// Runs the open loop against logged-in clients.
pub(super) async fn run(
    args: &PushArgs,
    plan: &StormPlan,
    procs: usize,
    load: RateLoad,
    limit: Duration,
) -> anyhow::Result<RateReport> {
    let (_, mut fleet) = receivers(args, plan, procs, limit).await?;

    let warm = load.warm_connections();
    let pool = Arc::new(Pool::new(
        args.server.http,
        &args.server.api_key,
        warm,
        HTTP_TIMEOUT,
    )?);
    pool.warm(warm).await?;
    let in_flight = Arc::new(Semaphore::new(load.max_in_flight));
    let start = Instant::now() + Duration::from_millis(10);
    let shots = Arc::new(Shots {
        pool,
        sent: Sent {
            answered: Answered::with_capacity(load.requests),
            ..Sent::default()
        },
        http_latency: SharedRecorder::new(),
        lag: SharedRecorder::new(),
        start,
    });
    let send_deadline = start + load.duration + SEND_GRACE;
    let not_sent = Arc::new(AtomicU64::new(0));
    let schedule = Schedule::at_rate(load.rate, load.requests, start);
    // Due instants on the clock every bench process shares.
    let (epoch, epoch_ns) = (Instant::now(), mono_ns());
    let pacer = {
        let (shots, in_flight, not_sent) = (shots.clone(), in_flight.clone(), not_sent.clone());
        let (app, batch, connections, requests) =
            (args.server.app, load.batch, args.connections, load.requests);
        let runtime = tokio::runtime::Handle::current();
        pace::run_each(schedule, move |slot| {
            let permit = match in_flight.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                // Every request in flight: wait (the wait shows as lag) but
                // never past the deadline.
                // The timeout is built inside the async block: this thread
                // is not a runtime thread, and a tokio timer can only be
                // created where a runtime is entered.
                Err(_) => runtime
                    .block_on(async {
                        tokio::time::timeout_at(
                            send_deadline.into(),
                            in_flight.clone().acquire_owned(),
                        )
                        .await
                    })
                    .ok()
                    .and_then(Result::ok),
            };
            let Some(permit) = permit.filter(|_| Instant::now() <= send_deadline) else {
                not_sent.store(requests - slot.index, Ordering::Relaxed);
                return false;
            };
            let k = slot.index as usize;
            let to: Vec<String> = (0..batch)
                .map(|j| fleet::uid((k * batch + j) % connections))
                .collect();
            let stamp = Stamp {
                message: 0,
                due_ns: epoch_ns + slot.due.saturating_duration_since(epoch).as_nanos() as u64,
            };
            let body = push_body(app, &to, stamp);
            runtime.spawn(shots.clone().fire(slot, body, permit));
            true
        })?
    };
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    // Every request has finished once all in-flight permits are back.
    drop(in_flight.acquire_many(load.max_in_flight as u32).await?);
    let Shots {
        sent,
        http_latency,
        lag,
        ..
    } = Arc::into_inner(shots).ok_or_else(|| anyhow::anyhow!("a request task outlived the run"))?;
    let not_sent = not_sent.load(Ordering::Relaxed);

    let ok = sent.ok.load(Ordering::Relaxed);
    anyhow::ensure!(
        ok > 0,
        "no push request succeeded: {:?} (check --api-key, --app and --http)",
        sent.failures.lock().unwrap_or_else(|p| p.into_inner())
    );
    let targets_ok = ok * load.batch as u64;
    let expected = expected_per_client(sent.answered.iter(), load.batch, args.connections);
    fleet
        .wait_complete(
            |share, _| expected_in(&expected, share),
            tokio::time::Instant::now() + DRAIN,
        )
        .await?;
    let tally = fleet.release().await?.tally.unwrap_or_default();

    let started_n = sent.started.load(Ordering::Relaxed);
    let span = Duration::from_nanos(sent.last_start_ns.load(Ordering::Relaxed))
        + Duration::from_secs_f64(1.0 / load.rate);
    let failures = sent
        .failures
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(RateReport {
        connections: args.connections,
        bench_procs: procs,
        holder_io: args.holder_io.as_arg(),
        rate_per_s: load.rate,
        duration_s: load.duration.as_secs_f64(),
        batch: load.batch,
        requests_scheduled: load.requests,
        requests_sent: started_n,
        requests_ok: ok,
        request_failures: failures,
        not_sent,
        achieved_rate_per_s: started_n as f64 / span.as_secs_f64(),
        targets_ok,
        delivered: tally.counts.iter().sum(),
        latency: tally.latency()?.percentiles(),
        timeline: tally.timeline(),
        timeline_start_mono_ns: tally.timeline_start_mono_ns(),
        http_latency: http_latency.merged().percentiles(),
        sender_lag: lag.merged().percentiles(),
        late_starts: sent.late.load(Ordering::Relaxed),
        late_after_us: LATE_AFTER.as_micros() as u64,
        warm_connections: warm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_requests_come_back_in_order() {
        let a = Answered::with_capacity(200);
        for k in [0, 63, 64, 130, 199, 500] {
            a.insert(k);
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![0, 63, 64, 130, 199]);
    }
}
