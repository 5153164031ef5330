//! Held connections on plain epoll: one thread per share, each with its own
//! edge-triggered epoll set and a slab of connections; no async runtime.
//!
//! Why not a tokio task per connection (what this was first): each
//! wake-up went through tokio's readiness futures and re-armed a timer
//! for the connection's next keepalive, and a task per connection cost
//! memory the gateway under test is measured against. Here a delivery
//! costs the receiving thread one `epoll_wait` entry and one `recv`, and
//! the sending CPU (a gate shard, on this one host) only queues the
//! connection on the ready list: it wakes the holder thread only when that
//! thread sleeps. Measured (19,000 clients, ten broadcasts to all, three
//! interleaved runs each): bench's user CPU 0.40-0.51 s per run against
//! 0.70-0.77 s with a task per connection and 0.81-0.83 s on tokio-uring.
//! A held connection costs [`Held`] (56 bytes) plus its place in the
//! keepalive order (24).

use super::{deal, spread, Reader, Shared};
use crate::fleet::Member;
use anyhow::Context;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// One thread's receive buffer: a read that fills it is followed by
/// another at once, one that does not has emptied the socket.
const RECV_BUF: usize = 64 * 1024;
/// The longest a thread sleeps without looking at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The holder threads, each with a share of the connections.
pub(super) struct Threads {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Threads {
    /// Starts `threads` holder threads (fewer if there are fewer
    /// connections) and hands each its share of the members' sockets.
    pub(super) fn start(
        members: Vec<Member>,
        shared: Shared,
        threads: usize,
    ) -> anyhow::Result<Threads> {
        let shares = deal(members, threads)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(shares.len());
        for (t, share) in shares.into_iter().enumerate() {
            let set = EpollSet::new(share, &shared).context("registering held sockets")?;
            let (shared, stop) = (shared.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("bench-hold-{t}"))
                .spawn(move || set.run(&shared, &stop))
                .context("starting a holder thread")?;
            handles.push(handle);
        }
        Ok(Threads {
            threads: handles,
            stop,
        })
    }

    /// Closes every connection: each thread drops its sockets and ends.
    pub(super) fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One held connection; `None` once the gateway closed it.
struct Held {
    stream: Option<TcpStream>,
    reader: Reader,
}

/// One thread's connections, its epoll descriptor and keepalive order.
struct EpollSet {
    epfd: Epoll,
    held: Vec<Held>,
    /// Slab slots in the order of their keepalive phase within an interval.
    order: Vec<(Duration, u32)>,
}

impl EpollSet {
    fn new(share: Vec<(usize, TcpStream)>, shared: &Shared) -> anyhow::Result<EpollSet> {
        let epfd = Epoll::new()?;
        let mut held = Vec::with_capacity(share.len());
        let mut order = Vec::with_capacity(share.len());
        for (slot, (index, stream)) in share.into_iter().enumerate() {
            let slot = u32::try_from(slot).context("too many connections for one holder")?;
            epfd.add(stream.as_raw_fd(), slot)?;
            order.push((spread(index, shared.every), slot));
            held.push(Held {
                stream: Some(stream),
                reader: Reader::new(index, shared.receipts.clone()),
            });
        }
        order.sort_unstable();
        Ok(EpollSet { epfd, held, order })
    }

    /// Reads what arrives and sends keepalives at each connection's phase
    /// until `stop` is set; drops every socket on the way out.
    fn run(mut self, shared: &Shared, stop: &AtomicBool) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut buf = vec![0u8; RECV_BUF];
        let start = Instant::now();
        // When the keepalive at `phase` of interval `round` is due.
        let due_at = |round: u32, phase: Duration| start + shared.every * round + phase;
        let (mut round, mut next) = (0u32, 0usize);
        while !stop.load(Ordering::Relaxed) {
            let due = self.order.get(next).map(|&(phase, _)| due_at(round, phase));
            let wait = due.map_or(STOP_POLL, |d| {
                d.saturating_duration_since(Instant::now()).min(STOP_POLL)
            });
            let ready = self.epfd.wait(&mut events, wait);
            for e in &events[..ready] {
                self.take(e.u64 as usize, &mut buf, shared);
            }
            // Every keepalive now due, in phase order.
            let now = Instant::now();
            while let Some(&(phase, slot)) = self.order.get(next) {
                if due_at(round, phase) > now {
                    break;
                }
                self.ping(slot as usize, shared);
                next += 1;
                if next == self.order.len() {
                    (round, next) = (round + 1, 0);
                }
            }
        }
    }

    /// Drains connection `slot`'s socket (edge-triggered: until a read
    /// comes back short); closes it on EOF, an error, or bytes that are not
    /// frames.
    fn take(&mut self, slot: usize, buf: &mut [u8], shared: &Shared) {
        let Some(h) = self.held.get_mut(slot) else {
            return;
        };
        let Some(stream) = &h.stream else {
            return;
        };
        let fd = stream.as_raw_fd();
        let keep = loop {
            match recv(fd, buf) {
                Recv::Data(n) => {
                    if !h.reader.take(&buf[..n]) {
                        break false;
                    }
                    if n < buf.len() {
                        break true;
                    }
                }
                Recv::Empty => break true,
                Recv::Closed => break false,
            }
        };
        if !keep {
            // Closing the descriptor takes it out of the epoll set.
            h.stream = None;
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sends connection `slot` a KEEPALIVE. One that does not fit in the
    /// socket buffer at once is skipped: the next interval sends another,
    /// well inside the gateway's idle timeout.
    fn ping(&self, slot: usize, shared: &Shared) {
        if let Some(stream) = self.held.get(slot).and_then(|h| h.stream.as_ref()) {
            // SAFETY: send reads at most ping.len() bytes from the frame.
            let _ = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    shared.ping.as_ptr().cast(),
                    shared.ping.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
        }
    }
}

/// What one receive got.
enum Recv {
    /// Bytes, this many.
    Data(usize),
    /// Nothing (EAGAIN, or interrupted): wait for the next edge.
    Empty,
    /// The peer closed, or the socket failed.
    Closed,
}

fn recv(fd: RawFd, buf: &mut [u8]) -> Recv {
    // SAFETY: recv writes at most buf.len() bytes into the buffer we own.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    match n {
        0 => Recv::Closed,
        n if n > 0 => Recv::Data(n as usize),
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Recv::Empty,
            _ => Recv::Closed,
        },
    }
}

/// An owned epoll descriptor.
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new() -> anyhow::Result<Epoll> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: fd was just returned by epoll_create1 and is owned by no one else.
        Ok(Epoll(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Watches `fd` for input (edge-triggered), reporting `slot`.
    fn add(&self, fd: RawFd, slot: u32) -> anyhow::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: u64::from(slot),
        };
        // SAFETY: both descriptors are open; ev lives across the call.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_ctl(ADD)");
        }
        Ok(())
    }

    /// Waits up to `timeout` for readiness; the number of events filled in
    /// (0 on a timeout or an interrupted wait).
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        // Round up: a wait of 0 ms for a keepalive due in 0.4 ms would spin.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` events into the slice.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        usize::try_from(n).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    #[test]
    fn a_held_connection_stays_small() {
        assert!(std::mem::size_of::<Held>() <= 56);
        assert!(std::mem::size_of::<(std::time::Duration, u32)>() <= 24);
    }
}
