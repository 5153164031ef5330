//! Server processes bench starts for a peer run, and the guarantee that they
//! stop with it: killed and reaped on drop (errors, deadline), and killed by
//! the kernel if bench itself dies first (`PR_SET_PDEATHSIG`).

use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// A server process bench started: stopped and reaped when dropped.
pub struct Server {
    child: Child,
    log: PathBuf,
    /// The signal that stops it, on drop and if bench dies first.
    stop: libc::c_int,
}

/// How long a server stopped with SIGTERM may take before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl Server {
    /// Starts `cmd` with stdin closed, stderr appended to `log` and stdout
    /// kept for [`Server::stdout_lines`]; SIGKILLed when dropped.
    pub fn spawn(cmd: Command, log: &Path) -> anyhow::Result<Server> {
        Server::spawn_stopped_by(cmd, log, libc::SIGKILL)
    }

    /// [`Server::spawn`] for a server with worker processes of its own
    /// (nginx): SIGTERM makes it stop them, where SIGKILL would leave them
    /// running as orphans; SIGKILL follows after [`STOP_GRACE`], and to any
    /// child still left.
    pub fn spawn_with_workers(cmd: Command, log: &Path) -> anyhow::Result<Server> {
        Server::spawn_stopped_by(cmd, log, libc::SIGTERM)
    }

    fn spawn_stopped_by(mut cmd: Command, log: &Path, stop: libc::c_int) -> anyhow::Result<Server> {
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // The signal fires when the thread that spawned the child exits:
        // bench spawns from the runtime's long-lived threads, so in practice
        // when bench exits, however it exits.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Server {
            child,
            log: log.to_path_buf(),
            stop,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process's stdout as lines, read by a thread that keeps draining
    /// it so the process never blocks on a full pipe. Once only.
    pub fn stdout_lines(&mut self) -> Option<mpsc::UnboundedReceiver<String>> {
        let stdout = self.child.stdout.take()?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Some(rx)
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stop != libc::SIGKILL && self.exited().is_none() {
            let workers: Vec<(u32, Option<u64>)> = crate::procfs::children(self.pid())
                .into_iter()
                .map(|pid| (pid, crate::procfs::start_ticks(pid)))
                .collect();
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(self.pid() as libc::pid_t, self.stop) };
            let end = std::time::Instant::now() + STOP_GRACE;
            while self.exited().is_none() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            for (pid, started) in workers {
                // Only the same process (same start time), never a reused pid.
                if started.is_some() && crate::procfs::start_ticks(pid) == started {
                    // SAFETY: kill(2) on a worker that outlived its master.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last few lines of a log file ("" if unreadable).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Ports tried before giving up on starting a server (another process may
/// take a free port between our check and the server's bind).
const PORT_ATTEMPTS: usize = 3;

/// A peer server this run started, serving on `addr`.
pub struct Started {
    /// The process, stopped when dropped.
    pub server: Server,
    /// Its loopback listener.
    pub addr: std::net::SocketAddr,
    /// Its config and log; removed when dropped.
    pub dir: tempfile::TempDir,
}

/// Starts a server on a free loopback port with its files in a fresh
/// temporary directory (`spawn(port, dir)` writes its config and starts
/// it), and waits until `probe` answers; up to [`PORT_ATTEMPTS`] ports.
pub async fn start_on_free_port<S, P, Fut, E>(
    what: &str,
    timeout: Duration,
    spawn: S,
    probe: P,
) -> anyhow::Result<Started>
where
    S: Fn(u16, &Path) -> anyhow::Result<Server>,
    P: Fn(std::net::SocketAddr) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let started = match spawn(port, dir.path()) {
            Ok(mut server) => until_serving(&mut server, what, addr, timeout, probe)
                .await
                .map(|()| server),
            Err(e) => Err(e),
        };
        match started {
            Ok(server) => return Ok(Started { server, addr, dir }),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{what} did not start")))
}

/// Waits until `probe` answers, failing when the server exits first or
/// `timeout` passes (with the tail of its log either way).
async fn until_serving<P, Fut, E>(
    server: &mut Server,
    what: &str,
    addr: std::net::SocketAddr,
    timeout: Duration,
    probe: P,
) -> anyhow::Result<()>
where
    P: Fn(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = server.exited() {
            anyhow::bail!("{what} exited ({status}): {}", server.log_tail());
        }
        if probe(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < end,
            "{what} did not answer on {addr} within {timeout:?}: {}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nothing listens on right now (bound, then released; a
/// caller that loses the race retries with another).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `name` on PATH, or in the sbin directories a non-root PATH leaves out
/// (Debian installs `mosquitto` in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A thread that ends the whole process if the run outlives its hard
/// deadline by `grace` (a wedged runtime would never let the async timeout
/// fire); children then die through `PR_SET_PDEATHSIG`. Disarmed on drop.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms it: exit after `limit`.
    pub fn arm(limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("bench: hard deadline of {limit:?} passed; exiting");
                std::process::exit(3);
            }
        });
        Watchdog { _disarm: tx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_server_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let server = Server::spawn(cmd, &dir.path().join("log")).unwrap();
        let pid = server.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(server);
        // Reaped, so the pid is gone (not a zombie awaiting wait()).
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn stdout_is_read_as_lines_and_stderr_logged() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two; echo oops >&2"]);
        let mut server = Server::spawn(cmd, &dir.path().join("log")).unwrap();
        let mut lines = server.stdout_lines().unwrap();
        assert_eq!(lines.blocking_recv().as_deref(), Some("one"));
        assert_eq!(lines.blocking_recv().as_deref(), Some("two"));
        assert_eq!(lines.blocking_recv(), None);
        assert!(server.child.wait().unwrap().success());
        assert!(server.exited().is_some());
        assert_eq!(server.log_tail(), "oops");
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-tidegate").is_none());
    }
}
