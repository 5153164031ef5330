//! Open-loop schedules: request k is due at `start + k × interval`, whatever
//! happened to the requests before it. Every rate-driven scenario times a
//! request from its due instant, not from when it was actually sent, so a
//! server stall shows up in every request it delayed (the coordinated-
//! omission correction, done by measurement; see `Recorder::record_corrected`
//! for the closed-loop alternative, which must not be stacked on top).
//!
//! Why a thread: tokio's timer has a 1 ms resolution, so `sleep_until` would
//! add up to a millisecond of lag to every request at 10,000/s, half the
//! latency budget being measured. The pacer sleeps on the OS clock
//! (`nanosleep`, ~50-100 µs late) and hands due slots to the async side.

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// When each of `count` requests is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Due instant of request 0.
    pub start: Instant,
    /// Spacing in nanoseconds (fractional, so any rate is kept exactly over a run).
    interval_ns: f64,
    /// Requests in the schedule.
    pub count: u64,
}

impl Schedule {
    /// `count` requests at `rate_per_s`, the first due at `start`.
    pub fn at_rate(rate_per_s: f64, count: u64, start: Instant) -> Schedule {
        Schedule {
            start,
            interval_ns: 1e9 / rate_per_s,
            count,
        }
    }

    /// `count` requests spaced by `interval` (zero: all due at `start`).
    pub fn spaced(interval: Duration, count: u64, start: Instant) -> Schedule {
        Schedule {
            start,
            interval_ns: interval.as_nanos() as f64,
            count,
        }
    }

    /// When request `k` is due.
    pub fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_nanos((k as f64 * self.interval_ns) as u64)
    }

    /// The spacing between two requests.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns as u64)
    }
}

/// One request the schedule says to send now.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Position in the schedule.
    pub index: u64,
    /// When it was due (latency is measured from here).
    pub due: Instant,
}

/// Hands out a schedule's slots as they fall due.
pub struct Pacer {
    slots: mpsc::Receiver<Slot>,
}

/// Slots released but not yet taken. When the taker falls this far behind
/// the pacer waits too; the slots are still timed from their due instants.
const BACKLOG: usize = 4096;
/// Longest single sleep, so a dropped taker stops the thread promptly
/// (it notices at its next slot).
const MAX_NAP: Duration = Duration::from_millis(10);

impl Pacer {
    /// Starts the pacing thread. It ends after the last slot, or soon after
    /// this `Pacer` is dropped.
    pub fn start(schedule: Schedule) -> anyhow::Result<Pacer> {
        let (tx, slots) = mpsc::channel(BACKLOG);
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || release(schedule, |slot| tx.blocking_send(slot).is_ok()))?;
        Ok(Pacer { slots })
    }

    /// The next due slot; `None` once the schedule is exhausted.
    pub async fn next(&mut self) -> Option<Slot> {
        self.slots.recv().await
    }
}

/// Calls `each` on a pacing thread for every slot as it falls due, until
/// the schedule ends or `each` returns false. For the highest rates: handing
/// slots to a task through [`Pacer`] costs a wake-up and a context switch
/// per request (measured: a sixth of bench's CPU at 3,000 pushes/s), while
/// `each` can spawn the request itself.
pub fn run_each(
    schedule: Schedule,
    each: impl FnMut(Slot) -> bool + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || release(schedule, each))?)
}

fn release(schedule: Schedule, mut emit: impl FnMut(Slot) -> bool) {
    tighten_timer_slack();
    let mut k = 0;
    while k < schedule.count {
        let now = Instant::now();
        while k < schedule.count && schedule.due(k) <= now {
            let slot = Slot {
                index: k,
                due: schedule.due(k),
            };
            if !emit(slot) {
                return;
            }
            k += 1;
        }
        if k < schedule.count {
            let wait = schedule.due(k).saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(MAX_NAP));
        }
    }
}

/// Asks the kernel to wake this thread within 1 µs of its deadline instead
/// of the default 50 µs slack, which would otherwise be added to the lag
/// of every request (measured: p50 sender lag ~110-150 µs at 2,000/s with
/// the default slack).
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (nanoseconds)
    // and only affects the calling thread; a failure leaves the default.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fractional_rate_keeps_its_average() {
        let s = Schedule::at_rate(3.0, 4, Instant::now());
        let span = s.due(3) - s.start;
        assert!(span >= Duration::from_millis(999) && span <= Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn slots_arrive_in_order_and_not_before_due() {
        let start = Instant::now() + Duration::from_millis(5);
        let mut p = Pacer::start(Schedule::at_rate(2000.0, 20, start)).unwrap();
        let mut seen = 0;
        while let Some(slot) = p.next().await {
            assert_eq!(slot.index, seen);
            assert!(Instant::now() >= slot.due);
            seen += 1;
        }
        assert_eq!(seen, 20);
    }
}
