//! The machine a report was generated on, read when the report is made
//! (/proc/cpuinfo, /proc/meminfo, the kernel release `uname -r` prints),
//! and the files it was made from.

use super::kinds::Kind;
use super::{fmt_num, show, text, Cell, Input, Page};

/// What the report's machine is.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// CPU model name (`model name` in /proc/cpuinfo).
    pub cpu_model: Option<String>,
    /// Logical CPUs (`processor` entries in /proc/cpuinfo).
    pub cpus: Option<usize>,
    /// Physical memory, bytes (`MemTotal`).
    pub mem_total: Option<u64>,
    /// Kernel release (`uname -r`).
    pub kernel: Option<String>,
}

impl Machine {
    /// This machine, now; what cannot be read stays None.
    pub fn current() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let (cpu_model, cpus) = parse_cpuinfo(&cpuinfo);
        Machine {
            cpu_model,
            cpus,
            mem_total: read("/proc/meminfo").and_then(|m| parse_mem_total(&m)),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
        }
    }

    /// The report's last section: this machine and the input files.
    pub(super) fn section(&self, page: &mut Page, inputs: &[Input]) {
        page.tag("h2", "Machine and files");
        page.tag(
            "p",
            "The machine this page was generated on, read when it was generated. The runs may have been measured on another: bench/README.md and the main README say where each was; peers files record their own machine (below).",
        );
        let dash = || "—".to_string();
        let rows: Vec<Vec<Cell>> = vec![
            vec![
                "CPU".into(),
                self.cpu_model.clone().unwrap_or_else(dash).into(),
            ],
            vec![
                "logical CPUs".into(),
                Cell::num(self.cpus.map_or_else(dash, |n| n.to_string())),
            ],
            vec![
                "memory".into(),
                Cell::num(self.mem_total.map_or_else(dash, |b| {
                    format!(
                        "{} B ({:.1} GiB)",
                        fmt_num(b as f64),
                        b as f64 / (1u64 << 30) as f64
                    )
                })),
            ],
            vec![
                "kernel".into(),
                self.kernel.clone().unwrap_or_else(dash).into(),
            ],
        ];
        page.table(&["", "this machine"], &rows);
        let rows: Vec<Vec<Cell>> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let v = &input.value;
                // Only peers files carry the machine they ran on.
                let recorded = match (text(v, &["machine", "kernel"]), v.get("machine")) {
                    (kernel, Some(_)) => format!(
                        "{} CPUs, kernel {}, load {} → {}",
                        show(v, &["machine", "cpus"]),
                        kernel.unwrap_or_else(dash),
                        show(v, &["machine", "load_1m_before"]),
                        show(v, &["machine", "load_1m_after"])
                    ),
                    (_, None) => dash(),
                };
                vec![
                    Cell::num((i + 1).to_string()),
                    Cell::link(format!("#f-{i}"), input.name.clone()),
                    Kind::of(v).name(v).into(),
                    recorded.into(),
                ]
            })
            .collect();
        page.table(
            &["#", "file", "kind", "machine recorded in the file"],
            &rows,
        );
    }
}

/// The first `model name` and the number of `processor` entries.
fn parse_cpuinfo(s: &str) -> (Option<String>, Option<usize>) {
    let value = |l: &str| l.split_once(':').map(|(_, v)| v.trim().to_string());
    let model = s
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(value)
        .filter(|m| !m.is_empty());
    let cpus = s
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    (model, (cpus > 0).then_some(cpus))
}

/// `MemTotal` in bytes (the file says kB, meaning KiB).
fn parse_mem_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_and_meminfo_are_read() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(
            parse_cpuinfo(cpuinfo),
            (Some("AMD EPYC 7B13".into()), Some(2))
        );
        assert_eq!(parse_cpuinfo(""), (None, None));
        assert_eq!(
            parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(parse_mem_total("MemTotal: lots\n"), None);
    }

    #[test]
    fn this_machine_reads_without_panicking() {
        let m = Machine::current();
        if cfg!(target_os = "linux") {
            assert!(m.cpus.unwrap_or(0) >= 1, "{m:?}");
        }
    }
}
