//! Axes of the report's charts: how a value maps onto pixels (linear from
//! zero in round steps, binary ones for bytes; or logarithmic in whole
//! decades), which ticks to draw, and how a value prints (`Unit`).

use crate::html::fmt_num;

/// How axis ticks and tooltips print a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds, ticks as µs / ms / s.
    Micros,
    /// Bytes, ticks as B / KiB / MiB / GiB (on binary steps).
    Bytes,
    /// Seconds.
    Seconds,
    /// A plain number.
    Plain,
}

impl Unit {
    /// `v` as a tick label: short, with its unit.
    pub fn label(self, v: f64) -> String {
        if !v.is_finite() {
            return "—".into();
        }
        let a = v.abs();
        match self {
            Unit::Micros if a >= 1e6 => format!("{} s", short(v / 1e6)),
            Unit::Micros if a >= 1e3 => format!("{} ms", short(v / 1e3)),
            Unit::Micros => format!("{} µs", short(v)),
            Unit::Bytes => {
                let (div, name) = binary(a);
                format!("{} {name}", short(v / div))
            }
            Unit::Seconds => format!("{} s", short(v)),
            Unit::Plain if a >= 1e6 => format!("{}M", short(v / 1e6)),
            Unit::Plain if a >= 1e3 => format!("{}k", short(v / 1e3)),
            Unit::Plain => short(v),
        }
    }

    /// `v` in full for a tooltip: grouped digits and the unit.
    pub fn exact(self, v: f64) -> String {
        let n = fmt_num(v);
        match self {
            Unit::Micros => format!("{n} µs"),
            Unit::Bytes if v.abs() >= 1024.0 => format!("{n} B ({})", self.label(v)),
            Unit::Bytes => format!("{n} B"),
            Unit::Seconds => format!("{n} s"),
            Unit::Plain => n,
        }
    }
}

/// The binary unit `a` bytes read best in, and its name.
fn binary(a: f64) -> (f64, &'static str) {
    const K: f64 = 1024.0;
    if a >= K * K * K {
        (K * K * K, "GiB")
    } else if a >= K * K {
        (K * K, "MiB")
    } else if a >= K {
        (K, "KiB")
    } else {
        (1.0, "B")
    }
}

/// At most three significant digits, no trailing zeros.
fn short(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Maps values of one axis onto pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scale {
    lo: f64,
    hi: f64,
    /// Logarithmic.
    pub(super) log: bool,
    /// Distance between linear ticks.
    step: f64,
    /// Pixel of `lo` and of `hi`.
    from: f64,
    to: f64,
}

impl Scale {
    /// A scale covering every drawable value of `values` (a log scale
    /// ignores values ≤ 0); None when nothing is drawable. Linear scales
    /// start at zero and step in round numbers (binary ones for bytes).
    pub(super) fn fit(
        values: impl Iterator<Item = f64>,
        log: bool,
        unit: Unit,
        from: f64,
        to: f64,
    ) -> Option<Scale> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            return None;
        }
        let (lo, hi, step) = if log {
            let lo = 10f64.powf(lo.log10().floor());
            let hi = 10f64.powf(hi.log10().ceil());
            (lo, if hi <= lo { lo * 10.0 } else { hi }, 0.0)
        } else {
            let lo = lo.min(0.0);
            let hi = hi.max(0.0);
            if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
                (lo, lo + 1.0, 0.2)
            } else {
                let div = if unit == Unit::Bytes {
                    binary(hi.abs().max(lo.abs())).0
                } else {
                    1.0
                };
                let step = nice_step((hi - lo) / 5.0 / div) * div;
                ((lo / step).floor() * step, (hi / step).ceil() * step, step)
            }
        };
        (lo.is_finite() && hi.is_finite() && hi > lo).then_some(Scale {
            lo,
            hi,
            log,
            step,
            from,
            to,
        })
    }

    /// The pixel of `v`, None if it cannot be drawn on this scale.
    pub(super) fn map(&self, v: f64) -> Option<f64> {
        if !v.is_finite() || (self.log && v <= 0.0) {
            return None;
        }
        let f = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        let px = self.from + f.clamp(-0.05, 1.05) * (self.to - self.from);
        px.is_finite().then_some(px)
    }

    /// Tick values: powers of ten (with 2× and 5× over at most two
    /// decades), or about five round steps.
    pub(super) fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().round() as i32,
                self.hi.log10().round() as i32,
            );
            // A span of more than ~12 decades labels every other decade.
            let every = if b - a > 12 { 2 } else { 1 };
            let mults: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            (a..=b)
                .step_by(every)
                .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
                .filter(|t| *t <= self.hi * (1.0 + 1e-9))
                .collect()
        } else {
            let step = if self.step > 0.0 {
                self.step
            } else {
                nice_step((self.hi - self.lo) / 5.0)
            };
            let mut v = self.lo;
            let mut out = Vec::new();
            while v <= self.hi + step * 1e-9 && out.len() < 20 {
                out.push(v);
                v += step;
            }
            out
        }
    }
}

/// 1, 2 or 5 × 10^k closest above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_print_short() {
        assert_eq!(Unit::Micros.label(1_500.0), "1.5 ms");
        assert_eq!(Unit::Micros.label(250.0), "250 µs");
        assert_eq!(Unit::Bytes.label(1443.0), "1.41 KiB");
        assert_eq!(Unit::Plain.label(246_254.0), "246k");
        assert_eq!(Unit::Plain.label(5_000.0), "5k");
        assert_eq!(Unit::Plain.label(f64::NAN), "—");
        assert_eq!(Unit::Bytes.exact(1443.0), "1,443 B (1.41 KiB)");
        assert_eq!(Unit::Micros.exact(1_187_839.0), "1,187,839 µs");
    }

    #[test]
    fn scales_skip_what_they_cannot_draw() {
        let s = Scale::fit(
            [1.0, 10.0, f64::NAN, -3.0].into_iter(),
            true,
            Unit::Plain,
            0.0,
            100.0,
        )
        .unwrap();
        assert_eq!((s.map(1.0), s.map(10.0)), (Some(0.0), Some(100.0)));
        assert_eq!((s.map(0.0), s.map(f64::NAN)), (None, None));
        assert!(Scale::fit([-1.0, 0.0].into_iter(), true, Unit::Plain, 0.0, 1.0).is_none());
        let b = Scale::fit([1443.0, 1933.0].into_iter(), false, Unit::Bytes, 0.0, 1.0).unwrap();
        assert_eq!(b.ticks(), vec![0.0, 512.0, 1024.0, 1536.0, 2048.0]);
    }
}
