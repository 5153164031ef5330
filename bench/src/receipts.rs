//! What a broadcast carries and how its receipts are counted, in one
//! process or over many: each push's content is a [`Stamp`] (message index,
//! due instant on the host's monotonic clock, which every process of the
//! run shares), and [`Receipts`] counts per message how many clients got it
//! and when the last one did, and per 100 ms of due time how many arrived,
//! how many late, and the worst latency (the timeline that tells periodic
//! stalls from a uniformly slow tail).

use crate::report::SharedRecorder;
use crate::Recorder;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds on CLOCK_MONOTONIC: the same clock in every process of a
/// run (std's `Instant` reads it too, but cannot be sent to another process).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What a bench broadcast carries: its index and due instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Position in the run.
    pub message: usize,
    /// Due instant, [`mono_ns`].
    pub due_ns: u64,
}

impl Stamp {
    /// Reads a stamp from a push's content; `None` for foreign content.
    pub fn parse(content: &[u8]) -> Option<Stamp> {
        let message = u32::from_le_bytes(content.get(..4)?.try_into().ok()?) as usize;
        let due_ns = u64::from_le_bytes(content.get(4..12)?.try_into().ok()?);
        Some(Stamp { message, due_ns })
    }

    /// The push content that carries this stamp.
    pub fn content(&self) -> Vec<u8> {
        let mut raw = (self.message as u32).to_le_bytes().to_vec();
        raw.extend_from_slice(&self.due_ns.to_le_bytes());
        raw
    }

    /// The same content, base64 (as `content_b64`).
    pub fn content_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.content())
    }

    /// The JSON body of a `POST /v1/push` to every user of `app`.
    pub fn body(&self, app: u16) -> String {
        let content = self.content_b64();
        serde_json::json!({"app": app, "to": "all", "content_b64": content}).to_string()
    }
}

/// Width of one timeline window, ns of due time.
pub const WINDOW_NS: u64 = 100_000_000;
/// Windows a run's timeline holds (10 minutes); later receipts count in the
/// last one.
const WINDOWS: usize = 6_000;
/// A receipt later than this after its due instant counts as late in its
/// window (the push-latency target of issue 6).
pub const LATE_NS: u64 = 2_000_000;

/// Receipts of every message of a run, updated by every client's reader.
pub struct Receipts {
    counts: Vec<AtomicU64>,
    /// Latest receipt per message, [`mono_ns`].
    last_ns: Vec<AtomicU64>,
    total: AtomicU64,
    latency: SharedRecorder,
    /// Absolute window ([`mono_ns`] / [`WINDOW_NS`]) of `windows[0]`.
    first_window: u64,
    windows: Vec<WindowCells>,
}

/// One timeline window's counters.
#[derive(Default)]
struct WindowCells {
    delivered: AtomicU64,
    late: AtomicU64,
    max_ns: AtomicU64,
}

/// One window of a run's timeline, by due time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowCount {
    /// Absolute window number: due instant ([`mono_ns`]) / [`WINDOW_NS`].
    pub window: u64,
    /// Receipts of pushes due in it.
    pub delivered: u64,
    /// Of them, later than [`LATE_NS`].
    pub late: u64,
    /// The worst due → receipt latency, ns.
    pub max_ns: u64,
}

impl Receipts {
    /// Nothing received yet of `messages` messages.
    pub fn new(messages: usize) -> Receipts {
        Receipts {
            counts: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            last_ns: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            latency: SharedRecorder::new(),
            // A window of margin: a push due just before this instant.
            first_window: (mono_ns() / WINDOW_NS).saturating_sub(1),
            windows: (0..WINDOWS).map(|_| WindowCells::default()).collect(),
        }
    }

    /// Counts client `key`'s receipt of a push with this content; foreign
    /// content and unknown messages are ignored.
    pub fn record(&self, key: usize, content: &[u8]) {
        let Some(stamp) = Stamp::parse(content) else {
            return;
        };
        let (Some(count), Some(last)) = (
            self.counts.get(stamp.message),
            self.last_ns.get(stamp.message),
        ) else {
            return;
        };
        let now = mono_ns();
        let late_by = now.saturating_sub(stamp.due_ns);
        self.latency.record(key, Duration::from_nanos(late_by));
        let w = (stamp.due_ns / WINDOW_NS).saturating_sub(self.first_window) as usize;
        let cells = &self.windows[w.min(WINDOWS - 1)];
        cells.delivered.fetch_add(1, Ordering::Relaxed);
        if late_by > LATE_NS {
            cells.late.fetch_add(1, Ordering::Relaxed);
        }
        cells.max_ns.fetch_max(late_by, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
        last.fetch_max(now, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Receipts of every message together.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// A snapshot that crosses processes and merges.
    pub fn tally(&self) -> Tally {
        Tally {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            last_ns: self
                .last_ns
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            latency: self.latency.merged().to_base64(),
            timeline: self
                .windows
                .iter()
                .enumerate()
                .filter(|(_, c)| c.delivered.load(Ordering::Relaxed) > 0)
                .map(|(i, c)| WindowCount {
                    window: self.first_window + i as u64,
                    delivered: c.delivered.load(Ordering::Relaxed),
                    late: c.late.load(Ordering::Relaxed),
                    max_ns: c.max_ns.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Receipts of one process, as a worker reports them.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Tally {
    /// Receipts per message.
    pub counts: Vec<u64>,
    /// Latest receipt per message, [`mono_ns`] (0: none).
    pub last_ns: Vec<u64>,
    /// Due → receipt latency, HdrHistogram V2, base64.
    pub latency: String,
    /// Windows with receipts, in order.
    #[serde(default)]
    pub timeline: Vec<WindowCount>,
}

impl Tally {
    /// Adds another process's receipts: counts summed, latest kept,
    /// histograms added.
    pub fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        let n = self.counts.len().max(other.counts.len());
        self.counts.resize(n, 0);
        self.last_ns.resize(n, 0);
        for (i, c) in other.counts.iter().enumerate() {
            self.counts[i] += c;
        }
        for (i, l) in other.last_ns.iter().enumerate() {
            self.last_ns[i] = self.last_ns[i].max(*l);
        }
        let mut latency = self.latency()?;
        latency.merge(&other.latency()?);
        self.latency = latency.to_base64();
        let mut windows: std::collections::BTreeMap<u64, WindowCount> =
            self.timeline.iter().map(|w| (w.window, *w)).collect();
        for w in &other.timeline {
            let m = windows.entry(w.window).or_insert(WindowCount {
                window: w.window,
                delivered: 0,
                late: 0,
                max_ns: 0,
            });
            m.delivered += w.delivered;
            m.late += w.late;
            m.max_ns = m.max_ns.max(w.max_ns);
        }
        self.timeline = windows.into_values().collect();
        Ok(())
    }

    /// Where [`Tally::timeline`]'s 0 ms lies on CLOCK_MONOTONIC, ns: the
    /// start of the first window with receipts.
    pub fn timeline_start_mono_ns(&self) -> Option<u64> {
        self.timeline.first().map(|w| w.window * WINDOW_NS)
    }

    /// The timeline for a report: the windows with receipts, timed from
    /// the first of them (a window with none is left out).
    pub fn timeline(&self) -> Vec<TimelinePoint> {
        let Some(first) = self.timeline.first().map(|w| w.window) else {
            return Vec::new();
        };
        self.timeline
            .iter()
            .map(|w| TimelinePoint {
                t_ms: (w.window - first) * (WINDOW_NS / 1_000_000),
                delivered: w.delivered,
                late: w.late,
                max_us: w.max_ns / 1_000,
            })
            .collect()
    }

    /// The due → receipt histogram.
    pub fn latency(&self) -> anyhow::Result<Recorder> {
        if self.latency.is_empty() {
            return Ok(Recorder::new());
        }
        Recorder::from_base64(&self.latency)
    }
}

/// One window of a report's timeline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelinePoint {
    /// Start of the window, ms of due time after the first one.
    pub t_ms: u64,
    /// Receipts of pushes due in it.
    pub delivered: u64,
    /// Of them, later than 2 ms.
    pub late: u64,
    /// The worst latency among them, µs.
    pub max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_through_the_push_body() {
        let s = Stamp {
            message: 7,
            due_ns: 123_456_789,
        };
        let body: serde_json::Value = serde_json::from_str(&s.body(1)).unwrap();
        assert_eq!(body["to"], "all");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body["content_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(Stamp::parse(&raw), Some(s));
        assert!(Stamp::parse(&raw[..11]).is_none());
    }

    #[test]
    fn tallies_of_two_processes_merge() {
        let (a, b) = (Receipts::new(2), Receipts::new(2));
        let stamp = |m| {
            let mut raw = (m as u32).to_le_bytes().to_vec();
            raw.extend_from_slice(&mono_ns().to_le_bytes());
            raw
        };
        a.record(0, &stamp(0));
        b.record(1, &stamp(0));
        b.record(1, &stamp(1));
        b.record(1, b"foreign");
        b.record(1, &stamp(9));
        let mut t = a.tally();
        t.merge(&b.tally()).unwrap();
        assert_eq!(t.counts, vec![2, 1]);
        assert!(t.last_ns[0] >= a.tally().last_ns[0] && t.last_ns[1] > 0);
        assert_eq!(t.latency().unwrap().percentiles().count, 3);
        let delivered: u64 = t.timeline.iter().map(|w| w.delivered).sum();
        assert_eq!(delivered, 3);
    }

    #[test]
    fn the_timeline_counts_late_receipts_per_window_and_merges_by_window() {
        let (a, b) = (Receipts::new(1), Receipts::new(1));
        let now = mono_ns();
        let stamp = |due_ns: u64| {
            let mut raw = 0u32.to_le_bytes().to_vec();
            raw.extend_from_slice(&due_ns.to_le_bytes());
            raw
        };
        // Due now: on time. Due 50 ms ago: late (in this window or the one before).
        a.record(0, &stamp(now));
        a.record(0, &stamp(now - 50_000_000));
        b.record(0, &stamp(now));
        let mut t = a.tally();
        t.merge(&b.tally()).unwrap();
        let points = t.timeline();
        assert_eq!(points.iter().map(|p| p.delivered).sum::<u64>(), 3);
        assert_eq!(points.iter().map(|p| p.late).sum::<u64>(), 1);
        let last = points.last().unwrap();
        assert!(last.delivered >= 2, "{points:?}");
        assert!(points.iter().any(|p| p.max_us >= 50_000));
        assert!(points.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
        assert_eq!(points[0].t_ms, 0);
    }
}
