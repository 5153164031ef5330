//! Test helpers (cargo feature `testkit`): a real `redis-server` on a free
//! loopback port, owned by a guard that kills it on drop, and a local
//! 3-master Redis Cluster built the way an operator would (`redis-server
//! --cluster-enabled yes` ×3 + `redis-cli --cluster create`). Shared by the store
//! conformance suite and the root package's end-to-end tests (STYLE §5: tests
//! run real binaries, never mocks). Everything here is synchronous, so it
//! works under tokio, glommio or no runtime at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh redis-server gets to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Port picks to try: another process may grab the port we just released.
const ATTEMPTS: usize = 5;

/// A `redis-server` child process on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    /// `None` while stopped by [`RedisServer::stop`].
    child: Option<Child>,
    port: u16,
    /// Redis's `--dir`; removed after the process is gone.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a redis-server without persistence on a free port and waits
    /// until it answers; panics if that fails (it is a test fixture).
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir()
            .unwrap_or_else(|e| panic!("testkit: cannot create a temp dir: {e}"));
        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            let port = free_port();
            match spawn_ready(port, &dir, &[]) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("testkit: redis-server did not start after {ATTEMPTS} attempts: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`, for `RedisStore::connect` or `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (fault injection: "the store is down"); the port is
    /// kept for [`RedisServer::restart`]. Data is lost: nothing is persisted.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Reap it so no zombie outlives the test and the port is really free.
            let _ = child.wait();
        }
    }

    /// Stops the server if running and starts an empty one on the same port
    /// ("the store came back"); panics if the port was taken meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        match spawn_ready(self.port, &self.dir, &[]) {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("testkit: redis-server restart failed: {e}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("testkit: cannot bind 127.0.0.1:0 to find a free port: {e}"))
}

/// Three cluster-enabled redis-servers joined into one cluster with all
/// 16384 slots assigned; killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok`; panics if that fails (a test fixture).
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::with_capacity(3);
        while nodes.len() < 3 {
            // The cluster bus listens on port + 10000.
            let port = free_port();
            if port > 55_000 {
                continue;
            }
            let dir = tempfile::tempdir()
                .unwrap_or_else(|e| panic!("testkit: cannot create a temp dir: {e}"));
            let conf = dir.path().join("nodes.conf");
            let extra = [
                "--cluster-enabled".to_string(),
                "yes".to_string(),
                "--cluster-config-file".to_string(),
                conf.display().to_string(),
                "--cluster-node-timeout".to_string(),
                "2000".to_string(),
            ];
            if let Ok(child) = spawn_ready(port, &dir, &extra) {
                nodes.push(RedisServer {
                    child: Some(child),
                    port,
                    dir,
                });
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("testkit: cannot run redis-cli: {e}"));
        assert!(
            out.status.success(),
            "testkit: redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !cluster_ok(n.port) {
                assert!(
                    Instant::now() < deadline,
                    "testkit: cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`, for
    /// `RedisStore::connect` or `--redis`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}

impl RedisCluster {
    /// Empties every node (test isolation when cases share one cluster).
    pub fn flush(&self) {
        for n in &self.nodes {
            let ok = Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "FLUSHALL"])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(ok, "testkit: FLUSHALL on cluster node {} failed", n.port);
        }
    }
}

/// Whether the node on `port` reports `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

/// Runs redis-server on `port` and waits until that very process answers.
fn spawn_ready(port: u16, dir: &tempfile::TempDir, extra: &[String]) -> Result<Child, String> {
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("testkit: `redis-server` is not on PATH; run `tests/run`, which installs it")
        }
        Err(e) => panic!("testkit: cannot run redis-server: {e}"),
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    let failed = loop {
        // Matching the pid matters: if another test's server took the port
        // first, it would answer PING while ours exits on "address in use".
        if served_by(port, child.id()) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            break format!("redis-server on port {port} exited with {status}");
        }
        if Instant::now() > deadline {
            break format!("redis-server on port {port} did not answer in {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(failed)
}

/// Whether the Redis answering on `port` is process `pid` (`INFO server`).
fn served_by(port: u16, pid: u32) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .is_err()
    {
        return false;
    }
    // A bulk reply: `$<len>\r\n<len bytes>\r\n`.
    let mut reader = BufReader::new(s);
    let mut header = String::new();
    let len = match reader.read_line(&mut header) {
        Ok(_) => header
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok()),
        Err(_) => None,
    };
    let mut body = vec![0u8; len.unwrap_or(0)];
    len.is_some()
        && reader.read_exact(&mut body).is_ok()
        && String::from_utf8_lossy(&body).contains(&format!("process_id:{pid}\r\n"))
}
