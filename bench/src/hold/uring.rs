//! Held connections on tokio-uring: one runtime per thread, one receive
//! always in flight per connection. The kernel completes it when bytes
//! arrive, so a delivery costs the holder no readiness wake-up followed by
//! a `recv`, only a completion reaped with the others of that turn.
//!
//! A receive in flight owns its buffer, so each connection keeps
//! [`READ_BUF`] bytes for as long as it is held (a readiness-based holder
//! keeps none between wake-ups); small, because what a held connection
//! gets is keepalive replies and pushes of a few dozen bytes. Keepalives
//! are written by one task per runtime that walks its connections in
//! phase order, not by a timer per connection.

use super::{deal, spread, Reader, Shared};
use crate::fleet::Member;
use anyhow::Context;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_uring::net::TcpStream;

/// Bytes each connection's receive in flight owns (19,000 connections per
/// process: 2.4 MiB).
const READ_BUF: usize = 128;
/// Submission queue entries per runtime. The kernel sizes a ring's cancel
/// hash from it and every pending receive sits in that hash (the gateway's
/// `ring_depth` note in the README: 16 buckets at 256 entries made each
/// cancel walk a long bucket).
const RING_ENTRIES: u32 = 4096;
/// How long a runtime waits, once told to stop, for its receives to end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The runtime threads holding a share of the connections each.
pub(super) struct Threads {
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Threads {
    /// Starts `threads` runtimes (fewer if there are fewer connections)
    /// and hands each its share of the members' sockets.
    pub(super) fn start(
        members: Vec<Member>,
        shared: Shared,
        threads: usize,
    ) -> anyhow::Result<Threads> {
        let shares = deal(members, threads)?;
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(shares.len());
        for (t, share) in shares.into_iter().enumerate() {
            let (shared, stopped) = (shared.clone(), stopped.clone());
            // A runtime stays on the thread that built it, so the thread
            // builds it and says whether the kernel gave it a ring: a
            // refused ring is an error here, not a panic there.
            let (ready, started) = std::sync::mpsc::sync_channel(1);
            let handle = std::thread::Builder::new()
                .name(format!("bench-hold-{t}"))
                .spawn(move || {
                    // COOP_TASKRUN: a receive that completes while this
                    // thread runs is finished at its next syscall instead
                    // of by an IPI from the CPU that delivered the bytes.
                    // On one host that CPU is the gateway's, and in a VM
                    // each IPI is a hypervisor exit: 50,000 deliveries/s
                    // cost the server 8-9% less CPU and bench 16-18% less.
                    let rt = match tokio_uring::Runtime::new(
                        tokio_uring::builder()
                            .entries(RING_ENTRIES)
                            .uring_builder(tokio_uring::uring_builder().setup_coop_taskrun()),
                    ) {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    rt.block_on(hold(share, shared, stopped));
                })
                .context("starting a holder thread")?;
            started
                .recv()
                .context("a holder thread ended before starting")?
                .context("starting a tokio-uring runtime (io_uring refused?)")?;
            handles.push(handle);
        }
        Ok(Threads {
            threads: handles,
            stop,
        })
    }

    /// Shuts every connection down and waits for the runtimes to end.
    pub(super) fn close(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One runtime's connections: a reader task each, keepalives in phase
/// order, until told to stop.
async fn hold(
    share: Vec<(usize, std::net::TcpStream)>,
    shared: Shared,
    mut stopped: watch::Receiver<bool>,
) {
    let reading = Rc::new(Cell::new(0usize));
    let mut held: Vec<(Duration, Rc<TcpStream>)> = Vec::with_capacity(share.len());
    for (index, std) in share {
        let stream = Rc::new(TcpStream::from_std(std));
        let reader = Reader::new(index, shared.receipts.clone());
        reading.set(reading.get() + 1);
        let (s, open, reading) = (stream.clone(), shared.open.clone(), reading.clone());
        tokio_uring::spawn(async move {
            read(&s, reader).await;
            open.fetch_sub(1, Ordering::Relaxed);
            reading.set(reading.get() - 1);
        });
        held.push((spread(index, shared.every), stream));
    }
    held.sort_by_key(|(phase, _)| *phase);
    tokio::select! {
        _ = stopped.wait_for(|s| *s) => {}
        _ = keepalives(&held, &shared) => {}
    }
    // A receive in flight keeps its socket open; shutting the socket down
    // completes the receive (0 bytes), its task ends and drops the socket.
    for (_, s) in &held {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    drop(held);
    let deadline = Instant::now() + STOP_GRACE;
    while reading.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Receives until the gateway closes the connection (or sends what is not
/// a frame).
async fn read(stream: &TcpStream, mut reader: Reader) {
    let mut buf = Vec::with_capacity(READ_BUF);
    loop {
        let (got, b) = stream.read(buf).await;
        buf = b;
        match got {
            Ok(n) if n > 0 => {
                if !reader.take(&buf[..n]) {
                    return;
                }
                buf.clear();
            }
            _ => return,
        }
    }
}

/// Sends each connection a KEEPALIVE every interval, at its phase; never
/// ends. A write to a connection the gateway closed fails and is ignored.
async fn keepalives(held: &[(Duration, Rc<TcpStream>)], shared: &Shared) {
    let start = Instant::now();
    for round in 0u32.. {
        for (phase, stream) in held {
            tokio::time::sleep_until(start + shared.every * round + *phase).await;
            let (s, ping) = (stream.clone(), shared.ping.clone());
            tokio_uring::spawn(async move {
                let _ = s.write_all(ping).await;
            });
        }
    }
}
