//! `tidegate bench peers`: Tidegate and a peer server measured in one run,
//! on the same machine, with the same N connections and the same message
//! work, one after the other (both sides' sockets at once would pass the
//! per-process descriptor limit). Per side: hold N subscribed connections
//! (user-space memory per connection from the server's RSS), then send M
//! messages each to all N (deliveries/s, per-delivery latency). The report
//! ends with Tidegate ÷ peer ratios and whether the targets are met.

pub mod fanout;
pub mod mosquitto;
pub mod nchan;
pub mod process;
pub mod storm;
pub mod tidegate;

use crate::{fleet, procfs, Percentiles, Recorder};
use anyhow::Context;
use fanout::{FanoutReport, Subscriber};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `tidegate bench peers`.
#[derive(clap::Args, Debug, Clone)]
pub struct PeersArgs {
    /// The server to compare with.
    #[arg(long, value_enum, default_value_t = Peer::Mosquitto)]
    pub peer: Peer,
    /// Connections each side holds (one side at a time).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Messages, each sent to every connection.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Payload bytes per message (the first 12 carry send time and index).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages the sender keeps unanswered at once (HTTP requests; QoS 1 publishes).
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to let memory settle before each RSS reading.
    #[arg(long, default_value_t = 2)]
    pub settle_s: u64,
    /// Seconds a fan-out may take before missing deliveries count as lost (≤ --deadline-s).
    #[arg(long, default_value_t = 60)]
    pub receive_timeout_s: u64,
    /// Hard deadline of the whole run, seconds: past it everything started is stopped.
    #[arg(long, default_value_t = 600)]
    pub deadline_s: u64,
    /// Gateway shards of the `tidegate up` this run starts (default: one per CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Use a running Tidegate at this client address instead of starting one (with --http).
    #[arg(long, requires = "http")]
    pub target: Option<SocketAddr>,
    /// Logic HTTP address of that running Tidegate.
    #[arg(long, requires = "target")]
    pub http: Option<SocketAddr>,
    /// Pid whose RSS is Tidegate's memory, for a running Tidegate.
    #[arg(long, requires = "target")]
    pub gateway_pid: Option<u32>,
    /// App code.
    #[arg(long, default_value_t = 1)]
    pub app: u16,
    /// The app's token secret (default: `tidegate up`'s development secret).
    #[arg(long, default_value = "tidegate-dev-secret-app-1")]
    pub secret: String,
    /// The app's API key (default: `tidegate up`'s development key).
    #[arg(long, default_value = "tidegate-dev-api-key-app-1")]
    pub api_key: String,
    /// The mosquitto binary (default: on PATH, or /usr/sbin/mosquitto).
    #[arg(long)]
    pub mosquitto: Option<PathBuf>,
    /// The nginx binary for `--peer nchan` (default: on PATH, or /usr/sbin/nginx).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Servers Tidegate can be compared with.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Eclipse Mosquitto (Debian package `mosquitto`), MQTT 3.1.1, clean sessions.
    Mosquitto,
    /// nginx with nchan (Debian `nginx` + `libnginx-mod-nchan`), EventSource
    /// subscribers, HTTP POST publishing.
    Nchan,
}

/// The work both sides do.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    /// Connections held.
    pub connections: usize,
    /// Messages fanned out to all of them.
    pub messages: usize,
    /// Bytes per message.
    pub payload_bytes: usize,
    /// Unanswered sends at once.
    pub in_flight: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// Wait before each RSS reading.
    #[serde(skip)]
    pub settle: Duration,
    /// Fan-out receive limit.
    #[serde(skip)]
    pub receive_timeout: Duration,
}

/// The whole run's report.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// The work, the same for both sides.
    pub plan: Plan,
    /// Where it ran.
    pub machine: Machine,
    /// Tidegate's figures.
    pub tidegate: SideReport,
    /// Which peer.
    pub peer_kind: Peer,
    /// The peer's figures.
    pub peer: SideReport,
    /// Tidegate ÷ peer.
    pub ratios: Ratios,
    /// The targets, met or not.
    pub targets: Targets,
}

/// The machine both sides shared.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started: other work on the same
    /// cores moves every figure, so read them together with it.
    pub load_1m_before: Option<f64>,
    /// 1-minute load average when the run ended.
    pub load_1m_after: Option<f64>,
}

/// One side's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// Server and version.
    pub server: String,
    /// The measured process.
    pub pid: Option<u32>,
    /// Holding the connections.
    pub idle: IdleFigures,
    /// Sending to all of them.
    pub fanout: FanoutReport,
}

/// Holding N connections.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    /// Connections asked for.
    pub requested: usize,
    /// Connections logged in (Tidegate) or subscribed (MQTT).
    pub held: usize,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connections opened per second.
    pub open_rate_per_s: f64,
    /// Connect + login / subscribe latency.
    pub open_latency: Percentiles,
    /// Server RSS before the first connect.
    pub rss_before: Option<u64>,
    /// Server RSS with every connection held.
    pub rss_idle: Option<u64>,
    /// (idle − before) / held: user-space memory per connection.
    pub bytes_per_conn: Option<f64>,
}

/// Tidegate ÷ peer.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Connections held.
    pub connections_held: Option<f64>,
    /// User-space bytes per connection (below 1 is better).
    pub bytes_per_conn: Option<f64>,
    /// Fan-out deliveries per second (above 1 is better).
    pub fanout_msgs_per_s: Option<f64>,
    /// Delivery latency p99 (below 1 is better).
    pub p99: Option<f64>,
}

/// The targets: Tidegate ≥ 2× the peer's fan-out at ≤ its p99, with
/// less memory per connection, every delivery made on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// Fan-out msgs/s at least twice the peer's.
    pub fanout_at_least_2x: bool,
    /// Delivery p99 no higher than the peer's.
    pub p99_at_most_peers: bool,
    /// Fewer user-space bytes per connection (None: no memory figure).
    pub less_memory_per_conn: Option<bool>,
    /// Every expected delivery arrived, on both sides.
    pub all_delivered: bool,
}

/// When a side's sender started and how long the server took to accept each message.
pub struct Sent {
    /// Just before the first send.
    pub started: Instant,
    /// Send → acceptance (HTTP answer, PUBACK).
    pub latency: Recorder,
}

/// Runs the scenario.
pub async fn run(args: PeersArgs) -> anyhow::Result<PeersReport> {
    let plan = plan_of(&args)?;
    fleet::check_fd_budget(plan.connections + plan.in_flight + 16)?;
    if let Some(t) = args.target {
        anyhow::ensure!(
            t.ip().is_loopback() && args.http.is_some_and(|h| h.ip().is_loopback()),
            "bench targets loopback addresses only"
        );
    }
    let hard = Duration::from_secs(args.deadline_s);
    // Wedged past the deadline and its grace: the process ends, children with it.
    let _watchdog = process::Watchdog::arm(hard + Duration::from_secs(30));
    let report = tokio::time::timeout(hard, both_sides(&args, plan))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the run passed its hard deadline of {} s (--deadline-s); every server it started was stopped",
                args.deadline_s
            )
        })??;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn plan_of(args: &PeersArgs) -> anyhow::Result<Plan> {
    anyhow::ensure!(
        (1..=100_000).contains(&args.connections),
        "--connections is 1 to 100000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.messages),
        "--messages is 1 to 10000"
    );
    anyhow::ensure!(
        (fanout::STAMP_LEN..=16_384).contains(&args.payload),
        "--payload is {} to 16384 bytes",
        fanout::STAMP_LEN
    );
    anyhow::ensure!((1..=64).contains(&args.in_flight), "--in-flight is 1 to 64");
    anyhow::ensure!(
        (1..=4096).contains(&args.concurrency),
        "--concurrency is 1 to 4096"
    );
    anyhow::ensure!(args.settle_s <= 60, "--settle-s is at most 60");
    anyhow::ensure!(
        (10..=3600).contains(&args.deadline_s),
        "--deadline-s is 10 to 3600"
    );
    anyhow::ensure!(
        args.receive_timeout_s >= 1,
        "--receive-timeout-s is at least 1"
    );
    Ok(Plan {
        connections: args.connections,
        messages: args.messages,
        payload_bytes: args.payload,
        in_flight: args.in_flight,
        concurrency: args.concurrency,
        settle: Duration::from_secs(args.settle_s),
        // The hard deadline bounds the whole run anyway.
        receive_timeout: Duration::from_secs(args.receive_timeout_s.min(args.deadline_s)),
    })
}

/// Tidegate, then the peer: each side's server is stopped and its clients
/// closed before the other's start.
async fn both_sides(args: &PeersArgs, plan: Plan) -> anyhow::Result<PeersReport> {
    let version = env!("CARGO_PKG_VERSION");
    let load_before = load_1m();
    let tidegate = match (args.target, args.http) {
        (Some(client), Some(http)) => {
            let ep = endpoint(args, client, http, args.gateway_pid);
            tidegate::measure(
                &ep,
                &plan,
                format!("tidegate at {client} (started by the user)"),
            )
            .await?
        }
        _ => {
            let up = tidegate::Up::start(args.shards).await?;
            let ep = endpoint(args, up.client, up.http, Some(up.pid()));
            let name = format!(
                "tidegate {version} up ({} shards, embedded store)",
                up.shards
            );
            tidegate::measure(&ep, &plan, name).await?
        }
    };
    let peer = match args.peer {
        Peer::Mosquitto => {
            let bin = mosquitto::Mosquitto::binary(args.mosquitto.as_deref())?;
            let broker = mosquitto::Mosquitto::start(&bin).await?;
            mosquitto::measure(
                broker.addr,
                Some(broker.pid()),
                &plan,
                broker.version.clone(),
            )
            .await?
        }
        Peer::Nchan => {
            let bin = nchan::Nchan::binary(args.nginx.as_deref())?;
            let nginx = nchan::Nchan::start(&bin).await?;
            nchan::measure(nginx.addr, Some(nginx.pid()), &plan, nginx.version.clone()).await?
        }
    };
    Ok(PeersReport {
        plan,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            load_1m_before: load_before,
            load_1m_after: load_1m(),
        },
        ratios: ratios(&tidegate, &peer),
        targets: targets(&tidegate, &peer),
        tidegate,
        peer_kind: args.peer,
        peer,
    })
}

fn endpoint(
    args: &PeersArgs,
    client: SocketAddr,
    http: SocketAddr,
    pid: Option<u32>,
) -> tidegate::Endpoint {
    tidegate::Endpoint {
        client,
        http,
        pid,
        app: args.app,
        secret: args.secret.clone(),
        api_key: args.api_key.clone(),
    }
}

/// One side's run: RSS before, open and hold `plan.connections` with
/// `open(i)`, RSS idle, start a reader per connection, `send` the messages,
/// wait for the readers, RSS after. Every connection stays open until the
/// last reading.
pub(crate) async fn measure_side<S, F, Fut, Snd, SndFut>(
    server: String,
    pid: Option<u32>,
    plan: &Plan,
    open: F,
    send: Snd,
) -> anyhow::Result<SideReport>
where
    S: Subscriber,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<S, String>> + Send + 'static,
    Snd: FnOnce(Instant, Plan) -> SndFut,
    SndFut: Future<Output = anyhow::Result<Sent>>,
{
    // The process and its children: nginx's workers; for one-process
    // servers the same as its own.
    let rss = || pid.and_then(|p| procfs::tree_rss_bytes(p).ok());
    tokio::time::sleep(plan.settle).await;
    let rss_before = rss();
    let storm = storm::storm(plan.connections, plan.concurrency, open).await?;
    let held = storm.clients.len();
    tokio::time::sleep(plan.settle).await;
    let rss_idle = rss();
    let idle = IdleFigures {
        requested: plan.connections,
        held,
        failures: storm.failures,
        open_rate_per_s: held as f64 / storm.took.as_secs_f64().max(1e-9),
        open_latency: storm.latency.percentiles(),
        rss_before,
        rss_idle,
        bytes_per_conn: rss_before
            .zip(rss_idle)
            .filter(|_| held > 0)
            .map(|(b, i)| (i as f64 - b as f64) / held as f64),
    };

    let cpu = || {
        let server = pid.and_then(|p| procfs::tree_cpu_seconds(p).ok());
        (server, procfs::cpu_seconds(std::process::id()).ok())
    };
    let cpu_before = cpu();
    let epoch = Instant::now();
    let deadline = tokio::time::Instant::now() + plan.receive_timeout;
    let readers = fanout::spawn_readers(storm.clients, plan.messages, epoch, deadline);
    let sent = tokio::time::timeout_at(deadline, send(epoch, *plan))
        .await
        .context("sending did not finish within --receive-timeout-s")??;
    let (subscribers, mut fanout) =
        fanout::collect(readers, plan.messages, sent.started, &sent.latency).await?;
    let cpu_after = cpu();
    let spent = |b: Option<f64>, a: Option<f64>| b.zip(a).map(|(b, a)| a - b);
    fanout.server_cpu_s = spent(cpu_before.0, cpu_after.0);
    fanout.bench_cpu_s = spent(cpu_before.1, cpu_after.1);
    fanout.rss_after = rss();
    drop(subscribers);
    Ok(SideReport {
        server,
        pid,
        idle,
        fanout,
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

fn ratios(t: &SideReport, p: &SideReport) -> Ratios {
    Ratios {
        connections_held: ratio(t.idle.held as f64, p.idle.held as f64),
        bytes_per_conn: t
            .idle
            .bytes_per_conn
            .zip(p.idle.bytes_per_conn)
            .and_then(|(a, b)| ratio(a, b)),
        fanout_msgs_per_s: ratio(t.fanout.msgs_per_s, p.fanout.msgs_per_s),
        p99: ratio(
            t.fanout.latency.p99_us as f64,
            p.fanout.latency.p99_us as f64,
        ),
    }
}

fn targets(t: &SideReport, p: &SideReport) -> Targets {
    let complete =
        |s: &SideReport| s.idle.held == s.idle.requested && s.fanout.delivered == s.fanout.expected;
    Targets {
        fanout_at_least_2x: t.fanout.msgs_per_s >= 2.0 * p.fanout.msgs_per_s,
        p99_at_most_peers: t.fanout.latency.p99_us <= p.fanout.latency.p99_us,
        less_memory_per_conn: t
            .idle
            .bytes_per_conn
            .zip(p.idle.bytes_per_conn)
            .map(|(a, b)| a < b),
        all_delivered: complete(t) && complete(p),
    }
}

fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(held: usize, bytes: Option<f64>, msgs_per_s: f64, p99_us: u64) -> SideReport {
        let pct = Percentiles {
            count: 1,
            p50_us: 1,
            p90_us: 1,
            p99_us,
            p999_us: p99_us,
            max_us: p99_us,
        };
        SideReport {
            server: "s".into(),
            pid: None,
            idle: IdleFigures {
                requested: 10,
                held,
                failures: BTreeMap::new(),
                open_rate_per_s: 1.0,
                open_latency: pct.clone(),
                rss_before: None,
                rss_idle: None,
                bytes_per_conn: bytes,
            },
            fanout: FanoutReport {
                messages: 2,
                expected: 2 * held as u64,
                delivered: 2 * held as u64,
                receive_failures: BTreeMap::new(),
                duration_s: 1.0,
                msgs_per_s,
                latency: pct.clone(),
                send_latency: pct,
                rss_after: None,
                server_cpu_s: None,
                bench_cpu_s: None,
            },
        }
    }

    #[test]
    fn ratios_and_targets_compare_tidegate_with_the_peer() {
        let t = side(10, Some(500.0), 60_000.0, 900);
        let p = side(10, Some(1000.0), 25_000.0, 1000);
        let r = ratios(&t, &p);
        assert_eq!(r.connections_held, Some(1.0));
        assert_eq!(r.bytes_per_conn, Some(0.5));
        assert_eq!(r.fanout_msgs_per_s, Some(2.4));
        assert_eq!(r.p99, Some(0.9));
        let g = targets(&t, &p);
        assert!(g.fanout_at_least_2x && g.p99_at_most_peers && g.all_delivered);
        assert_eq!(g.less_memory_per_conn, Some(true));

        let slow = side(9, None, 40_000.0, 1200);
        let g = targets(&slow, &p);
        assert!(!g.fanout_at_least_2x && !g.p99_at_most_peers && !g.all_delivered);
        assert_eq!(g.less_memory_per_conn, None);
        assert_eq!(ratios(&slow, &side(0, None, 0.0, 0)).p99, None);
    }

    #[test]
    fn plans_are_bounded() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: PeersArgs,
        }
        let parse = |extra: &[&str]| {
            let args = Cli::parse_from(["x"].iter().chain(extra)).a;
            plan_of(&args)
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--payload", "4"]).is_err());
        assert!(parse(&["--deadline-s", "100000"]).is_err());
        assert!(parse(&["--receive-timeout-s", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--target", "127.0.0.1:1"]).is_err());
    }
}
