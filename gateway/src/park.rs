//! The park set: where an idle connection's socket waits once it has given up
//! its task (the shard's policy is in `shard/parking.rs`).
//!
//! Why: a connection waiting in its own task costs the task's future,
//! glommio's task header and an armed poll source with its stream, about
//! 1 KiB of the 1.4 KiB an idle connection cost. Parked, it costs its `Conn`,
//! a slab slot and an entry in this epoll set (kernel memory).
//!
//! Why a thread: glommio has no public way to await the readiness of a
//! descriptor its streams do not own (its reactor's poll is crate-private),
//! and an epoll descriptor is not a socket its streams can read. So one
//! helper thread per shard sleeps in `epoll_wait` and passes the ready
//! connections' ids to the shard over a socket pair the shard reads with
//! glommio. The thread does no other work; it exits when the shard closes
//! its end of the pair.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use tidegate_proto::ConnId;

/// epoll data of the helper's own end of the pair: its hang-up means the
/// shard is gone.
const SHUTDOWN: u64 = u64::MAX;
/// Ready events the helper forwards per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 512;

/// One shard's epoll set of parked sockets.
pub struct ParkSet {
    epoll: OwnedFd,
}

impl ParkSet {
    /// Creates the set and starts its helper thread; returns the shard's
    /// end of the pair, on which the thread reports ready connections' ids
    /// as native-endian u64s. Must run inside the shard's executor (that end
    /// is a glommio stream).
    pub fn new(shard: u32) -> io::Result<(ParkSet, glommio::net::UnixStream)> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let (shard_end, helper_end) = UnixStream::pair()?;
        control(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            helper_end.as_raw_fd(),
            libc::EPOLLRDHUP as u32,
            SHUTDOWN,
        )?;
        let helper_epoll = epoll.try_clone()?;
        std::thread::Builder::new()
            .name(format!("gate-park-{shard}"))
            .stack_size(64 * 1024)
            .spawn(move || forward_ready(helper_epoll, helper_end))?;
        shard_end.set_nonblocking(true)?;
        // SAFETY: the descriptor is ours; the std stream gives it up.
        let ready = unsafe { glommio::net::UnixStream::from_raw_fd(shard_end.into_raw_fd()) };
        Ok((ParkSet { epoll }, ready))
    }

    /// Parks the socket `fd` of connection `id`: returns a duplicate the set
    /// watches (the caller's stream then closes the original).
    pub fn park(&self, id: ConnId, fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: fcntl on a descriptor the caller's open stream owns.
        let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: a fresh descriptor nobody else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        control(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            dup.as_raw_fd(),
            INTEREST,
            id.to_u64(),
        )?;
        Ok(dup)
    }

    /// Watches a parked socket again after its readiness was handled.
    pub fn rearm(&self, id: ConnId, fd: &OwnedFd) -> io::Result<()> {
        control(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_MOD,
            fd.as_raw_fd(),
            INTEREST,
            id.to_u64(),
        )
    }

    /// Takes a socket out of the set, for a stream to own again.
    pub fn unpark(&self, fd: OwnedFd) -> RawFd {
        // A failure leaves the entry until the socket closes; one-shot
        // means it reports at most once more, and that report is ignored
        // for a connection that is not parked.
        let _ = control(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            0,
            0,
        );
        fd.into_raw_fd()
    }
}

/// Input, the peer's close, errors; one report per arming.
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;

fn control(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` outlives the call; the kernel validates the descriptors.
    cvt(unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) }).map(drop)
}

/// The helper thread: waits for ready sockets and writes their connection
/// ids (native-endian u64s) to the shard, until the shard hangs up.
fn forward_ready(epoll: OwnedFd, mut to_shard: UnixStream) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut out = Vec::with_capacity(EVENTS_PER_WAIT * 8);
    loop {
        // SAFETY: `events` has room for EVENTS_PER_WAIT entries.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("parked connections' epoll_wait failed: {e}");
            return;
        }
        out.clear();
        for ev in &events[..n as usize] {
            let data = ev.u64;
            if data == SHUTDOWN {
                return;
            }
            out.extend_from_slice(&data.to_ne_bytes());
        }
        // Blocking write: a shard behind on reading slows this thread, and
        // the one-shot entries wait armed-off in the kernel meanwhile.
        if to_shard.write_all(&out).is_err() {
            return;
        }
    }
}

/// Reads what a socket holds without waiting.
pub fn recv_now(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    cvt_size(n)
}

/// Writes what the socket takes without waiting.
pub fn send_now(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    cvt_size(n)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
