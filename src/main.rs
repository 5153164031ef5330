//! `tidegate`: the umbrella command. `up` runs gateway and logic shim in one
//! process; `gateway` and `logic` run one role each; `token` and `client`
//! are the developer's try-it tools; `preflight` checks a host for a target.

mod cli_client;
mod config;
mod preflight;
mod workers;

/// mimalloc keeps each size class on pages of its own, so the memory of
/// tasks that end (parked connections, `gateway.park_idle_s`) comes back
/// to the system as whole pages; glibc's heap interleaves them with the
/// connections that stay and kept every page resident. Built without
/// transparent huge pages (`no_thp`): a 2 MiB page stays resident while any
/// byte of it is in use (measured: 18 MiB more at start with them).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use config::Config;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tidegate_gateway::{Gateway, LinkAddr};
use tidegate_logic::auth::Auth;
use tidegate_logic::store::{embedded::EmbeddedStore, redis::RedisStore, Store};
use tidegate_logic::LogicServer;
use tidegate_proto::AppCode;

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Real-time message platform: gateway + logic shim"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway and logic shim in one process (embedded store under ./data, or --redis).
    Up(UpArgs),
    /// The gateway alone (glommio shards), linked to logic shims.
    Gateway(GatewayArgs),
    /// The logic shim alone (link server + HTTP API).
    Logic(LogicArgs),
    /// Mints a client token signed with an app's secret.
    Token(TokenArgs),
    /// Logs in over TCP and prints what arrives.
    Client(cli_client::ClientArgs),
    /// Load scenarios against a running gateway (loopback only), and their HTML report.
    Bench(BenchArgs),
    /// Checks this host's kernel settings and limits for N connections; exits 1 if any blocks.
    Preflight(preflight::PreflightArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// No progress bars on stderr (they are hidden anyway when stderr is not a terminal).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Hold N logged-in connections; report gateway and kernel memory per connection.
    Idle(tidegate_bench::idle::IdleArgs),
    /// HTTP push → client receive: delivered targets/s and latency percentiles.
    Push(tidegate_bench::push::PushArgs),
    /// Tidegate vs a peer server (Mosquitto) in one run: memory per connection, fan-out, p99.
    Peers(tidegate_bench::peers::PeersArgs),
    /// Connect+login storm: logins/s, failures by reason, login latency.
    Connect(tidegate_bench::connect::ConnectArgs),
    /// Pushes to "all": deliveries and time to the last client's receipt.
    Broadcast(tidegate_bench::broadcast::BroadcastArgs),
    /// Ack-requested C2S from N clients: ingest rate, ack latency, errors by code.
    C2s(tidegate_bench::c2s::C2sArgs),
    /// The kernel alone: loopback connect, round trip and fan-out CPU with no server in between.
    Floor(tidegate_bench::floor::FloorArgs),
    /// How long this host keeps a busy thread from its CPU: stalls per CPU, no server involved.
    Hiccup(tidegate_bench::hiccup::HiccupArgs),
    /// One self-contained HTML page (tables, SVG charts) from the scenarios' JSON files.
    Report(tidegate_bench::html::ReportArgs),
    /// Internal: one worker process of a scenario's `--procs` fleet.
    #[command(hide = true)]
    FleetWorker(tidegate_bench::spread::WorkerArgs),
    /// Internal: one worker process of `bench c2s --procs`.
    #[command(hide = true)]
    C2sWorker(tidegate_bench::c2s::C2sWorkerArgs),
    /// Internal: one worker process of `bench floor --procs`.
    #[command(hide = true)]
    FloorWorker(tidegate_bench::floor::FloorWorkerArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// TOML config file (see README, "Configuration").
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct StoreArgs {
    /// Use Redis at this URL instead of the embedded store.
    #[arg(long)]
    redis: Option<String>,
    /// Directory of the embedded store.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Client TCP address (gateway.client_addr).
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Gateway admin address (gateway.admin_addr).
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Logic link address (logic.link_addr).
    #[arg(long)]
    link_addr: Option<SocketAddr>,
    /// Logic HTTP address (logic.http_addr).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Gateway shards (gateway.shards; 0 = one per CPU).
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Client TCP address (gateway.client_addr).
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Admin address (gateway.admin_addr).
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Logic link addresses (gateway.logic: host:port or unix:/path), repeatable.
    #[arg(long)]
    logic: Vec<LinkAddr>,
    /// Shards (gateway.shards; 0 = one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Run and supervise this many gateway processes on the same client port
    /// (each its own gate; a worker that dies is restarted).
    #[arg(long)]
    workers: Option<usize>,
    /// Internal: this process is worker N of a supervisor.
    #[arg(long, hide = true)]
    worker_index: Option<usize>,
}

#[derive(Args)]
struct LogicArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Link address (logic.link_addr).
    #[arg(long)]
    link_addr: Option<SocketAddr>,
    /// HTTP address (logic.http_addr).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// App code.
    #[arg(long, default_value_t = config::DEV_APP_CODE)]
    app: u16,
    /// User id (the token's `sub`).
    #[arg(long)]
    uid: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Command::Up(a) => up(a),
        Command::Gateway(a) => gateway(a),
        Command::Logic(a) => logic(a),
        Command::Token(a) => token(a),
        Command::Client(a) => cli_client::run(a),
        Command::Preflight(a) => preflight::run(a),
        Command::Bench(args) => bench(args),
    }
}

/// A multi-thread tokio runtime whose threads carry `role` in their name
/// (`top -H`, perf and /proc tell logic from bench by it).
fn runtime(role: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("tidegate-{role}"))
        .build()
        .context("starting the tokio runtime")
}

/// A `--procs` worker's runtime: one thread. A million clients take ~53
/// worker processes on 2 cores, and each process's extra runtime threads
/// only add context switches.
fn worker_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Bucket bounds (seconds) of every `*_seconds` histogram: 50 µs to 5 s,
/// about three per decade, so store reads, link round trips and slow HTTP
/// calls each land in a bucket of their own.
const LATENCY_BUCKETS_S: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// How often recorded samples are folded into the exported histograms.
/// Each fold costs time per sample since the last one; at 10,000
/// pushes/s a summary folded every 5 s held a core a shard needs for
/// ~2-3 ms, a histogram folded every second takes ~0.13 ms.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the process's Prometheus recorder and keeps its histograms trimmed.
///
/// Latencies are exported as histograms, not summaries: logic instances are
/// stateless and run side by side, and only bucket counts add up across
/// them (`histogram_quantile` over a `sum by (le)`); summary quantiles do not.
fn metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_S)
        .context("metrics histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP);
            upkeep.run_upkeep();
        })?;
    Ok(handle)
}

async fn open_store(cfg: &config::StoreConfig) -> anyhow::Result<(Arc<dyn Store>, String)> {
    cfg.validate()?;
    match &cfg.redis_url {
        Some(url) => {
            let store = RedisStore::connect(url)
                .await
                .with_context(|| format!("store.redis_url: cannot reach {url}"))?;
            Ok((Arc::new(store), format!("Redis at {url}")))
        }
        None => {
            let path = cfg.data_dir.join("tidegate.redb");
            let store = EmbeddedStore::open_with(&path, cfg.soft_sync())
                .with_context(|| format!("store.data_dir: cannot open {}", path.display()))?;
            Ok((
                Arc::new(store),
                format!("the embedded store at {}", path.display()),
            ))
        }
    }
}

fn apply_store_args(cfg: &mut Config, args: StoreArgs) {
    if let Some(url) = args.redis {
        cfg.store.redis_url = Some(url);
    }
    if let Some(dir) = args.data {
        cfg.store.data_dir = dir;
    }
}

pub(crate) async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.common.config.as_deref())?;
    apply_store_args(&mut cfg, args.store);
    if let Some(a) = args.client_addr {
        cfg.gateway.client_addr = a;
    }
    if let Some(a) = args.admin_addr {
        cfg.gateway.admin_addr = a;
    }
    if let Some(a) = args.link_addr {
        cfg.logic.link_addr = a;
    }
    if let Some(a) = args.http_addr {
        cfg.logic.http_addr = a;
    }
    if let Some(n) = args.shards {
        cfg.gateway.shards = n;
    }
    let dev = cfg.apps.is_empty();
    if dev {
        cfg.apps.push(config::dev_app());
    }
    let prom = metrics_recorder()?;
    let rt = runtime("logic")?;
    // The gateway links to logic over a Unix socket: in one process there
    // is no reason to pay the TCP stack twice per push (README, push
    // latency). An abstract one: no file left behind, however `up` ends.
    if cfg.logic.link_unix.is_none() {
        let name = format!("@tidegate-up-{}", std::process::id());
        cfg.logic.link_unix = Some(PathBuf::from(name));
    }
    rt.block_on(async move {
        let (store, store_desc) = open_store(&cfg.store).await?;
        let logic =
            LogicServer::start(cfg.logic.clone(), cfg.apps.clone(), store, prom.clone()).await?;
        let unix = logic.link_unix.clone().context("the link socket")?;
        cfg.gateway.logic = vec![LinkAddr::Unix(unix)];
        let drain = cfg.gateway.drain_timeout_s;
        let gw = Gateway::start(cfg.gateway.clone(), prom)?;
        // "ready" means ready to log clients in: every shard linked to logic.
        let linked = async {
            while logic.logic.linked_shards(&gw.gate_id) < gw.shards {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), linked)
            .await
            .context("gateway shards did not link to logic within 10 s")?;
        print_banner(&gw, &logic, &store_desc, dev);
        wait_for_shutdown().await?;
        drain_gateway(gw, drain).await;
        Ok::<_, anyhow::Error>(())
    })?;
    // glommio executors do not stop on their own; the process owns them.
    std::process::exit(0);
}

/// SIGTERM: stop accepting, KICKOUT(draining) everyone, wait for them to go
/// (at most the drain timeout), then return.
async fn drain_gateway(gw: Gateway, timeout_s: u32) {
    say(&format!("tidegate: draining (up to {timeout_s} s)"));
    gw.drain();
    let joined = tokio::task::spawn_blocking(move || gw.join());
    let limit = std::time::Duration::from_secs(u64::from(timeout_s) + 2);
    match tokio::time::timeout(limit, joined).await {
        Ok(_) => say("tidegate: drained"),
        Err(_) => say("tidegate: drain timed out"),
    }
}

/// Prints a status line, ignoring a closed stdout (a worker whose
/// supervisor died still drains; `println!` would panic on the dead pipe).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The address a local client should dial for `bound` (0.0.0.0 → 127.0.0.1).
fn dialable(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], bound.port()))
    } else {
        bound
    }
}

fn print_banner(gw: &Gateway, logic: &LogicServer, store: &str, dev: bool) {
    let client = dialable(gw.client_addr);
    let http = dialable(logic.http_addr);
    println!(
        "tidegate up: gate {} ({} shards) + logic {} on {store}",
        gw.gate_id, gw.shards, logic.logic.logic_id
    );
    println!("  client tcp     {}", gw.client_addr);
    println!("  gateway admin  http://{}/metrics", gw.admin_addr);
    println!("  logic link     {}", logic.link_addr);
    if let Some(path) = &logic.link_unix {
        println!("  logic socket   unix:{}", path.display());
    }
    println!("  logic http     http://{}", logic.http_addr);
    if dev {
        println!("  apps           app 1 with the built-in DEVELOPMENT secret and API key (configure [[apps]] for real use)");
        println!();
        println!("try it (in two more terminals):");
        println!(
            "  cargo run --release -- client --addr {client} --app 1 --token \"$(cargo run -q --release -- token --app 1 --uid alice)\""
        );
        println!(
            "  curl -s -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n       -d '{{\"app\":1,\"msgtype\":7,\"to\":\"alice\",\"content_type\":\"text/plain\",\"content\":\"hello alice\"}}' \\\n       http://{http}/v1/push",
            config::DEV_API_KEY
        );
    }
    println!("ready");
}

fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.common.config.as_deref())?;
    if let Some(a) = args.client_addr {
        cfg.gateway.client_addr = a;
    }
    if let Some(a) = args.admin_addr {
        cfg.gateway.admin_addr = a;
    }
    if !args.logic.is_empty() {
        cfg.gateway.logic = args.logic;
    }
    if let Some(n) = args.shards {
        cfg.gateway.shards = n;
    }
    if let Some(k) = args.workers {
        return workers::supervise(k, &cfg.gateway);
    }
    if let Some(i) = args.worker_index {
        workers::configure_worker(&mut cfg.gateway, i);
    }
    let prom = metrics_recorder()?;
    let drain = cfg.gateway.drain_timeout_s;
    let gw = Gateway::start(cfg.gateway, prom)?;
    println!(
        "tidegate gateway: gate {} ({} shards)",
        gw.gate_id, gw.shards
    );
    println!("  client tcp     {}", gw.client_addr);
    println!("  gateway admin  http://{}/metrics", gw.admin_addr);
    println!("ready");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        wait_for_shutdown().await?;
        drain_gateway(gw, drain).await;
        Ok::<_, anyhow::Error>(())
    })?;
    std::process::exit(0);
}

fn logic(args: LogicArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.common.config.as_deref())?;
    apply_store_args(&mut cfg, args.store);
    if let Some(a) = args.link_addr {
        cfg.logic.link_addr = a;
    }
    if let Some(a) = args.http_addr {
        cfg.logic.http_addr = a;
    }
    let prom = metrics_recorder()?;
    runtime("logic")?.block_on(async move {
        let (store, store_desc) = open_store(&cfg.store).await?;
        let logic = LogicServer::start(cfg.logic, cfg.apps, store, prom).await?;
        println!("tidegate logic: {} on {store_desc}", logic.logic.logic_id);
        println!("  logic link     {}", logic.link_addr);
        if let Some(path) = &logic.link_unix {
            println!("  logic socket   unix:{}", path.display());
        }
        println!("  logic http     http://{}", logic.http_addr);
        println!("ready");
        wait_for_shutdown().await
    })
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.common.config.as_deref())?;
    if cfg.apps.is_empty() {
        cfg.apps.push(config::dev_app());
    }
    let auth = Auth::new(&cfg.apps, 0);
    let token = auth
        .mint(AppCode(args.app), &args.uid, args.ttl)
        .map_err(|e| anyhow::anyhow!("token: {e}"))?;
    println!("{token}");
    Ok(())
}

/// Runs one bench scenario and prints its report as JSON, or writes the
/// HTML report of earlier runs.
fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use tidegate_bench as b;
    b::report::set_quiet(args.quiet);
    let report = match args.cmd {
        // A worker speaks JSON lines to its parent as it goes.
        BenchCmd::FleetWorker(a) => return worker_runtime()?.block_on(b::spread::worker(a)),
        BenchCmd::C2sWorker(a) => return worker_runtime()?.block_on(b::c2s::worker(a)),
        BenchCmd::FloorWorker(a) => return worker_runtime()?.block_on(b::floor::worker(a)),
        BenchCmd::Idle(a) => serde_json::to_value(runtime("bench")?.block_on(b::idle::run(a))?),
        BenchCmd::Push(a) => serde_json::to_value(runtime("bench")?.block_on(b::push::run(a))?),
        BenchCmd::Peers(a) => serde_json::to_value(runtime("bench")?.block_on(b::peers::run(a))?),
        BenchCmd::Connect(a) => {
            serde_json::to_value(runtime("bench")?.block_on(b::connect::run(a))?)
        }
        BenchCmd::Broadcast(a) => {
            serde_json::to_value(runtime("bench")?.block_on(b::broadcast::run(a))?)
        }
        BenchCmd::C2s(a) => serde_json::to_value(runtime("bench")?.block_on(b::c2s::run(a))?),
        BenchCmd::Floor(a) => serde_json::to_value(runtime("bench")?.block_on(b::floor::run(a))?),
        BenchCmd::Hiccup(a) => serde_json::to_value(b::hiccup::run(a)?),
        BenchCmd::Report(a) => {
            let files = b::html::run(&a)?;
            println!("{}: report of {files} files", a.out.display());
            return Ok(());
        }
    }?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
