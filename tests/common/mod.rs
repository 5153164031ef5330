//! Starts the real `tidegate` binary for end-to-end tests: `tidegate up`, or
//! `tidegate logic` and `tidegate gateway` as separate processes (so a test
//! can `kill -9` one). Every listener is bound to port 0 and read back from
//! the banner, so tests never race for ports and never depend on each other.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `tidegate up`.
pub struct Tidegate {
    child: Child,
    /// Client TCP address.
    pub client: SocketAddr,
    /// Gateway admin (metrics) address.
    pub admin: SocketAddr,
    /// Logic HTTP address.
    pub http: SocketAddr,
    /// Keeps the data directory alive.
    _dir: tempfile::TempDir,
}

/// Where the store lives.
pub enum Backend {
    /// A temporary embedded store.
    Embedded,
    /// Redis at this URL.
    Redis(String),
}

pub const BIN: &str = env!("CARGO_BIN_EXE_tidegate");
pub const DEV_API_KEY: &str = "tidegate-dev-api-key-app-1";

impl Tidegate {
    /// `tidegate up` on `backend` with optional extra TOML config.
    pub fn up(backend: &Backend, extra_config: &str) -> Tidegate {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("tidegate.toml");
        // `{dir}` in the config stands for this run's temporary directory.
        let extra_config = extra_config.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&cfg, extra_config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .arg("--config")
            .arg(&cfg)
            .args(["--client-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--link-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--shards", "2"]);
        let mut child = spawn_on(cmd, backend, dir.path());
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after "ready" so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut client, mut admin, mut http) = (None, None, None);
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("tidegate up did not print ready within 30 s");
                }
            };
            let addr = |l: &str| -> SocketAddr {
                let a = l.split_whitespace().last().unwrap();
                let a = a.trim_start_matches("http://").trim_end_matches("/metrics");
                a.parse().unwrap()
            };
            if line.trim_start().starts_with("client tcp") {
                client = Some(addr(&line));
            } else if line.trim_start().starts_with("gateway admin") {
                admin = Some(addr(&line));
            } else if line.trim_start().starts_with("logic http") {
                http = Some(addr(&line));
            } else if line == "ready" {
                break;
            }
        }
        Tidegate {
            child,
            client: client.expect("client addr in banner"),
            admin: admin.expect("admin addr in banner"),
            http: http.expect("http addr in banner"),
            _dir: dir,
        }
    }

    /// Connects and logs `uid` of app 1 in with the development secret.
    pub async fn logged_in(&self, uid: &str) -> tidegate_proto::client::Client {
        let mut c = tidegate_proto::client::Client::connect(self.client)
            .await
            .expect("connect");
        c.login(tidegate_proto::AppCode(1), &token(1, uid), "dev", "android")
            .await
            .expect("login");
        c
    }

    /// `http://<logic http>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; its status code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_exit(&mut self.child, timeout)
    }

    /// The logic shim's Prometheus text.
    pub async fn logic_metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The gateway's Prometheus text.
    pub async fn gateway_metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Tidegate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` on `backend` (its data under `dir` when embedded), stdout piped.
fn spawn_on(mut cmd: Command, backend: &Backend, dir: &std::path::Path) -> Child {
    match backend {
        Backend::Embedded => cmd.arg("--data").arg(dir.join("data")),
        Backend::Redis(url) => cmd.args(["--redis", url]),
    };
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tidegate")
}

/// GETs `url` with the development app's API key; the JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(DEV_API_KEY)
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json")
}

/// POSTs `body` as JSON to `url` with the development app's API key; the
/// status and JSON body.
pub async fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(DEV_API_KEY)
        .json(body)
        .send()
        .await
        .expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

/// Statuses of a list push's answer, in request order.
pub fn statuses(body: &serde_json::Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect()
}

/// Mints a token with the real `tidegate token` command.
pub fn token(app: u16, uid: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--app", &app.to_string(), "--uid", uid])
        .output()
        .expect("tidegate token");
    assert!(
        out.status.success(),
        "token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Sum of every sample of `name` whose labels contain `label` in Prometheus text.
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    metric_with(text, name, &[label])
}

/// Sum of every sample of `name` whose labels contain each of `labels`.
pub fn metric_with(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits for `ready` on the child's stdout; returns the banner's
/// `(label, address)` lines. Keeps draining stdout afterwards so the child
/// never blocks on a full pipe. Kills the child and panics after 30 s.
fn read_banner(child: &mut Child, what: &str) -> Vec<(String, SocketAddr)> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut out = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("{what} did not print ready within 30 s");
        };
        if line == "ready" {
            return out;
        }
        let Some(last) = line.split_whitespace().last() else {
            continue;
        };
        let addr = last
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        if let Ok(a) = addr.parse() {
            let label = line
                .trim()
                .rsplit_once(char::is_whitespace)
                .map_or("", |p| p.0);
            out.push((label.trim().to_string(), a));
        }
    }
}

fn banner_addr(banner: &[(String, SocketAddr)], label: &str) -> SocketAddr {
    banner
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("{label:?} not in banner {banner:?}"))
        .1
}

/// A running `tidegate logic`.
pub struct LogicProc {
    child: Child,
    /// Where gateways link.
    pub link: SocketAddr,
    /// HTTP API.
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl LogicProc {
    /// `tidegate logic` on `backend` with this TOML config.
    pub fn start(backend: &Backend, config: &str) -> LogicProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("logic.toml");
        std::fs::write(&cfg, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("logic")
            .arg("--config")
            .arg(&cfg)
            .args(["--link-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"]);
        let mut child = spawn_on(cmd, backend, dir.path());
        let banner = read_banner(&mut child, "tidegate logic");
        LogicProc {
            link: banner_addr(&banner, "logic link"),
            http: banner_addr(&banner, "logic http"),
            child,
            _dir: dir,
        }
    }

    /// `http://<logic http>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

impl Drop for LogicProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tidegate gateway` (one shard).
pub struct GatewayProc {
    child: Child,
    /// Client TCP address.
    pub client: SocketAddr,
    /// Admin (metrics) address.
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl GatewayProc {
    /// `tidegate gateway --logic <link>` with this TOML config (e.g. a
    /// `[gateway] gate_id`). Its links come up after `ready`: use
    /// [`GatewayProc::login`], which retries while logic is not linked yet.
    pub fn start(logic_link: SocketAddr, config: &str) -> GatewayProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, config).expect("write config");
        let mut child = Command::new(BIN)
            .arg("gateway")
            .arg("--config")
            .arg(&cfg)
            .args(["--logic", &logic_link.to_string()])
            .args(["--client-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--shards", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tidegate gateway");
        let banner = read_banner(&mut child, "tidegate gateway");
        GatewayProc {
            client: banner_addr(&banner, "client tcp"),
            admin: banner_addr(&banner, "gateway admin"),
            child,
            _dir: dir,
        }
    }

    /// Logs `uid` of app 1 in, retrying for up to 10 s while the gateway's
    /// link to logic comes up (logins answer UNAVAILABLE until then).
    pub async fn login(&self, uid: &str) -> tidegate_proto::client::Client {
        let tok = token(1, uid);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = tidegate_proto::client::Client::connect(self.client)
                .await
                .expect("connect gateway");
            match c
                .login(tidegate_proto::AppCode(1), &tok, "dev", "android")
                .await
            {
                Ok(_) => return c,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("login {uid} through the gateway: {e:?}"),
            }
        }
    }

    /// `kill -9`: no drain, no close notices, no goodbye to logic.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL gateway");
        self.child.wait().expect("reap gateway");
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A TCP connection to `target` from the loopback address `source`.
pub async fn connect_from(
    source: &str,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket.connect(target).await
}

/// Any `tidegate` subcommand as a child process, its stdout as lines.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `tidegate <args>`.
    pub fn start(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// Starts a shell command line (to set limits before `exec tidegate`).
    pub fn start_shell(script: &str) -> Proc {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Proc::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tidegate");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc { child, lines }
    }

    /// The first line (within `timeout`) for which `f` gives a value.
    pub fn wait_line<T>(&self, timeout: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = f(&line) {
                        return v;
                    }
                }
                Err(_) => panic!("no expected line within {timeout:?}"),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for exit; the status code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address at the end of a banner line (`  logic link     127.0.0.1:7100`).
pub fn line_addr(line: &str, label: &str) -> Option<SocketAddr> {
    let rest = line.trim_start().strip_prefix(label)?;
    let a = rest.split_whitespace().last()?;
    a.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .ok()
}

/// A port nothing listens on right now (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits for `child` to exit; its status code, or None on timeout.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
