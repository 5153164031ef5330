//! Per-connection flow control: token buckets for frames/s and bytes/s, and
//! the verdict for a frame that arrives over the limit.
//!
//! A bucket is 8 bytes (tokens and last refill as `f32`/`u32` ms on the
//! shard's clock), so two per connection cost 16 bytes; no timer is involved:
//! buckets refill lazily when the next frame arrives.

use crate::config::{FlowConfig, ThrottleAction};
use std::time::Duration;

/// A token bucket refilled lazily.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f32,
    last_ms: u32,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: u32, now_ms: u32) -> Bucket {
        Bucket {
            tokens: burst as f32,
            last_ms: now_ms,
        }
    }

    /// Takes `n` tokens, or says how long until they would be there. `rate`
    /// 0 means unlimited.
    pub fn take(&mut self, now_ms: u32, rate: u32, burst: u32, n: u32) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        self.last_ms = now_ms;
        let n = n as f32;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f32((n - self.tokens) / rate as f32))
        }
    }
}

/// A connection's two buckets and its violation count.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    frames: Bucket,
    bytes: Bucket,
    /// Over-limit frames so far.
    pub violations: u32,
}

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within limits: handle it.
    Pass,
    /// Stop reading for this long, then try again (the frame stays buffered).
    Delay(Duration),
    /// Discard it.
    Drop,
    /// Discard it and answer ERROR(throttled).
    Error,
    /// Answer ERROR(throttled) and close.
    Close,
}

impl Flow {
    /// Full buckets.
    pub fn new(cfg: &FlowConfig, now_ms: u32) -> Flow {
        Flow {
            frames: Bucket::full(cfg.frames_burst, now_ms),
            bytes: Bucket::full(cfg.bytes_burst, now_ms),
            violations: 0,
        }
    }

    /// Charges a frame of `len` bytes and decides its fate.
    pub fn admit(&mut self, cfg: &FlowConfig, now_ms: u32, len: usize) -> Verdict {
        let frames = self
            .frames
            .take(now_ms, cfg.frames_per_s, cfg.frames_burst, 1);
        let bytes = frames.and_then(|()| {
            let r = self
                .bytes
                .take(now_ms, cfg.bytes_per_s, cfg.bytes_burst, len as u32);
            if r.is_err() {
                // Give the frame token back: the frame did not pass.
                self.frames.tokens += 1.0;
            }
            r
        });
        let Err(wait) = bytes else {
            return Verdict::Pass;
        };
        if cfg.action == ThrottleAction::Delay {
            // Delaying is backpressure, not misbehaviour: the client just waits.
            return Verdict::Delay(wait);
        }
        self.violations = self.violations.saturating_add(1);
        if cfg.close_after_violations != 0 && self.violations >= cfg.close_after_violations {
            return Verdict::Close;
        }
        match cfg.action {
            ThrottleAction::Drop => Verdict::Drop,
            ThrottleAction::Error => Verdict::Error,
            ThrottleAction::Close => Verdict::Close,
            ThrottleAction::Delay => unreachable!("returned above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(action: ThrottleAction) -> FlowConfig {
        FlowConfig {
            frames_per_s: 10,
            frames_burst: 5,
            bytes_per_s: 1000,
            bytes_burst: 1000,
            action,
            close_after_violations: 3,
            ..FlowConfig::default()
        }
    }

    #[test]
    fn burst_then_throttle_then_close() {
        let c = cfg(ThrottleAction::Error);
        let mut f = Flow::new(&c, 0);
        for _ in 0..5 {
            assert_eq!(f.admit(&c, 0, 20), Verdict::Pass);
        }
        assert_eq!(f.admit(&c, 0, 20), Verdict::Error);
        assert_eq!(f.admit(&c, 0, 20), Verdict::Error);
        assert_eq!(f.admit(&c, 0, 20), Verdict::Close, "third violation closes");
    }

    #[test]
    fn buckets_refill_with_time() {
        let c = cfg(ThrottleAction::Drop);
        let mut f = Flow::new(&c, 0);
        for _ in 0..5 {
            f.admit(&c, 0, 20);
        }
        assert_eq!(f.admit(&c, 0, 20), Verdict::Drop);
        assert_eq!(
            f.admit(&c, 200, 20),
            Verdict::Pass,
            "200 ms refill 2 frames"
        );
    }

    #[test]
    fn bytes_limit_applies_and_delay_says_how_long() {
        let c = cfg(ThrottleAction::Delay);
        let mut f = Flow::new(&c, 0);
        assert_eq!(f.admit(&c, 0, 900), Verdict::Pass);
        match f.admit(&c, 0, 600) {
            Verdict::Delay(d) => assert!((d.as_secs_f32() - 0.5).abs() < 0.01, "{d:?}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(f.violations, 0, "delay is not a violation");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let c = FlowConfig {
            frames_per_s: 0,
            bytes_per_s: 0,
            ..FlowConfig::default()
        };
        let mut f = Flow::new(&c, 0);
        for _ in 0..10_000 {
            assert_eq!(f.admit(&c, 0, 60_000), Verdict::Pass);
        }
    }

    #[test]
    fn clock_wrap_does_not_break_refill() {
        let c = cfg(ThrottleAction::Drop);
        let mut f = Flow::new(&c, u32::MAX - 10);
        for _ in 0..5 {
            f.admit(&c, u32::MAX - 10, 20);
        }
        assert_eq!(f.admit(&c, 190, 20), Verdict::Pass);
    }
}
