//! Open files: host-wide (`fs.file-max`), per process (`fs.nr_open`, the
//! nofile limit) and how many gateway workers a per-process limit calls for.
//! Each check is a pure function of the target and the readings.

use super::{Check, Readings, Status, Target};

/// The highest `fs.nr_open` a 64-bit kernel accepts (`sysctl_nr_open_max`
/// in fs/file.c: INT_MAX rounded down to a multiple of 64).
const NR_OPEN_MAX: u64 = 2_147_483_584;
/// Open files left for everything else on the host (daemons, shells, logs).
const OTHER_FILES: u64 = 65_536;

/// The descriptor checks, in table order.
pub fn checks(t: &Target, r: &Readings) -> Vec<Check> {
    vec![file_max(t, r), nr_open(t, r), nofile(t, r)]
}

/// Open files the target needs host-wide.
pub fn files_needed(t: &Target) -> u64 {
    t.connections
        .saturating_mul(t.peers.ends())
        .saturating_add(t.workers * t.fd_reserve)
        .saturating_add(OTHER_FILES)
}

/// Fewest gateway processes that hold the target with `limit` descriptors
/// each; none when the reserve eats the whole limit.
pub fn min_workers(t: &Target, limit: u64) -> Option<u64> {
    let room = limit.checked_sub(t.fd_reserve).filter(|&n| n > 0)?;
    Some(t.connections.div_ceil(room))
}

/// `--workers K` when K fits the supervisor, else why it cannot.
fn workers_fix(t: &Target, limit: u64) -> String {
    let max = crate::workers::MAX_WORKERS as u64;
    match min_workers(t, limit) {
        Some(k) if k <= max => format!("--workers {k}"),
        _ => format!(
            "more than {max} workers at {limit} descriptors each: raise the hard nofile limit or split the target over hosts"
        ),
    }
}

fn limit_text(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

fn file_max(t: &Target, r: &Readings) -> Check {
    let need = files_needed(t);
    let why = format!(
        "every socket is an open file: {} per connection on this host, {} reserved per worker, {OTHER_FILES} for the rest of the host",
        t.peers.ends(),
        t.fd_reserve
    );
    let Some(now) = r.file_max else {
        return Check::unreadable("fs.file-max", need.to_string(), &why);
    };
    let short = now < need;
    Check {
        setting: "fs.file-max",
        now: now.to_string(),
        recommended: need.to_string(),
        status: if short { Status::Blocking } else { Status::Ok },
        fix: short.then(|| format!("sysctl -w fs.file-max={need}")),
        why,
    }
}

fn nr_open(t: &Target, r: &Readings) -> Check {
    let need = t.per_worker_fds();
    let why = format!(
        "no process's nofile limit can pass it, and the busiest worker needs {} connections + {} reserve",
        t.per_worker(),
        t.fd_reserve
    );
    let Some(now) = r.nr_open else {
        return Check::unreadable("fs.nr_open", need.to_string(), &why);
    };
    let short = now < need;
    Check {
        setting: "fs.nr_open",
        now: now.to_string(),
        recommended: need.to_string(),
        status: if short { Status::Blocking } else { Status::Ok },
        fix: short.then(|| {
            if need <= NR_OPEN_MAX {
                format!("sysctl -w fs.nr_open={need}, or {}", workers_fix(t, now))
            } else {
                // No kernel lets one process have that many: only more processes help.
                workers_fix(t, NR_OPEN_MAX)
            }
        }),
        why,
    }
}

fn nofile(t: &Target, r: &Readings) -> Check {
    const SETTING: &str = "nofile (RLIMIT_NOFILE)";
    let need = t.per_worker_fds();
    let recommended = format!("{need} per worker");
    let why = format!(
        "each gateway process holds ceil(connections {} / workers {}) = {} connections + {} reserve; workers inherit this process's limit",
        t.connections,
        t.workers,
        t.per_worker(),
        t.fd_reserve
    );
    let Some(lim) = r.nofile else {
        return Check::unreadable(SETTING, recommended, &why);
    };
    let now = format!(
        "soft {} / hard {}",
        limit_text(lim.soft),
        limit_text(lim.hard)
    );
    let fix = if lim.soft >= need {
        None
    } else if lim.hard >= need {
        Some(format!(
            "ulimit -n {need} before starting, or LimitNOFILE={need} in the unit"
        ))
    } else if r.caps.can_raise_nofile {
        Some(format!(
            "LimitNOFILE={need} in the unit (limits.d: `tidegate - nofile {need}`), or {}",
            workers_fix(t, lim.hard)
        ))
    } else {
        // Nothing here may raise the hard limit: more processes is the only way.
        let raise_soft = if lim.soft < lim.hard {
            format!("ulimit -n {} and ", lim.hard)
        } else {
            String::new()
        };
        Some(format!("{raise_soft}{}", workers_fix(t, lim.hard)))
    };
    Check {
        setting: SETTING,
        now,
        recommended,
        status: if fix.is_some() {
            Status::Blocking
        } else {
            Status::Ok
        },
        fix,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::super::live::{Caps, Rlimit};
    use super::super::tests::{roomy, target};
    use super::super::Peers;
    use super::*;

    fn find(checks: Vec<Check>, setting: &str) -> Check {
        checks.into_iter().find(|c| c.setting == setting).unwrap()
    }

    /// This test machine: 20,000 descriptors per process, not raisable.
    fn capped() -> Readings {
        Readings {
            nofile: Some(Rlimit {
                soft: 20_000,
                hard: 20_000,
            }),
            caps: Caps {
                can_raise_nofile: false,
                ipc_lock: false,
            },
            ..roomy()
        }
    }

    #[test]
    fn a_capped_host_needs_workers_for_a_million() {
        let one = find(
            checks(&target(1_000_000, 1), &capped()),
            "nofile (RLIMIT_NOFILE)",
        );
        assert_eq!(one.status, Status::Blocking);
        // ceil(1,000,000 / (20,000 - 256)) = 51.
        assert_eq!(one.fix.as_deref(), Some("--workers 51"));
        assert_eq!(one.recommended, "1000256 per worker");
        assert_eq!(min_workers(&target(1_000_000, 1), 20_000), Some(51));

        let enough = find(
            checks(&target(1_000_000, 51), &capped()),
            "nofile (RLIMIT_NOFILE)",
        );
        assert_eq!(enough.status, Status::Ok, "{enough:#?}");
        let short = find(
            checks(&target(1_000_000, 50), &capped()),
            "nofile (RLIMIT_NOFILE)",
        );
        assert_eq!(short.status, Status::Blocking);
    }

    #[test]
    fn a_low_soft_limit_is_raised_first() {
        let mut h = capped();
        h.nofile = Some(Rlimit {
            soft: 1024,
            hard: 20_000,
        });
        let small = find(checks(&target(10_000, 1), &h), "nofile (RLIMIT_NOFILE)");
        assert_eq!(small.status, Status::Blocking);
        assert!(small.fix.unwrap().starts_with("ulimit -n 10256"));
        let big = find(checks(&target(1_000_000, 1), &h), "nofile (RLIMIT_NOFILE)");
        assert_eq!(big.fix.as_deref(), Some("ulimit -n 20000 and --workers 51"));
    }

    #[test]
    fn a_raisable_limit_is_raised_in_the_unit() {
        let mut h = roomy();
        h.nofile = Some(Rlimit {
            soft: 1024,
            hard: 4096,
        });
        let c = find(checks(&target(100_000, 2), &h), "nofile (RLIMIT_NOFILE)");
        assert_eq!(c.status, Status::Blocking);
        let fix = c.fix.unwrap();
        assert!(fix.starts_with("LimitNOFILE=50256 in the unit"), "{fix}");
        assert!(fix.contains("tidegate - nofile 50256"), "{fix}");
        assert!(fix.ends_with("--workers 27"), "{fix}");
    }

    #[test]
    fn past_the_supervisor_limit_the_fix_says_so() {
        let c = find(
            checks(&target(10_000_000, 1), &capped()),
            "nofile (RLIMIT_NOFILE)",
        );
        assert!(c.fix.unwrap().starts_with("more than 64 workers"));
        assert_eq!(min_workers(&target(1000, 1), 256), None, "all reserve");
    }

    #[test]
    fn nr_open_bounds_every_process() {
        let mut h = roomy();
        h.nr_open = Some(1_048_576);
        let ok = find(checks(&target(1_000_000, 1), &h), "fs.nr_open");
        assert_eq!(ok.status, Status::Ok);
        let c = find(checks(&target(2_000_000, 1), &h), "fs.nr_open");
        assert_eq!(c.status, Status::Blocking);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w fs.nr_open=2000256, or --workers 2")
        );
    }

    #[test]
    fn past_any_kernels_nr_open_only_processes_help() {
        let c = find(checks(&target(10_000_000_000, 1), &roomy()), "fs.nr_open");
        assert_eq!(c.status, Status::Blocking);
        assert_eq!(c.fix.as_deref(), Some("--workers 5"));
    }

    #[test]
    fn file_max_counts_both_ends_of_a_local_bench() {
        let mut h = roomy();
        h.file_max = Some(1_500_000);
        let remote = target(1_000_000, 4);
        assert_eq!(find(checks(&remote, &h), "fs.file-max").status, Status::Ok);
        let local = Target {
            peers: Peers::Local,
            ..remote
        };
        let c = find(checks(&local, &h), "fs.file-max");
        assert_eq!(c.status, Status::Blocking);
        // 2 × 1M sockets + 4 × 256 reserve + 65,536 for the rest.
        assert_eq!(c.fix.as_deref(), Some("sysctl -w fs.file-max=2066560"));
    }
}
