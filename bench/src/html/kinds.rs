//! What each scenario's JSON is and how its section of the report reads:
//! the kind told by the fields a file has (not by its name), a one-line
//! headline, a summary table, latency percentiles as a table and a log-scale
//! chart, values over time where the file has samples. A file of no known
//! kind gets the generic key/value table.

use super::svg::{self, BarChart, BarGroup, LineChart, Series, Unit};
use super::{cut, fmt_num, get, num, scalar, show, text, Cell, Input, Page};
use serde_json::Value;

/// A scenario's report, as told by its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bench idle`: memory per held connection.
    Idle,
    /// `bench connect`: the login storm.
    Connect,
    /// `bench push`, closed loop: batches, targets/s.
    Push,
    /// `bench push --rate`: latency at a rate.
    PushRate,
    /// `bench broadcast`: fan-out to all.
    Broadcast,
    /// `bench c2s`: device ingest.
    C2s,
    /// `bench peers`: Tidegate against another server.
    Peers,
    /// `bench floor`: the kernel's own cost, no server.
    Floor,
    /// `bench hiccup`: how long the host keeps a busy thread from its CPU.
    Hiccup,
    /// Anything else.
    Unknown,
}

impl Kind {
    /// The kind of a report, from the fields only its scenario writes.
    pub fn of(v: &Value) -> Kind {
        let has = |k: &str| v.get(k).is_some();
        if has("tidegate") && has("peer") && (has("ratios") || has("targets")) {
            Kind::Peers
        } else if has("broadcast_bound_s") && has("login_bound_per_s") {
            Kind::Floor
        } else if has("stalls_over_5ms") && has("busy_us") {
            Kind::Hiccup
        } else if has("ingest_per_s") || has("ack_latency") {
            Kind::C2s
        } else if has("time_to_last") || has("per_message") {
            Kind::Broadcast
        } else if has("requests_scheduled") || has("achieved_rate_per_s") || has("sender_lag") {
            Kind::PushRate
        } else if has("targets_per_s") || has("targets_sent") {
            Kind::Push
        } else if has("logins_per_s") && has("connect_latency") {
            Kind::Connect
        } else if has("gateway_bytes_per_conn") || (has("samples") && has("login_latency")) {
            Kind::Idle
        } else {
            Kind::Unknown
        }
    }

    /// The kind's short name (`peers-mosquitto`).
    pub fn name(self, v: &Value) -> String {
        match self {
            Kind::Idle => "idle".into(),
            Kind::Connect => "connect".into(),
            Kind::Push => "push".into(),
            Kind::PushRate => "push-rate".into(),
            Kind::Broadcast => "broadcast".into(),
            Kind::C2s => "c2s".into(),
            Kind::Peers => match text(v, &["peer_kind"]) {
                Some(p) => format!("peers-{p}"),
                None => "peers".into(),
            },
            Kind::Floor => "floor".into(),
            Kind::Hiccup => "hiccup".into(),
            Kind::Unknown => "unknown".into(),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Idle => "N clients logged in and held idle: what a connection costs the gateway (RSS delta / N) and the kernel.",
            Kind::Connect => "Connect+login storm: logins per second, failures by reason, login and TCP connect latency.",
            Kind::Push => "Closed-loop HTTP push → client socket: batches in flight, delivered targets per second, push→socket and HTTP latency.",
            Kind::PushRate => "Open-loop single-target pushes on a fixed schedule: achieved rate and latency from each push's due instant (sender lag: bench starting late).",
            Kind::Broadcast => "Pushes to \"all\": deliveries per message, per-client delivery latency and the time to the last client's receipt.",
            Kind::C2s => "Ack-requested C2S from N clients: acked frames per second, ack latency, errors by code.",
            Kind::Peers => "Tidegate and a peer server measured one after the other with the same plan: memory per connection, fan-out deliveries per second, delivery latency, and their ratios against the targets.",
            Kind::Floor => "The kernel alone: loopback connect, a login-sized round trip and a one-frame fan-out over N socket pairs with no server in between, CPU per operation, and the logins/s and broadcast time no server could beat on this host.",
            Kind::Hiccup => "No server: a pinned probe per CPU alternating a spin and a short sleep, like a loaded shard; how late each wake-up was, and the host's open file handles.",
            Kind::Unknown => "No known scenario's fields: every field as it is.",
        }
    }
}

/// One line that says what a file found, for the overview.
pub fn headline(kind: Kind, v: &Value) -> String {
    let p99 = |k: &str| Unit::Micros.label(num(v, &[k, "p99_us"]).unwrap_or(f64::NAN));
    match kind {
        Kind::Idle => format!(
            "{} of {} held; gateway {} B/conn, {} after the hold; login p99 {}",
            show(v, &["logged_in"]),
            show(v, &["requested"]),
            show(v, &["gateway_bytes_per_conn"]),
            show(v, &["gateway_bytes_per_conn_end"]),
            p99("login_latency")
        ),
        Kind::Connect => format!(
            "{} of {} logged in at {}/s; login p99 {}",
            show(v, &["logged_in"]),
            show(v, &["requested"]),
            show(v, &["logins_per_s"]),
            p99("login_latency")
        ),
        Kind::Push => format!(
            "{} targets/s to {} clients; push→socket p99 {}",
            show(v, &["targets_per_s"]),
            show(v, &["connections"]),
            p99("latency")
        ),
        Kind::PushRate => format!(
            "{}/s asked, {}/s achieved; push→socket p99 {}",
            show(v, &["rate_per_s"]),
            show(v, &["achieved_rate_per_s"]),
            p99("latency")
        ),
        Kind::Broadcast => format!(
            "{} clients × {} messages; delivery p99 {}, time to last p99 {}",
            show(v, &["connections"]),
            show(v, &["messages"]),
            p99("delivery_latency"),
            p99("time_to_last")
        ),
        Kind::C2s => format!(
            "{} clients, {} acked/s; ack p99 {}",
            show(v, &["connections"]),
            show(v, &["ingest_per_s"]),
            p99("ack_latency")
        ),
        Kind::Peers => {
            let targets = v.get("targets").and_then(Value::as_object);
            let (met, of) = targets.map_or((0, 0), |t| {
                let known = t.values().filter_map(Value::as_bool);
                (known.clone().filter(|b| *b).count(), known.count())
            });
            format!(
                "{} connections; deliveries/s {} : {}; {met} of {of} targets met",
                show(v, &["plan", "connections"]),
                show(v, &["tidegate", "fanout", "msgs_per_s"]),
                show(v, &["peer", "fanout", "msgs_per_s"])
            )
        }
        Kind::Floor => format!(
            "{} pairs: at most {} logins/s, a broadcast in no less than {} s (fan-out took {} s)",
            show(v, &["pairs"]),
            show(v, &["login_bound_per_s"]),
            show(v, &["broadcast_bound_s"]),
            show(v, &["fanout_s"])
        ),
        Kind::Hiccup => format!(
            "{} s: wake-ups late by p99 {}, max {}; {} over 5 ms; {} open files on the host",
            show(v, &["duration_s"]),
            p99("stall"),
            Unit::Micros.label(num(v, &["stall", "max_us"]).unwrap_or(f64::NAN)),
            show(v, &["stalls_over_5ms"]),
            show(v, &["host_open_files_start"])
        ),
        Kind::Unknown => match v.as_object() {
            Some(m) => format!("{} top-level fields", m.len()),
            None => "not a JSON object".into(),
        },
    }
}

/// The file's section.
pub fn section(page: &mut Page, index: usize, input: &Input, kind: Kind) {
    let v = &input.value;
    page.raw(&format!("<section id=\"f-{index}\">"));
    page.raw(&format!(
        "<h2>{} <span class=\"kind\">{}</span></h2>\n",
        super::escape(&input.name),
        super::escape(&kind.name(v))
    ));
    page.tag("p", kind.what());
    match kind {
        Kind::Unknown => page.fields(v),
        Kind::Peers => {
            super::compare::peers_section(page, v);
            all_fields(page, v);
        }
        _ => {
            summary(page, v);
            let rows: Vec<(String, Pct)> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), Pct::of(v)?)))
                .collect();
            latencies(page, "Latency", &rows);
            if kind == Kind::Broadcast {
                per_message(page, v);
            }
            if kind == Kind::Floor {
                floor_costs(page, v);
            }
            time_series(page, v);
            all_fields(page, v);
        }
    }
    page.raw("</section>\n");
}

/// Top-level figures: numbers with their unit, counts by reason, text.
fn summary(page: &mut Page, v: &Value) {
    let Some(m) = v.as_object() else {
        return;
    };
    let rows: Vec<Vec<Cell>> = m
        .iter()
        .filter(|(_, f)| Pct::of(f).is_none() && !f.is_array())
        .map(|(k, f)| vec![k.as_str().into(), figure(k, f)])
        .collect();
    page.tag("h3", "Summary");
    page.table(&["figure", "value"], &rows);
}

/// A field's value with the unit its name gives it (`_us`, `_per_s`, `_s`, bytes).
pub(super) fn figure(key: &str, f: &Value) -> Cell {
    match f {
        Value::Number(_) => {
            let Some(n) = f.as_f64().filter(|n| n.is_finite()) else {
                return Cell::num(scalar(f));
            };
            let s = fmt_num(n);
            let text = if key.ends_with("_us") {
                format!("{s} µs")
            } else if key.ends_with("_per_s") {
                format!("{s} /s")
            } else if key.ends_with("_s") {
                format!("{s} s")
            } else if key.contains("bytes") || key.contains("rss") {
                if n.abs() >= 1024.0 {
                    format!("{s} B ({})", Unit::Bytes.label(n))
                } else {
                    format!("{s} B")
                }
            } else {
                s
            };
            Cell::num(text)
        }
        // Counts by reason (`failures`, `errors`): "refused 3, timeout 2".
        Value::Object(m) if m.values().all(|x| !x.is_object() && !x.is_array()) => {
            if m.is_empty() {
                "none".into()
            } else {
                let parts: Vec<String> = m
                    .iter()
                    .take(50)
                    .map(|(k, x)| format!("{} {}", cut(k), scalar(x)))
                    .collect();
                parts.join(", ").into()
            }
        }
        _ => scalar(f).into(),
    }
}

fn all_fields(page: &mut Page, v: &Value) {
    page.raw("<details><summary>All fields</summary>");
    page.fields(v);
    page.raw("</details>\n");
}

/// Latency percentiles of one measurement, µs (None where missing).
#[derive(Debug, Clone, Default)]
pub(super) struct Pct {
    count: Option<f64>,
    values: [Option<f64>; 5],
}

/// The percentile fields bench writes, and their labels.
const PCT_KEYS: [(&str, &str); 5] = [
    ("p50_us", "p50"),
    ("p90_us", "p90"),
    ("p99_us", "p99"),
    ("p999_us", "p99.9"),
    ("max_us", "max"),
];

impl Pct {
    /// `v` as percentiles, if it is an object with at least one percentile field.
    pub(super) fn of(v: &Value) -> Option<Pct> {
        let m = v.as_object()?;
        if !PCT_KEYS.iter().any(|(k, _)| m.contains_key(*k)) {
            return None;
        }
        Some(Pct {
            count: num(v, &["count"]),
            values: PCT_KEYS.map(|(k, _)| num(v, &[k])),
        })
    }
}

/// A percentile table and a log-scale bar chart of `rows` (name, percentiles).
pub(super) fn latencies(page: &mut Page, title: &str, rows: &[(String, Pct)]) {
    if rows.is_empty() {
        return;
    }
    latency_table(page, title, rows);
    page.raw(&latency_chart(&format!("{title} percentiles"), rows));
}

/// The percentile table of `rows`, µs.
pub(super) fn latency_table(page: &mut Page, title: &str, rows: &[(String, Pct)]) {
    page.tag("h3", title);
    let mut head = vec!["measurement", "count"];
    head.extend(PCT_KEYS.iter().map(|(_, l)| *l));
    let table: Vec<Vec<Cell>> = rows
        .iter()
        .map(|(name, p)| {
            let mut row: Vec<Cell> = vec![name.as_str().into(), Cell::num(opt(p.count))];
            row.extend(p.values.iter().map(|v| Cell::num(opt(*v))));
            row
        })
        .collect();
    page.table(&head, &table);
    page.tag("p", "µs. Charts of latency have a logarithmic scale.");
}

/// A log-scale bar chart: the percentiles along x, a bar per row in each.
pub(super) fn latency_chart(title: &str, rows: &[(String, Pct)]) -> String {
    svg::bar_chart(&BarChart {
        title: title.to_string(),
        y_label: "latency".into(),
        y_unit: Unit::Micros,
        log_y: true,
        series: rows.iter().map(|(n, _)| n.clone()).collect(),
        groups: PCT_KEYS
            .iter()
            .enumerate()
            .map(|(i, (_, label))| BarGroup {
                label: (*label).into(),
                values: rows.iter().map(|(_, p)| p.values[i]).collect(),
            })
            .collect(),
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), fmt_num)
}

/// Floor: the kernel's CPU per socket operation, as bars.
fn floor_costs(page: &mut Page, v: &Value) {
    const OPS: [(&str, &str); 4] = [
        ("connect_cpu_us", "connect+accept"),
        ("roundtrip_cpu_us", "round trip"),
        ("send_cpu_us", "send"),
        ("recv_cpu_us", "recv"),
    ];
    page.raw(&svg::bar_chart(&BarChart {
        title: "Kernel CPU per operation".into(),
        y_label: "CPU".into(),
        y_unit: Unit::Micros,
        log_y: false,
        series: vec![format!("{} pairs", show(v, &["pairs"]))],
        groups: OPS
            .iter()
            .map(|(key, label)| BarGroup {
                label: (*label).into(),
                values: vec![num(v, &[key])],
            })
            .collect(),
    }));
}

/// Broadcast: each message's time to its last client, and a table of them.
fn per_message(page: &mut Page, v: &Value) {
    let Some(msgs) = v.get("per_message").and_then(Value::as_array) else {
        return;
    };
    page.tag("h3", "Per message");
    let points: Vec<(f64, f64)> = msgs
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            Some((
                num(m, &["index"]).unwrap_or(i as f64),
                num(m, &["time_to_last_us"])?,
            ))
        })
        .collect();
    page.raw(&svg::line_chart(&LineChart {
        title: "Time to the last client's receipt, per message".into(),
        x_label: "message".into(),
        x_unit: Unit::Plain,
        y_label: "time to last".into(),
        y_unit: Unit::Micros,
        log_y: true,
        log_x: false,
        series: vec![Series {
            name: "time to last".into(),
            points,
        }],
    }));
    const SHOWN: usize = 100;
    let rows: Vec<Vec<Cell>> = msgs
        .iter()
        .take(SHOWN)
        .map(|m| {
            vec![
                Cell::num(show(m, &["index"])),
                text(m, &["http"])
                    .unwrap_or_else(|| scalar(m.get("http").unwrap_or(&Value::Null)))
                    .into(),
                Cell::num(show(m, &["server_delivered"])),
                Cell::num(show(m, &["deliveries"])),
                Cell::num(show(m, &["time_to_last_us"])),
            ]
        })
        .collect();
    page.table(
        &[
            "message",
            "HTTP",
            "server delivered",
            "deliveries",
            "time to last, µs",
        ],
        &rows,
    );
    if msgs.len() > SHOWN {
        page.tag(
            "p",
            &format!(
                "First {SHOWN} of {} messages; all are under All fields.",
                msgs.len()
            ),
        );
    }
}

/// Every top-level array of samples with a numeric `t_s`: one line chart per
/// other numeric field (idle's gateway RSS and TCP sockets over the hold).
fn time_series(page: &mut Page, v: &Value) {
    let Some(m) = v.as_object() else {
        return;
    };
    for (key, arr) in m {
        let Some(samples) = arr.as_array() else {
            continue;
        };
        if !samples.iter().any(|s| num(s, &["t_s"]).is_some()) {
            continue;
        }
        let mut fields: Vec<&str> = Vec::new();
        for s in samples {
            for (k, f) in s.as_object().into_iter().flatten() {
                if k != "t_s" && f.is_number() && !fields.contains(&k.as_str()) && fields.len() < 8
                {
                    fields.push(k);
                }
            }
        }
        if fields.is_empty() {
            continue;
        }
        page.tag("h3", &format!("{key} over time"));
        for field in fields {
            let points = samples
                .iter()
                .filter_map(|s| Some((num(s, &["t_s"])?, num(s, &[field])?)))
                .collect();
            let unit = unit_of(field);
            page.raw(&svg::line_chart(&LineChart {
                title: format!("{key}: {field}"),
                x_label: "seconds since the first connect".into(),
                x_unit: Unit::Seconds,
                y_label: field.to_string(),
                y_unit: unit,
                log_y: false,
                log_x: false,
                series: vec![Series {
                    name: field.to_string(),
                    points,
                }],
            }));
        }
    }
}

/// The unit a field's name gives its values.
fn unit_of(field: &str) -> Unit {
    if field.ends_with("_us") {
        Unit::Micros
    } else if field.contains("rss") || field.contains("bytes") || field.contains("mem") {
        Unit::Bytes
    } else if field.ends_with("_s") {
        Unit::Seconds
    } else {
        Unit::Plain
    }
}

/// The value at `path` is an object (used by the peers section).
pub(super) fn object_at<'a>(
    v: &'a Value,
    path: &[&str],
) -> Option<&'a serde_json::Map<String, Value>> {
    get(v, path).and_then(Value::as_object)
}
