//! Tidegate gateway: the glommio thread-per-core access layer.
//!
//! One executor (shard) per core, each with its own SO_REUSEPORT listener on
//! the client port, its own session table, timing wheel and links to every
//! logic instance (ARCHITECTURE §2). Shards share nothing on the hot path.
//!
//! glommio settings (documented in the README): each executor gets
//! `io_memory_kib` (default 512 KiB) of registered buffer memory, so every
//! shard together stays within the default `ulimit -l` of 8 MiB (glommio's
//! own default, 10 MiB per executor, does not fit; glommio then silently
//! falls back to unregistered buffers), and rings of `ring_depth` (default
//! 4096) entries: the kernel sizes a ring's cancel hash from it, and a small
//! hash makes every cancel walk a chain of all pending receives.

mod admin;
pub mod config;
mod conn;
mod fdlimit;
mod flow;
pub mod guard;
mod link;
pub mod metrics;
mod park;
mod session;
mod shard;
mod signal;
mod table;
mod wheel;

pub use config::{ConfigError, GatewayConfig, LinkAddr};

use anyhow::Context;
use fdlimit::FdBudget;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use guard::Guard;
use metrics_exporter_prometheus::PrometheusHandle;
use shard::Shard;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tidegate_proto::{AppCode, Cmd, ErrorCode, Header};

/// A running gateway.
pub struct Gateway {
    /// The client TCP address every shard listens on.
    pub client_addr: SocketAddr,
    /// The admin HTTP address (`/metrics`, `/healthz`).
    pub admin_addr: SocketAddr,
    /// This gate's id.
    pub gate_id: String,
    /// Number of shards.
    pub shards: usize,
    executors: Vec<ExecutorJoinHandle<()>>,
    draining: Arc<AtomicBool>,
}

impl Gateway {
    /// Validates `cfg`, binds every listener and starts the shards. Returns
    /// once all shards listen, so a bind error is reported here.
    pub fn start(cfg: GatewayConfig, prom: PrometheusHandle) -> anyhow::Result<Gateway> {
        cfg.validate()?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = cfg.shard_count();
        let gate_id = cfg.gate_id();
        let guard =
            Arc::new(Guard::new(cfg.guard.clone()).map_err(|e| anyhow::anyhow!("config: {e}"))?);
        let draining = Arc::new(AtomicBool::new(false));
        let fds = Arc::new(FdBudget::from_rlimit(cfg.fd_reserve, cfg.fd_low_water_gap));
        let admin = metrics::Admin {
            prom,
            guard: guard.clone(),
            admin_key: cfg.admin_key.clone(),
        };
        let admin_addr = metrics::serve_admin(cfg.admin_addr, admin)
            .with_context(|| format!("gateway.admin_addr: cannot listen on {}", cfg.admin_addr))?;
        spawn_guard_upkeep(guard.clone())?;

        let mut executors = Vec::with_capacity(shards);
        let mut client_addr = cfg.client_addr;
        for id in 0..shards {
            let (ready_tx, ready_rx) = mpsc::channel();
            let mut shard_cfg = cfg.clone();
            // Shard 0 may bind port 0; the others then join the port it got.
            shard_cfg.client_addr = client_addr;
            // Resolved, so LINK_HELLO and heartbeats report the real count.
            shard_cfg.shards = shards;
            let gate = gate_id.clone();
            let (guard, draining, fds) = (guard.clone(), draining.clone(), fds.clone());
            let placement = if cfg.pin_shards {
                Placement::Fixed((cfg.first_cpu + id) % cpus)
            } else {
                Placement::Unbound
            };
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("gate-shard-{id}"))
                .io_memory(cfg.io_memory_kib * 1024)
                .ring_depth(cfg.ring_depth)
                .spawn(move || {
                    run_shard(id as u32, gate, shard_cfg, guard, fds, draining, ready_tx)
                })
                .map_err(|e| anyhow::anyhow!("starting shard {id}: {e}"))?;
            let Ok(ready) = ready_rx.recv() else {
                // The executor died before its first line ran: almost always
                // io_uring setup (locked memory, io_uring disabled).
                let why = handle
                    .join()
                    .err()
                    .map_or_else(|| "no error reported".to_string(), |e| e.to_string());
                anyhow::bail!(
                    "shard {id} could not start ({why}); glommio needs io_uring and \
                     gateway.io_memory_kib ({} KiB) of locked memory per shard: check \
                     `ulimit -l` and run `tidegate preflight`",
                    cfg.io_memory_kib
                );
            };
            executors.push(handle);
            let bound = ready.map_err(|e| {
                anyhow::anyhow!("gateway.client_addr: cannot listen on {client_addr}: {e}")
            })?;
            client_addr = bound;
        }
        Ok(Gateway {
            client_addr,
            admin_addr,
            gate_id,
            shards,
            executors,
            draining,
        })
    }

    /// Starts a graceful drain: every shard stops accepting, sends
    /// KICKOUT(draining) to its clients so they reconnect elsewhere, and
    /// stops once they are gone or `gateway.drain_timeout_s` has passed.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Blocks until every shard has stopped (after [`Gateway::drain`]).
    pub fn join(self) {
        for e in self.executors {
            let _ = e.join();
        }
    }
}

/// Re-reads the lists file and expires bans once a second, off the shards.
fn spawn_guard_upkeep(guard: Arc<Guard>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gateway-guard".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            match guard.reload_file() {
                Ok(true) => {
                    ::metrics::counter!("tidegate_gateway_lists_reloads_total", "result" => "ok").increment(1);
                    tracing::info!("lists file reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    ::metrics::counter!("tidegate_gateway_lists_reloads_total", "result" => "error").increment(1);
                    tracing::warn!("{e}; keeping the previous lists");
                }
            }
            guard.sweep();
        })
        .map(drop)
}

/// A shard's life: listen, start links, accept, run the wheel; on drain,
/// stop accepting, kick everyone, and return when they are gone.
async fn run_shard(
    id: u32,
    gate_id: String,
    cfg: GatewayConfig,
    guard: Arc<Guard>,
    fds: Arc<FdBudget>,
    draining: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
) {
    let listener = match glommio::net::TcpListener::bind(cfg.client_addr) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let bound = listener.local_addr().map_err(|e| e.to_string());
    let _ = ready.send(bound.clone());
    let drain_timeout = Duration::from_secs(u64::from(cfg.drain_timeout_s));
    // Heartbeats advertise the port actually bound (config may say port 0).
    let mut cfg = cfg;
    if let Ok(addr) = bound {
        cfg.client_addr = addr;
    }
    let shard = Rc::new(Shard::new(id, Rc::from(gate_id), cfg, guard, fds));

    for idx in 0..shard.links.len() {
        glommio::spawn_local(link::run(shard.clone(), idx)).detach();
    }
    glommio::spawn_local(shard::run_parking(shard.clone())).detach();
    let listening = Rc::new(Cell::new(true));
    let mut acceptor = spawn_acceptor(shard.clone(), listener, listening.clone());

    let mut drain_deadline: Option<Instant> = None;
    loop {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        shard.tick();
        shard.sweep_idle();
        for link in &shard.links {
            link.check_liveness();
        }
        shard.heartbeat_if_due();
        if drain_deadline.is_none() && !listening.get() && shard.fds.recovered() {
            // Below the low-water mark again: rejoin the SO_REUSEPORT group.
            match glommio::net::TcpListener::bind(shard.cfg.client_addr) {
                Ok(l) => {
                    metrics::link_event("listener_resumed");
                    tracing::info!(shard = id, "descriptors recovered; listening again");
                    listening.set(true);
                    acceptor = spawn_acceptor(shard.clone(), l, listening.clone());
                }
                Err(e) => tracing::warn!(shard = id, "re-listen: {e}"),
            }
        }
        match drain_deadline {
            None if draining.load(Ordering::Acquire) => {
                // Dropping the accept task closes this shard's listener; the
                // kernel sends new connections to the listeners still open.
                acceptor.cancel();
                let kicked = shard.kick_all_draining();
                tracing::info!(shard = id, kicked, "draining");
                drain_deadline = Some(Instant::now() + drain_timeout);
            }
            Some(deadline) if !shard.has_connections() || Instant::now() >= deadline => {
                tracing::info!(shard = id, left = shard.has_connections(), "drained");
                // Let the links flush the last SESSION_CLOSED notices.
                glommio::timer::sleep(Duration::from_millis(100)).await;
                return;
            }
            _ => {}
        }
    }
}

/// Runs the accept loop; `listening` goes false when it gives up its listener.
fn spawn_acceptor(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    listening: Rc<Cell<bool>>,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local(async move {
        accept_loop(shard, listener).await;
        listening.set(false);
    })
    .detach()
}

/// Accepts connections, refusing what the guard refuses and shaping the
/// rate. Returns, dropping (closing) the listener, when the process's
/// descriptors run low, so the kernel sends new connections to other workers.
async fn accept_loop(shard: Rc<Shard>, listener: glommio::net::TcpListener) {
    loop {
        if shard.fds.exhausted() {
            metrics::link_event("listener_paused");
            tracing::warn!(
                shard = shard.id,
                high = shard.fds.high(),
                "near the open-files limit; closing the listener"
            );
            return;
        }
        // Loop: the token is only taken once one is there.
        while let Some(wait) = shard.accept_delay() {
            glommio::timer::sleep(wait).await;
        }
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                metrics::rejected("accept_error");
                tracing::warn!(shard = shard.id, "accept: {e}");
                if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE)
                {
                    // Out of descriptors despite the budget (other files):
                    // leave the group rather than strand the backlog.
                    return;
                }
                // Anything else: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if let Some(ip) = peer.map(|p| p.ip()) {
            if let Err(reject) = shard.guard.admit(ip) {
                metrics::rejected(reject.label());
                glommio::spawn_local(refuse(stream, reject.label())).detach();
                continue;
            }
        }
        glommio::spawn_local(conn::serve(shard.clone(), stream, peer)).detach();
    }
}

/// Tells a refused client why (ERROR banned) and closes, without reading.
async fn refuse(mut stream: glommio::net::TcpStream, why: &str) {
    use futures_lite::AsyncWriteExt;
    let header = Header::new(Cmd::Error, AppCode(0), 0);
    let frame = session::error_frame(
        &header,
        ErrorCode::Banned,
        &format!("connection refused: {why}"),
    );
    let _ = stream.write_all(&frame).await;
}
