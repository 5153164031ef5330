//! Parking idle connections: the shard's policy (the epoll mechanics are in
//! `park.rs`).
//!
//! A logged-in connection that sent nothing between two sweeps
//! (`gateway.park_idle_s` apart) gives up its task; its socket waits in the
//! shard's park set. While parked:
//! - its input (keepalives, mostly) is read and handled here, and the
//!   answers are written here, without a task;
//! - frames queued for it (deliveries) are written here too, once per turn
//!   of this shard's parking task, so frames queued together leave in one
//!   send;
//! - anything that needs waiting (a full socket buffer, a rate-limit delay,
//!   an incomplete frame, a close, an error) gives it a task again.

use super::Shard;
use crate::conn;
use crate::park::{self, ParkSet};
use crate::signal::Signal;
use crate::table::{Activity, Conn};
use crate::wheel::Tick;
use bytes::{Bytes, BytesMut};
use futures_lite::AsyncRead;
use glommio::net::{TcpStream, UnixStream};
use metrics::{counter, gauge, Counter, Gauge};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use tidegate_proto::ConnId;

/// Parked connections written or closed per turn of the parking task.
const DUE_PER_TURN: usize = 1024;
/// Connections a sweep asks to park per turn of the parking task. Each
/// request wakes the connection's task, which parks (a few syscalls and a
/// task torn down): a sweep that woke a thousand at once held the shard for
/// ~20 ms, which every delivery queued behind them waited out (measured:
/// the p99 of pushes at 10,000/s went from 2.0 to 3.0 ms with parking on).
/// In small batches with a pause between, the shard's other tasks run in
/// between; a sweep still asks ~30,000 per second.
const PARK_REQUESTS_PER_TURN: usize = 32;
/// The pause between two batches of park requests.
const PARK_BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// A shard's parked connections.
pub struct Parking {
    set: ParkSet,
    /// The helper thread's reports, until the parking task takes them.
    ready: RefCell<Option<UnixStream>>,
    /// Parked connections with frames to write or a close to carry out.
    due: RefCell<Vec<ConnId>>,
    /// Quiet connections the last sweep found, to be asked to park a few at
    /// a time ([`PARK_REQUESTS_PER_TURN`]).
    to_park: RefCell<Vec<ConnId>>,
    /// Wakes the parking task for `due`.
    work: Signal,
    next_sweep: Cell<Tick>,
    /// Parks since the heap was last collected.
    parks_since_collect: Cell<u32>,
    /// Set if the helper thread is gone: nothing parks any more.
    broken: Cell<bool>,
    metrics: ParkMetrics,
}

struct ParkMetrics {
    parked: Gauge,
    parks: Counter,
    reads: Counter,
    writes: Counter,
}

/// Why a parked connection got a task again (a metric label).
#[derive(Clone, Copy)]
enum Unpark {
    /// Input it cannot handle without a task (incomplete frame, delay, EOF).
    Input,
    /// Output the socket would not take at once.
    Output,
    /// A close (kick, timeout, drain, slow consumer).
    Close,
}

impl Unpark {
    fn label(self) -> &'static str {
        match self {
            Unpark::Input => "input",
            Unpark::Output => "output",
            Unpark::Close => "close",
        }
    }
}

/// What a parked connection's task starts with.
pub struct Resume {
    /// Input read while parked, not yet handled.
    pub pending: BytesMut,
    /// The rest of a frame batch the socket took only part of.
    pub unsent: Bytes,
}

impl Parking {
    /// A park set for shard `id` (starts its helper thread).
    pub fn new(id: u32) -> io::Result<Parking> {
        let (set, ready) = ParkSet::new(id)?;
        let s = id.to_string();
        Ok(Parking {
            set,
            ready: RefCell::new(Some(ready)),
            due: RefCell::new(Vec::new()),
            to_park: RefCell::new(Vec::new()),
            work: Signal::default(),
            next_sweep: Cell::new(0),
            parks_since_collect: Cell::new(0),
            broken: Cell::new(false),
            metrics: ParkMetrics {
                parked: gauge!("tidegate_gateway_parked_connections", "shard" => s.clone()),
                parks: counter!("tidegate_gateway_parks_total", "shard" => s.clone()),
                reads: counter!("tidegate_gateway_parked_io_total", "shard" => s.clone(), "dir" => "read"),
                writes: counter!("tidegate_gateway_parked_io_total", "shard" => s, "dir" => "write"),
            },
        })
    }
}

impl Shard {
    /// Wakes a connection's task to write or close; a parked connection is
    /// served by the parking task instead.
    pub fn wake(&self, conn: &Conn) {
        conn.wake.notify();
        if let Some(p) = &self.parking {
            // A parked connection's queue is empty between turns of the
            // parking task, so only its first frame lists it (a burst of
            // broadcasts lists each connection once), and a close.
            let first = conn.out.borrow().len() <= 1 || conn.closing.get().is_some();
            if first && conn.is_parked() {
                p.due.borrow_mut().push(conn.session.borrow().conn_id());
                p.work.notify();
            }
        }
    }

    /// Every `park_idle_s`: quiet connections since the last sweep are asked
    /// to park, the others are marked quiet.
    pub fn sweep_idle(&self) {
        let Some(p) = &self.parking else {
            return;
        };
        if p.parks_since_collect.replace(0) > 0 {
            // The tasks that ended freed whole pages of their size classes;
            // mimalloc gives them back to the system only when its heap is
            // collected, and an idle shard allocates too little to trigger
            // that itself. Called on the shard's thread: it collects this
            // thread's heap.
            // SAFETY: no preconditions.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
        let now = self.now();
        if now < p.next_sweep.get() {
            return;
        }
        p.next_sweep.set(now + self.cfg.park_idle_s);
        let mut to_park = p.to_park.borrow_mut();
        // Whatever the last sweep listed and was not asked yet is listed again.
        to_park.clear();
        for conn in self.table.borrow().iter() {
            match conn.activity.get() {
                Activity::Busy => conn.activity.set(Activity::Quiet),
                Activity::Quiet if conn.session.borrow().is_active() && !conn.is_parked() => {
                    to_park.push(conn.session.borrow().conn_id());
                }
                _ => {}
            }
        }
        if !to_park.is_empty() {
            p.work.notify();
        }
    }

    /// Asks up to [`PARK_REQUESTS_PER_TURN`] of the connections the sweep
    /// listed to park, those still quiet; true if more are listed.
    fn request_parks(&self) -> bool {
        let Some(p) = &self.parking else {
            return false;
        };
        let mut to_park = p.to_park.borrow_mut();
        let from = to_park.len().saturating_sub(PARK_REQUESTS_PER_TURN);
        for id in to_park.drain(from..) {
            let Some(conn) = self.table.borrow().get(id).cloned() else {
                continue;
            };
            // Read from since the sweep (Busy), parked or closed meanwhile:
            // not asked.
            let quiet = conn.activity.get() == Activity::Quiet;
            if quiet && conn.session.borrow().is_active() && !conn.is_parked() {
                conn.activity.set(Activity::ParkRequested);
                conn.wake.notify();
            }
        }
        !to_park.is_empty()
    }

    /// Called by a connection's task asked to park: hands its socket to the
    /// park set unless something is in flight. True if the task may end.
    pub fn park(&self, conn: &Conn, stream: &TcpStream, pending: &BytesMut) -> bool {
        let Some(p) = &self.parking else {
            return false;
        };
        let idle = !p.broken.get()
            && pending.is_empty()
            && conn.out.borrow().is_empty()
            && conn.closing.get().is_none()
            && conn.session.borrow().is_active();
        if !idle {
            return false;
        }
        let id = conn.session.borrow().conn_id();
        match p.set.park(id, stream.as_raw_fd()) {
            Ok(fd) => {
                conn.parked.set(Some(fd));
                conn.activity.set(Activity::Quiet);
                // The task ends; its waker would keep its memory alive.
                conn.wake.forget_waker();
                p.metrics.parks.increment(1);
                p.parks_since_collect.set(p.parks_since_collect.get() + 1);
                p.metrics.parked.increment(1.0);
                true
            }
            Err(e) => {
                tracing::warn!(shard = self.id, "parking a connection: {e}");
                crate::metrics::link_event("park_failed");
                false
            }
        }
    }

    /// A parked socket is ready: read and handle its input here if that
    /// needs no waiting, else give it a task.
    fn on_ready(self: &Rc<Self>, id: ConnId) {
        let Some(p) = &self.parking else {
            return;
        };
        let Some(conn) = self.table.borrow().get(id).cloned() else {
            return;
        };
        // Not parked: unparked since the helper reported it.
        let Some(fd) = conn.parked.take() else {
            return;
        };
        let mut pending = BytesMut::new();
        let read = {
            let mut buf = self.read_buf.borrow_mut();
            let read = park::recv_now(&fd, &mut buf[..]);
            if let Ok(n) = read {
                pending.extend_from_slice(&buf[..n]);
            }
            read
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return self.repark(&conn, fd);
            }
            // The task meets the end or the error and closes as usual.
            Ok(0) | Err(_) => return self.unpark(conn, fd, pending, Bytes::new(), Unpark::Input),
            Ok(n) => {
                self.metrics.bytes_in.increment(n as u64);
                p.metrics.reads.increment(1);
            }
        }
        if let Some((frame, _)) = conn::decode_all(self, &conn, &mut pending) {
            // A rate-limit delay needs a task to wait in; the frame goes
            // back in front of the rest, to be admitted again there.
            let mut again = BytesMut::from(&frame.to_bytes()[..]);
            again.extend_from_slice(&pending);
            return self.unpark(conn, fd, again, Bytes::new(), Unpark::Input);
        }
        if !pending.is_empty() {
            return self.unpark(conn, fd, pending, Bytes::new(), Unpark::Input);
        }
        if conn.closing.get().is_some() {
            return self.unpark(conn, fd, pending, Bytes::new(), Unpark::Close);
        }
        match self.write_parked(&conn, &fd) {
            Ok(()) => self.repark(&conn, fd),
            Err(unsent) => self.unpark(conn, fd, pending, unsent, Unpark::Output),
        }
    }

    /// Writes or closes up to [`DUE_PER_TURN`] of the parked connections
    /// that `wake` listed; true if more are listed.
    fn run_due(self: &Rc<Self>, scratch: &mut Vec<ConnId>) -> bool {
        let Some(p) = &self.parking else {
            return false;
        };
        {
            let mut due = p.due.borrow_mut();
            let take = due.len().min(DUE_PER_TURN);
            scratch.extend(due.drain(..take));
        }
        for id in scratch.drain(..) {
            let Some(conn) = self.table.borrow().get(id).cloned() else {
                continue;
            };
            // Listed twice, or unparked meanwhile.
            let Some(fd) = conn.parked.take() else {
                continue;
            };
            if conn.closing.get().is_some() {
                self.unpark(conn, fd, BytesMut::new(), Bytes::new(), Unpark::Close);
                continue;
            }
            match self.write_parked(&conn, &fd) {
                // Still armed in the park set: nothing to re-arm.
                Ok(()) => conn.parked.set(Some(fd)),
                Err(unsent) => self.unpark(conn, fd, BytesMut::new(), unsent, Unpark::Output),
            }
        }
        !p.due.borrow().is_empty()
    }

    /// Writes a parked connection's queue in one send. `Err` holds what the
    /// socket did not take (possibly empty, after an error the task will
    /// meet): it goes to the task, never back into the queue, where a
    /// partial frame could be mistaken for a whole one.
    fn write_parked(&self, conn: &Conn, fd: &OwnedFd) -> Result<(), Bytes> {
        let batch = {
            let mut out = conn.out.borrow_mut();
            let batch = match out.len() {
                0 => return Ok(()),
                1 => out.pop_front().expect("len is 1"),
                _ => {
                    let mut b = BytesMut::new();
                    for f in out.drain(..) {
                        b.extend_from_slice(&f);
                    }
                    b.freeze()
                }
            };
            // A parked connection keeps no queue buffer (measured: kept, the
            // idle figure crept up 12 B/conn over 24 s of keepalives).
            *out = VecDeque::new();
            batch
        };
        let written = match park::send_now(fd, &batch) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return Err(batch),
        };
        self.metrics.bytes_out.increment(written as u64);
        if let Some(p) = &self.parking {
            p.metrics.writes.increment(1);
        }
        if written == batch.len() {
            Ok(())
        } else {
            Err(batch.slice(written..))
        }
    }

    fn repark(self: &Rc<Self>, conn: &Rc<Conn>, fd: OwnedFd) {
        let Some(p) = &self.parking else {
            return;
        };
        let id = conn.session.borrow().conn_id();
        match p.set.rearm(id, &fd) {
            Ok(()) => conn.parked.set(Some(fd)),
            Err(e) => {
                tracing::warn!(shard = self.id, "re-arming a parked connection: {e}");
                self.unpark(
                    conn.clone(),
                    fd,
                    BytesMut::new(),
                    Bytes::new(),
                    Unpark::Input,
                );
            }
        }
    }

    fn unpark_all(self: &Rc<Self>) {
        let conns: Vec<Rc<Conn>> = self.table.borrow().iter().cloned().collect();
        for conn in conns {
            if let Some(fd) = conn.parked.take() {
                self.unpark(conn, fd, BytesMut::new(), Bytes::new(), Unpark::Input);
            }
        }
    }

    /// Gives a parked connection a task again.
    fn unpark(
        self: &Rc<Self>,
        conn: Rc<Conn>,
        fd: OwnedFd,
        pending: BytesMut,
        unsent: Bytes,
        why: Unpark,
    ) {
        let Some(p) = &self.parking else {
            return;
        };
        p.metrics.parked.decrement(1.0);
        counter!("tidegate_gateway_unparks_total", "reason" => why.label()).increment(1);
        let id = conn.session.borrow().conn_id();
        conn.activity.set(Activity::Busy);
        // SAFETY: the park set gives up the descriptor; the stream owns it.
        let stream = unsafe { TcpStream::from_raw_fd(p.set.unpark(fd)) };
        let resume = (!pending.is_empty() || !unsent.is_empty())
            .then(|| Box::new(Resume { pending, unsent }));
        glommio::spawn_local(conn::resume(self.clone(), id, conn, stream, resume)).detach();
    }
}

/// The shard's parking task: handles the helper thread's ready reports and
/// the connections `wake` queued.
pub async fn run(shard: Rc<Shard>) {
    let Some(p) = &shard.parking else {
        return;
    };
    let Some(mut ready) = p.ready.borrow_mut().take() else {
        return;
    };
    let mut buf = vec![0u8; 8 * 1024];
    // Bytes of a report split across reads.
    let mut carry = 0;
    let mut scratch = Vec::new();
    loop {
        let event = std::future::poll_fn(|cx| {
            if p.work.poll_wait(cx).is_ready() {
                return Poll::Ready(Ok(0));
            }
            match Pin::new(&mut ready).poll_read(cx, &mut buf[carry..]) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                other => other,
            }
        })
        .await;
        match event {
            Ok(n) => {
                let end = carry + n;
                let whole = end - end % 8;
                for report in buf[..whole].chunks_exact(8) {
                    let raw = u64::from_ne_bytes(report.try_into().expect("8 bytes"));
                    shard.on_ready(ConnId::from_u64(raw));
                }
                buf.copy_within(whole..end, 0);
                carry = end - whole;
                while shard.run_due(&mut scratch) {
                    // A broadcast lists every parked connection: let the
                    // shard's other tasks (links, accepts) run in between.
                    futures_lite::future::yield_now().await;
                }
                while shard.request_parks() {
                    // The asked connections' tasks park when they run. A
                    // timer, not a yield, between batches: a yield only
                    // lets tasks that are ready run, while the links'
                    // receives complete only once the shard polls its ring,
                    // which it does when it has nothing ready.
                    glommio::timer::sleep(PARK_BATCH_PAUSE).await;
                    if !p.due.borrow().is_empty() {
                        // Deliveries to parked connections first.
                        while shard.run_due(&mut scratch) {
                            futures_lite::future::yield_now().await;
                        }
                    }
                }
            }
            Err(e) => {
                // Nothing would wake a parked connection any more: give
                // each a task again and park no more.
                tracing::error!(shard = shard.id, "park set helper gone: {e}; parking stops");
                crate::metrics::link_event("park_helper_gone");
                p.broken.set(true);
                shard.unpark_all();
                return;
            }
        }
    }
}
