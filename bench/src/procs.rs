//! Several bench processes for one run. One process may hold at most about
//! 19,000 sockets here (the open-files limit is 20,000 and cannot be
//! raised), so a million connections need some 53 of them. The parent
//! starts its own executable as workers, each with a [`Share`] of the
//! connections (disjoint indices, so disjoint uids and source addresses),
//! reads one JSON line from each when it is ready, merges the reports
//! (histograms added, never percentiles averaged), and ends the workers by
//! closing their stdin. Workers die with the parent (`kill_on_drop` and
//! PDEATHSIG), so a run never leaves load generators behind.

use crate::Recorder;
use anyhow::Context;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::de::DeserializeOwned;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Descriptors a worker keeps for itself beyond its connections.
const FD_RESERVE: usize = 1_000;

/// A worker's part of the connections: indices `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// First connection index.
    pub first: usize,
    /// Connections.
    pub count: usize,
}

/// Splits `total` connections into shares of at most `per_proc`, as even
/// as possible (so workers finish their storms together).
pub fn shares(total: usize, per_proc: usize) -> Vec<Share> {
    let per_proc = per_proc.max(1);
    let procs = total.div_ceil(per_proc).max(1);
    let (base, extra) = (total / procs, total % procs);
    let mut first = 0;
    (0..procs)
        .map(|i| {
            let count = base + usize::from(i < extra);
            let s = Share { first, count };
            first += count;
            s
        })
        .collect()
}

/// Connections one process can hold under its open-files limit.
pub fn per_process_capacity() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let soft = if rc == 0 { lim.rlim_cur as usize } else { 1024 };
    soft.saturating_sub(FD_RESERVE).max(100)
}

/// Running worker processes.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    /// The worker's stdout, line by line (read by a task of its own, so
    /// the parent can wait on any worker without blocking on another).
    lines: mpsc::UnboundedReceiver<String>,
}

impl Workers {
    /// Starts one worker per share: this executable with `args(share)`.
    pub fn spawn(
        shares: &[Share],
        args: impl Fn(&Share) -> Vec<String>,
    ) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("locating the tidegate executable")?;
        let mut workers = Vec::with_capacity(shares.len());
        for share in shares {
            let mut cmd = Command::new(&exe);
            cmd.args(args(share))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().context("starting a bench worker")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let (tx, lines) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            workers.push(Worker { child, lines });
        }
        Ok(Workers { workers })
    }

    /// Workers running.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether no worker runs.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The next JSON line of every worker, in worker order; fails if one
    /// exits, prints something else, or all have not answered by `within`.
    pub async fn next_reports<T: DeserializeOwned>(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<Vec<T>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::with_capacity(self.workers.len());
        for i in 0..self.workers.len() {
            out.push(self.next_line_of(i, deadline).await?);
        }
        Ok(out)
    }

    /// Worker `i`'s next JSON line, by `deadline`.
    pub async fn next_line_of<T: DeserializeOwned>(
        &mut self,
        i: usize,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<T> {
        let w = &mut self.workers[i];
        let line = tokio::time::timeout_at(deadline, w.lines.recv())
            .await
            .with_context(|| format!("bench worker {i} did not report in time"))?
            .with_context(|| format!("bench worker {i} exited before reporting"))?;
        serde_json::from_str(&line).with_context(|| format!("bench worker {i} printed {line:?}"))
    }

    /// Writes `line` to worker `i`'s stdin (a worker that reads its
    /// instructions there, such as `c2s`'s common start instant).
    pub async fn tell(&mut self, i: usize, line: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let stdin = self.workers[i]
            .child
            .stdin
            .as_mut()
            .with_context(|| format!("bench worker {i} was released"))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("telling bench worker {i}"))
    }

    /// Closes every worker's stdin: their signal to report and stop.
    pub fn release(&mut self) {
        for w in &mut self.workers {
            drop(w.child.stdin.take());
        }
    }

    /// Closes every worker's stdin (their signal to stop) and waits for
    /// them; any still running after `grace` is killed.
    pub async fn finish(mut self, grace: Duration) {
        for w in &mut self.workers {
            drop(w.child.stdin.take());
        }
        let deadline = tokio::time::Instant::now() + grace;
        for w in &mut self.workers {
            if tokio::time::timeout_at(deadline, w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}

/// A worker's next instruction from its parent: one line of stdin, by
/// `within` (`None` if the parent closed stdin first).
pub async fn next_instruction(within: Duration) -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    let mut stdin = BufReader::new(tokio::io::stdin());
    let n = tokio::time::timeout(within, stdin.read_line(&mut line))
        .await
        .context("the parent sent no instruction in time")??;
    Ok((n > 0).then(|| line.trim_end().to_string()))
}

/// Waits until the parent closes stdin (a worker's signal to stop) or
/// `max` has passed, whichever comes first.
pub async fn until_released(max: Duration) {
    let released = async {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    };
    let _ = tokio::time::timeout(max, released).await;
}

impl Recorder {
    /// The histogram in HdrHistogram's V2 encoding, base64: how workers
    /// hand their samples to the parent without losing precision.
    pub fn to_base64(&self) -> String {
        let mut raw = Vec::new();
        // Writing to a Vec cannot fail, and our histograms are in range.
        let _ = V2Serializer::new().serialize(&self.hist, &mut raw);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    /// Reads [`Recorder::to_base64`]'s output.
    pub fn from_base64(text: &str) -> anyhow::Result<Recorder> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("histogram is not base64")?;
        let hist = Deserializer::new()
            .deserialize(&mut raw.as_slice())
            .map_err(|e| anyhow::anyhow!("histogram does not decode: {e:?}"))?;
        Ok(Recorder { hist })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_index_once_within_the_cap() {
        for (total, cap) in [(1, 19_000), (19_000, 19_000), (1_000_000, 19_000), (10, 3)] {
            let s = shares(total, cap);
            assert_eq!(s.iter().map(|s| s.count).sum::<usize>(), total);
            assert!(s.iter().all(|s| s.count <= cap && s.count > 0));
            assert!(s.windows(2).all(|w| w[0].first + w[0].count == w[1].first));
            let spread =
                s.iter().map(|s| s.count).max().unwrap() - s.iter().map(|s| s.count).min().unwrap();
            assert!(spread <= 1, "even: {s:?}");
        }
        assert_eq!(shares(1_000_000, 19_000).len(), 53);
    }

    #[test]
    fn histograms_survive_the_trip_between_processes() {
        let mut r = Recorder::new();
        for us in [1, 10, 100, 1_000, 59_000_000] {
            r.record(Duration::from_micros(us));
        }
        let back = Recorder::from_base64(&r.to_base64()).unwrap();
        assert_eq!(back.percentiles(), r.percentiles());
        assert!(Recorder::from_base64("not base64!").is_err());
        assert!(Recorder::from_base64("AAAA").is_err());
    }
}
