//! The renderer against bench's committed results and against hostile,
//! odd and missing fields.

use super::*;
use serde_json::json;

/// Committed results, one per kind (bench/results/).
const RESULTS: [(&str, &str, Kind); 9] = [
    (
        "idle-19000.json",
        include_str!("../../results/idle-19000.json"),
        Kind::Idle,
    ),
    (
        "connect-10000-redis.json",
        include_str!("../../results/connect-10000-redis.json"),
        Kind::Connect,
    ),
    (
        "push-redis-2000x1000x300.json",
        include_str!("../../results/push-redis-2000x1000x300.json"),
        Kind::Push,
    ),
    (
        "push-rate-10000-redis.json",
        include_str!("../../results/push-rate-10000-redis.json"),
        Kind::PushRate,
    ),
    (
        "broadcast-10000x10-redis.json",
        include_str!("../../results/broadcast-10000x10-redis.json"),
        Kind::Broadcast,
    ),
    (
        "c2s-gps-10000-redis.json",
        include_str!("../../results/c2s-gps-10000-redis.json"),
        Kind::C2s,
    ),
    (
        "peers-mosquitto-10000.json",
        include_str!("../../results/peers-mosquitto-10000.json"),
        Kind::Peers,
    ),
    (
        "floor-1000000.json",
        include_str!("../../results/floor-2026-12-07/floor-1000000.json"),
        Kind::Floor,
    ),
    (
        "hiccup-extra-fds-190000-1.json",
        include_str!("../../results/host-agent-fds-2026-12-07/hiccup-extra-fds-190000-1.json"),
        Kind::Hiccup,
    ),
];

fn input(name: &str, value: Value) -> Input {
    Input {
        name: name.into(),
        value,
    }
}

fn committed() -> Vec<Input> {
    RESULTS
        .iter()
        .map(|(name, json, _)| input(name, serde_json::from_str(json).unwrap()))
        .collect()
}

fn page(inputs: &[Input]) -> String {
    render("bench", inputs, &Machine::default())
}

#[test]
fn every_kind_is_told_by_its_fields_and_renders() {
    for (name, json, kind) in RESULTS {
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(Kind::of(&v), kind, "{name}");
        let html = page(&[input("renamed.json", v.clone())]);
        assert!(html.contains("<svg"), "{name}: no chart");
        assert!(html.contains(&kind.name(&v)), "{name}");
        assert!(html.ends_with("</body></html>\n"), "{name}");
        assert!(!html.contains("NaN") && !html.contains("inf "), "{name}");
    }
}

#[test]
fn kinds_render_their_figures() {
    let html = page(&committed());
    // idle: RSS over the hold; push-rate: sender lag; broadcast: per message.
    for needle in [
        "samples: gateway_rss",
        "sender_lag",
        "Time to the last client",
        "1,501 B",
        // ... and after its hold, once the connections have parked.
        "588 after the hold",
        "peers-mosquitto",
        // The peers ratio, 1,911 : 862 bytes per connection.
        "2.22×",
        "fan-out deliveries/s",
        "Mosquitto delivery",
    ] {
        assert!(html.contains(needle), "{needle} missing");
    }
}

#[test]
fn hostile_strings_are_escaped() {
    let evil = "<script>alert('x')</script>";
    let v = json!({
        evil: evil,
        "logins_per_s": 1.0,
        "connect_latency": { "p99_us": 5, evil: evil },
        "login_latency": { "p50_us": 3 },
        "failures": { evil: 3 },
    });
    let peers = json!({
        "tidegate": { "server": evil, "fanout": { "latency": { "p99_us": 1 } } },
        "peer": { "server": "\"><img src=x onerror=alert(1)>" },
        "peer_kind": evil,
        "ratios": {},
        "samples": [{ "t_s": 1, evil: 2 }],
    });
    let html = render(
        evil,
        &[input(evil, v), input("p.json", peers)],
        &Machine {
            cpu_model: Some(evil.into()),
            ..Machine::default()
        },
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
}

#[test]
fn an_unknown_kind_gets_the_generic_table() {
    let v = json!({ "answer": 42, "nested": { "list": [1, "two", null, true] } });
    assert_eq!(Kind::of(&v), Kind::Unknown);
    let html = page(&[input("other.json", v)]);
    assert!(html.contains("unknown"));
    for needle in ["answer", "nested.list[1]", "two", "42"] {
        assert!(html.contains(needle), "{needle}: {html}");
    }
}

#[test]
fn odd_and_missing_numbers_do_not_panic() {
    let odd = [
        json!({ "logged_in": -5, "gateway_bytes_per_conn": "not a number", "samples": [{ "t_s": "x" }, { "t_s": -1, "gateway_rss": -3 }, 7] }),
        json!({ "logins_per_s": null, "connect_latency": { "p50_us": -1, "p99_us": 1e308, "max_us": "infinite" } }),
        json!({ "targets_per_s": 1e308, "latency": { "count": -1 } }),
        json!({ "requests_scheduled": [], "latency": {} }),
        json!({ "per_message": "not a list", "time_to_last": 3 }),
        json!({ "per_message": [{ "index": "a" }, null, { "time_to_last_us": -2 }], "time_to_last": {} }),
        json!({ "ingest_per_s": { "x": { "y": 1 } }, "ack_latency": [1, 2] }),
        json!({ "tidegate": 1, "peer": null, "targets": "yes", "plan": [] }),
        json!({ "tidegate": { "idle": { "bytes_per_conn": 5, "held": 0 } }, "peer": { "idle": { "bytes_per_conn": 0 } }, "ratios": { "p99": "x" } }),
        json!([1, 2, 3]),
        json!("just a string"),
        json!(null),
        json!(1e308),
        json!({}),
    ];
    let inputs: Vec<Input> = odd.into_iter().map(|v| input("odd.json", v)).collect();
    for one in &inputs {
        let html = page(std::slice::from_ref(one));
        assert!(html.ends_with("</body></html>\n"));
        assert!(!html.contains("NaN"), "{html}");
    }
    page(&inputs);
}

#[test]
fn deep_or_huge_inputs_stay_bounded() {
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!({ "d": deep });
    }
    let wide: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let long = "x".repeat(100_000);
    let html = page(&[
        input("deep.json", deep),
        input("wide.json", Value::Object(wide)),
        input("long.json", json!({ "s": long })),
    ]);
    assert!(html.contains("more fields not shown"));
    assert!(html.len() < 2_000_000, "{} bytes", html.len());
}

#[test]
fn the_page_references_nothing_outside_itself() {
    let html = page(&committed());
    for outside in ["http://", "https://", "<script", "src=", "@import", "url("] {
        assert!(!html.contains(outside), "{outside} in the page");
    }
    assert!(html.contains("default-src 'none'"));
}

#[test]
fn memory_per_connection_is_drawn_against_n() {
    let idle =
        |n: u64, b: f64| json!({ "logged_in": n, "gateway_bytes_per_conn": b, "samples": [] });
    let one = page(&[input("a.json", idle(1000, 1500.0))]);
    assert!(!one.contains("Memory per connection against N"));
    let two = page(&[
        input("a.json", idle(1000, 1500.0)),
        input("b.json", idle(19000, 1443.0)),
    ]);
    assert!(two.contains("Memory per connection against N"));
    assert!(two.contains("19,000"));
    // From a thousand to a million, N is drawn on a log axis.
    let wide = page(&[
        input("a.json", idle(1000, 1500.0)),
        input("c1m.json", idle(1_000_000, 1420.0)),
    ]);
    for tick in [">1k<", ">10k<", ">100k<", ">1M<"] {
        assert!(wide.contains(tick), "{tick}");
    }
}

#[test]
fn numbers_print_grouped() {
    assert_eq!(fmt_num(1_911.193_6), "1,911");
    assert_eq!(fmt_num(246_254.56), "246,255");
    assert_eq!(fmt_num(-35.57), "-35.6");
    assert_eq!(fmt_num(2.217), "2.22");
    assert_eq!(fmt_num(0.0), "0");
    assert_eq!(fmt_num(1_000_000.0), "1,000,000");
    assert_eq!(fmt_num(f64::NAN), "—");
    assert_eq!(fmt_num(1e300), "1.00e300");
    assert_eq!(
        escape("a<b>&\"'\u{0}"),
        "a&lt;b&gt;&amp;&quot;&#39;\u{fffd}"
    );
}

#[test]
fn run_reads_files_and_refuses_what_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("idle.json");
    std::fs::write(&good, RESULTS[0].1).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = dir.path().join("r.html");
    let args = |inputs: Vec<PathBuf>| ReportArgs {
        out: out.clone(),
        title: "t".into(),
        inputs,
    };
    assert_eq!(run(&args(vec![good.clone()])).unwrap(), 1);
    assert!(std::fs::read_to_string(&out).unwrap().contains("<svg"));
    let e = run(&args(vec![good, bad])).unwrap_err();
    assert!(format!("{e:#}").contains("bad.json: not JSON"), "{e:#}");
    let e = run(&args(vec![dir.path().join("missing.json")])).unwrap_err();
    assert!(format!("{e:#}").contains("missing.json"), "{e:#}");
}
