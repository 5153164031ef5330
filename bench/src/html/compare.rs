//! Figures set side by side: Tidegate against a peer server (`bench peers`,
//! the ratios and whether each target of issue 7 is met), and memory per
//! connection against N across every idle and peers file given.

use super::kinds::{self, Kind, Pct};
use super::svg::{self, LineChart, Series, Unit};
use super::{fmt_num, num, show, text, Cell, Input, Page};
use serde_json::Value;
use std::collections::BTreeMap;

/// The sections that need several files: memory against N, the peers table.
pub fn sections(page: &mut Page, inputs: &[Input], kinds: &[Kind]) {
    memory_vs_n(page, inputs, kinds);
    peers_table(page, inputs, kinds);
}

/// One comparison of a peers file: Tidegate's figure, the peer's, the ratio
/// and the target it is held to.
struct Ratio {
    figure: &'static str,
    tidegate: Option<f64>,
    peer: Option<f64>,
    ratio: Option<f64>,
    target: &'static str,
    met: Option<bool>,
}

/// The three ratios of issue 7 for one peers file. The verdict is the one
/// bench wrote (`targets`); computed from the ratio only when it is absent.
fn ratios(v: &Value) -> [Ratio; 3] {
    let pair = |path: &[&str]| {
        let mut t = vec!["tidegate"];
        let mut p = vec!["peer"];
        t.extend_from_slice(path);
        p.extend_from_slice(path);
        (num(v, &t), num(v, &p))
    };
    let ratio = |t: Option<f64>, p: Option<f64>, field: &str| match (t, p) {
        (Some(t), Some(p)) if p != 0.0 => Some(t / p).filter(|r| r.is_finite()),
        _ => num(v, &["ratios", field]),
    };
    let verdict = |field: &str, computed: Option<bool>| {
        v.get("targets")
            .and_then(|t| t.get(field))
            .and_then(Value::as_bool)
            .or(computed)
    };
    let (bt, bp) = pair(&["idle", "bytes_per_conn"]);
    let (ft, fp) = pair(&["fanout", "msgs_per_s"]);
    let (lt, lp) = pair(&["fanout", "latency", "p99_us"]);
    let (br, fr, lr) = (
        ratio(bt, bp, "bytes_per_conn"),
        ratio(ft, fp, "fanout_msgs_per_s"),
        ratio(lt, lp, "p99"),
    );
    [
        Ratio {
            figure: "bytes per connection",
            tidegate: bt,
            peer: bp,
            ratio: br,
            target: "< 1× (less memory)",
            met: verdict("less_memory_per_conn", br.map(|r| r < 1.0)),
        },
        Ratio {
            figure: "fan-out deliveries/s",
            tidegate: ft,
            peer: fp,
            ratio: fr,
            target: "≥ 2×",
            met: verdict("fanout_at_least_2x", fr.map(|r| r >= 2.0)),
        },
        Ratio {
            figure: "delivery p99, µs",
            tidegate: lt,
            peer: lp,
            ratio: lr,
            target: "≤ 1×",
            met: verdict("p99_at_most_peers", lr.map(|r| r <= 1.0)),
        },
    ]
}

/// The peer's name for headings: `Mosquitto` from `peer_kind`.
fn peer_name(v: &Value) -> String {
    let kind = text(v, &["peer_kind"]).unwrap_or_else(|| "peer".into());
    let mut chars = kind.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "peer".into(),
    }
}

fn verdict_cell(text: String, met: Option<bool>) -> Cell {
    match met {
        Some(true) => Cell::with_class(text, "good"),
        Some(false) => Cell::with_class(text, "bad"),
        None => Cell::num(text),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), fmt_num)
}

fn times(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
}

/// Every peers file in one table, as bench/README.md's.
fn peers_table(page: &mut Page, inputs: &[Input], kinds: &[Kind]) {
    let files: Vec<(usize, &Input)> = inputs
        .iter()
        .enumerate()
        .filter(|(i, _)| kinds[*i] == Kind::Peers)
        .collect();
    if files.is_empty() {
        return;
    }
    page.tag("h2", "Tidegate : peers");
    page.tag(
        "p",
        "Tidegate's figure : the peer's (ratio). Targets: Tidegate at least 2× the peer's deliveries/s at no more than its p99, with less memory per connection. Green: met; red: missed.",
    );
    let rows: Vec<Vec<Cell>> = files
        .iter()
        .map(|(i, input)| {
            let v = &input.value;
            let mut row = vec![
                Cell::link(format!("#f-{i}"), input.name.clone()),
                peer_name(v).into(),
                Cell::num(show(v, &["plan", "connections"])),
                Cell::num(show(v, &["plan", "in_flight"])),
            ];
            for r in ratios(v) {
                let t = format!("{} : {} ({})", opt(r.tidegate), opt(r.peer), times(r.ratio));
                row.push(verdict_cell(t, r.met));
            }
            let all = v
                .get("targets")
                .and_then(|t| t.get("all_delivered"))
                .and_then(Value::as_bool);
            row.push(verdict_cell(
                all.map_or("—", |a| if a { "yes" } else { "no" }).into(),
                all,
            ));
            row
        })
        .collect();
    page.table(
        &[
            "file",
            "peer",
            "N",
            "in flight",
            "bytes/conn",
            "deliveries/s",
            "p99, µs",
            "all delivered",
        ],
        &rows,
    );
}

/// A peers file's own section: plan, both sides' figures, latencies, ratios.
pub fn peers_section(page: &mut Page, v: &Value) {
    let peer = peer_name(v);
    if let Some(plan) = kinds::object_at(v, &["plan"]) {
        page.tag("h3", "Plan");
        let rows: Vec<Vec<Cell>> = plan
            .iter()
            .map(|(k, f)| vec![k.as_str().into(), kinds::figure(k, f)])
            .collect();
        page.table(&["figure", "value"], &rows);
    }
    page.tag("h3", "Ratios and targets");
    let rows: Vec<Vec<Cell>> = ratios(v)
        .into_iter()
        .map(|r| {
            vec![
                r.figure.into(),
                Cell::num(opt(r.tidegate)),
                Cell::num(opt(r.peer)),
                Cell::num(times(r.ratio)),
                r.target.into(),
                verdict_cell(
                    r.met
                        .map_or("—", |m| if m { "met" } else { "missed" })
                        .into(),
                    r.met,
                ),
            ]
        })
        .collect();
    let peer_col = peer.clone();
    page.table(
        &[
            "figure",
            "Tidegate",
            &peer_col,
            "Tidegate : peer",
            "target",
            "",
        ],
        &rows,
    );

    page.tag("h3", "Both sides");
    const FIGURES: [(&str, &str, &str); 14] = [
        ("server", "server", ""),
        ("requested", "idle", "requested"),
        ("held", "idle", "held"),
        ("open_rate_per_s", "idle", "open_rate_per_s"),
        ("rss_before", "idle", "rss_before"),
        ("rss_idle", "idle", "rss_idle"),
        ("bytes_per_conn", "idle", "bytes_per_conn"),
        ("failures", "idle", "failures"),
        ("expected", "fanout", "expected"),
        ("delivered", "fanout", "delivered"),
        ("receive_failures", "fanout", "receive_failures"),
        ("msgs_per_s", "fanout", "msgs_per_s"),
        ("server_cpu_s", "fanout", "server_cpu_s"),
        ("bench_cpu_s", "fanout", "bench_cpu_s"),
    ];
    let rows: Vec<Vec<Cell>> = FIGURES
        .iter()
        .map(|(label, a, b)| {
            let path: Vec<&str> = [*a, *b].into_iter().filter(|s| !s.is_empty()).collect();
            let side = |s: &str| {
                let mut p = vec![s];
                p.extend_from_slice(&path);
                super::get(v, &p).map_or_else(|| "—".into(), |f| kinds::figure(label, f))
            };
            vec![(*label).into(), side("tidegate"), side("peer")]
        })
        .collect();
    page.table(&["figure", "Tidegate", &peer], &rows);

    // One chart per measurement, Tidegate's bars beside the peer's.
    let mut rows = Vec::new();
    let mut charts = Vec::new();
    for (what, path) in [
        ("delivery", ["fanout", "latency"]),
        ("send → accepted", ["fanout", "send_latency"]),
        ("connect", ["idle", "open_latency"]),
    ] {
        let pair: Vec<(String, Pct)> = [("tidegate", "Tidegate"), ("peer", peer.as_str())]
            .into_iter()
            .filter_map(|(side, name)| {
                let p = super::get(v, &[side, path[0], path[1]]).and_then(Pct::of)?;
                Some((format!("{name} {what}"), p))
            })
            .collect();
        if !pair.is_empty() {
            charts.push(kinds::latency_chart(&format!("Latency: {what}"), &pair));
            rows.extend(pair);
        }
    }
    if !rows.is_empty() {
        kinds::latency_table(page, "Latency", &rows);
        for chart in charts {
            page.raw(&chart);
        }
    }
}

/// Bytes per connection against N, from idle files (gateway RSS) and peers
/// files (each side), drawn when the files hold at least two different N.
fn memory_vs_n(page: &mut Page, inputs: &[Input], kinds: &[Kind]) {
    // series name → (N, bytes/conn, file index)
    let mut series: BTreeMap<String, Vec<(f64, f64, usize)>> = BTreeMap::new();
    for (i, (input, kind)) in inputs.iter().zip(kinds).enumerate() {
        let v = &input.value;
        match kind {
            Kind::Idle => {
                // After the hold (connections parked) where the file has it.
                let bytes = num(v, &["gateway_bytes_per_conn_end"])
                    .or_else(|| num(v, &["gateway_bytes_per_conn"]));
                if let (Some(n), Some(b)) = (num(v, &["logged_in"]), bytes) {
                    series
                        .entry("Tidegate gateway (bench idle)".into())
                        .or_default()
                        .push((n, b, i));
                }
            }
            Kind::Peers => {
                let n = num(v, &["plan", "connections"]);
                for (side, name) in [("tidegate", "Tidegate".to_string()), ("peer", peer_name(v))] {
                    let n = num(v, &[side, "idle", "held"]).or(n);
                    // Named by the server line, which tells `tidegate up` from a
                    // gateway process measured alone.
                    let server = text(v, &[side, "server"]).unwrap_or(name);
                    if let (Some(n), Some(b)) = (n, num(v, &[side, "idle", "bytes_per_conn"])) {
                        series
                            .entry(format!("{server} (bench peers)"))
                            .or_default()
                            .push((n, b, i));
                    }
                }
            }
            _ => {}
        }
    }
    let mut ns: Vec<f64> = series.values().flatten().map(|p| p.0).collect();
    ns.sort_by(f64::total_cmp);
    ns.dedup();
    if ns.len() < 2 {
        return;
    }
    page.tag("h2", "Memory per connection against N");
    page.tag(
        "p",
        "User-space bytes per held connection: the server's RSS with every connection idle, less its RSS before, over N.",
    );
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (name, points) in &mut series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for (n, b, i) in points.iter() {
            rows.push(vec![
                name.as_str().into(),
                Cell::num(fmt_num(*n)),
                Cell::num(fmt_num(*b)),
                Cell::link(format!("#f-{i}"), inputs[*i].name.clone()),
            ]);
        }
        lines.push(Series {
            name: name.clone(),
            points: points.iter().map(|(n, b, _)| (*n, *b)).collect(),
        });
    }
    // N from thousands to a million reads on a log axis; a few 10k apart, linear.
    let log_x = ns
        .first()
        .zip(ns.last())
        .is_some_and(|(lo, hi)| *lo > 0.0 && hi / lo > 20.0);
    page.raw(&svg::line_chart(&LineChart {
        title: "Bytes per connection against N".into(),
        x_label: "connections held (N)".into(),
        x_unit: Unit::Plain,
        y_label: "bytes per connection".into(),
        y_unit: Unit::Bytes,
        log_y: false,
        log_x,
        series: lines,
    }));
    page.table(&["server", "N", "bytes/conn", "file"], &rows);
}
