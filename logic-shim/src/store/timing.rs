//! How long the store takes on the hot paths, per operation:
//! `tidegate_logic_store_seconds{op,backend}` (a histogram, 50 µs to 5 s
//! buckets set by the binary's recorder, plus sum and count). A push's
//! latency is mostly its presence read on Redis; this says how much, on the
//! running system, without a profiler.
//!
//! Handles are registered once per operation: a push records one sample,
//! it does not format or hash labels.

use std::future::Future;
use std::time::Instant;

/// A timed store operation.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Presence of a push's targets (`sessions_many`).
    SessionsMany,
    /// A login's presence write.
    AddSession,
    /// A logout's, close's or stale session's removal.
    RemoveSession,
    /// A batch of C2S frames into their streams.
    AppendC2sMany,
}

impl Op {
    /// In declaration order: `op as usize` indexes this.
    const ALL: [Op; 4] = [
        Op::SessionsMany,
        Op::AddSession,
        Op::RemoveSession,
        Op::AppendC2sMany,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::SessionsMany => "sessions_many",
            Op::AddSession => "add_session",
            Op::RemoveSession => "remove_session",
            Op::AppendC2sMany => "append_c2s_many",
        }
    }
}

/// One histogram per [`Op`] for one backend.
pub struct Timings {
    by_op: [metrics::Histogram; Op::ALL.len()],
}

impl Timings {
    /// Registers the histograms of `backend` (`redis`, `embedded`).
    pub fn new(backend: &'static str) -> Timings {
        Timings {
            by_op: Op::ALL.map(|op| {
                metrics::histogram!("tidegate_logic_store_seconds", "op" => op.label(), "backend" => backend)
            }),
        }
    }

    /// Runs `fut`, recording how long it took under `op`, whatever it returns.
    pub async fn time<T>(&self, op: Op, fut: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = fut.await;
        self.by_op[op as usize].record(started.elapsed());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_own_label_and_slot() {
        let labels: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Op::ALL.len());
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?} indexes its own histogram");
        }
    }
}
