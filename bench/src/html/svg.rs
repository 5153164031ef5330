//! Hand-written inline SVG charts for the HTML report: a line chart (values
//! over time, figures against N) and a grouped bar chart (percentiles).
//! No script, no external reference: the page must open offline. Inline SVG
//! in HTML5 needs no `xmlns`, so none is written. Every label is escaped;
//! values that cannot be drawn (NaN, infinite, ≤ 0 on a log axis) are left
//! out, never a panic.

mod axis;

use super::escape;
use axis::Scale;
pub use axis::Unit;

/// Width of every chart, and height of one with a one-row legend, in CSS pixels.
const WIDTH: f64 = 680.0;
const HEIGHT: f64 = 300.0;
/// Room left of, right of and under the plot for tick labels and axis titles.
const LEFT: f64 = 78.0;
const RIGHT: f64 = 16.0;
const BOTTOM: f64 = 44.0;
/// Baseline of the first legend row, and the height of each row.
const LEGEND_Y: f64 = 37.0;
const LEGEND_ROW: f64 = 16.0;
/// Points per series beyond which a line chart keeps every k-th point:
/// a hostile or huge input must not make a page of megabytes.
const MAX_POINTS: usize = 2000;
/// Series colours (colour-blind safe, Okabe–Ito).
const PALETTE: [&str; 7] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000",
];

/// A named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart: one or more series against a shared x axis.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X axis label and unit.
    pub x_label: String,
    /// Unit of the x values.
    pub x_unit: Unit,
    /// Y axis label.
    pub y_label: String,
    /// Unit of the y values.
    pub y_unit: Unit,
    /// Log-scale y axis.
    pub log_y: bool,
    /// Log-scale x axis (N from thousands to a million).
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// One category of a bar chart: a value per series (None: no bar).
#[derive(Debug, Clone)]
pub struct BarGroup {
    /// Category label under the group (`p99`).
    pub label: String,
    /// One value per series, in the chart's series order.
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart: categories along x, a bar per series in each.
#[derive(Debug, Clone)]
pub struct BarChart {
    /// Title above the plot.
    pub title: String,
    /// Y axis label.
    pub y_label: String,
    /// Unit of the values.
    pub y_unit: Unit,
    /// Log-scale y axis.
    pub log_y: bool,
    /// Legend entries, one per value of each group.
    pub series: Vec<String>,
    /// The categories.
    pub groups: Vec<BarGroup>,
}

/// Where a chart's plot sits, once its legend is laid out.
struct Frame {
    /// Top of the plot area.
    top: f64,
    /// Height of the whole chart.
    height: f64,
    /// Bottom of the plot area.
    bottom: f64,
}

/// The chart as an inline `<svg>` element.
pub fn line_chart(c: &LineChart) -> String {
    let series: Vec<Series> = c
        .series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: thin(&s.points),
        })
        .collect();
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    let (f, mut out) = open(&c.title, &names);
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let x = Scale::fit(xs, c.log_x, c.x_unit, LEFT, WIDTH - RIGHT);
    let y = Scale::fit(ys, c.log_y, c.y_unit, f.bottom, f.top);
    let (Some(x), Some(y)) = (x, y) else {
        return close(out, &f, "no drawable values");
    };
    y_axis(&mut out, &f, &y, c.y_unit, &c.y_label);
    x_axis(&mut out, &f, &x, c.x_unit, &c.x_label);
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64, f64, f64)> = s
            .points
            .iter()
            .filter_map(|&(vx, vy)| Some((x.map(vx)?, y.map(vy)?, vx, vy)))
            .collect();
        // Several points at one x (two runs of the same N): the line goes
        // through their mean, each point keeps its marker.
        let mut path: Vec<(f64, f64, usize)> = Vec::new();
        for &(px, py, ..) in &pts {
            match path.last_mut() {
                Some((lx, sum, n)) if *lx == px => {
                    *sum += py;
                    *n += 1;
                }
                _ => path.push((px, py, 1)),
            }
        }
        if path.len() > 1 {
            let line: Vec<String> = path
                .iter()
                .map(|(px, sum, n)| format!("{px:.1},{:.1}", sum / *n as f64))
                .collect();
            out.push_str(&format!(
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                line.join(" ")
            ));
        }
        // Markers carry the exact value as a tooltip (few points) or mark a
        // lone point that no line joins.
        if pts.len() <= 60 {
            for (px, py, vx, vy) in &pts {
                out.push_str(&format!(
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="{colour}"><title>{}: {}, {}</title></circle>"#,
                    escape(&s.name),
                    escape(&c.x_unit.exact(*vx)),
                    escape(&c.y_unit.exact(*vy)),
                ));
            }
        }
    }
    close(out, &f, "")
}

/// The chart as an inline `<svg>` element.
pub fn bar_chart(c: &BarChart) -> String {
    let names: Vec<&str> = c.series.iter().map(String::as_str).collect();
    let (f, mut out) = open(&c.title, &names);
    let values = c
        .groups
        .iter()
        .flat_map(|g| g.values.iter().take(names.len()).flatten().copied());
    let y = Scale::fit(values, c.log_y, c.y_unit, f.bottom, f.top);
    let Some(y) = y.filter(|_| !c.groups.is_empty()) else {
        return close(out, &f, "no drawable values");
    };
    y_axis(&mut out, &f, &y, c.y_unit, &c.y_label);
    let slot = (WIDTH - LEFT - RIGHT) / c.groups.len() as f64;
    let per = c.series.len().max(1);
    let bar = (slot * 0.8 / per as f64).min(40.0);
    // Bars rise from the bottom of the plot (log) or from zero (linear).
    let base = if y.log {
        f.bottom
    } else {
        y.map(0.0).unwrap_or(f.bottom)
    };
    for (gi, g) in c.groups.iter().enumerate() {
        let centre = LEFT + slot * (gi as f64 + 0.5);
        let x0 = centre - bar * per as f64 / 2.0;
        for (si, v) in g.values.iter().enumerate().take(per) {
            let Some((v, top)) = v.and_then(|v| Some((v, y.map(v)?))) else {
                continue;
            };
            let (ty, h) = if top <= base {
                (top, base - top)
            } else {
                (base, top - base)
            };
            let series = c.series.get(si).map_or("", String::as_str);
            out.push_str(&format!(
                r#"<rect x="{:.1}" y="{ty:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                x0 + bar * si as f64,
                (bar - 1.0).max(1.0),
                h.max(0.5),
                PALETTE[si % PALETTE.len()],
                escape(series),
                escape(&g.label),
                escape(&c.y_unit.exact(v)),
            ));
        }
        out.push_str(&format!(
            r#"<text x="{centre:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            f.bottom + 16.0,
            escape(&g.label)
        ));
    }
    close(out, &f, "")
}

/// Every k-th point of a long series, the last one kept.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let k = points.len().div_ceil(MAX_POINTS);
    let mut out: Vec<_> = points.iter().step_by(k).copied().collect();
    if let Some(last) = points.last() {
        out.push(*last);
    }
    out
}

/// Starts the chart: background, title, and a legend wrapped onto as many
/// rows as it needs (which pushes the plot down).
fn open(title: &str, names: &[&str]) -> (Frame, String) {
    let mut legend = String::new();
    let (mut x, mut row) = (LEFT, 0usize);
    for (i, name) in names.iter().enumerate() {
        let name: String = name.chars().take(60).collect();
        // About 6.5 px per character at the 11 px chart font; 7 leaves room
        // for a wider fallback font.
        let w = 28.0 + 7.0 * name.chars().count() as f64;
        if x > LEFT && x + w > WIDTH - RIGHT {
            x = LEFT;
            row += 1;
        }
        let y = LEGEND_Y + LEGEND_ROW * row as f64;
        legend.push_str(&format!(
            r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 9.0,
            PALETTE[i % PALETTE.len()],
            x + 14.0,
            escape(&name)
        ));
        x += w;
    }
    let extra = LEGEND_ROW * row as f64;
    let f = Frame {
        top: 48.0 + extra,
        height: HEIGHT + extra,
        bottom: HEIGHT + extra - BOTTOM,
    };
    let out = format!(
        r##"<svg class="chart" viewBox="0 0 {WIDTH} {h}" width="{WIDTH}" height="{h}" role="img" aria-label="{t}"><rect x="0" y="0" width="{WIDTH}" height="{h}" fill="#fff"/><text class="title" x="{LEFT}" y="18">{t}</text>{legend}"##,
        h = f.height,
        t = escape(title)
    );
    (f, out)
}

/// Ends the chart, with `note` across the plot when nothing was drawn.
fn close(mut out: String, f: &Frame, note: &str) -> String {
    if !note.is_empty() {
        out.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            WIDTH / 2.0,
            (f.top + f.bottom) / 2.0,
            escape(note)
        ));
    }
    out.push_str("</svg>");
    out
}

fn y_axis(out: &mut String, f: &Frame, y: &Scale, unit: Unit, label: &str) {
    out.push_str(&format!(
        r##"<line x1="{LEFT}" y1="{t}" x2="{LEFT}" y2="{b}" stroke="#444"/><text x="12" y="{m:.1}" text-anchor="middle" transform="rotate(-90 12 {m:.1})">{}</text>"##,
        escape(label),
        t = f.top,
        b = f.bottom,
        m = (f.top + f.bottom) / 2.0,
    ));
    for t in y.ticks() {
        if let Some(py) = y.map(t) {
            out.push_str(&format!(
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 4.0,
                py + 4.0,
                escape(&unit.label(t))
            ));
        }
    }
}

fn x_axis(out: &mut String, f: &Frame, x: &Scale, unit: Unit, label: &str) {
    let b = f.bottom;
    out.push_str(&format!(
        r##"<line x1="{LEFT}" y1="{b}" x2="{:.1}" y2="{b}" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        WIDTH - RIGHT,
        (LEFT + WIDTH - RIGHT) / 2.0,
        f.height - 6.0,
        escape(label)
    ));
    for t in x.ticks() {
        if let Some(px) = x.map(t) {
            out.push_str(&format!(
                r##"<line x1="{px:.1}" y1="{b}" x2="{px:.1}" y2="{:.1}" stroke="#444"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                b + 4.0,
                b + 16.0,
                escape(&unit.label(t))
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: Vec<(f64, f64)>, log_y: bool) -> String {
        line_chart(&LineChart {
            title: "t".into(),
            x_label: "x".into(),
            x_unit: Unit::Seconds,
            y_label: "y".into(),
            y_unit: Unit::Bytes,
            log_y,
            log_x: false,
            series: vec![Series {
                name: "s".into(),
                points,
            }],
        })
    }

    #[test]
    fn a_line_chart_draws_its_points() {
        let svg = line(vec![(0.0, 1.0), (1.0, 2048.0), (2.0, 4096.0)], false);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(svg.contains("4 KiB"), "{svg}");
    }

    #[test]
    fn odd_values_are_skipped_not_drawn_or_panicked_on() {
        let odd = vec![
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
            (2.0, -5.0),
            (3.0, 0.0),
            (f64::MAX, f64::MAX),
            (-f64::MAX, f64::MIN_POSITIVE),
        ];
        for log in [false, true] {
            let svg = line(odd.clone(), log);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
        assert!(line(vec![], true).contains("no drawable values"));
        assert!(line(vec![(1.0, -1.0)], true).contains("no drawable values"));
        let bars = bar_chart(&BarChart {
            title: "b".into(),
            y_label: "µs".into(),
            y_unit: Unit::Micros,
            log_y: true,
            series: vec!["a".into()],
            groups: vec![
                BarGroup {
                    label: "p50".into(),
                    values: vec![Some(f64::NAN), Some(3.0), Some(4.0)],
                },
                BarGroup {
                    label: "p99".into(),
                    values: vec![Some(-1.0)],
                },
                BarGroup {
                    label: "max".into(),
                    values: vec![],
                },
            ],
        });
        assert!(!bars.contains("NaN"), "{bars}");
        assert_eq!(
            bars.matches("<rect").count(),
            2,
            "background and legend only: {bars}"
        );
    }

    #[test]
    fn log_bars_span_whole_decades() {
        let svg = bar_chart(&BarChart {
            title: "latency".into(),
            y_label: "µs".into(),
            y_unit: Unit::Micros,
            log_y: true,
            series: vec!["a".into(), "b".into()],
            groups: vec![BarGroup {
                label: "p99".into(),
                values: vec![Some(350.0), Some(1_200_000.0)],
            }],
        });
        for tick in ["100 µs", "1 ms", "10 s"] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
        assert!(svg.contains("<title>b p99: 1,200,000 µs</title>"), "{svg}");
        // Two decades or fewer get 2× and 5× ticks too.
        let narrow = bar_chart(&BarChart {
            title: "latency".into(),
            y_label: "µs".into(),
            y_unit: Unit::Micros,
            log_y: true,
            series: vec!["a".into()],
            groups: vec![BarGroup {
                label: "p99".into(),
                values: vec![Some(150_000.0), Some(700_000.0)],
            }],
        });
        for tick in [">100 ms<", ">200 ms<", ">500 ms<", ">1 s<"] {
            assert!(narrow.contains(tick), "{tick}: {narrow}");
        }
    }

    #[test]
    fn labels_are_escaped() {
        let hostile = line_chart(&LineChart {
            title: "<script>alert(1)</script>".into(),
            x_label: "\"x\"".into(),
            x_unit: Unit::Plain,
            y_label: "y & z".into(),
            y_unit: Unit::Plain,
            log_y: false,
            log_x: false,
            series: vec![Series {
                name: "</svg><img src=x>".into(),
                points: vec![(0.0, 1.0)],
            }],
        });
        assert!(
            !hostile.contains("<script") && !hostile.contains("<img"),
            "{hostile}"
        );
        assert!(hostile.contains("&lt;script&gt;") && hostile.contains("y &amp; z"));
        assert_eq!(hostile.matches("</svg>").count(), 1);
    }

    #[test]
    fn byte_axes_step_in_binary_units_and_long_legends_wrap() {
        let svg = line(vec![(0.0, 9_000_000.0), (1.0, 36_000_000.0)], false);
        for tick in [">10 MiB<", ">20 MiB<", ">30 MiB<"] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
        let many: Vec<Series> = (0..8)
            .map(|i| Series {
                name: format!("a rather long series name {i}"),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            })
            .collect();
        let wrapped = line_chart(&LineChart {
            title: "t".into(),
            x_label: "x".into(),
            x_unit: Unit::Plain,
            y_label: "y".into(),
            y_unit: Unit::Plain,
            log_y: false,
            log_x: false,
            series: many,
        });
        assert!(
            !wrapped.contains(&format!(r#"height="{HEIGHT}""#)),
            "{wrapped}"
        );
    }

    #[test]
    fn long_series_are_thinned() {
        let pts: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 1.0 + i as f64)).collect();
        let svg = line(pts, true);
        assert!(svg.len() < 100_000, "{} bytes", svg.len());
    }
}
