//! Logic shim configuration: `[logic]` and the `[[apps]]` tenants. Every
//! validation error names its key.

use crate::store::DevicePolicy;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;

/// `[logic]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicConfig {
    /// This instance's id (logs, msg ids); default `logic-<pid>`.
    pub logic_id: Option<String>,
    /// Where gate shards connect.
    pub link_addr: SocketAddr,
    /// App-server HTTP API and `/metrics`.
    pub http_addr: SocketAddr,
    /// Largest accepted HTTP request body, bytes; larger is refused before reading.
    pub max_http_body: usize,
    /// Clock skew tolerated when checking token `exp`, seconds.
    pub jwt_leeway_s: u64,
    /// Default approximate length each c2s stream is trimmed to.
    pub c2s_max_len: u64,
    /// Largest number of targets in one push.
    pub max_push_targets: usize,
    /// Gate lease length, ms: a gate's sessions read as offline this long
    /// after its last heartbeat. Gates heartbeat every third of it.
    pub gate_lease_ms: u64,
    /// Bearer key of the admin endpoints (`/v1/admin/…`); unset = disabled.
    pub admin_key: Option<String>,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            logic_id: None,
            link_addr: "127.0.0.1:7100".parse().expect("literal"),
            http_addr: "0.0.0.0:7180".parse().expect("literal"),
            max_http_body: 1 << 20,
            jwt_leeway_s: 30,
            c2s_max_len: 100_000,
            max_push_targets: 10_000,
            gate_lease_ms: 15_000,
            admin_key: None,
        }
    }
}

/// One tenant (`[[apps]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app code clients put in every frame header.
    pub code: u16,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// HS256 secrets accepted for client tokens; two during a rotation.
    /// The first one signs tokens minted by `tidegate token`.
    pub secrets: Vec<String>,
    /// Bearer key app-servers use on the HTTP API for this app.
    pub api_key: String,
    /// Overrides `logic.c2s_max_len` for this app's streams.
    #[serde(default)]
    pub c2s_max_len: Option<u64>,
    /// `single`, `per_platform` or `multi` (default): which older sessions
    /// a new login of the same user kicks.
    #[serde(default)]
    pub device_policy: DevicePolicy,
}

/// A configuration value that cannot work, with its key.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {problem}")]
pub struct ConfigError {
    /// Dotted key, e.g. `apps[0].secrets`.
    pub key: String,
    /// What is wrong and what would be right.
    pub problem: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl LogicConfig {
    /// Rejects values that cannot work.
    pub fn validate(&self, apps: &[AppConfig]) -> Result<(), ConfigError> {
        if self.max_http_body < 1024 {
            return Err(err(
                "logic.max_http_body",
                format!("{} is below the minimum 1024", self.max_http_body),
            ));
        }
        if self.c2s_max_len == 0 {
            return Err(err("logic.c2s_max_len", "must be at least 1"));
        }
        if self.max_push_targets == 0 {
            return Err(err("logic.max_push_targets", "must be at least 1"));
        }
        if self.gate_lease_ms < 300 {
            return Err(err(
                "logic.gate_lease_ms",
                format!(
                    "{} is below the minimum 300 (gates heartbeat every third of it)",
                    self.gate_lease_ms
                ),
            ));
        }
        if let Some(k) = self.admin_key.as_ref().filter(|k| k.len() < 16) {
            return Err(err(
                "logic.admin_key",
                format!("{} characters is too short; use at least 16", k.len()),
            ));
        }
        if apps.is_empty() {
            return Err(err(
                "apps",
                "no app is configured; add an [[apps]] table with code, secrets and api_key",
            ));
        }
        let mut codes = HashSet::new();
        let mut keys = HashSet::new();
        for (i, app) in apps.iter().enumerate() {
            if !codes.insert(app.code) {
                return Err(err(
                    format!("apps[{i}].code"),
                    format!("app code {} appears twice", app.code),
                ));
            }
            if app.secrets.is_empty() || app.secrets.len() > 2 {
                return Err(err(
                    format!("apps[{i}].secrets"),
                    "give one secret, or two during a rotation",
                ));
            }
            if let Some(s) = app.secrets.iter().find(|s| s.len() < 16) {
                return Err(err(
                    format!("apps[{i}].secrets"),
                    format!(
                        "a secret of {} bytes is too short to sign tokens; use at least 16",
                        s.len()
                    ),
                ));
            }
            if app.api_key.len() < 16 {
                return Err(err(
                    format!("apps[{i}].api_key"),
                    "must be at least 16 characters",
                ));
            }
            if self.admin_key.as_deref() == Some(app.api_key.as_str()) {
                return Err(err(
                    format!("apps[{i}].api_key"),
                    "equals logic.admin_key; the admin key must be its own",
                ));
            }
            if !keys.insert(app.api_key.as_str()) {
                return Err(err(
                    format!("apps[{i}].api_key"),
                    "is shared with another app; each app needs its own key",
                ));
            }
            if app.c2s_max_len == Some(0) {
                return Err(err(format!("apps[{i}].c2s_max_len"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The configured id, or `logic-<pid>`.
    pub fn logic_id(&self) -> String {
        self.logic_id
            .clone()
            .unwrap_or_else(|| format!("logic-{}", std::process::id()))
    }
}
