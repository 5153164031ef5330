//! The gate process's descriptor budget. SO_REUSEPORT hashes new connections
//! over every listener whether or not its process can still open a
//! descriptor; a worker at its limit would strand its share in the backlog
//! (accept fails with EMFILE). So a worker near its limit closes its
//! listeners, and the kernel spreads new connections over the other workers
//! (with `net.ipv4.tcp_migrate_req=1`, connections already queued on a
//! closed listener move too); below a low-water mark it listens again
//! (ARCHITECTURE §7).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Open client connections against the process's descriptor limit.
#[derive(Debug)]
pub struct FdBudget {
    open: AtomicUsize,
    /// Stop accepting at this many client connections.
    high: usize,
    /// Accept again at or below this many.
    low: usize,
}

impl FdBudget {
    /// A budget under the process's soft `RLIMIT_NOFILE`, keeping `reserve`
    /// descriptors for links, listeners and files.
    pub fn from_rlimit(reserve: usize, low_water_gap: usize) -> FdBudget {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        let limit = if ok { lim.rlim_cur as usize } else { 1024 };
        FdBudget::new(limit, reserve, low_water_gap)
    }

    /// A budget for `limit` descriptors.
    pub fn new(limit: usize, reserve: usize, low_water_gap: usize) -> FdBudget {
        let high = limit.saturating_sub(reserve).max(1);
        FdBudget {
            open: AtomicUsize::new(0),
            high,
            low: high.saturating_sub(low_water_gap.max(1)),
        }
    }

    /// A client connection was accepted.
    pub fn acquire(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection closed.
    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether listeners should close now.
    pub fn exhausted(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.high
    }

    /// Whether closed listeners may open again.
    pub fn recovered(&self) -> bool {
        self.open.load(Ordering::Relaxed) <= self.low
    }

    /// The high-water mark.
    pub fn high(&self) -> usize {
        self.high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_at_high_water_and_resumes_at_low_water() {
        let b = FdBudget::new(100, 10, 20);
        assert_eq!(b.high(), 90);
        for _ in 0..90 {
            b.acquire();
        }
        assert!(b.exhausted() && !b.recovered());
        for _ in 0..19 {
            b.release();
        }
        assert!(!b.exhausted() && !b.recovered(), "hysteresis");
        b.release();
        assert!(b.recovered());
    }

    #[test]
    fn reads_the_real_limit() {
        let b = FdBudget::from_rlimit(16, 8);
        assert!(b.high() >= 1);
    }
}
