//! Gateway metric names and the admin HTTP endpoint that serves them.
//!
//! Labels are a small fixed set (shard, cmd, reason), never a uid.

use crate::guard::Guard;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tidegate_proto::Cmd;

/// Handles a shard touches on every connection or frame, resolved once so
/// the hot path does no registry lookup.
pub struct ShardMetrics {
    /// Live connections on this shard.
    pub connections: Gauge,
    /// Logged-in sessions on this shard.
    pub sessions: Gauge,
    /// Accepted connections.
    pub accepted: Counter,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Frames delivered from logic to a client queue.
    pub delivered: Counter,
    /// Deliveries for connections that no longer exist.
    pub stale_deliveries: Counter,
    /// Logic link round trip (ping → pong), seconds.
    pub link_rtt: Histogram,
    /// Frames and bytes by cmd, resolved on first use per shard so the hot
    /// path does one small-map lookup, not a registry lookup.
    by_cmd: RefCell<HashMap<(Cmd, Direction), CmdCounters>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    In,
    Out,
}

#[derive(Clone)]
struct CmdCounters {
    frames: Counter,
    bytes: Counter,
}

impl ShardMetrics {
    /// Registers the shard's series.
    pub fn new(shard: u32) -> ShardMetrics {
        let s = shard.to_string();
        ShardMetrics {
            connections: gauge!("tidegate_gateway_connections", "shard" => s.clone()),
            sessions: gauge!("tidegate_gateway_sessions", "shard" => s.clone()),
            accepted: counter!("tidegate_gateway_accepted_total", "shard" => s.clone()),
            bytes_in: counter!("tidegate_gateway_bytes_in_total", "shard" => s.clone()),
            bytes_out: counter!("tidegate_gateway_bytes_out_total", "shard" => s.clone()),
            delivered: counter!("tidegate_gateway_delivered_total", "shard" => s.clone()),
            stale_deliveries: counter!("tidegate_gateway_stale_deliveries_total", "shard" => s.clone()),
            link_rtt: histogram!("tidegate_gateway_link_rtt_seconds", "shard" => s),
            by_cmd: RefCell::new(HashMap::new()),
        }
    }

    /// Counts a frame received from a client.
    pub fn frame_in(&self, cmd: Cmd, len: usize) {
        self.count(cmd, Direction::In, len);
    }

    /// Counts a frame queued for a client.
    pub fn frame_out(&self, cmd: Cmd, len: usize) {
        self.count(cmd, Direction::Out, len);
    }

    fn count(&self, cmd: Cmd, dir: Direction, len: usize) {
        let mut map = self.by_cmd.borrow_mut();
        let c = map.entry((cmd, dir)).or_insert_with(|| {
            let (frames, bytes) = match dir {
                Direction::In => (
                    "tidegate_gateway_frames_in_total",
                    "tidegate_gateway_frame_bytes_in_total",
                ),
                Direction::Out => (
                    "tidegate_gateway_frames_out_total",
                    "tidegate_gateway_frame_bytes_out_total",
                ),
            };
            CmdCounters {
                frames: counter!(frames, "cmd" => cmd.name()),
                bytes: counter!(bytes, "cmd" => cmd.name()),
            }
        });
        c.frames.increment(1);
        c.bytes.increment(len as u64);
    }
}

/// Counts bytes that failed to decode, by reason.
pub fn decode_error(reason: &'static str) {
    counter!("tidegate_gateway_decode_errors_total", "reason" => reason).increment(1);
}

/// Counts a closed connection, by reason.
pub fn closed(reason: &'static str) {
    counter!("tidegate_gateway_closed_total", "reason" => reason).increment(1);
}

/// Counts an ERROR frame sent to a client, by code.
pub fn error_sent(code: &'static str) {
    counter!("tidegate_gateway_errors_sent_total", "code" => code).increment(1);
}

/// Counts a refused connection or login, by reason.
pub fn rejected(reason: &'static str) {
    counter!("tidegate_gateway_rejected_total", "reason" => reason).increment(1);
}

/// Counts a frame over its connection's rate limit, by action taken.
pub fn throttled(action: &'static str) {
    counter!("tidegate_gateway_throttled_total", "action" => action).increment(1);
}

/// Counts a full outbound queue, by policy applied.
pub fn queue_drop(policy: &'static str) {
    counter!("tidegate_gateway_queue_full_total", "policy" => policy).increment(1);
}

/// Counts a link state change.
pub fn link_event(event: &'static str) {
    counter!("tidegate_gateway_link_events_total", "event" => event).increment(1);
}

/// What the admin endpoint serves.
pub struct Admin {
    /// Metrics.
    pub prom: PrometheusHandle,
    /// Lists and bans.
    pub guard: Arc<Guard>,
    /// Bearer key for `/admin/*`, if configured.
    pub admin_key: Option<String>,
}

/// Serves `/metrics`, `/healthz` and the `/admin` API on `addr` from a
/// thread of its own (off the shards: scrapes never stall a shard). Returns
/// the bound address.
pub fn serve_admin(addr: SocketAddr, admin: Admin) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("gateway-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("admin runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let app = crate::admin::router(admin);
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            tracing::error!("admin server: {e}");
                        }
                    }
                    Err(e) => tracing::error!("admin listener: {e}"),
                }
            });
        })?;
    Ok(bound)
}
