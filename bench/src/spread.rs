//! A login storm spread over worker processes (`--procs`). One process may
//! hold about 19,000 sockets here (open-files limit 20,000, not raisable),
//! so a million connections take ~53 bench processes. Each worker (the
//! hidden `tidegate bench fleet-worker`) logs in its [`Share`] of the
//! fleet, reports its storm as one JSON line, holds its connections with
//! lean [`Holders`] until released, then reports how many were still open.
//! The parent merges the storms (histograms added, failures summed).

use crate::fleet::{self, StormPlan};
use crate::hold::{HolderIo, Holders};
use crate::procs::{self, Share, Workers};
use crate::receipts::{Receipts, Tally};
use crate::{report, Recorder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_proto::AppCode;

/// Arguments of the hidden `tidegate bench fleet-worker`: one share.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Gateway client address (loopback only).
    #[arg(long)]
    pub target: SocketAddr,
    /// App code.
    #[arg(long)]
    pub app: u16,
    /// The app's token secret.
    #[arg(long)]
    pub secret: String,
    /// First client index of the share.
    #[arg(long)]
    pub first: usize,
    /// Clients in the share.
    #[arg(long)]
    pub count: usize,
    /// Attempts in flight at once.
    #[arg(long)]
    pub concurrency: usize,
    /// Attempts per second of this worker (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connect+login timeout, milliseconds.
    #[arg(long)]
    pub timeout_ms: u64,
    /// Seconds between a held connection's keepalives.
    #[arg(long)]
    pub keepalive_s: u64,
    /// Longest hold, seconds, should the parent never release the worker.
    #[arg(long)]
    pub max_hold_s: u64,
    /// Count this many stamped broadcasts (`bench broadcast`) instead of
    /// discarding what arrives.
    #[arg(long)]
    pub receive: Option<usize>,
    /// How the held connections wait for bytes.
    #[arg(long, value_enum, default_value_t)]
    pub holder_io: HolderIo,
}

/// A worker's first line: its storm.
#[derive(Debug, Serialize, Deserialize)]
struct ShareStorm {
    logged_in: usize,
    failures: BTreeMap<String, u64>,
    elapsed_s: f64,
    /// Connect+login latency, HdrHistogram V2, base64.
    latency: String,
    /// TCP connect latency, HdrHistogram V2, base64.
    connect_latency: String,
}

/// A worker's later lines: one each time it has counted the receipts the
/// parent told it to expect (`released` false), and the last when released.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShareHeld {
    /// Connections still open.
    pub open: usize,
    /// Broadcast receipts, when counting them.
    pub tally: Option<Tally>,
    /// Whether this is the line after release (the last one).
    pub released: bool,
}

/// Runs one worker: storm, report, hold until released, report.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    // Workers inherit the parent's stderr: a bar from each on one terminal
    // would overwrite the others', so only the parent draws.
    report::set_quiet(true);
    let plan = StormPlan {
        target: args.target,
        first: args.first,
        connections: args.count,
        app: AppCode(args.app),
        secret: args.secret,
        concurrency: args.concurrency,
        rate: args.rate,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let storm = fleet::storm(&plan).await?;
    say(&ShareStorm {
        logged_in: storm.members.len(),
        failures: storm.failures,
        elapsed_s: storm.elapsed.as_secs_f64(),
        latency: storm.latency.to_base64(),
        connect_latency: storm.connect_latency.to_base64(),
    })?;
    let receipts = args.receive.map(|m| Arc::new(Receipts::new(m)));
    // One holder runtime: the parent started a worker per share already.
    let holders = Holders::start(
        storm.members,
        plan.app,
        Duration::from_secs(args.keepalive_s.max(1)),
        receipts.clone(),
        args.holder_io,
        1,
    )?;
    follow(
        &holders,
        receipts.as_deref(),
        Duration::from_secs(args.max_hold_s),
    )
    .await?;
    say(&ShareHeld {
        open: holders.open(),
        tally: receipts.map(|r| r.tally()),
        released: true,
    })?;
    holders.close();
    Ok(())
}

/// How often a holder looks whether its receipts are complete. Receipt
/// times come from the receipts themselves, so a late look changes no
/// figure; a 2 ms look in each of a million-client run's 53 worker
/// processes was 26,000 wake-ups/s, ~10% of both cores' samples during
/// the very fan-out it was waiting for.
const COMPLETE_POLL: Duration = Duration::from_millis(50);

/// What the parent tells a holding worker, one line of its stdin each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Instruction {
    /// `expect N`: report (a [`ShareHeld`] line) once N receipts are counted.
    Expect(u64),
}

impl Instruction {
    fn line(&self) -> String {
        match self {
            Instruction::Expect(n) => format!("expect {n}"),
        }
    }

    fn parse(line: &str) -> anyhow::Result<Instruction> {
        match line.split_once(' ') {
            Some(("expect", n)) => Ok(Instruction::Expect(n.parse()?)),
            _ => anyhow::bail!("unknown instruction {line:?}"),
        }
    }
}

/// Follows the parent's instructions until it closes stdin (its release)
/// or `max_hold` has passed. Only the parent knows how many receipts a
/// share should get (which of its requests succeeded, which clients they
/// named), so it says so, and the worker answers when it has them.
async fn follow(
    holders: &Holders,
    receipts: Option<&Receipts>,
    max_hold: Duration,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let end = tokio::time::Instant::now() + max_hold;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut waiting_for: Option<u64> = None;
    loop {
        let complete = async {
            match (waiting_for, receipts) {
                (Some(n), Some(r)) => {
                    while r.total() < n {
                        tokio::time::sleep(COMPLETE_POLL).await;
                    }
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // `next_line` is cancel-safe: a line half read when `complete`
            // wins is finished on the next turn.
            line = lines.next_line() => match line {
                Ok(Some(line)) => match Instruction::parse(&line)? {
                    Instruction::Expect(n) => {
                        anyhow::ensure!(receipts.is_some(), "told to expect receipts, counting none");
                        waiting_for = Some(n);
                    }
                },
                _ => return Ok(()),
            },
            _ = complete => {
                say(&ShareHeld { open: holders.open(), tally: receipts.map(|r| r.tally()), released: false })?;
                waiting_for = None;
            }
            _ = tokio::time::sleep_until(end) => return Ok(()),
        }
    }
}

/// Prints one JSON line to the parent.
pub(crate) fn say(line: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(line)?)?;
    out.flush()?;
    Ok(())
}

/// A storm's figures without its clients (they live in the workers).
pub struct StormSummary {
    /// Clients logged in.
    pub logged_in: usize,
    /// Failed attempts by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connect+login latency, all workers.
    pub latency: Recorder,
    /// TCP connect latency, all workers.
    pub connect_latency: Recorder,
    /// Start of the first worker to the last worker's report: includes
    /// starting the processes, so logins/s is never flattered.
    pub elapsed: Duration,
}

impl fleet::Storm {
    /// The storm's figures, and its clients.
    pub fn into_parts(self) -> (StormSummary, Vec<fleet::Member>) {
        let summary = StormSummary {
            logged_in: self.members.len(),
            failures: self.failures,
            latency: self.latency,
            connect_latency: self.connect_latency,
            elapsed: self.elapsed,
        };
        (summary, self.members)
    }
}

impl StormSummary {
    /// Fails unless all `wanted` clients logged in.
    pub fn require_all(&self, wanted: usize) -> anyhow::Result<()> {
        fleet::require_all(self.logged_in, wanted, &self.failures)
    }

    /// Logins per second over the storm.
    pub fn logins_per_s(&self) -> f64 {
        self.logged_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Worker processes holding a storm's clients.
pub struct Spread {
    workers: Workers,
    /// Each worker's share of the clients.
    shares: Vec<Share>,
    /// Clients each worker logged in.
    logged_in: Vec<usize>,
}

/// How a spread storm holds its clients.
#[derive(Debug, Clone, Copy)]
pub struct HoldPlan {
    /// Keepalive interval of each held connection.
    pub keepalive: Duration,
    /// Workers end by themselves after this, released or not.
    pub max_hold: Duration,
    /// How held connections wait for bytes.
    pub io: HolderIo,
}

/// Worker processes for `connections` (`requested`, or enough to stay under
/// each process's descriptor limit when `None`).
pub fn procs_for(connections: usize, requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| connections.div_ceil(procs::per_process_capacity()).max(1))
}

/// Refuses a storm whose share per process would pass one process's
/// descriptor limit.
pub fn ensure_capacity(connections: usize, procs: usize) -> anyhow::Result<()> {
    let cap = procs::per_process_capacity();
    anyhow::ensure!(
        connections.div_ceil(procs.max(1)) <= cap,
        "{connections} connections over {procs} processes is more than {cap} per process \
         (the open-files limit); use more --procs or leave it out"
    );
    Ok(())
}

/// Runs `plan` over `procs` worker processes (the rate, if any, split
/// evenly); returns the merged storm once every worker has reported, and
/// the workers, which hold their clients until released.
pub async fn storm(
    plan: &StormPlan,
    procs: usize,
    hold: HoldPlan,
    receive: Option<usize>,
) -> anyhow::Result<(StormSummary, Spread)> {
    ensure_capacity(plan.connections, procs)?;
    let shares: Vec<Share> = procs::shares(plan.connections, plan.connections.div_ceil(procs))
        .into_iter()
        .map(|s| Share {
            first: plan.first + s.first,
            count: s.count,
        })
        .collect();
    let n = shares.len();
    let started = Instant::now();
    let mut workers = Workers::spawn(&shares, |s| worker_args(plan, s, n, hold, receive))?;
    let lines: Vec<ShareStorm> = workers
        .next_reports(plan.worst_case() + Duration::from_secs(30))
        .await?;
    let mut summary = StormSummary {
        logged_in: 0,
        failures: BTreeMap::new(),
        latency: Recorder::new(),
        connect_latency: Recorder::new(),
        elapsed: started.elapsed(),
    };
    let logged_in = lines.iter().map(|l| l.logged_in).collect();
    for line in lines {
        summary.logged_in += line.logged_in;
        for (why, n) in line.failures {
            *summary.failures.entry(why).or_insert(0) += n;
        }
        summary
            .latency
            .merge(&Recorder::from_base64(&line.latency)?);
        summary
            .connect_latency
            .merge(&Recorder::from_base64(&line.connect_latency)?);
    }
    Ok((
        summary,
        Spread {
            workers,
            shares,
            logged_in,
        },
    ))
}

fn worker_args(
    plan: &StormPlan,
    share: &Share,
    workers: usize,
    hold: HoldPlan,
    receive: Option<usize>,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "bench",
        "fleet-worker",
        "--target",
        &plan.target.to_string(),
        "--app",
        &plan.app.0.to_string(),
        "--secret",
        &plan.secret,
        "--first",
        &share.first.to_string(),
        "--count",
        &share.count.to_string(),
        "--concurrency",
        &plan.concurrency.div_ceil(workers).max(1).to_string(),
        "--timeout-ms",
        &plan.timeout.as_millis().to_string(),
        "--keepalive-s",
        &hold.keepalive.as_secs().max(1).to_string(),
        "--max-hold-s",
        &hold.max_hold.as_secs().to_string(),
        "--holder-io",
        hold.io.as_arg(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(rate) = plan.rate {
        a.extend(["--rate".to_string(), (rate / workers as f64).to_string()]);
    }
    if let Some(m) = receive {
        a.extend(["--receive".to_string(), m.to_string()]);
    }
    a
}

impl Spread {
    /// Worker processes.
    pub fn procs(&self) -> usize {
        self.workers.len()
    }

    /// Tells each worker how many receipts to expect (`expect(share,
    /// logged_in)`) and waits until every one has them, or until
    /// `deadline`; returns whether all did.
    pub async fn wait_complete(
        &mut self,
        expect: impl Fn(&Share, usize) -> u64,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<bool> {
        for i in 0..self.shares.len() {
            let n = expect(&self.shares[i], self.logged_in[i]);
            self.workers.tell(i, &Instruction::Expect(n).line()).await?;
        }
        for i in 0..self.shares.len() {
            if self
                .workers
                .next_line_of::<ShareHeld>(i, deadline)
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Releases the workers (they close their connections and exit) and
    /// returns their last reports: connections still open at that moment,
    /// and receipts when counting.
    pub async fn release(mut self) -> anyhow::Result<Vec<(usize, ShareHeld)>> {
        const GRACE: Duration = Duration::from_secs(30);
        self.workers.release();
        let deadline = tokio::time::Instant::now() + GRACE;
        let mut last = Vec::with_capacity(self.shares.len());
        for i in 0..self.shares.len() {
            loop {
                let line: ShareHeld = self.workers.next_line_of(i, deadline).await?;
                if line.released {
                    last.push((self.logged_in[i], line));
                    break;
                }
            }
        }
        self.workers.finish(GRACE).await;
        Ok(last)
    }
}

/// A logged-in fleet being held: in this process (one process asked for)
/// or in worker processes, counting broadcasts when asked to. `idle` and
/// `broadcast` drive both kinds through it alike.
pub enum Fleet {
    /// Held here, counting into `receipts` if any.
    Here {
        /// The held connections.
        holders: Holders,
        /// Receipts, when counting.
        receipts: Option<Arc<Receipts>>,
        /// The clients' indices.
        share: Share,
        /// Clients logged in.
        logged_in: usize,
    },
    /// Held by worker processes.
    Workers(Spread),
}

/// What a released fleet reports.
pub struct Released {
    /// Connections still open at release.
    pub open: usize,
    /// Receipts of every process, when counting.
    pub tally: Option<Tally>,
    /// Each process's own figures, to tell a loss spread thin from one
    /// process (or gateway worker) that fell behind.
    pub shares: Vec<ShareEnd>,
}

/// One bench process's clients at release.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareEnd {
    /// The process's index.
    pub proc: usize,
    /// Clients it logged in.
    pub logged_in: usize,
    /// Of them, still open at release.
    pub open: usize,
    /// Receipts it counted, every message together.
    pub received: u64,
}

impl Fleet {
    /// Logs `plan`'s clients in over `procs` processes and holds them,
    /// counting `receive` broadcasts when given.
    pub async fn start(
        plan: &StormPlan,
        procs: usize,
        hold: HoldPlan,
        receive: Option<usize>,
    ) -> anyhow::Result<(StormSummary, Fleet)> {
        if procs == 1 {
            let (summary, members) = fleet::storm(plan).await?.into_parts();
            let receipts = receive.map(|m| Arc::new(Receipts::new(m)));
            let logged_in = members.len();
            // One holder runtime per core this process may run on.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let holders = Holders::start(
                members,
                plan.app,
                hold.keepalive,
                receipts.clone(),
                hold.io,
                cores,
            )?;
            let share = Share {
                first: plan.first,
                count: plan.connections,
            };
            let here = Fleet::Here {
                holders,
                receipts,
                share,
                logged_in,
            };
            Ok((summary, here))
        } else {
            let (summary, spread) = storm(plan, procs, hold, receive).await?;
            Ok((summary, Fleet::Workers(spread)))
        }
    }

    /// Waits until every process has counted the receipts `expect(share,
    /// logged_in)` says its clients should get, or `deadline` passes;
    /// returns whether all did.
    pub async fn wait_complete(
        &mut self,
        expect: impl Fn(&Share, usize) -> u64,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<bool> {
        match self {
            Fleet::Here {
                receipts,
                share,
                logged_in,
                ..
            } => {
                let Some(r) = receipts else { return Ok(true) };
                let expected = expect(share, *logged_in);
                while r.total() < expected {
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(false);
                    }
                    tokio::time::sleep(COMPLETE_POLL).await;
                }
                Ok(true)
            }
            Fleet::Workers(s) => s.wait_complete(expect, deadline).await,
        }
    }

    /// Closes every connection; returns how many were still open and the
    /// merged receipts.
    pub async fn release(self) -> anyhow::Result<Released> {
        match self {
            Fleet::Here {
                holders,
                receipts,
                logged_in,
                ..
            } => {
                let open = holders.open();
                holders.close();
                let end = ShareEnd {
                    proc: 0,
                    logged_in,
                    open,
                    received: receipts.as_ref().map_or(0, |r| r.total()),
                };
                Ok(Released {
                    open,
                    tally: receipts.as_ref().map(|r| r.tally()),
                    shares: vec![end],
                })
            }
            Fleet::Workers(s) => {
                let mut released = Released {
                    open: 0,
                    tally: None,
                    shares: Vec::new(),
                };
                for (proc, (logged_in, last)) in s.release().await?.into_iter().enumerate() {
                    released.open += last.open;
                    released.shares.push(ShareEnd {
                        proc,
                        logged_in,
                        open: last.open,
                        received: last.tally.as_ref().map_or(0, |t| t.counts.iter().sum()),
                    });
                    if let Some(t) = last.tally {
                        released
                            .tally
                            .get_or_insert_with(Tally::default)
                            .merge(&t)?;
                    }
                }
                Ok(released)
            }
        }
    }
}
