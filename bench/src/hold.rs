//! Holding many logged-in connections for as little memory as possible.
//! A C1M run holds ~19,000 connections per bench process; a full client
//! (4 KiB read buffer, frame queue) per connection would cost the bench
//! more than the gateway under test costs. A holder keeps only the socket:
//! it sends a KEEPALIVE now and then, reads and discards whatever the
//! gateway sends (keepalive replies), and ends when the gateway closes.
//! Given [`Receipts`], it decodes what arrives instead and counts each
//! broadcast it receives (`bench broadcast --procs`).

use crate::fleet::Member;
use crate::receipts::Receipts;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header, DEFAULT_MAX_BODY};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Connections being held, and how many are still open.
pub struct Holders {
    tasks: JoinSet<()>,
    open: Arc<AtomicUsize>,
}

impl Holders {
    /// Holds every member's connection, each sending a KEEPALIVE every
    /// `keepalive` (spread over the interval so they do not all fire at
    /// once), and counting broadcasts into `receipts` when given.
    pub fn start(
        members: Vec<Member>,
        app: AppCode,
        keepalive: Duration,
        receipts: Option<Arc<Receipts>>,
    ) -> Holders {
        let open = Arc::new(AtomicUsize::new(members.len()));
        let ping = Frame::empty(Header::new(Cmd::Keepalive, app, 0)).to_bytes();
        let mut tasks = JoinSet::new();
        for m in members {
            let phase = spread(m.index, keepalive);
            let (ping, open, receipts) = (ping.clone(), open.clone(), receipts.clone());
            let stream = m.client.into_stream();
            let index = m.index;
            tasks.spawn(async move {
                let reader = Reader {
                    index,
                    receipts,
                    rbuf: BytesMut::new(),
                };
                hold(stream, ping, keepalive, phase, reader).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Holders { tasks, open }
    }

    /// Connections still open (the gateway has not closed them).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Closes every connection (each task drops its socket).
    pub fn close(mut self) {
        self.tasks.abort_all();
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
    /// Count broadcasts here; `None`: discard everything.
    receipts: Option<Arc<Receipts>>,
    /// Part of a frame read so far (empty, unallocated, between frames).
    rbuf: BytesMut,
}

async fn hold(
    mut stream: TcpStream,
    ping: Bytes,
    every: Duration,
    phase: Duration,
    mut reader: Reader,
) {
    let mut next = tokio::time::Instant::now() + phase;
    loop {
        tokio::select! {
            r = stream.readable() => {
                if r.is_err() || !reader.take(&stream) {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next) => {
                if stream.write_all(&ping).await.is_err() {
                    return;
                }
                next += every;
            }
        }
    }
}

impl Reader {
    /// Reads what is readable; false once the peer has closed (or sent
    /// bytes that are not frames).
    fn take(&mut self, stream: &TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        let n = match recv_once(stream, &mut buf) {
            Recv::Data(n) => n,
            Recv::Empty => return true,
            Recv::Closed => return false,
        };
        let Some(receipts) = &self.receipts else {
            return true; // discarded: keepalive replies
        };
        self.rbuf.extend_from_slice(&buf[..n]);
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

/// What one receive got.
enum Recv {
    /// Bytes, this many.
    Data(usize),
    /// Nothing after all (a stale readiness event).
    Empty,
    /// The peer closed, or the socket failed.
    Closed,
}

/// One `recv` per wake-up. A read that leaves room in `buf` has emptied the
/// socket, so the readiness is cleared right there, instead of by a second
/// `recv` that would only answer EAGAIN: a syscall per delivery saved, on
/// the receivers that share the cores with the gateway in a broadcast.
/// (tokio clears readiness only for the event it observed, so bytes that
/// arrive meanwhile still wake the holder.) A full buffer keeps the
/// readiness and is read again at once.
fn recv_once(stream: &TcpStream, buf: &mut [u8]) -> Recv {
    use std::os::fd::AsRawFd;
    let mut got = 0;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: recv writes at most buf.len() bytes into the buffer we own.
        let n = unsafe { libc::recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        got = n as usize;
        if got > 0 && got < buf.len() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match result {
        Ok(()) if got == 0 => Recv::Closed,
        Ok(()) => Recv::Data(got),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Recv::Data(got),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Recv::Empty,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Recv::Empty,
        Err(_) => Recv::Closed,
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
