//! A one-slot wake-up flag between tasks of one shard.
//!
//! Hand-written rather than `glommio::sync` or an event listener because one
//! lives in every connection: this is a bool and an optional waker (24 bytes),
//! with no allocation until a task actually waits.

use std::cell::Cell;
use std::task::{Context, Poll, Waker};

/// Set by `notify`, consumed by the one task that polls `poll_wait`.
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    /// Marks the signal set and wakes the waiting task, if any.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Drops the waiting task's waker: a waker keeps its task's memory
    /// alive, and a parked connection's task has ended.
    pub fn forget_waker(&self) {
        drop(self.waker.take());
    }

    /// Ready once after each `notify` (several notifies coalesce into one).
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.replace(false) {
            return Poll::Ready(());
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}
