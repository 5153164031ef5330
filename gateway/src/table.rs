//! The shard's session table: a slab indexed by `ConnId.slot`, with a
//! generation per slot so a stale delivery (addressed to a connection that
//! closed and whose slot was reused) is recognised and dropped.
//!
//! Hand-written rather than the `slab` crate because the generation check is
//! the point, and each slot costs 16 bytes: a generation and one `Rc`.

use crate::flow::Flow;
use crate::session::{CloseReason, Session};
use crate::signal::Signal;
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use tidegate_proto::ConnId;

/// A connection's state shared between its task and the shard.
///
/// Idle cost: the session, an empty queue (no allocation until something is
/// queued) and the signal. A parked connection (`shard/parking.rs`) is only
/// this and its slab slot.
pub struct Conn {
    /// Protocol state.
    pub session: RefCell<Session>,
    /// Frames waiting to be written to the socket.
    pub out: RefCell<VecDeque<Bytes>>,
    /// Wakes the connection task to write `out` or to close.
    pub wake: Signal,
    /// Set when the connection must close once `out` is flushed.
    pub closing: Cell<Option<CloseReason>>,
    /// Inbound rate limits.
    pub flow: Cell<Flow>,
    /// The client's address (kept here, not in the task, so a parked
    /// connection still knows whose per-IP count to release).
    pub peer: Option<PeerAddr>,
    /// The socket, while the connection is parked (no task serves it).
    pub parked: Cell<Option<OwnedFd>>,
    /// Whether the client sent anything lately, for the parking sweep.
    pub activity: Cell<Activity>,
}

/// A client's address and port in 20 bytes, where `SocketAddr` takes 32
/// (IPv6 flow info and scope id, which nothing here reads, are dropped).
/// A parked connection is little more than its [`Conn`] in an `Rc`, and
/// mimalloc rounds each allocation up to a size class: with `SocketAddr`,
/// `Conn` was 216 bytes, 232 with the `Rc` counts, so 256 were taken; now
/// it is 200, 216 with the counts, in the 224-byte class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    ip: IpAddr,
    port: u16,
}

impl PeerAddr {
    /// The client's IP (what per-IP limits count).
    pub fn ip(self) -> IpAddr {
        self.ip
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> PeerAddr {
        PeerAddr {
            ip: a.ip(),
            port: a.port(),
        }
    }
}

impl fmt::Display for PeerAddr {
    /// As `SocketAddr` prints it (`1.2.3.4:5`, `[::1]:5`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.ip, self.port).fmt(f)
    }
}

/// A connection's recent activity, as the parking sweep sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Activity {
    /// Read from since the last sweep.
    Busy,
    /// Nothing read for one sweep.
    Quiet,
    /// Nothing read for two sweeps: its task should park it.
    ParkRequested,
}

impl Conn {
    fn new(session: Session, flow: Flow, peer: Option<PeerAddr>) -> Conn {
        Conn {
            session: RefCell::new(session),
            out: RefCell::new(VecDeque::new()),
            wake: Signal::default(),
            closing: Cell::new(None),
            flow: Cell::new(flow),
            peer,
            parked: Cell::new(None),
            activity: Cell::new(Activity::Busy),
        }
    }

    /// Whether no task serves this connection now.
    pub fn is_parked(&self) -> bool {
        let fd = self.parked.take();
        let parked = fd.is_some();
        self.parked.set(fd);
        parked
    }

    /// Marks the connection to flush and close; `Shard::close` also wakes
    /// whoever serves it (its task, or the parking task).
    pub fn close(&self, reason: CloseReason) {
        if self.closing.get().is_none() {
            self.closing.set(Some(reason));
        }
    }
}

struct Slot {
    generation: u32,
    conn: Option<Rc<Conn>>,
}

/// All connections of one shard.
#[derive(Default)]
pub struct SessionTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl SessionTable {
    /// Adds a connection; `session` receives its new id.
    pub fn insert(
        &mut self,
        session: impl FnOnce(ConnId) -> Session,
        flow: Flow,
        peer: Option<PeerAddr>,
    ) -> (ConnId, Rc<Conn>) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        let id = ConnId {
            slot,
            generation: entry.generation,
        };
        let conn = Rc::new(Conn::new(session(id), flow, peer));
        entry.conn = Some(conn.clone());
        (id, conn)
    }

    /// The live connection `id`, if it has not closed.
    pub fn get(&self, id: ConnId) -> Option<&Rc<Conn>> {
        let entry = self.slots.get(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.conn.as_ref()
    }

    /// Removes `id`; its slot's generation moves on so old ids go stale.
    pub fn remove(&mut self, id: ConnId) -> Option<Rc<Conn>> {
        let entry = self.slots.get_mut(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        let conn = entry.conn.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(id.slot);
        Some(conn)
    }

    /// Every live connection.
    pub fn iter(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.slots.iter().filter_map(|s| s.conn.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow::new(&crate::config::FlowConfig::default(), 0)
    }

    /// A parked connection is this struct (plus its slab slot and wheel
    /// entry): keep it small.
    #[test]
    fn conn_fits_its_budget() {
        // 208 bytes plus `Rc`'s 16 is mimalloc's 224-byte size class; one
        // byte more and every connection takes 256 (`PeerAddr`).
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 208, "Conn is {size} bytes");
        assert_eq!(std::mem::size_of::<Option<PeerAddr>>(), 20);
    }

    #[test]
    fn peer_addresses_print_as_socket_addresses() {
        for a in ["127.0.0.1:5555", "[::1]:7000", "[2001:db8::1]:1"] {
            let sa: SocketAddr = a.parse().unwrap();
            let p = PeerAddr::from(sa);
            assert_eq!(p.to_string(), a);
            assert_eq!(p.ip(), sa.ip());
        }
    }

    #[test]
    fn stale_ids_never_reach_a_reused_slot() {
        let mut t = SessionTable::default();
        let (a, _) = t.insert(|id| Session::new(id, 0), flow(), None);
        assert!(t.remove(a).is_some());
        let (b, _) = t.insert(|id| Session::new(id, 0), flow(), None);
        assert_eq!(a.slot, b.slot, "slot reused");
        assert!(t.get(a).is_none(), "old generation is stale");
        assert!(t.get(b).is_some());
        assert!(t.remove(a).is_none());
        assert_eq!(t.iter().count(), 1);
    }
}
