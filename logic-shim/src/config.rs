//! Logic shim configuration: `[logic]` and the `[[apps]]` tenants. Every
//! validation error names its key.

use crate::store::DevicePolicy;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[logic]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicConfig {
    /// This instance's id (logs, msg ids); default `logic-<pid>`.
    pub logic_id: Option<String>,
    /// Where gate shards connect.
    pub link_addr: SocketAddr,
    /// Also take gate links on this Unix socket (gates on the same host
    /// link with `gateway.logic = ["unix:<path>"]`); a stale socket file
    /// left by a dead instance is replaced, a live one's is refused.
    pub link_unix: Option<PathBuf>,
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
    /// Messages kept per offline inbox; storing more evicts the oldest
    /// (counted in `tidegate_logic_offline_evicted_total`).
    pub offline_max_len: u64,
    /// Lifetime of a stored offline message when the push gives no `ttl_s`.
    pub offline_ttl_s: u64,
    /// Largest `ttl_s` a push may ask for; more is refused with 400.
    pub offline_max_ttl_s: u64,
    /// Most messages in one OFFLINE_BATCH (and the page size of a pull
    /// with limit 0).
    pub offline_pull_max: u32,
    /// How often reach counters are added to the store's totals, ms.
    pub reach_flush_ms: u64,
    /// Gate lease length, ms: a gate's sessions read as offline this long
    /// after its last heartbeat. Gates heartbeat every third of it.
    pub gate_lease_ms: u64,
    /// How long a push's delivery confirmations are watched for sessions
    /// the gate no longer holds, ms; a later confirmation is ignored.
    pub deliver_confirm_ms: u64,
    /// Bearer key of the admin endpoints (`/v1/admin/…`); unset = disabled.
    pub admin_key: Option<String>,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            logic_id: None,
            link_addr: "127.0.0.1:7100".parse().expect("literal"),
            link_unix: None,
            http_addr: "0.0.0.0:7180".parse().expect("literal"),
            max_http_body: 1 << 20,
            jwt_leeway_s: 30,
            c2s_max_len: 100_000,
            max_push_targets: 10_000,
            offline_max_len: 1_000,
            offline_ttl_s: 7 * 86_400,
            offline_max_ttl_s: 30 * 86_400,
            offline_pull_max: 100,
            reach_flush_ms: 1_000,
            gate_lease_ms: 15_000,
            deliver_confirm_ms: 1_000,
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
    /// Overrides `logic.offline_max_len` for this app's inboxes.
    #[serde(default)]
    pub offline_max_len: Option<u64>,
    /// `single`, `per_platform` or `multi` (default): which older sessions
    /// a new login of the same user kicks.
    #[serde(default)]
    pub device_policy: DevicePolicy,
    /// Sends this app's c2s messages to an HTTP endpoint in batches
    /// instead of (or with `also_stream`, as well as) the c2s stream.
    #[serde(default)]
    pub c2s_webhook: Option<WebhookConfig>,
}

/// `[[apps]] c2s_webhook = { url = "http://…", … }`: batched JSON POSTs of
/// the app's c2s messages (see `webhook.rs` and the README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://host:port/path`; plain HTTP only (no TLS in the shim:
    /// terminate TLS in a local proxy).
    pub url: String,
    /// Most messages in one POST.
    pub batch_max: usize,
    /// How long the first message of a batch waits for more, ms.
    pub batch_wait_ms: u64,
    /// Messages waiting (per logic instance) before new ones are refused:
    /// the client gets BUSY and the drop is counted.
    pub queue_max: usize,
    /// Retries of a failed POST (connect error, timeout, 408, 429, 5xx)
    /// before its batch counts as failed.
    pub retries: u32,
    /// First retry delay, ms; doubles per retry up to 30 s.
    pub backoff_ms: u64,
    /// Bound on one POST, ms.
    pub timeout_ms: u64,
    /// Also append to the c2s stream (the stream write happens first).
    pub also_stream: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            batch_max: 100,
            batch_wait_ms: 50,
            queue_max: 10_000,
            retries: 5,
            backoff_ms: 100,
            timeout_ms: 5_000,
            also_stream: false,
        }
    }
}

impl WebhookConfig {
    /// Rejects values that cannot work; `key` is e.g. `apps[0].c2s_webhook`.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let k = |field: &str| format!("{key}.{field}");
        if self.url.is_empty() {
            return Err(err(
                k("url"),
                "is required, e.g. \"http://127.0.0.1:8080/c2s\"",
            ));
        }
        if self.url.starts_with("https://") {
            return Err(err(
                k("url"),
                "https is not supported (the shim has no TLS); use http:// to a local TLS proxy",
            ));
        }
        let url: reqwest::Url = self
            .url
            .parse()
            .map_err(|e| err(k("url"), format!("{:?} is not a URL: {e}", self.url)))?;
        if url.scheme() != "http" || url.host().is_none() {
            return Err(err(
                k("url"),
                format!("{:?} is not an http://host URL", self.url),
            ));
        }
        let range = |field: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(err(k(field), format!("{v} is outside {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range("batch_max", self.batch_max as u64, 1, 10_000)?;
        range("batch_wait_ms", self.batch_wait_ms, 0, 60_000)?;
        range("queue_max", self.queue_max as u64, 1, 10_000_000)?;
        if self.queue_max < self.batch_max {
            return Err(err(
                k("queue_max"),
                format!("{} is below batch_max {}", self.queue_max, self.batch_max),
            ));
        }
        range("retries", u64::from(self.retries), 0, 30)?;
        range("backoff_ms", self.backoff_ms, 1, 60_000)?;
        range("timeout_ms", self.timeout_ms, 100, 300_000)?;
        Ok(())
    }
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
        if self.offline_max_len == 0 {
            return Err(err("logic.offline_max_len", "must be at least 1"));
        }
        if self.offline_max_ttl_s == 0 {
            return Err(err("logic.offline_max_ttl_s", "must be at least 1"));
        }
        if self.offline_ttl_s == 0 || self.offline_ttl_s > self.offline_max_ttl_s {
            return Err(err(
                "logic.offline_ttl_s",
                format!(
                    "{} is not between 1 and logic.offline_max_ttl_s ({})",
                    self.offline_ttl_s, self.offline_max_ttl_s
                ),
            ));
        }
        if !(1..=10_000).contains(&self.offline_pull_max) {
            return Err(err("logic.offline_pull_max", "must be 1 to 10000"));
        }
        if !(10..=60_000).contains(&self.reach_flush_ms) {
            return Err(err("logic.reach_flush_ms", "must be 10 to 60000"));
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
        if !(10..=60_000).contains(&self.deliver_confirm_ms) {
            return Err(err("logic.deliver_confirm_ms", "must be 10 to 60000"));
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
            if app.offline_max_len == Some(0) {
                return Err(err(
                    format!("apps[{i}].offline_max_len"),
                    "must be at least 1",
                ));
            }
            if let Some(hook) = &app.c2s_webhook {
                hook.validate(&format!("apps[{i}].c2s_webhook"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(edit: impl FnOnce(&mut WebhookConfig)) -> Result<(), ConfigError> {
        let mut h = WebhookConfig {
            url: "http://127.0.0.1:9/c2s".into(),
            ..Default::default()
        };
        edit(&mut h);
        h.validate("apps[0].c2s_webhook")
    }

    fn key_of(r: Result<(), ConfigError>) -> String {
        r.expect_err("invalid").key
    }

    #[test]
    fn webhook_errors_name_the_key() {
        assert!(hook(|_| {}).is_ok());
        assert_eq!(key_of(hook(|h| h.url.clear())), "apps[0].c2s_webhook.url");
        let tls = hook(|h| h.url = "https://example.com/x".into()).expect_err("https");
        assert!(tls.to_string().contains("no TLS"), "{tls}");
        assert_eq!(
            key_of(hook(|h| h.url = "ftp://x/y".into())),
            "apps[0].c2s_webhook.url"
        );
        assert_eq!(
            key_of(hook(|h| h.batch_max = 0)),
            "apps[0].c2s_webhook.batch_max"
        );
        assert_eq!(
            key_of(hook(|h| h.queue_max = 10)),
            "apps[0].c2s_webhook.queue_max",
            "below batch_max 100"
        );
        assert_eq!(
            key_of(hook(|h| h.retries = 99)),
            "apps[0].c2s_webhook.retries"
        );
        assert_eq!(
            key_of(hook(|h| h.backoff_ms = 0)),
            "apps[0].c2s_webhook.backoff_ms"
        );
        assert_eq!(
            key_of(hook(|h| h.timeout_ms = 1)),
            "apps[0].c2s_webhook.timeout_ms"
        );
    }

    #[test]
    fn webhook_table_parses_with_defaults_and_refuses_unknown_keys() {
        let app: AppConfig = toml_like(
            r#"{"code": 1, "secrets": ["s"], "api_key": "k",
                "c2s_webhook": {"url": "http://h:1/p", "batch_max": 7}}"#,
        );
        let h = app.c2s_webhook.expect("webhook");
        assert_eq!(
            (h.batch_max, h.queue_max, h.also_stream),
            (7, 10_000, false)
        );
        let bad = serde_json::from_str::<AppConfig>(
            r#"{"code": 1, "secrets": ["s"], "api_key": "k",
                "c2s_webhook": {"url": "http://h:1/p", "batch": 7}}"#,
        );
        assert!(bad.is_err());
    }

    fn toml_like(json: &str) -> AppConfig {
        serde_json::from_str(json).expect("parses")
    }
}
