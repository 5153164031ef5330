//! A shard's side of the gate lease and of app-wide fan-out (issue 6):
//! heartbeats to every logic link (logic renews the gate's lease and
//! directory entry from them), LINK_BROADCAST (one frame to every session of
//! an app on this shard, encoded once by logic), and the LINK_DELIVER
//! confirmation that feeds reach statistics, and the process incarnation
//! that fences deliveries and kicks meant for an earlier process with the
//! same gate id. Kept apart from `shard.rs` so the session paths there stay
//! as they were.

use super::Shard;
use crate::link::Link;
use crate::session::Phase;
use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tidegate_proto::{pb, Cmd, Flags, Frame, Header};

/// Heartbeat interval until a logic instance says otherwise (LinkWelcome).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3);
/// Never heartbeat more often than this, whatever logic asks.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// When this shard last sent heartbeats, and how often it must.
pub(super) struct HeartbeatClock {
    every: Cell<Duration>,
    last: Cell<Option<Instant>>,
}

impl Default for HeartbeatClock {
    fn default() -> Self {
        HeartbeatClock {
            every: Cell::new(DEFAULT_HEARTBEAT),
            last: Cell::new(None),
        }
    }
}

/// This gate process's incarnation: random, nonzero, the same on every
/// shard (thread) of the process. A restart under the same `gate_id` gets a
/// new one, so logic reads the old process's sessions as offline at once and
/// a LINK_DELIVER or LINK_KICK meant for them is dropped here instead of
/// reaching a new connection that reuses the same (slot, generation) id.
pub fn incarnation() -> u64 {
    static INCARNATION: OnceLock<u64> = OnceLock::new();
    *INCARNATION.get_or_init(|| {
        // std's RandomState is seeded from the OS RNG: random enough to
        // tell processes apart, without a new dependency. Time and pid mixed
        // in for good measure.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish().max(1)
    })
}

impl Shard {
    /// Whether a LINK_DELIVER/LINK_KICK carrying `incarnation` is for another
    /// process with our gate id (0 = logic did not say; accepted). Counted.
    pub(super) fn for_other_incarnation(&self, theirs: u64) -> bool {
        let other = theirs != 0 && theirs != incarnation();
        if other {
            crate::metrics::link_event("other_incarnation");
        }
        other
    }

    /// This shard's heartbeat: liveness, load and client address.
    fn heartbeat_frame(&self) -> bytes::Bytes {
        let beat = pb::LinkHeartbeat {
            gate_id: self.gate_id.to_string(),
            shard: self.id,
            shards: u32::try_from(self.cfg.shards).unwrap_or(u32::MAX),
            connections: self.live.get() as u64,
            // A draining gate is never handed out by the directory.
            draining: self.draining.get(),
            client_addr: self.cfg.client_addr.to_string(),
            http_addr: String::new(),
            incarnation: incarnation(),
        };
        Frame::encode_msg_to_bytes(
            Header::new(Cmd::LinkHeartbeat, tidegate_proto::AppCode(0), 0),
            &beat,
        )
    }

    /// Sends a heartbeat now (e.g. the moment draining starts).
    pub fn heartbeat_now(&self) {
        self.heartbeat.last.set(None);
        self.heartbeat_if_due();
    }

    /// Sends a heartbeat on every up link when one is due; call from the
    /// shard's ticker (it runs every 500 ms, so intervals round up to it).
    pub fn heartbeat_if_due(&self) {
        let clock = &self.heartbeat;
        if clock
            .last
            .get()
            .is_some_and(|t| t.elapsed() < clock.every.get())
        {
            return;
        }
        clock.last.set(Some(Instant::now()));
        let frame = self.heartbeat_frame();
        for link in self.links.iter().filter(|l| l.is_up()) {
            link.send(frame.clone());
        }
    }

    /// A logic instance welcomed us: adopt its heartbeat interval (the
    /// shortest any instance asks for) and report load to it right away.
    pub(super) fn on_welcome(&self, link: &Link, w: &pb::LinkWelcome) {
        if w.heartbeat_ms > 0 {
            let every = Duration::from_millis(u64::from(w.heartbeat_ms)).max(MIN_HEARTBEAT);
            let clock = &self.heartbeat;
            clock.every.set(clock.every.get().min(every));
        }
        link.send(self.heartbeat_frame());
    }

    /// Answers an ack-requested LINK_DELIVER with its counts; cheap, one
    /// small frame per delivery batch, not per connection.
    pub(super) fn confirm_deliver(&self, link: &Link, h: &Header, outcome: pb::LinkDeliverReply) {
        if !h.flags.contains(Flags::ACK_REQUESTED) {
            return;
        }
        link.send(Frame::encode_msg_to_bytes(h.reply(), &outcome));
    }

    /// Queues `frame` to every logged-in session of the header's app on this
    /// shard and answers with the count. The bytes are shared, never copied.
    pub(super) fn on_broadcast(&self, link: &Link, h: &Header, b: pb::LinkBroadcast) {
        let targets: Vec<_> = self
            .table
            .borrow()
            .iter()
            .filter(|c| {
                matches!(c.session.borrow().phase(), Phase::Active(a) if a.appcode == h.appcode)
            })
            .cloned()
            .collect();
        // `enqueue` may close a slow consumer; no table borrow is held then.
        for conn in &targets {
            self.enqueue(conn, b.frame.clone());
        }
        let delivered = targets.len() as u64;
        self.metrics.delivered.increment(delivered);
        let reply = pb::LinkBroadcastReply { delivered };
        link.send(Frame::encode_msg_to_bytes(h.reply(), &reply));
    }
}

#[cfg(test)]
mod tests {
    use super::incarnation;

    #[test]
    fn incarnation_is_nonzero_and_stable_within_the_process() {
        let first = incarnation();
        assert_ne!(first, 0);
        let other_thread = std::thread::spawn(incarnation).join().expect("thread");
        assert_eq!(first, other_thread, "every shard of a process shares it");
    }
}
