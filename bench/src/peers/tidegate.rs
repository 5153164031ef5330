//! Tidegate's side of a peer run: a `tidegate up` started from this very
//! executable on free loopback ports with a temporary embedded store (or one
//! the user runs), clients logged in through `bench idle`'s code path, and
//! fan-out through `POST /v1/push` with `"to":"all"`.

use super::fanout::{self, Subscriber};
use super::process::Server;
use super::{measure_side, Plan, Sent, SideReport};
use crate::{fleet, Recorder};
use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::AppCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long `tidegate up` may take to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Tidegate's side runs and how to talk to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Gateway client address.
    pub client: SocketAddr,
    /// Logic HTTP address.
    pub http: SocketAddr,
    /// The process whose RSS is measured (None: no memory figures).
    pub pid: Option<u32>,
    /// App code.
    pub app: u16,
    /// The app's token secret.
    pub secret: String,
    /// The app's API key.
    pub api_key: String,
}

/// A `tidegate up` this run started; stopped when dropped.
pub struct Up {
    server: Server,
    /// Gateway client address.
    pub client: SocketAddr,
    /// Logic HTTP address.
    pub http: SocketAddr,
    /// Gateway shards, from the banner.
    pub shards: usize,
    _dir: tempfile::TempDir,
}

impl Up {
    /// Starts `<this executable> up` on free loopback ports, its embedded
    /// store in a temporary directory, the built-in development app.
    pub async fn start(shards: Option<usize>) -> anyhow::Result<Up> {
        let exe = std::env::current_exe().context("locating the tidegate executable")?;
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let mut cmd = Command::new(exe);
        cmd.arg("up")
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--client-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--link-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn");
        if let Some(n) = shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        let mut server = Server::spawn(cmd, &dir.path().join("tidegate.log"))?;
        let mut lines = server.stdout_lines().context("tidegate up stdout")?;
        let banner = Banner::read(&mut lines);
        let banner = match tokio::time::timeout(START_TIMEOUT, banner).await {
            Ok(Some(b)) => b,
            Ok(None) => anyhow::bail!(
                "tidegate up exited before ready ({:?}): {}",
                server.exited(),
                server.log_tail()
            ),
            Err(_) => anyhow::bail!(
                "tidegate up did not print ready within {START_TIMEOUT:?}: {}",
                server.log_tail()
            ),
        };
        Ok(Up {
            server,
            client: banner.client.context("no client tcp line in the banner")?,
            http: banner.http.context("no logic http line in the banner")?,
            shards: banner.shards.unwrap_or(0),
            _dir: dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}

/// What `tidegate up` prints before `ready`.
#[derive(Debug, Default)]
struct Banner {
    client: Option<SocketAddr>,
    http: Option<SocketAddr>,
    shards: Option<usize>,
}

impl Banner {
    /// Reads lines up to `ready`; None if stdout ends first.
    async fn read(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<Banner> {
        let mut b = Banner::default();
        while let Some(line) = lines.recv().await {
            b.take(&line);
            if line == "ready" {
                return Some(b);
            }
        }
        None
    }

    fn take(&mut self, line: &str) {
        let addr = |l: &str| {
            l.split_whitespace()
                .last()?
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .parse()
                .ok()
        };
        let l = line.trim_start();
        if l.starts_with("client tcp") {
            self.client = addr(l);
        } else if l.starts_with("logic http") {
            self.http = addr(l);
        } else if l.starts_with("tidegate up:") {
            // "tidegate up: gate g-1 (2 shards) + logic ..."
            let (_, rest) = l.split_once(" (").unwrap_or_default();
            self.shards = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
}

impl Subscriber for Client {
    async fn next_payload(&mut self) -> Result<Bytes, String> {
        match self.recv_push().await {
            Ok(push) => Ok(push.content),
            Err(ClientError::Closed) => Err("closed".into()),
            Err(e) => Err(format!("receive: {e}")),
        }
    }
}

/// Measures Tidegate at `ep`: idle memory with `plan.connections` logged-in
/// clients, then `plan.messages` broadcasts to all of them.
pub async fn measure(ep: &Endpoint, plan: &Plan, name: String) -> anyhow::Result<SideReport> {
    let auth = Arc::new(fleet::minting_auth(ep.app, &ep.secret));
    let (target, app) = (ep.client, AppCode(ep.app));
    let open = move |i| {
        let auth = auth.clone();
        async move {
            fleet::connect_and_login(target, i, app, &auth)
                .await
                .map(|ok| ok.client)
                .map_err(|f| f.label())
        }
    };
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/push", ep.http);
    let (app, key) = (ep.app, ep.api_key.clone());
    let send = move |epoch: Instant, plan: Plan| async move {
        let gate = Arc::new(Semaphore::new(plan.in_flight));
        let mut sends = JoinSet::new();
        let started = Instant::now();
        for index in 0..plan.messages as u32 {
            let permit = gate.clone().acquire_owned().await?;
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            sends.spawn(async move {
                let payload = fanout::stamp(epoch, index, plan.payload_bytes);
                let t0 = Instant::now();
                let body = serde_json::json!({
                    "app": app,
                    "to": "all",
                    "content_b64": base64::engine::general_purpose::STANDARD.encode(&payload),
                });
                let resp = http.post(&url).bearer_auth(&key).json(&body).send().await;
                drop(permit);
                let resp = resp.context("POST /v1/push")?;
                let status = resp.status();
                anyhow::ensure!(
                    status.is_success(),
                    "POST /v1/push answered {status}: {}",
                    resp.text().await.unwrap_or_default()
                );
                Ok(t0.elapsed())
            });
        }
        let mut latency = Recorder::new();
        while let Some(r) = sends.join_next().await {
            latency.record(r??);
        }
        anyhow::Ok(Sent { started, latency })
    };
    measure_side(name, ep.pid, plan, open, send).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_lines_give_addresses_and_shards() {
        let mut b = Banner::default();
        for l in [
            "tidegate up: gate host-1 (2 shards) + logic logic-1 on the embedded store at /x",
            "  client tcp     127.0.0.1:4100",
            "  gateway admin  http://127.0.0.1:4101/metrics",
            "  logic http     http://127.0.0.1:4102",
            "  apps           app 1 with the built-in DEVELOPMENT secret and API key (configure [[apps]] for real use)",
        ] {
            b.take(l);
        }
        assert_eq!(b.client, Some("127.0.0.1:4100".parse().unwrap()));
        assert_eq!(b.http, Some("127.0.0.1:4102".parse().unwrap()));
        assert_eq!(b.shards, Some(2));
    }
}
