//! The TOML configuration file: `[gateway]`, `[logic]`, `[store]` and
//! `[[apps]]`. Unknown keys are errors that name the key, and so is every
//! value that cannot work.

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tidegate_gateway::GatewayConfig;
use tidegate_logic::config::{AppConfig, LogicConfig};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[logic]`.
    pub logic: LogicConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[[apps]]`.
    pub apps: Vec<AppConfig>,
}

/// `[store]`: where presence and streams live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL (`redis://host:port`); when unset the embedded store is used.
    pub redis_url: Option<String>,
    /// Directory of the embedded store's file.
    pub data_dir: PathBuf,
    /// Embedded store: the longest presence, gate leases and reach counters
    /// wait for their fsync (a crash rolls back at most this); 0 = every
    /// commit fsyncs. Messages are always fsynced before they are acked.
    pub soft_sync_ms: u64,
}

/// Above this a crash could roll back more presence than Redis's
/// `appendfsync everysec` ever would, ten times over.
const SOFT_SYNC_MAX_MS: u64 = 10_000;

impl StoreConfig {
    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.soft_sync_ms <= SOFT_SYNC_MAX_MS,
            "config: store.soft_sync_ms: {} is above the maximum {SOFT_SYNC_MAX_MS} (10 s)",
            self.soft_sync_ms
        );
        Ok(())
    }

    /// `soft_sync_ms` as a duration.
    pub fn soft_sync(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.soft_sync_ms)
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis_url: None,
            data_dir: PathBuf::from("./data"),
            soft_sync_ms: tidegate_logic::store::embedded::DEFAULT_SOFT_SYNC.as_millis() as u64,
        }
    }
}

/// The development app `tidegate up` serves when the config has none.
pub const DEV_APP_CODE: u16 = 1;
/// Its token secret: public, so never use it outside development.
pub const DEV_SECRET: &str = "tidegate-dev-secret-app-1";
/// Its API key: public, so never use it outside development.
pub const DEV_API_KEY: &str = "tidegate-dev-api-key-app-1";

/// The development app.
pub fn dev_app() -> AppConfig {
    AppConfig {
        code: DEV_APP_CODE,
        name: "dev".into(),
        secrets: vec![DEV_SECRET.into()],
        api_key: DEV_API_KEY.into(),
        c2s_max_len: None,
        offline_max_len: None,
        device_policy: Default::default(),
        c2s_webhook: None,
    }
}

impl Config {
    /// Loads `path`, or the defaults when no file is given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("config: cannot read {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses TOML text (errors carry the key and line).
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("config: {}", e.to_string().trim_end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[gateway]\nmax_bdy = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bdy"), "{err}");
    }

    #[test]
    fn wrong_types_are_named() {
        let err = Config::parse("[gateway]\nmax_body = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_body"), "{err}");
    }

    #[test]
    fn soft_sync_is_bounded_and_named() {
        let c = Config::parse("[store]\nsoft_sync_ms = 0\n").unwrap();
        c.store.validate().unwrap();
        assert!(c.store.soft_sync().is_zero());
        assert_eq!(Config::default().store.soft_sync_ms, 200);
        let c = Config::parse("[store]\nsoft_sync_ms = 10001\n").unwrap();
        let err = c.store.validate().unwrap_err().to_string();
        assert!(err.contains("store.soft_sync_ms: 10001"), "{err}");
    }

    #[test]
    fn apps_parse() {
        let c = Config::parse(
            "[[apps]]\ncode = 3\nsecrets = [\"0123456789abcdef\"]\napi_key = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert_eq!(c.apps[0].code, 3);
    }
}
