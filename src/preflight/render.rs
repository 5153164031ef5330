//! The report for people: a table of every setting (now, recommended,
//! status, fix), then why each one that is not ok matters, then the
//! estimate behind them.

use super::{Check, Peers, Report, Status};

/// The report as a table, then the reasons for every setting that is not ok.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let t = &report.target;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tidegate preflight: {} connections, {} gateway process{} × {} shards, peers {}\n",
        t.connections,
        t.workers,
        if t.workers == 1 { "" } else { "es" },
        t.shards,
        match t.peers {
            Peers::Remote => "remote",
            Peers::Local => "local (both ends on this host)",
        }
    );
    let rows: Vec<[&str; 5]> = report
        .checks
        .iter()
        .map(|c| {
            [
                c.setting,
                c.now.as_str(),
                c.recommended.as_str(),
                c.status.label(),
                c.fix.as_deref().unwrap_or(""),
            ]
        })
        .collect();
    let head = ["setting", "now", "recommended", "status", "fix"];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let notes: Vec<&Check> = report
        .checks
        .iter()
        .filter(|c| c.status != Status::Ok)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nwhy:");
        for c in notes {
            let _ = writeln!(out, "  {}: {}", c.setting, c.why);
        }
    }
    let e = &report.estimate;
    let _ = writeln!(
        out,
        "\nestimate: {} per connection ({} B kernel + {} B gateway), {} in all; {} open files host-wide; {} descriptors per worker",
        fmt_bytes(e.kernel_bytes_per_conn + e.gateway_bytes_per_conn),
        e.kernel_bytes_per_conn,
        e.gateway_bytes_per_conn,
        fmt_bytes(e.memory_bytes),
        e.files,
        e.fds_per_worker,
    );
    let _ = writeln!(
        out,
        "result: {}",
        if report.ok {
            "nothing blocks the target".to_string()
        } else {
            format!("blocked by {}", report.blocking.join(", "))
        }
    );
    out
}

/// `n` bytes for people: B, KiB, MiB, GiB, TiB with one decimal.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::super::assess;
    use super::super::tests::{roomy, target};
    use super::*;

    #[test]
    fn the_table_names_every_setting_and_the_reasons() {
        let mut h = roomy();
        h.file_max = Some(100_000);
        let out = table(&assess(&target(1_000_000, 1), &h));
        assert!(out.contains("fs.file-max"), "{out}");
        assert!(out.contains("BLOCKING"), "{out}");
        assert!(out.contains("sysctl -w fs.file-max="), "{out}");
        assert!(out.contains("why:\n  fs.file-max: "), "{out}");
        assert!(out.contains("result: blocked by fs.file-max"), "{out}");
    }

    #[test]
    fn bytes_read_for_people() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(8 << 20), "8.0 MiB");
        assert_eq!(fmt_bytes(5_163_000_000), "4.8 GiB");
    }
}
