//! Gateway configuration (`[gateway]` in the TOML file). Every validation
//! error names its key.

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
    /// Logic shim link addresses; each shard keeps one link to each.
    pub logic: Vec<SocketAddr>,
    /// Shards (executors); 0 = one per available CPU.
    pub shards: usize,
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
    /// io_uring registered buffer memory per shard, KiB (counts against `ulimit -l`).
    pub io_memory_kib: usize,
    /// io_uring submission queue depth per ring.
    pub ring_depth: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gate_id: None,
            client_addr: "0.0.0.0:7000".parse().expect("literal"),
            admin_addr: "127.0.0.1:7090".parse().expect("literal"),
            logic: vec!["127.0.0.1:7100".parse().expect("literal")],
            shards: 0,
            max_body: tidegate_proto::DEFAULT_MAX_BODY,
            auth_timeout_s: 10,
            keepalive_s: 30,
            idle_timeout_s: 90,
            max_outbound_frames: 1024,
            // Three rings per executor plus this buffer must fit in the
            // default 8 MiB `ulimit -l` for every shard together: 512 KiB each.
            io_memory_kib: 512,
            ring_depth: 256,
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
