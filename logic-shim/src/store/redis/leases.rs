//! The live gate leases as this logic instance last read them, so that a
//! presence read (every push) need not read `tg:gates` and its incarnations
//! again each time: two of a single-target push's three Redis commands, and
//! the replies logic parses for them.
//!
//! A view only ever answers "live" when that is certain, and "unsure"
//! otherwise, never "dead":
//! - leases only grow (`ZADD GT`; nothing shortens one), so a lease end read
//!   earlier is a lower bound of the current one: a session on a gate whose
//!   viewed lease has not ended, under the viewed incarnation, is on a live
//!   gate now;
//! - anything else (an unknown gate, an ended viewed lease that may have been
//!   renewed since, another incarnation) is unsure, and the caller reads the
//!   leases again and decides with what it reads. Lazy cleanup of dead
//!   sessions only ever follows such a fresh read.
//!
//! The one way a view can be wrong is a gate restarted under the same id:
//! its old incarnation's sessions stay "live" here until the view is
//! dropped. That is at most [`MAX_AGE`], and sooner when this instance
//! renews the gate's lease with the new incarnation ([`LeaseCache::renewed`]:
//! a restarted gate links and heartbeats at once). A push to such a session
//! is still not delivered: the link to the gate shard checks the
//! incarnation (`Gates::request_watched`), so the target reads as not
//! delivered, exactly as if the session had been read as dead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a view answers before the leases are read again.
pub(super) const MAX_AGE: Duration = Duration::from_millis(200);

/// Each gate's lease end (ms) and current incarnation, as read at one moment.
#[derive(Debug, Default)]
pub(super) struct LeaseView {
    gates: HashMap<String, Lease>,
}

/// One gate's lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    ends_ms: u64,
    incarnation: u64,
}

/// What a view says about a session's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Judgement {
    /// Its gate is live under the session's incarnation.
    Live,
    /// Not live as far as this view knows: dead if the view was just read,
    /// else to be decided by reading the leases again.
    NotLive,
}

impl LeaseView {
    /// A view of `gates`: (gate id, lease end ms) pairs and each gate's
    /// current incarnation (a gate with none recorded was renewed by an
    /// older logic: incarnation 0, like the sessions that logic wrote).
    pub(super) fn new(
        gates: impl IntoIterator<Item = (String, u64)>,
        mut incarnations: HashMap<String, u64>,
    ) -> LeaseView {
        let gates = gates
            .into_iter()
            .map(|(gate, ends_ms)| {
                let incarnation = incarnations.remove(&gate).unwrap_or(0);
                (
                    gate,
                    Lease {
                        ends_ms,
                        incarnation,
                    },
                )
            })
            .collect();
        LeaseView { gates }
    }

    /// Whether a session of `gate` under `incarnation` is on a live gate at `now_ms`.
    pub(super) fn judge(&self, gate: &str, incarnation: u64, now_ms: u64) -> Judgement {
        match self.gates.get(gate) {
            Some(l) if l.incarnation == incarnation && l.ends_ms > now_ms => Judgement::Live,
            _ => Judgement::NotLive,
        }
    }
}

/// The view the last read left, shared by every clone of the store.
#[derive(Debug, Default)]
pub(super) struct LeaseCache {
    last: Mutex<Option<(Instant, Arc<LeaseView>)>>,
}

impl LeaseCache {
    /// The last view, if younger than [`MAX_AGE`].
    pub(super) fn fresh(&self) -> Option<Arc<LeaseView>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, view)) if at.elapsed() < MAX_AGE => Some(view.clone()),
            _ => None,
        }
    }

    /// Keeps a view read at `at` (a read that started before the kept one
    /// does not replace it).
    pub(super) fn keep(&self, at: Instant, view: Arc<LeaseView>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_none_or(|(kept, _)| *kept <= at) {
            *last = Some((at, view));
        }
    }

    /// This instance renewed `gate`'s lease under `incarnation`: a view that
    /// knows the gate under another incarnation is dropped (the gate
    /// restarted; its old sessions must not read as live any longer). A
    /// renewal of the same incarnation only extends a lease, which leaves
    /// the view a valid lower bound.
    pub(super) fn renewed(&self, gate: &str, incarnation: u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let stale = last.as_ref().is_some_and(|(_, view)| {
            view.gates
                .get(gate)
                .is_some_and(|l| l.incarnation != incarnation)
        });
        if stale {
            *last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LeaseView {
        LeaseView::new(
            [("g".to_string(), 1_000), ("old".to_string(), 1_000)],
            HashMap::from([("g".to_string(), 7)]),
        )
    }

    #[test]
    fn live_only_under_the_viewed_incarnation_before_the_viewed_lease_end() {
        let v = view();
        assert_eq!(v.judge("g", 7, 999), Judgement::Live);
        assert_eq!(v.judge("g", 7, 1_000), Judgement::NotLive, "lease ended");
        assert_eq!(
            v.judge("g", 6, 999),
            Judgement::NotLive,
            "other incarnation"
        );
        assert_eq!(v.judge("unknown", 7, 0), Judgement::NotLive);
        // No incarnation recorded: renewed by an older logic, incarnation 0.
        assert_eq!(v.judge("old", 0, 999), Judgement::Live);
    }

    #[test]
    fn a_view_is_kept_for_its_age_and_dropped_when_a_gate_restarts() {
        let cache = LeaseCache::default();
        assert!(cache.fresh().is_none());
        let read_at = Instant::now();
        cache.keep(read_at, Arc::new(view()));
        assert!(cache.fresh().is_some());
        // Same incarnation, or a gate the view does not know: kept.
        cache.renewed("g", 7);
        cache.renewed("new", 1);
        assert!(cache.fresh().is_some());
        // An older read never replaces a newer one.
        cache.keep(
            read_at - Duration::from_secs(1),
            Arc::new(LeaseView::default()),
        );
        assert_eq!(cache.fresh().unwrap().judge("g", 7, 0), Judgement::Live);
        // The gate restarted: the view goes.
        cache.renewed("g", 8);
        assert!(cache.fresh().is_none());
        // And a view outlives MAX_AGE by no more than the clock says.
        cache.keep(Instant::now() - MAX_AGE, Arc::new(view()));
        assert!(cache.fresh().is_none());
    }
}
