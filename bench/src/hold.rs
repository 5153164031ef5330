//! Holding many logged-in connections for as little memory as possible.
//! A C1M run holds ~19,000 connections per bench process; a full client
//! (4 KiB read buffer, frame queue) per connection would cost the bench
//! more than the gateway under test costs. A holder keeps only the socket:
//! it sends a KEEPALIVE now and then, reads and discards whatever the
//! gateway sends (keepalive replies), and ends when the gateway closes.
//! Given [`Receipts`], it decodes what arrives instead and counts each
//! push it receives (`bench broadcast`, `bench push`).
//!
//! Two ways to wait for the bytes ([`HolderIo`]): `epoll.rs`, threads each
//! with an edge-triggered epoll set and a slab of sockets, one `recv` per
//! readiness event; and `uring.rs`, one tokio-uring runtime per thread with
//! a receive always in flight per connection, completed by the kernel
//! without a readiness round trip.

mod epoll;
mod uring;

use crate::fleet::Member;
use crate::receipts::Receipts;
use anyhow::Context;
use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header, DEFAULT_MAX_BODY};

/// How held connections wait for what the gateway sends.
///
/// epoll is the default: on one host the receivers share the cores with
/// the gateway, and against tokio-uring (2026-12-07, interleaved) it gave
/// unicast at 50,000/s a 13% lower p50 and a lower p99 in 3 of 3 pairs for
/// 17% less bench CPU, and the broadcast a shorter time to the last
/// delivery in 3 of 4 pairs at 200,000 (0.03 s longer in the fourth) and
/// 19.0 against 21.5 s at a million (README, "Bench receivers").
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HolderIo {
    /// Threads with an edge-triggered epoll set each, one `recv` per readiness event.
    #[default]
    Epoll,
    /// tokio-uring runtimes (one per thread), a receive in flight per connection.
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
    Epoll(epoll::Threads),
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
    /// holder threads to spread the connections over (one per core the
    /// process may use).
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
            HolderIo::Epoll => Io::Epoll(epoll::Threads::start(members, shared, threads)?),
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

/// Takes the members' sockets out of tokio's reactor (still non-blocking:
/// from here they are a holder thread's) and deals them round-robin into
/// `threads` shares, fewer if there are fewer connections.
fn deal(
    members: Vec<Member>,
    threads: usize,
) -> anyhow::Result<Vec<Vec<(usize, std::net::TcpStream)>>> {
    let n = threads.clamp(1, members.len().max(1));
    let mut shares: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
    for (k, m) in members.into_iter().enumerate() {
        let std = m
            .client
            .into_stream()
            .into_std()
            .context("taking a held socket out of tokio")?;
        shares[k % n].push((m.index, std));
    }
    Ok(shares)
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
    use crate::receipts::{mono_ns, Stamp};
    use tidegate_proto::client::Client;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A stamped S2C frame, as the gateway sends a bench broadcast.
    fn push(message: usize) -> bytes::Bytes {
        let stamp = Stamp {
            message,
            due_ns: mono_ns(),
        };
        let body = pb::Push {
            content: stamp.content().into(),
            ..Default::default()
        };
        Frame::encode_msg_to_bytes(Header::new(Cmd::S2c, AppCode(1), 0), &body)
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Both ways of holding: pushes are counted, also when a frame arrives
    /// in two pieces; keepalives go out; a gateway-side close is seen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holders_count_pushes_send_keepalives_and_see_closes() {
        for io in [HolderIo::Epoll, HolderIo::Uring] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (mut members, mut servers): (Vec<Member>, Vec<TcpStream>) = (vec![], vec![]);
            for index in 0..8 {
                let (client, accepted) = tokio::join!(Client::connect(addr), listener.accept());
                members.push(Member {
                    index,
                    client: client.unwrap(),
                });
                servers.push(accepted.unwrap().0);
            }
            let receipts = Arc::new(Receipts::new(2));
            let every = Duration::from_millis(50);
            let holders =
                Holders::start(members, AppCode(1), every, Some(receipts.clone()), io, 2).unwrap();
            for s in &mut servers {
                let first = push(0);
                let (a, b) = first.split_at(5);
                s.write_all(a).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
                s.write_all(b).await.unwrap();
                s.write_all(&push(1)).await.unwrap();
            }
            wait_for("16 receipts", || receipts.total() == 16).await;
            assert_eq!(receipts.tally().counts, [8, 8], "{io:?}");
            for s in &mut servers {
                let mut head = [0u8; tidegate_proto::HEADER_LEN];
                tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
                    .await
                    .expect("a keepalive within the interval")
                    .unwrap();
                let mut bytes = BytesMut::from(&head[..]);
                let frame = Frame::parse(&mut bytes, 0).unwrap().expect("a whole frame");
                assert_eq!(frame.header.cmd, Cmd::Keepalive, "{io:?}");
            }
            assert_eq!(holders.open(), 8);
            servers.truncate(3);
            wait_for("5 closes seen", || holders.open() == 3).await;
            holders.close();
        }
    }

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
