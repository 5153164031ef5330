//! Test helpers (cargo feature `testkit`): a real `redis-server` on a free
//! loopback port, owned by a guard that kills it on drop. Shared by the store
//! conformance suite and the root package's end-to-end tests (STYLE §5: tests
//! run real binaries, never mocks). Everything here is synchronous, so it
//! works under tokio, glommio or no runtime at all.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh redis-server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Port picks to try: another process may grab the port we just released.
const ATTEMPTS: usize = 5;

/// A `redis-server` child process on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Redis's `--dir`; removed after the process is gone.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a redis-server without persistence on a free port and waits
    /// until it answers PING; panics if that fails (it is a test fixture).
    pub fn start() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            match Self::try_start(free_port()) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("testkit: redis-server did not start after {ATTEMPTS} attempts: {last_error}");
    }

    fn try_start(port: u16) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("testkit: `redis-server` is not on PATH; run `tests/run`, which installs it")
            }
            Err(e) => panic!("testkit: cannot run redis-server: {e}"),
        };
        // From here on the guard owns the child, so every early return kills it.
        let mut server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(port) {
                return Ok(server);
            }
            // Exited early: most likely the port was taken meanwhile.
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server on port {port} exited with {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {port} did not answer PING in {READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/`, for `RedisStore::connect` or `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Reap it so no zombie outlives the test and the port is really free.
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("testkit: cannot bind 127.0.0.1:0 to find a free port: {e}"))
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && s.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
