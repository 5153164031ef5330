//! Tidegate logic shim: a stateless tokio service between gateways and the
//! store. It verifies logins, keeps presence, carries c2s messages to each
//! app's bus and s2c pushes from app-servers to the right gate shard
//! (ARCHITECTURE §2, §4). Everything it remembers is in the [`store::Store`],
//! so any number of instances can run side by side.

pub mod api;
pub mod auth;
mod c2s;
pub mod config;
mod deliver;
mod gates;
mod link;
mod offline;
mod presence;
mod push;
mod reach;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhook;

use anyhow::Context;
use auth::Auth;
use config::{AppConfig, LogicConfig};
use gates::Gates;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use store::Store;
use tidegate_proto::{AppCode, MsgType};

/// Shared state of one logic instance: configuration, keys, the store
/// handle and the linked gate shards. Nothing user-related lives here.
pub struct Logic {
    /// Settings.
    pub cfg: LogicConfig,
    /// Token and API key verification.
    pub auth: Auth,
    apps: HashMap<u16, AppConfig>,
    /// Presence and persistence.
    pub store: Arc<dyn Store>,
    /// Store latency per hot-path operation.
    pub store_timings: store::timing::Timings,
    gates: Gates,
    /// This instance's id.
    pub logic_id: String,
    msg_seq: AtomicU64,
    reach: reach::Reach,
    prom: PrometheusHandle,
    /// c2s webhooks of the apps that configure one.
    webhooks: HashMap<u16, webhook::Webhook>,
}

impl Logic {
    /// How many shards of `gate_id` are linked to this instance.
    pub fn linked_shards(&self, gate_id: &str) -> usize {
        self.gates
            .linked()
            .iter()
            .filter(|s| s.gate_id == gate_id)
            .count()
    }

    /// The app's configuration, if `app` is configured.
    pub fn app(&self, app: AppCode) -> Option<&AppConfig> {
        self.apps.get(&app.0)
    }

    /// The app's c2s webhook, if it configures one.
    pub fn webhook(&self, app: AppCode) -> Option<&webhook::Webhook> {
        self.webhooks.get(&app.0)
    }

    /// A message id unique across logic instances that names its msgtype
    /// (see `reach::msg_id`).
    pub fn next_msg_id(&self, msgtype: MsgType) -> String {
        let seq = self.msg_seq.fetch_add(1, Ordering::Relaxed);
        reach::msg_id(tidegate_proto::now_ms(), &self.logic_id, seq, msgtype)
    }
}

/// A running logic instance.
pub struct LogicServer {
    /// Where gate shards connect.
    pub link_addr: SocketAddr,
    /// Where gate shards on this host may connect instead, if configured.
    pub link_unix: Option<PathBuf>,
    /// The HTTP API.
    pub http_addr: SocketAddr,
    /// Shared state.
    pub logic: Arc<Logic>,
}

impl LogicServer {
    /// Validates config, binds the link and HTTP listeners and serves them on
    /// the current tokio runtime.
    pub async fn start(
        cfg: LogicConfig,
        apps: Vec<AppConfig>,
        store: Arc<dyn Store>,
        prom: PrometheusHandle,
    ) -> anyhow::Result<LogicServer> {
        cfg.validate(&apps)?;
        let link_listener = tokio::net::TcpListener::bind(cfg.link_addr)
            .await
            .with_context(|| format!("logic.link_addr: cannot listen on {}", cfg.link_addr))?;
        let unix_listener = match &cfg.link_unix {
            Some(path) => Some(link::bind_unix(path).await?),
            None => None,
        };
        let http_listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("logic.http_addr: cannot listen on {}", cfg.http_addr))?;
        let mut webhooks = HashMap::new();
        for app in &apps {
            if let Some(hook) = &app.c2s_webhook {
                let started = webhook::Webhook::start(AppCode(app.code), hook.clone())
                    .with_context(|| format!("app {}: c2s webhook client", app.code))?;
                webhooks.insert(app.code, started);
            }
        }
        let logic = Arc::new(Logic {
            webhooks,
            auth: Auth::new(&apps, cfg.jwt_leeway_s),
            apps: apps.into_iter().map(|a| (a.code, a)).collect(),
            store_timings: store::timing::Timings::new(store.backend()),
            store,
            gates: Gates::default(),
            logic_id: cfg.logic_id(),
            msg_seq: AtomicU64::new(0),
            reach: Default::default(),
            prom,
            cfg,
        });
        let server = LogicServer {
            link_addr: link_listener.local_addr()?,
            link_unix: logic.cfg.link_unix.clone(),
            http_addr: http_listener.local_addr()?,
            logic: logic.clone(),
        };
        tokio::spawn(link::serve(
            logic.clone(),
            link::LinkListener::Tcp(link_listener),
        ));
        if let Some(listener) = unix_listener {
            tokio::spawn(link::serve(
                logic.clone(),
                link::LinkListener::Unix(listener),
            ));
        }
        let every = std::time::Duration::from_millis(logic.cfg.reach_flush_ms);
        tokio::spawn(reach::flush_forever(logic.clone(), every));
        let router = api::router(logic);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                tracing::error!("http api: {e}");
            }
        });
        Ok(server)
    }
}
