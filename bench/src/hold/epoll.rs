//! Held connections as tokio tasks: each waits for readiness or its next
//! keepalive, whichever comes first.

use super::{spread, Reader, Shared};
use crate::fleet::Member;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// One task per held connection, on the caller's runtime.
pub(super) struct Tasks {
    tasks: JoinSet<()>,
}

impl Tasks {
    pub(super) fn start(members: Vec<Member>, shared: Shared) -> Tasks {
        let mut tasks = JoinSet::new();
        for m in members {
            let phase = spread(m.index, shared.every);
            let reader = Reader::new(m.index, shared.receipts.clone());
            let (ping, every, open) = (shared.ping.clone(), shared.every, shared.open.clone());
            let stream = m.client.into_stream();
            tasks.spawn(async move {
                hold(stream, ping, every, phase, reader).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Tasks { tasks }
    }

    /// Closes every connection (each task drops its socket).
    pub(super) fn close(mut self) {
        self.tasks.abort_all();
    }
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
                if r.is_err() || !take(&mut reader, &stream) {
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

/// Reads what is readable; false once the peer has closed (or sent bytes
/// that are not frames).
fn take(reader: &mut Reader, stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match recv_once(stream, &mut buf) {
        Recv::Data(n) => reader.take(&buf[..n]),
        Recv::Empty => true,
        Recv::Closed => false,
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
