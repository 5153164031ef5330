//! The gate shards currently linked to this logic instance, so a delivery
//! for a session in presence can be sent down its shard's link, plus the
//! replies awaited from them (broadcast counts), matched by link `seq`.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
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
    /// held only to insert or take one entry, never across an await.
    pending: Mutex<HashMap<u32, oneshot::Sender<Frame>>>,
    next_seq: AtomicU32,
}

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
        // Seq 0 is what unsolicited frames carry; skip it when wrapping.
        let mut seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if seq == 0 {
            seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, tx);
        if self.send_to(&addr.gate_id, addr.shard, incarnation, make(seq)) {
            Some((seq, rx))
        } else {
            self.forget(seq);
            None
        }
    }

    /// Hands a gate's reply to whoever awaits its seq; false if nobody does
    /// (it came too late).
    pub fn resolve(&self, seq: u32, frame: Frame) -> bool {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        waiter.is_some_and(|tx| tx.send(frame).is_ok())
    }

    /// Drops a request whose reply is no longer awaited.
    pub fn forget(&self, seq: u32) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
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
}
