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
    pub fn register(&self, addr: ShardAddr, tx: mpsc::Sender<Bytes>) -> u64 {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let mut map = self.shards.write().unwrap_or_else(|p| p.into_inner());
        map.insert(addr, Entry { tx, link });
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

    /// Queues a frame to a gate shard; false if it is not linked or its
    /// queue is full (the caller reports the target as not delivered).
    pub fn send(&self, gate_id: &str, shard: u32, frame: Bytes) -> bool {
        let map = self.shards.read().unwrap_or_else(|p| p.into_inner());
        let key = ShardAddr {
            gate_id: gate_id.to_string(),
            shard,
        };
        match map.get(&key) {
            Some(e) => e.tx.try_send(frame).is_ok(),
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
    pub fn request(
        &self,
        addr: &ShardAddr,
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
        if self.send(&addr.gate_id, addr.shard, make(seq)) {
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
