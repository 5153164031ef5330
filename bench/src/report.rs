//! What every scenario shares around its run: the loopback-only and bounds
//! checks made before anything is opened, the hard overall deadline, the
//! `--json` file, a latency recorder that many tasks write at once, and the
//! progress bar of a long step.

use crate::Recorder;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Refuses a target that is not a loopback address: bench never loads
/// another host.
pub fn ensure_loopback(addr: SocketAddr, flag: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "{flag}: bench targets loopback addresses only, not {addr}"
    );
    Ok(())
}

/// Refuses `value` outside `min..=max`, naming the flag.
pub fn ensure_range<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    min: T,
    max: T,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        value >= min && value <= max,
        "{flag} is {min} to {max}, not {value}"
    );
    Ok(())
}

/// Runs `run` but gives up after `limit`: however the server behaves, a
/// scenario ends. Dropping the future aborts its tasks (they live in
/// `JoinSet`s) and closes its sockets.
pub async fn within<T>(
    limit: Duration,
    run: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "the run did not finish within its hard deadline of {} s (is the server overloaded or stuck?)",
            limit.as_secs()
        ),
    }
}

/// Writes `report` as pretty JSON to `path` when one was given.
pub fn write_json(path: Option<&Path>, report: &impl Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--quiet`: no progress bars. Process-wide because every bar comes from
/// [`progress`] and the flag is set once, before a scenario starts.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns progress bars off (`tidegate bench --quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A progress bar of `len` steps on stderr, prefixed `what`, cleared when
/// dropped. Hidden when stderr is not a terminal (scripts, tests, `2> log`:
/// the JSON on stdout and any log stay clean) and with `--quiet`. indicatif
/// redraws at most 20 times a second, so a step costs an atomic add and a
/// lock, not a write.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let target = if QUIET.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), target)
        .with_style(style)
        .with_prefix(what.to_string())
        .with_finish(ProgressFinish::AndClear)
}

/// Stripes of one recorder, written by many tasks at once. Each task picks
/// a stripe by its own index, so two tasks rarely wait for the same lock;
/// one `Recorder` per task would cost ~140 KB each (HdrHistogram counts),
/// which at 10,000 clients is more than the gateway under test.
pub struct SharedRecorder {
    stripes: Vec<Mutex<Recorder>>,
}

/// Stripes per [`SharedRecorder`]: a few per core is enough on the 2-core
/// test machine and cheap on a larger one.
const STRIPES: usize = 8;

impl Default for SharedRecorder {
    fn default() -> Self {
        SharedRecorder::new()
    }
}

impl SharedRecorder {
    /// An empty recorder.
    pub fn new() -> SharedRecorder {
        SharedRecorder {
            stripes: (0..STRIPES).map(|_| Mutex::new(Recorder::new())).collect(),
        }
    }

    /// Records one latency on behalf of task `key`.
    pub fn record(&self, key: usize, latency: Duration) {
        let mut r = self.stripes[key % STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.record(latency);
    }

    /// All stripes merged.
    pub fn merged(&self) -> Recorder {
        let mut all = Recorder::new();
        for s in &self.stripes {
            all.merge(&s.lock().unwrap_or_else(|p| p.into_inner()));
        }
        all
    }
}

/// The server a scenario that pushes drives: gateway and logic addresses
/// and the app's credentials (the same flags in every such scenario).
#[derive(clap::Args, Debug, Clone)]
pub struct Server {
    /// Gateway client address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub target: SocketAddr,
    /// Logic HTTP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7180")]
    pub http: SocketAddr,
    /// The app's API key (default: `tidegate up`'s development key).
    #[arg(long, default_value = "tidegate-dev-api-key-app-1")]
    pub api_key: String,
    /// The app's token secret (default: `tidegate up`'s development secret).
    #[arg(long, default_value = "tidegate-dev-secret-app-1")]
    pub secret: String,
    /// App code.
    #[arg(long, default_value_t = 1)]
    pub app: u16,
}

impl Server {
    /// Refuses non-loopback addresses: bench never loads another host.
    pub fn ensure_loopback(&self) -> anyhow::Result<()> {
        ensure_loopback(self.target, "--target")?;
        ensure_loopback(self.http, "--http")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_merge_into_one_count() {
        let r = SharedRecorder::new();
        for k in 0..100 {
            r.record(k, Duration::from_micros(50 + k as u64));
        }
        let p = r.merged().percentiles();
        assert_eq!(p.count, 100);
        assert!(p.p50_us >= 90 && p.max_us >= 149, "{p:?}");
    }

    #[test]
    fn progress_is_hidden_off_a_terminal_and_when_quiet() {
        use std::io::IsTerminal;
        let bar = progress(10, "test");
        bar.inc(3);
        assert_eq!(bar.position(), 3);
        if !std::io::stderr().is_terminal() {
            assert!(bar.is_hidden());
        }
        set_quiet(true);
        assert!(progress(1, "quiet").is_hidden());
        set_quiet(false);
    }

    #[test]
    fn bounds_name_the_flag() {
        let e = ensure_range("--rate", 0.0, 1.0, 10.0).unwrap_err();
        assert!(e.to_string().contains("--rate"), "{e}");
        assert!(ensure_loopback("192.0.2.1:1".parse().unwrap(), "--http").is_err());
        assert!(ensure_loopback("127.0.0.1:1".parse().unwrap(), "--http").is_ok());
    }
}
