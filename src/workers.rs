//! `tidegate gateway --workers K`: run K gateway processes on the same client
//! port (SO_REUSEPORT), like nginx's workers, and restart any that dies.
//!
//! Workers are how one host passes a per-process descriptor limit (20,000
//! here, not raisable) and they isolate crashes (ARCHITECTURE §7). Each is
//! its own gate: its own id, shards, logic links and admin port
//! (`gateway.admin_addr` + index). SIGTERM to the supervisor drains every
//! worker, then exits.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidegate_gateway::GatewayConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// The most workers one supervisor runs (`--workers`).
pub const MAX_WORKERS: usize = 64;

/// Gives worker `i` its own gate id and admin port, and ties its life to
/// the supervisor's.
pub fn configure_worker(cfg: &mut GatewayConfig, i: usize) {
    // A supervisor killed outright (SIGKILL, OOM) must not leave orphan
    // workers holding the client port: the kernel sends them SIGTERM, and
    // they drain like on any SIGTERM.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    // The default gate id already holds the worker's pid; a configured one
    // gets the index so workers never share a gate id.
    if let Some(id) = &cfg.gate_id {
        cfg.gate_id = Some(format!("{id}-w{i}"));
    }
    cfg.first_cpu = i * cfg.shard_count();
    let port = cfg.admin_addr.port();
    if port != 0 {
        cfg.admin_addr.set_port(port + i as u16);
    }
}

/// The supervisor's state shared by its worker tasks.
struct Supervisor {
    /// Each worker's current pid, for forwarding signals.
    pids: Mutex<Vec<Option<u32>>>,
    stopping: AtomicBool,
    /// Worker argv: ours without `--workers`.
    args: Vec<String>,
}

/// Runs and supervises `k` workers until SIGTERM/SIGINT.
pub fn supervise(k: usize, cfg: &GatewayConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_WORKERS).contains(&k),
        "--workers must be 1 to {MAX_WORKERS}, not {k}"
    );
    anyhow::ensure!(
        cfg.client_addr.port() != 0,
        "gateway.client_addr: workers share one fixed client port; port 0 would give each its own"
    );
    let sup = Arc::new(Supervisor {
        pids: Mutex::new(vec![None; k]),
        stopping: AtomicBool::new(false),
        args: worker_args(std::env::args().skip(1)),
    });
    let drain = Duration::from_secs(u64::from(cfg.drain_timeout_s) + 5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (ready_tx, mut ready_rx) = mpsc::channel(k);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..k {
            tasks.spawn(run_worker(sup.clone(), i, ready_tx.clone()));
        }
        for _ in 0..k {
            ready_rx.recv().await;
        }
        println!("tidegate gateway: {k} workers on {}", cfg_client(cfg));
        println!("ready");
        crate::wait_for_shutdown().await?;
        println!("tidegate: stopping {k} workers");
        sup.stopping.store(true, Ordering::Release);
        signal_all(&sup, libc::SIGTERM);
        if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            signal_all(&sup, libc::SIGKILL);
        }
        println!("tidegate: workers stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    std::process::exit(0);
}

fn cfg_client(cfg: &GatewayConfig) -> String {
    cfg.client_addr.to_string()
}

/// Our arguments without `--workers N` / `--workers=N`.
fn worker_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
        } else if a == "--workers" {
            skip_value = true;
        } else if !a.starts_with("--workers=") {
            out.push(a);
        }
    }
    out
}

fn signal_all(sup: &Supervisor, sig: libc::c_int) {
    let pids = sup.pids.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for pid in pids.into_iter().flatten() {
        // SAFETY: kill(2) on a pid we spawned; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Keeps worker `i` running: start, forward its output, restart on exit.
async fn run_worker(sup: Arc<Supervisor>, i: usize, ready: mpsc::Sender<()>) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tidegate: cannot find my own executable: {e}");
            return;
        }
    };
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    while !sup.stopping.load(Ordering::Acquire) {
        let started = Instant::now();
        let child = tokio::process::Command::new(&exe)
            .args(&sup.args)
            .arg("--worker-index")
            .arg(i.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tidegate: worker {i} failed to start: {e}");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let pid = child.id();
        sup.pids.lock().unwrap_or_else(|p| p.into_inner())[i] = pid;
        println!("worker {i} pid {} started", pid.unwrap_or(0));
        if let Some(out) = child.stdout.take() {
            let ready = first.then(|| ready.clone());
            tokio::spawn(forward_output(i, out, ready));
        }
        first = false;
        let status = child.wait().await;
        sup.pids.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
        if sup.stopping.load(Ordering::Acquire) {
            return;
        }
        ::metrics::counter!("tidegate_gateway_worker_restarts_total").increment(1);
        eprintln!("tidegate: worker {i} exited ({status:?}); restarting");
        // A worker that crashes at once is restarted ever more slowly.
        backoff = if started.elapsed() > Duration::from_secs(30) {
            Duration::from_millis(200)
        } else {
            (backoff * 2).min(Duration::from_secs(10))
        };
        tokio::time::sleep(backoff).await;
    }
}

/// Prefixes a worker's stdout with its index; reports its first "ready".
async fn forward_output(
    i: usize,
    out: tokio::process::ChildStdout,
    mut ready: Option<mpsc::Sender<()>>,
) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "ready" {
            if let Some(r) = ready.take() {
                let _ = r.send(()).await;
            }
            continue;
        }
        println!("[w{i}] {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_flag_is_removed_from_worker_argv() {
        let args = [
            "gateway",
            "--workers",
            "3",
            "--config",
            "x.toml",
            "--workers=2",
        ]
        .map(String::from);
        assert_eq!(
            worker_args(args.into_iter()),
            ["gateway", "--config", "x.toml"]
        );
    }

    #[test]
    fn workers_get_their_own_admin_port_and_id() {
        let mut cfg = GatewayConfig {
            gate_id: Some("edge".into()),
            ..GatewayConfig::default()
        };
        configure_worker(&mut cfg, 2);
        assert_eq!(cfg.admin_addr.port(), 7092);
        assert_eq!(cfg.gate_id.as_deref(), Some("edge-w2"));
    }

    #[test]
    fn workers_shards_start_on_the_cpus_after_the_previous_workers() {
        let mut one = GatewayConfig {
            shards: 1,
            ..GatewayConfig::default()
        };
        configure_worker(&mut one, 3);
        assert_eq!(
            one.first_cpu, 3,
            "single-shard workers take a CPU each in turn"
        );
        let mut two = GatewayConfig {
            shards: 2,
            ..GatewayConfig::default()
        };
        configure_worker(&mut two, 3);
        assert_eq!(two.first_cpu, 6);
    }
}
