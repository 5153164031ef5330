//! The gate shards currently linked to this logic instance, so a delivery
//! for a session in presence can be sent down its shard's link, plus the
//! replies awaited from them (broadcast counts), matched by link `seq`.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tidegate_proto::Frame;
use tokio::sync::{mpsc, oneshot};

/// Frames queued to one gate shard before deliveries to it are refused.
pub const LINK_QUEUE: usize = 65_536;

/// A gate shard: `(gate_id, shard)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardAddr {
    /// Gate process id.
    pub gate_id: String,
    /// Shard index.
    pub shard: u32,
}

struct Entry {
    tx: mpsc::Sender<Bytes>,
    /// The linked gate process's incarnation (`LinkHello.incarnation`).
    incarnation: u64,
    /// Which link registered it, so a closing old link never unregisters a newer one.
    link: u64,
}

/// Linked gate shards.
///
/// A std `RwLock`: lookups are read-mostly (one per delivery), writes happen
/// only when a link comes or goes, and no guard is held across an await.
#[derive(Default)]
pub struct Gates {
    shards: RwLock<HashMap<ShardAddr, Entry>>,
    next_link: AtomicU64,
    /// Requests awaiting a gate's reply, by the seq we sent. A std `Mutex`:
    /// held only to insert or take one entry (or sweep), never across an
    /// await.
    pending: Mutex<Pending>,
    next_seq: AtomicU32,
}

/// Replies awaited from gates.
#[derive(Default)]
struct Pending {
    by_seq: HashMap<u32, Waiter>,
    /// When watches whose reply never came are next dropped.
    next_sweep: Option<Instant>,
}

/// Who gets a gate's reply.
enum Waiter {
    /// A task awaiting it.
    Task(oneshot::Sender<Frame>),
    /// A callback the link runs on the reply; dropped unrun if none has
    /// come by `expires`. No task waits, no timer runs: the cheap way to
    /// act on the rare reply that says something went wrong.
    Watch {
        on_reply: Box<dyn FnOnce(Frame) + Send>,
        expires: Instant,
    },
}

/// How often expired watches are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Gates {
    /// Registers a link for `addr`, replacing an older one; returns its id.
    pub fn register(&self, addr: ShardAddr, incarnation: u64, tx: mpsc::Sender<Bytes>) -> u64 {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let mut map = self.shards.write().unwrap_or_else(|p| p.into_inner());
        map.insert(
            addr,
            Entry {
                tx,
                incarnation,
                link,
            },
        );
        metrics::gauge!("tidegate_logic_gate_links").set(map.len() as f64);
        link
    }

    /// Unregisters `addr` if `link` is still the registered one.
    pub fn unregister(&self, addr: &ShardAddr, link: u64) {
        let mut map = self.shards.write().unwrap_or_else(|p| p.into_inner());
        if map.get(addr).is_some_and(|e| e.link == link) {
            map.remove(addr);
        }
        metrics::gauge!("tidegate_logic_gate_links").set(map.len() as f64);
    }

    /// Queues a frame naming connections of one gate process to its shard;
    /// false if the shard is not linked, its queue is full (the caller
    /// reports the target as not delivered), or the linked process is
    /// another incarnation (the gate restarted; those connection ids may
    /// name other users now).
    pub fn send_to_incarnation(
        &self,
        gate_id: &str,
        shard: u32,
        incarnation: u64,
        frame: Bytes,
    ) -> bool {
        self.send_to(gate_id, shard, Some(incarnation), frame)
    }

    /// Queues a frame to a gate shard, checking the incarnation if given.
    fn send_to(&self, gate_id: &str, shard: u32, incarnation: Option<u64>, frame: Bytes) -> bool {
        let map = self.shards.read().unwrap_or_else(|p| p.into_inner());
        let key = ShardAddr {
            gate_id: gate_id.to_string(),
            shard,
        };
        match map.get(&key) {
            Some(e) if incarnation.is_none_or(|i| i == e.incarnation) => {
                e.tx.try_send(frame).is_ok()
            }
            Some(_) => {
                metrics::counter!("tidegate_logic_other_incarnation_total").increment(1);
                false
            }
            None => false,
        }
    }

    /// Every linked gate shard.
    pub fn linked(&self) -> Vec<ShardAddr> {
        let map = self.shards.read().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Sends the frame `make(seq)` builds to a gate shard and returns where
    /// its reply (same seq, response flag) will arrive; `None` if the shard
    /// is not linked or its queue is full. A reply that never comes leaves
    /// an entry the caller removes with [`Gates::forget`].
    ///
    /// With `incarnation`, only that process of the gate gets the frame (as
    /// [`Gates::send_to_incarnation`]).
    pub fn request(
        &self,
        addr: &ShardAddr,
        incarnation: Option<u64>,
        make: impl FnOnce(u32) -> Bytes,
    ) -> Option<(u32, oneshot::Receiver<Frame>)> {
        let (tx, rx) = oneshot::channel();
        let seq = self.send_awaited(addr, incarnation, Waiter::Task(tx), make)?;
        Some((seq, rx))
    }

    /// [`Gates::request`] whose reply is handed to `on_reply`, run on the
    /// link's task, if it comes within `within`; false if the frame could
    /// not be queued.
    pub fn request_watched(
        &self,
        addr: &ShardAddr,
        incarnation: Option<u64>,
        within: Duration,
        on_reply: impl FnOnce(Frame) + Send + 'static,
        make: impl FnOnce(u32) -> Bytes,
    ) -> bool {
        let watch = Waiter::Watch {
            on_reply: Box::new(on_reply),
            expires: Instant::now() + within,
        };
        self.send_awaited(addr, incarnation, watch, make).is_some()
    }

    fn send_awaited(
        &self,
        addr: &ShardAddr,
        incarnation: Option<u64>,
        waiter: Waiter,
        make: impl FnOnce(u32) -> Bytes,
    ) -> Option<u32> {
        // Seq 0 is what unsolicited frames carry; skip it when wrapping.
        let mut seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if seq == 0 {
            seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        }
        self.pending().insert(seq, waiter);
        if self.send_to(&addr.gate_id, addr.shard, incarnation, make(seq)) {
            Some(seq)
        } else {
            self.forget(seq);
            None
        }
    }

    /// Hands a gate's reply to whoever awaits its seq; false if nobody does
    /// (it came too late, or was never asked for).
    pub fn resolve(&self, seq: u32, frame: Frame) -> bool {
        let waiter = self.pending().by_seq.remove(&seq);
        match waiter {
            Some(Waiter::Task(tx)) => tx.send(frame).is_ok(),
            Some(Waiter::Watch { on_reply, .. }) => {
                on_reply(frame);
                true
            }
            None => false,
        }
    }

    /// Drops a request whose reply is no longer awaited.
    pub fn forget(&self, seq: u32) {
        self.pending().by_seq.remove(&seq);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pending {
    /// Adds a waiter, first dropping expired watches (at most once per
    /// [`SWEEP_EVERY`], so the map stays bounded by what one sweep
    /// interval plus the longest watch can hold).
    fn insert(&mut self, seq: u32, waiter: Waiter) {
        let now = Instant::now();
        if self.next_sweep.is_none_or(|t| t <= now) {
            let before = self.by_seq.len();
            self.by_seq
                .retain(|_, w| !matches!(w, Waiter::Watch { expires, .. } if *expires <= now));
            let expired = before - self.by_seq.len();
            metrics::counter!("tidegate_logic_gate_replies_missed_total").increment(expired as u64);
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
        self.by_seq.insert(seq, waiter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_for_another_incarnation_are_refused() {
        let gates = Gates::default();
        let (tx, mut rx) = mpsc::channel(4);
        let addr = ShardAddr {
            gate_id: "g".into(),
            shard: 0,
        };
        gates.register(addr, 7, tx);
        assert!(!gates.send_to_incarnation("g", 0, 6, Bytes::from_static(b"old")));
        assert!(gates.send_to_incarnation("g", 0, 7, Bytes::from_static(b"new")));
        assert!(gates.send_to("g", 0, None, Bytes::from_static(b"any")));
        assert!(!gates.send_to("g", 1, None, Bytes::from_static(b"unlinked")));
        assert_eq!(rx.try_recv().ok(), Some(Bytes::from_static(b"new")));
        assert_eq!(rx.try_recv().ok(), Some(Bytes::from_static(b"any")));
    }

    #[test]
    fn a_watch_runs_on_its_reply_and_expired_watches_are_swept() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        use tidegate_proto::{AppCode, Cmd, Header};
        let gates = Gates::default();
        let (tx, _rx) = mpsc::channel(8);
        let addr = ShardAddr {
            gate_id: "g".into(),
            shard: 0,
        };
        gates.register(addr.clone(), 7, tx);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let mut seq = 0;
        let on_reply = move |_| flag.store(true, Ordering::SeqCst);
        let make = |s| {
            seq = s;
            Bytes::from_static(b"f")
        };
        assert!(gates.request_watched(&addr, Some(7), Duration::from_secs(9), on_reply, make));
        let reply = Frame::empty(Header::new(Cmd::LinkDeliver, AppCode(1), seq).reply());
        assert!(gates.resolve(seq, reply.clone()));
        assert!(ran.load(Ordering::SeqCst));
        assert!(!gates.resolve(seq, reply), "a reply is handed over once");

        assert!(!gates.request_watched(&addr, Some(6), Duration::ZERO, |_| {}, |_| Bytes::new()));
        assert!(gates.request_watched(&addr, None, Duration::ZERO, |_| {}, |_| Bytes::new()));
        gates.pending().next_sweep = None;
        assert!(gates.request_watched(
            &addr,
            None,
            Duration::from_secs(9),
            |_| {},
            |_| Bytes::new()
        ));
        assert_eq!(gates.pending().by_seq.len(), 1, "the expired watch is gone");
    }
}
