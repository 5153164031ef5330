//! Per-shard timing wheel for auth and idle deadlines: one entry per
//! connection, no timer per connection (ARCHITECTURE §4 keepalive).
//!
//! Entries are lazy, as in pingora-timeout: activity only moves a session's
//! deadline (a field in the session); when its slot comes round, the shard
//! checks the real deadline and re-inserts the connection if it moved. So a
//! busy connection costs no wheel operations at all.

use tidegate_proto::ConnId;

/// Seconds since the shard started; `u32` keeps sessions small (136 years).
pub type Tick = u32;

/// A ring of one-second slots.
pub struct Wheel {
    slots: Vec<Vec<ConnId>>,
    /// The next tick to expire.
    cursor: Tick,
}

impl Wheel {
    /// A wheel covering `horizon` seconds; later deadlines wait in the last
    /// slot and are re-inserted when it comes round.
    pub fn new(horizon: u32) -> Wheel {
        Wheel {
            slots: (0..horizon.max(2)).map(|_| Vec::new()).collect(),
            cursor: 0,
        }
    }

    /// Schedules a check of `conn` at `deadline` (clamped to the horizon).
    pub fn insert(&mut self, conn: ConnId, deadline: Tick) {
        let len = self.slots.len() as Tick;
        let at = deadline.clamp(self.cursor, self.cursor + len - 1);
        self.slots[(at % len) as usize].push(conn);
    }

    /// Takes every entry due at or before `now`, in tick order, into `due`.
    pub fn advance(&mut self, now: Tick, due: &mut Vec<ConnId>) {
        let len = self.slots.len() as Tick;
        while self.cursor <= now {
            let slot = &mut self.slots[(self.cursor % len) as usize];
            due.append(slot);
            // Give memory back after a burst (e.g. a connect storm that all
            // logged in), rather than keeping the high-water mark forever.
            if slot.capacity() > 1024 {
                slot.shrink_to(64);
            }
            self.cursor += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32) -> ConnId {
        ConnId {
            slot,
            generation: 0,
        }
    }

    #[test]
    fn entries_fire_at_their_tick() {
        let mut w = Wheel::new(8);
        w.insert(id(1), 3);
        w.insert(id(2), 5);
        let mut due = vec![];
        w.advance(2, &mut due);
        assert!(due.is_empty());
        w.advance(3, &mut due);
        assert_eq!(due, vec![id(1)]);
        due.clear();
        w.advance(10, &mut due);
        assert_eq!(due, vec![id(2)]);
    }

    #[test]
    fn far_deadlines_wait_in_the_last_slot() {
        let mut w = Wheel::new(4);
        w.insert(id(1), 100);
        let mut due = vec![];
        w.advance(2, &mut due);
        assert!(due.is_empty());
        w.advance(3, &mut due);
        assert_eq!(due, vec![id(1)], "re-checked at the horizon");
    }

    #[test]
    fn past_deadlines_fire_on_next_advance() {
        let mut w = Wheel::new(4);
        let mut due = vec![];
        w.advance(5, &mut due);
        w.insert(id(7), 1);
        w.advance(6, &mut due);
        assert_eq!(due, vec![id(7)]);
    }
}
