//! Starts the real `tidegate` binary for end-to-end tests. Every listener is
//! bound to port 0 and read back from the banner, so tests never race for
//! ports and never depend on each other.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `tidegate up`.
pub struct Tidegate {
    child: Child,
    /// Stdout lines printed after "ready".
    pub lines: mpsc::Receiver<String>,
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
        match backend {
            Backend::Embedded => cmd.arg("--data").arg(dir.path().join("data")),
            Backend::Redis(url) => cmd.args(["--redis", url]),
        };
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tidegate");
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
            if let Some(a) = banner_addr(&line, "client tcp") {
                client = Some(a);
            } else if let Some(a) = banner_addr(&line, "gateway admin") {
                admin = Some(a);
            } else if let Some(a) = banner_addr(&line, "logic http") {
                http = Some(a);
            } else if line == "ready" {
                break;
            }
        }
        Tidegate {
            child,
            lines: rx,
            client: client.expect("client addr in banner"),
            admin: admin.expect("admin addr in banner"),
            http: http.expect("http addr in banner"),
            _dir: dir,
        }
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; its status code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The data directory (for writing a lists file).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// `http://<logic http>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
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
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address at the end of a banner line (`  logic link     127.0.0.1:7100`).
pub fn banner_addr(line: &str, label: &str) -> Option<SocketAddr> {
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
