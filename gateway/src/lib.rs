//! Tidegate gateway: the glommio thread-per-core access layer.
//!
//! One executor (shard) per core, each with its own SO_REUSEPORT listener on
//! the client port, its own session table, timing wheel and links to every
//! logic instance (ARCHITECTURE §2). Shards share nothing on the hot path.
//!
//! glommio settings (documented in the README): each executor gets
//! `io_memory_kib` (default 512 KiB) of registered buffer memory and rings of
//! `ring_depth` (default 256) entries, so every shard together stays within
//! the default `ulimit -l` of 8 MiB. (glommio's own default, 10 MiB per
//! executor, does not fit; glommio then silently falls back to unregistered
//! buffers.)

pub mod config;
mod conn;
mod link;
pub mod metrics;
mod session;
mod shard;
mod signal;
mod table;
mod wheel;

pub use config::{ConfigError, GatewayConfig};

use anyhow::Context;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use metrics_exporter_prometheus::PrometheusHandle;
use shard::Shard;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

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
}

impl Gateway {
    /// Validates `cfg`, binds every listener and starts the shards. Returns
    /// once all shards listen, so a bind error is reported here.
    pub fn start(cfg: GatewayConfig, prom: PrometheusHandle) -> anyhow::Result<Gateway> {
        cfg.validate()?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = if cfg.shards == 0 { cpus } else { cfg.shards };
        let gate_id = cfg.gate_id();
        let admin_addr = metrics::serve_admin(cfg.admin_addr, prom)
            .with_context(|| format!("gateway.admin_addr: cannot listen on {}", cfg.admin_addr))?;

        let mut executors = Vec::with_capacity(shards);
        let mut client_addr = cfg.client_addr;
        for id in 0..shards {
            let (ready_tx, ready_rx) = mpsc::channel();
            let mut shard_cfg = cfg.clone();
            // Shard 0 may bind port 0; the others then join the port it got.
            shard_cfg.client_addr = client_addr;
            let gate = gate_id.clone();
            let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
                .name(&format!("gate-shard-{id}"))
                .io_memory(cfg.io_memory_kib * 1024)
                .ring_depth(cfg.ring_depth)
                .spawn(move || run_shard(id as u32, gate, shard_cfg, ready_tx))
                .map_err(|e| anyhow::anyhow!("starting shard {id}: {e}"))?;
            executors.push(handle);
            let bound = ready_rx
                .recv()
                .context("shard exited before it listened")?
                .map_err(|e| {
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
        })
    }

    /// Blocks until every shard has stopped.
    pub fn join(self) {
        for e in self.executors {
            let _ = e.join();
        }
    }
}

/// A shard's life: listen, start links and the wheel, accept forever.
async fn run_shard(
    id: u32,
    gate_id: String,
    cfg: GatewayConfig,
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
    // Heartbeats advertise the port actually bound (config may say port 0).
    let mut cfg = cfg;
    if let Ok(addr) = bound {
        cfg.client_addr = addr;
    }
    let shard = Rc::new(Shard::new(id, Rc::from(gate_id), cfg));

    for idx in 0..shard.links.len() {
        glommio::spawn_local(link::run(shard.clone(), idx)).detach();
    }
    let ticker = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            ticker.tick();
            for link in &ticker.links {
                link.check_liveness();
            }
            ticker.heartbeat_if_due();
        }
    })
    .detach();

    loop {
        match listener.accept().await {
            Ok(stream) => {
                let peer = stream.peer_addr().ok();
                glommio::spawn_local(conn::serve(shard.clone(), stream, peer)).detach();
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a
                // listener whose backlog we cannot drain right now.
                metrics::link_event("accept_error");
                tracing::warn!(shard = id, "accept: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
