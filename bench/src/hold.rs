//! Holding many logged-in connections for as little memory as possible.
//! A C1M run holds ~19,000 connections per bench process; a full client
//! (4 KiB read buffer, frame queue) per connection would cost the bench
//! more than the gateway under test costs. A holder keeps only the socket:
//! it sends a KEEPALIVE now and then, reads and discards whatever the
//! gateway sends (keepalive replies), and ends when the gateway closes.
//! Given [`Receipts`], it decodes what arrives instead and counts each
//! push it receives (`bench broadcast`, `bench push`).
//!
//! Two ways to wait for the bytes ([`HolderIo`]): `epoll.rs`, a tokio task
//! per connection woken by readiness, then one `recv`; and `uring.rs`, one
//! tokio-uring runtime per thread with a receive always in flight per
//! connection, completed by the kernel without a readiness round trip.

mod epoll;
mod uring;

use crate::fleet::Member;
use crate::receipts::Receipts;
use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header, DEFAULT_MAX_BODY};

/// How held connections wait for what the gateway sends.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HolderIo {
    /// A tokio task per connection, woken by epoll readiness, one `recv` per wake-up.
    Epoll,
    /// tokio-uring runtimes (one per thread), a receive in flight per connection.
    #[default]
    Uring,
}

impl HolderIo {
    /// The flag value, for a worker's command line.
    pub fn as_arg(&self) -> &'static str {
        match self {
            HolderIo::Epoll => "epoll",
            HolderIo::Uring => "uring",
        }
    }
}

/// Connections being held, and how many are still open.
pub struct Holders {
    open: Arc<AtomicUsize>,
    io: Io,
}

enum Io {
    Epoll(epoll::Tasks),
    Uring(uring::Threads),
}

/// What every holder of a run shares.
#[derive(Clone)]
struct Shared {
    /// The KEEPALIVE frame.
    ping: bytes::Bytes,
    /// Keepalive interval.
    every: Duration,
    /// Where pushes are counted, if anywhere.
    receipts: Option<Arc<Receipts>>,
    /// Connections still open.
    open: Arc<AtomicUsize>,
}

impl Holders {
    /// Holds every member's connection, each sending a KEEPALIVE every
    /// `keepalive` (spread over the interval so they do not all fire at
    /// once), and counting pushes into `receipts` when given. `threads`:
    /// tokio-uring runtimes to spread the connections over (one per core
    /// the process may use; ignored for epoll, which runs on the caller's
    /// runtime).
    pub fn start(
        members: Vec<Member>,
        app: AppCode,
        keepalive: Duration,
        receipts: Option<Arc<Receipts>>,
        io: HolderIo,
        threads: usize,
    ) -> anyhow::Result<Holders> {
        let open = Arc::new(AtomicUsize::new(members.len()));
        let shared = Shared {
            ping: Frame::empty(Header::new(Cmd::Keepalive, app, 0)).to_bytes(),
            every: keepalive,
            receipts,
            open: open.clone(),
        };
        let io = match io {
            HolderIo::Epoll => Io::Epoll(epoll::Tasks::start(members, shared)),
            HolderIo::Uring => Io::Uring(uring::Threads::start(members, shared, threads)?),
        };
        Ok(Holders { open, io })
    }

    /// Connections still open (the gateway has not closed them).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Closes every connection.
    pub fn close(self) {
        match self.io {
            Io::Epoll(t) => t.close(),
            Io::Uring(t) => t.close(),
        }
    }
}

/// The first keepalive's delay for connection `index`: spread over one
/// interval so N holders send N / interval keepalives per second, evenly.
fn spread(index: usize, every: Duration) -> Duration {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    let frac = (index as u64).wrapping_mul(GOLDEN) >> 11;
    every.mul_f64(frac as f64 / (1u64 << 53) as f64)
}

/// What a holder does with the bytes that arrive.
struct Reader {
    /// The client's fleet index (picks a latency stripe).
    index: usize,
    /// Count pushes here; `None`: discard everything.
    receipts: Option<Arc<Receipts>>,
    /// Part of a frame read so far (empty, unallocated, between frames).
    rbuf: BytesMut,
}

impl Reader {
    fn new(index: usize, receipts: Option<Arc<Receipts>>) -> Reader {
        Reader {
            index,
            receipts,
            rbuf: BytesMut::new(),
        }
    }

    /// Takes bytes read from the gateway; false if they are not frames.
    fn take(&mut self, bytes: &[u8]) -> bool {
        let Some(receipts) = &self.receipts else {
            return true; // discarded: keepalive replies
        };
        self.rbuf.extend_from_slice(bytes);
        loop {
            match Frame::parse(&mut self.rbuf, DEFAULT_MAX_BODY * 16) {
                Ok(Some(f)) if f.header.cmd == Cmd::S2c => {
                    if let Ok(push) = f.decode_body::<pb::Push>() {
                        receipts.record(self.index, &push.content);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        if self.rbuf.is_empty() {
            // Give the allocation back: a held connection keeps no buffer.
            self.rbuf = BytesMut::new();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_keepalives_spread_over_the_interval() {
        let every = Duration::from_secs(20);
        let mut buckets = [0usize; 10];
        for i in 0..10_000 {
            let d = spread(i, every);
            assert!(d < every);
            buckets[(d.as_secs_f64() / 2.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }
}
