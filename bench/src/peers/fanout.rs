//! The fan-out half of a peer run, shared by every side: the payload that
//! carries its send time, one reader task per subscriber, and the figures
//! (deliveries/s from first send to last receipt, per-delivery latency).

use crate::{Percentiles, Recorder};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Bytes of the stamp at the start of every payload: send time, message index.
pub const STAMP_LEN: usize = 12;

/// A payload of `size` bytes (≥ [`STAMP_LEN`]) carrying its send time as
/// nanoseconds since `epoch` and its message index.
pub fn stamp(epoch: Instant, index: u32, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(STAMP_LEN));
    b.put_u64_le(epoch.elapsed().as_nanos() as u64);
    b.put_u32_le(index);
    b.resize(size.max(STAMP_LEN), 0);
    b.freeze()
}

/// The send time (ns since the epoch) and index a payload carries.
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    let sent = payload.get(..8)?.try_into().ok()?;
    let index = payload.get(8..12)?.try_into().ok()?;
    Some(Stamp {
        sent_ns: u64::from_le_bytes(sent),
        index: u32::from_le_bytes(index),
    })
}

/// What a payload's first [`STAMP_LEN`] bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, nanoseconds since the run's epoch.
    pub sent_ns: u64,
    /// Which message of the run.
    pub index: u32,
}

/// A subscriber of either side: yields the payload of each fan-out message.
pub trait Subscriber: Send + 'static {
    /// The next message's payload, or why none came.
    fn next_payload(&mut self) -> impl Future<Output = Result<Bytes, String>> + Send;
}

/// What one subscriber received.
pub struct Receipts<S> {
    /// The subscriber, handed back so its connection outlives the readers
    /// (memory is read after fan-out with every connection still open).
    pub subscriber: S,
    /// Latency of each delivery, in order.
    pub latencies: Vec<Duration>,
    /// When the last one arrived.
    pub last: Option<Instant>,
    /// Why it stopped early (closed, timeout, bad payload).
    pub failure: Option<String>,
}

/// Starts one reader per subscriber, each waiting for `messages` payloads
/// until `deadline`. Start them before the first send.
pub fn spawn_readers<S: Subscriber>(
    subscribers: Vec<S>,
    messages: usize,
    epoch: Instant,
    deadline: tokio::time::Instant,
) -> JoinSet<Receipts<S>> {
    let mut readers = JoinSet::new();
    for mut subscriber in subscribers {
        readers.spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            let (mut last, mut failure) = (None, None);
            let mut seen = vec![false; messages];
            while latencies.len() < messages {
                let payload =
                    match tokio::time::timeout_at(deadline, subscriber.next_payload()).await {
                        Ok(Ok(p)) => p,
                        Ok(Err(e)) => {
                            failure = Some(e);
                            break;
                        }
                        Err(_) => {
                            failure = Some("timeout".to_string());
                            break;
                        }
                    };
                let now = Instant::now();
                let fresh = read_stamp(&payload).filter(|s| {
                    let slot = seen.get_mut(s.index as usize);
                    // A duplicate or foreign message is a failure, not a delivery.
                    slot.is_some_and(|seen| !std::mem::replace(seen, true))
                });
                let Some(s) = fresh else {
                    failure = Some("unexpected payload".to_string());
                    break;
                };
                let now_ns = now.duration_since(epoch).as_nanos() as u64;
                latencies.push(Duration::from_nanos(now_ns.saturating_sub(s.sent_ns)));
                last = Some(now);
            }
            Receipts {
                subscriber,
                latencies,
                last,
                failure,
            }
        });
    }
    readers
}

/// Fan-out figures of one side.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Messages sent, each to every subscriber.
    pub messages: usize,
    /// Subscribers × messages.
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Subscribers that stopped early, by reason.
    pub receive_failures: BTreeMap<String, u64>,
    /// First send to last receipt, seconds.
    pub duration_s: f64,
    /// delivered / duration.
    pub msgs_per_s: f64,
    /// Send → receipt, per delivery.
    pub latency: Percentiles,
    /// Send → the server's acceptance (HTTP answer, PUBACK), per message.
    pub send_latency: Percentiles,
    /// Server RSS after fan-out, connections still open.
    pub rss_after: Option<u64>,
    /// CPU seconds the server used from first send to last receipt (÷
    /// duration_s ≈ cores it kept busy; 1.0 = Mosquitto's one thread saturated).
    pub server_cpu_s: Option<f64>,
    /// CPU seconds bench itself used meanwhile (readers, sender), on the same cores.
    pub bench_cpu_s: Option<f64>,
}

/// Waits for every reader; the subscribers back, and the figures.
pub async fn collect<S: Subscriber>(
    mut readers: JoinSet<Receipts<S>>,
    messages: usize,
    started: Instant,
    send_latency: &Recorder,
) -> anyhow::Result<(Vec<S>, FanoutReport)> {
    let mut subscribers = Vec::with_capacity(readers.len());
    let mut latency = Recorder::new();
    let mut failures = BTreeMap::new();
    let mut last = started;
    let mut delivered = 0u64;
    while let Some(r) = readers.join_next().await {
        let r = r?;
        for l in &r.latencies {
            latency.record(*l);
        }
        delivered += r.latencies.len() as u64;
        last = last.max(r.last.unwrap_or(started));
        if let Some(f) = r.failure {
            *failures.entry(f).or_insert(0) += 1;
        }
        subscribers.push(r.subscriber);
    }
    let duration = last.duration_since(started);
    let report = FanoutReport {
        messages,
        expected: (subscribers.len() * messages) as u64,
        delivered,
        receive_failures: failures,
        duration_s: duration.as_secs_f64(),
        msgs_per_s: delivered as f64 / duration.as_secs_f64().max(1e-9),
        latency: latency.percentiles(),
        send_latency: send_latency.percentiles(),
        rss_after: None,
        server_cpu_s: None,
        bench_cpu_s: None,
    };
    Ok((subscribers, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Scripted(VecDeque<Bytes>);

    impl Subscriber for Scripted {
        async fn next_payload(&mut self) -> Result<Bytes, String> {
            match self.0.pop_front() {
                Some(p) => Ok(p),
                None => std::future::pending().await,
            }
        }
    }

    #[test]
    fn stamps_round_trip_and_pad() {
        let epoch = Instant::now() - Duration::from_secs(1);
        let p = stamp(epoch, 7, 64);
        assert_eq!(p.len(), 64);
        let s = read_stamp(&p).unwrap();
        assert_eq!(s.index, 7);
        assert!(s.sent_ns >= 1_000_000_000);
        assert_eq!(stamp(epoch, 0, 1).len(), STAMP_LEN);
        assert_eq!(read_stamp(&p[..11]), None);
    }

    #[tokio::test]
    async fn readers_count_deliveries_and_refuse_duplicates() {
        let epoch = Instant::now();
        let good = Scripted((0..3).map(|i| stamp(epoch, i, 16)).collect());
        let dup = Scripted([stamp(epoch, 0, 16), stamp(epoch, 0, 16)].into());
        let short = Scripted([stamp(epoch, 1, 16)].into());
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        let started = Instant::now();
        let readers = spawn_readers(vec![good, dup, short], 3, epoch, deadline);
        let (subs, r) = collect(readers, 3, started, &Recorder::new())
            .await
            .unwrap();
        assert_eq!(subs.len(), 3);
        assert_eq!((r.expected, r.delivered), (9, 5));
        assert_eq!(r.receive_failures["unexpected payload"], 1);
        assert_eq!(r.receive_failures["timeout"], 1);
        assert_eq!(r.latency.count, 5);
        assert!(r.msgs_per_s > 0.0);
    }
}
