//! Gateway configuration (`[gateway]` in the TOML file). Every validation
//! error names its key.

pub use crate::link::LinkAddr;
use serde::Deserialize;
use std::net::SocketAddr;

/// `[gateway]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// This gate's id in presence; default `<hostname>-<pid>`.
    pub gate_id: Option<String>,
    /// Client TCP listener (every shard binds it with SO_REUSEPORT).
    pub client_addr: SocketAddr,
    /// Admin HTTP: `/metrics`, `/healthz`.
    pub admin_addr: SocketAddr,
    /// Logic shim link addresses (`host:port` or `unix:/path`); each shard
    /// keeps one link to each.
    pub logic: Vec<LinkAddr>,
    /// Shards (executors); 0 = one per available CPU.
    pub shards: usize,
    /// Pin each shard's thread to one CPU (glommio's thread-per-core; see
    /// `first_cpu`). Off: the kernel places and moves them, which suits
    /// more gateway workers than cores sharing them with other processes.
    pub pin_shards: bool,
    /// The CPU shard 0 is pinned to; shard i gets the i-th after it. Not a
    /// config key: the worker supervisor gives worker w the CPUs after
    /// worker w-1's, so K single-shard workers spread over every core
    /// instead of all landing on CPU 0.
    #[serde(skip)]
    pub first_cpu: usize,
    /// Largest accepted frame body in bytes.
    pub max_body: u32,
    /// Seconds a new connection has to log in.
    pub auth_timeout_s: u32,
    /// Keepalive interval advertised to clients in LoginOk.
    pub keepalive_s: u32,
    /// Seconds without any frame before a logged-in session is closed.
    pub idle_timeout_s: u32,
    /// Frames queued for one client before it counts as a slow consumer and is closed.
    pub max_outbound_frames: usize,
    /// Seconds without input after which a logged-in connection parks (gives
    /// up its task; input, deliveries and closes are still served); it
    /// parks between one and two of these after its last frame. 0 = never.
    pub park_idle_s: u32,
    /// io_uring registered buffer memory per shard, KiB (counts against `ulimit -l`).
    pub io_memory_kib: usize,
    /// io_uring submission queue depth per ring (also sizes the kernel's
    /// cancel hash: keep it at 4096 for tens of thousands of connections).
    pub ring_depth: usize,
    /// Seconds SIGTERM waits for clients to leave after KICKOUT(draining).
    pub drain_timeout_s: u32,
    /// Descriptors kept free for links, listeners and files: listeners
    /// close when client connections reach the open-files limit minus this.
    pub fd_reserve: usize,
    /// Listeners reopen once client connections are this far below that mark.
    pub fd_low_water_gap: usize,
    /// Bearer key for the admin API's write calls; unset = loopback-only trust.
    pub admin_key: Option<String>,
    /// `[gateway.flow]`: rate limits and queues.
    pub flow: FlowConfig,
    /// `[gateway.guard]`: lists, bans and per-IP caps.
    pub guard: GuardConfig,
}

/// What happens to a frame over a connection's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleAction {
    /// Stop reading the connection until its bucket refills (backpressure).
    Delay,
    /// Discard the frame silently.
    Drop,
    /// Discard the frame and answer ERROR(throttled).
    Error,
    /// Answer ERROR(throttled) and close the connection.
    Close,
}

/// What happens when a client's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Discard the oldest queued frame to make room.
    DropOldest,
    /// Close the connection.
    Disconnect,
}

/// `[gateway.flow]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Frames per second a connection may send (0 = unlimited).
    pub frames_per_s: u32,
    /// Frames a connection may send in a burst.
    pub frames_burst: u32,
    /// Bytes per second a connection may send (0 = unlimited).
    pub bytes_per_s: u32,
    /// Bytes a connection may send in a burst.
    pub bytes_burst: u32,
    /// What an over-limit frame gets.
    pub action: ThrottleAction,
    /// Over-limit frames after which the connection is closed whatever the action (0 = never).
    pub close_after_violations: u32,
    /// Policy when a client's outbound queue (`gateway.max_outbound_frames`) is full.
    pub slow_consumer: SlowConsumer,
    /// Requests (LOGIN, C2S) awaiting logic per shard before new ones get ERROR(busy).
    pub max_inflight_logic: u32,
    /// New connections accepted per second per shard (0 = unlimited); the rest wait in the backlog.
    pub accept_per_s: u32,
    /// Accept burst per shard.
    pub accept_burst: u32,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            frames_per_s: 50,
            frames_burst: 200,
            bytes_per_s: 256 * 1024,
            bytes_burst: 1024 * 1024,
            action: ThrottleAction::Error,
            close_after_violations: 100,
            slow_consumer: SlowConsumer::Disconnect,
            max_inflight_logic: 10_000,
            accept_per_s: 0,
            accept_burst: 1000,
        }
    }
}

/// `[gateway.guard]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Lists file (TOML: deny_ips, allow_ips, deny_apps, deny_uids), re-read when it changes.
    pub lists_file: Option<std::path::PathBuf>,
    /// Connections one IP may hold in this gate process (0 = unlimited; allowed IPs bypass).
    pub max_conns_per_ip: u32,
    /// Violations (malformed frames, throttle closes, connect flapping) that ban an IP.
    pub ban_after_violations: u32,
    /// Window in which violations are counted, seconds.
    pub ban_window_s: u32,
    /// How long a temporary ban lasts, seconds.
    pub ban_s: u32,
    /// Connections one IP may open per second before it counts as flapping (0 = off).
    pub max_connects_per_ip_per_s: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            lists_file: None,
            max_conns_per_ip: 0,
            ban_after_violations: 10,
            ban_window_s: 60,
            ban_s: 300,
            max_connects_per_ip_per_s: 0,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gate_id: None,
            client_addr: "0.0.0.0:7000".parse().expect("literal"),
            admin_addr: "127.0.0.1:7090".parse().expect("literal"),
            logic: vec![LinkAddr::Tcp("127.0.0.1:7100".parse().expect("literal"))],
            shards: 0,
            pin_shards: true,
            first_cpu: 0,
            max_body: tidegate_proto::DEFAULT_MAX_BODY,
            auth_timeout_s: 10,
            keepalive_s: 30,
            idle_timeout_s: 90,
            max_outbound_frames: 1024,
            park_idle_s: 10,
            // Three rings per executor plus this buffer must fit in the
            // default 8 MiB `ulimit -l` for every shard together: 512 KiB each.
            io_memory_kib: 512,
            // Every pending receive sits in the ring's cancel hash, and
            // every cancel walks one bucket; the kernel sizes it from the
            // ring (256 buckets at 4096 entries, its cap). At 256 entries
            // (16 buckets) logins slowed with every held connection:
            // 3,135/s vs 5,710/s over a 150k storm (bench/scripts/c1m.sh).
            ring_depth: 4096,
            drain_timeout_s: 10,
            fd_reserve: 256,
            fd_low_water_gap: 1024,
            admin_key: None,
            flow: FlowConfig::default(),
            guard: GuardConfig::default(),
        }
    }
}

/// A configuration value that cannot work, with its key.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    /// Dotted key, e.g. `gateway.max_body`.
    pub key: &'static str,
    /// What is wrong and what would be right.
    pub problem: String,
}

fn check(ok: bool, key: &'static str, problem: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            problem: problem(),
        })
    }
}

impl GatewayConfig {
    /// Shards to run: `shards`, or one per CPU this process may use when 0.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_body >= 64, "gateway.max_body", || {
            format!("{} is below the minimum 64", self.max_body)
        })?;
        check(self.max_body <= 16 << 20, "gateway.max_body", || {
            format!("{} is above the maximum 16777216 (16 MiB)", self.max_body)
        })?;
        check(self.auth_timeout_s >= 1, "gateway.auth_timeout_s", || {
            "must be at least 1".into()
        })?;
        check(self.keepalive_s >= 1, "gateway.keepalive_s", || {
            "must be at least 1".into()
        })?;
        check(
            self.idle_timeout_s > self.keepalive_s,
            "gateway.idle_timeout_s",
            || {
                format!(
                    "{} must exceed gateway.keepalive_s ({}), or every session would time out between keepalives",
                    self.idle_timeout_s, self.keepalive_s
                )
            },
        )?;
        check(self.park_idle_s <= 86_400, "gateway.park_idle_s", || {
            format!(
                "{} is above the maximum 86400 (one day); 0 turns parking off",
                self.park_idle_s
            )
        })?;
        check(!self.logic.is_empty(), "gateway.logic", || {
            "lists no logic address; give at least one, e.g. [\"127.0.0.1:7100\"]".into()
        })?;
        check(
            self.max_outbound_frames >= 1,
            "gateway.max_outbound_frames",
            || "must be at least 1".into(),
        )?;
        check(
            self.ring_depth.is_power_of_two(),
            "gateway.ring_depth",
            || format!("{} is not a power of two", self.ring_depth),
        )?;
        check(self.shards <= 1024, "gateway.shards", || {
            format!("{} is above the maximum 1024", self.shards)
        })?;
        check(self.fd_reserve >= 16, "gateway.fd_reserve", || {
            format!(
                "{} is below the minimum 16 (links, listeners and files need descriptors)",
                self.fd_reserve
            )
        })?;
        let f = &self.flow;
        check(
            f.frames_per_s == 0 || f.frames_burst >= 1,
            "gateway.flow.frames_burst",
            || "must be at least 1 when frames_per_s is set".into(),
        )?;
        check(
            f.bytes_per_s == 0 || f.bytes_burst >= self.max_body + 20,
            "gateway.flow.bytes_burst",
            || {
                format!(
                    "{} is below one largest frame (gateway.max_body + 20 = {}): such a frame could never pass",
                    f.bytes_burst,
                    self.max_body + 20
                )
            },
        )?;
        check(
            f.max_inflight_logic >= 1,
            "gateway.flow.max_inflight_logic",
            || "must be at least 1".into(),
        )?;
        check(
            f.accept_per_s == 0 || f.accept_burst >= 1,
            "gateway.flow.accept_burst",
            || "must be at least 1 when accept_per_s is set".into(),
        )?;
        let g = &self.guard;
        check(g.ban_window_s >= 1, "gateway.guard.ban_window_s", || {
            "must be at least 1".into()
        })?;
        check(g.ban_s >= 1, "gateway.guard.ban_s", || {
            "must be at least 1".into()
        })?;
        if let Some(key) = &self.admin_key {
            check(key.len() >= 16, "gateway.admin_key", || {
                "must be at least 16 characters".into()
            })?;
        }
        Ok(())
    }

    /// The configured gate id, or `<hostname>-<pid>`.
    pub fn gate_id(&self) -> String {
        self.gate_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "gate".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn flow_errors_name_the_key() {
        let mut c = GatewayConfig::default();
        c.flow.bytes_burst = 100;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("config: gateway.flow.bytes_burst: 100 is below"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let c = GatewayConfig {
            max_body: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: gateway.max_body: 0 is below the minimum 64"
        );
    }
}
