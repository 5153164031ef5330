//! Tidegate bench: the harness through which every performance claim of the
//! project is made. Scenarios: `idle` (memory per held connection),
//! `connect` (login storm), `push` (HTTP push → socket, closed loop or at a
//! rate), `broadcast` (fan-out to all), `c2s` (device ingest), `floor` (the
//! kernel's own cost of the same socket work, the bound every target here is
//! held against); `html` turns their JSON reports into one self-contained
//! page (`tidegate bench report`).

pub mod broadcast;
pub mod c2s;
pub mod connect;
pub mod fleet;
pub mod floor;
pub mod hiccup;
pub mod hold;
pub mod html;
pub mod idle;
pub mod mqtt;
pub mod pace;
pub mod peers;
pub mod procfs;
pub mod procs;
pub mod push;
pub mod receipts;
pub mod report;
pub mod sources;
pub mod spread;

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// The largest latency a [`Recorder`] tells apart, µs (10 minutes, the
/// longest run): anything longer is recorded as this. At 60 s a broadcast
/// to a million, whose last receipt came after 56–83 s, reported 60.0 s.
pub const MAX_LATENCY_US: u64 = 600_000_000;

/// Records latencies into an HdrHistogram (1 µs to [`MAX_LATENCY_US`], 3
/// significant digits). Recorders of several threads or processes are merged by adding
/// histograms, never by averaging percentiles.
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static bounds are valid"),
        }
    }

    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.hist.saturating_record(us);
    }

    /// Records one latency of a closed-loop run paced at `interval`,
    /// correcting for coordinated omission: a sample late by several
    /// intervals also stands for the requests that should have been sent
    /// meanwhile. Open-loop scenarios (`pace.rs`) time each request from its
    /// due instant instead and use [`Recorder::record`]: every scheduled
    /// request is measured, so nothing is omitted and correcting again would
    /// count each stall twice.
    pub fn record_corrected(&mut self, latency: Duration, interval: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let expected = (interval.as_micros() as u64).max(1);
        let _ = self.hist.record_correct(us, expected);
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.hist.add(&other.hist);
    }

    /// The run's percentiles.
    pub fn percentiles(&self) -> Percentiles {
        let h = &self.hist;
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_samples() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for i in 1..=100 {
            a.record(Duration::from_micros(i));
            b.record(Duration::from_micros(1000 + i));
        }
        a.merge(&b);
        let p = a.percentiles();
        assert_eq!(p.count, 200);
        assert!(p.p50_us <= 101 && p.p99_us >= 1000, "{p:?}");
    }

    #[test]
    fn coordinated_omission_is_corrected() {
        let mut r = Recorder::new();
        for _ in 0..99 {
            r.record_corrected(Duration::from_micros(100), Duration::from_millis(1));
        }
        r.record_corrected(Duration::from_millis(100), Duration::from_millis(1));
        // One 100 ms stall at 1 kHz hides ~99 requests that would each have waited.
        assert!(r.percentiles().count > 150);
        assert!(r.percentiles().p90_us > 10_000);
    }
}
