//! Memory: what the target's sockets and gateway processes cost against
//! MemAvailable, and the locked memory glommio needs. The per-connection
//! figures are measured, not guessed; each constant says where.

use super::render::fmt_bytes;
use super::{Check, Peers, Readings, Status, Target};

/// Kernel slab per loopback connection, both ends (`kernel_slab_bytes_per_conn`
/// in bench/results/idle-19000.json: `tidegate bench idle --connections 19000`).
pub const KERNEL_BYTES_BOTH_ENDS: u64 = 7_484;
/// One socket: a loopback connection is two of the same kind.
pub const KERNEL_BYTES_ONE_END: u64 = KERNEL_BYTES_BOTH_ENDS / 2;
/// Gateway user space per connection before it parks (`gateway_bytes_per_conn`,
/// same run: 2 s after the last login). Parked, a connection costs about
/// 600 (`gateway_bytes_per_conn_end`), but a storm of logins is sized by
/// the peak.
pub const GATEWAY_BYTES_PER_CONN: u64 = 1_501;
/// A gateway process before any client (`gateway_rss_before`, same run, 2 shards).
pub const WORKER_BASE_BYTES: u64 = 13_365_248;
/// glommio 0.9 refuses to start an executor under this soft memlock
/// (`MIN_MEMLOCK_LIMIT` in its `Reactor::new`).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
/// Rings per glommio executor (main, latency, poll). Each registers the
/// shard's io_memory, and the kernel charges every registration.
const RINGS_PER_EXECUTOR: u64 = 3;
/// Percent of MemAvailable the idle target may take: beyond it too little
/// is left for socket buffers once traffic flows.
const USABLE_PERCENT: u64 = 75;

/// The memory checks, in table order.
pub fn checks(t: &Target, r: &Readings) -> Vec<Check> {
    vec![memory(t, r), memlock(t, r)]
}

/// Kernel socket memory per connection on this host.
pub fn kernel_bytes_per_conn(t: &Target) -> u64 {
    KERNEL_BYTES_ONE_END * t.peers.ends()
}

/// Memory the idle target needs: its connections and each worker's base.
pub fn memory_needed(t: &Target) -> u64 {
    let per_conn = kernel_bytes_per_conn(t) + GATEWAY_BYTES_PER_CONN;
    t.connections
        .saturating_mul(per_conn)
        .saturating_add(t.workers * WORKER_BASE_BYTES)
}

fn memory(t: &Target, r: &Readings) -> Check {
    let need = memory_needed(t);
    let per_conn = kernel_bytes_per_conn(t) + GATEWAY_BYTES_PER_CONN;
    let mut why = format!(
        "{} B kernel + {GATEWAY_BYTES_PER_CONN} B gateway per idle connection, {} per worker process; kernel socket buffers under traffic come on top",
        kernel_bytes_per_conn(t),
        fmt_bytes(WORKER_BASE_BYTES)
    );
    if t.peers == Peers::Local {
        why.push_str(", and so does the load generator's own memory");
    }
    let recommended = format!("{} available", fmt_bytes(need));
    let Some(avail) = r.mem_available else {
        return Check::unreadable("memory", recommended, &why);
    };
    let now = match r.mem_total {
        Some(total) => format!("{} of {}", fmt_bytes(avail), fmt_bytes(total)),
        None => fmt_bytes(avail),
    };
    let status = if need > avail {
        Status::Blocking
    } else if need > avail / 100 * USABLE_PERCENT {
        Status::Advisory
    } else {
        Status::Ok
    };
    let fits =
        avail.saturating_sub(t.workers * WORKER_BASE_BYTES) / 100 * USABLE_PERCENT / per_conn;
    Check {
        setting: "memory",
        now,
        recommended,
        status,
        fix: (status != Status::Ok).then(|| {
            format!(
                "at most {fits} connections here with headroom, or a host with {} available",
                fmt_bytes(need / USABLE_PERCENT * 100)
            )
        }),
        why,
    }
}

fn memlock(t: &Target, r: &Readings) -> Check {
    const SETTING: &str = "memlock (RLIMIT_MEMLOCK)";
    // Registered buffers are charged to the user, summed over all its
    // processes, against each process's own limit.
    let registered = t.listeners() * RINGS_PER_EXECUTOR * t.io_memory_kib * 1024;
    let need = registered.max(GLOMMIO_MIN_MEMLOCK);
    let need_mib = need.div_ceil(1 << 20);
    let recommended = fmt_bytes(need);
    let why = format!(
        "glommio refuses to start under {} KiB; its registered buffers (workers {} × shards {} × {RINGS_PER_EXECUTOR} rings × {} KiB) count against one per-user total, and past it glommio runs without them (copies)",
        GLOMMIO_MIN_MEMLOCK / 1024,
        t.workers,
        t.shards,
        t.io_memory_kib
    );
    let Some(lim) = r.memlock else {
        return Check::unreadable(SETTING, recommended, &why);
    };
    let fix = format!(
        "LimitMEMLOCK={need_mib}M in the unit (limits.d: `tidegate - memlock {}`)",
        need_mib * 1024
    );
    let status = if lim.soft < GLOMMIO_MIN_MEMLOCK {
        Status::Blocking
    } else if lim.soft < registered && !r.caps.ipc_lock {
        Status::Advisory
    } else {
        Status::Ok
    };
    Check {
        setting: SETTING,
        now: format!(
            "{}{}",
            if lim.soft == u64::MAX {
                "unlimited".into()
            } else {
                fmt_bytes(lim.soft)
            },
            if r.caps.ipc_lock {
                " (CAP_IPC_LOCK: buffers not charged)"
            } else {
                ""
            }
        ),
        recommended,
        status,
        fix: (status != Status::Ok).then_some(fix),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::super::live::Rlimit;
    use super::super::tests::{roomy, target};
    use super::*;

    fn find(checks: Vec<Check>, setting: &str) -> Check {
        checks.into_iter().find(|c| c.setting == setting).unwrap()
    }

    #[test]
    fn memory_blocks_past_what_is_available() {
        let mut h = roomy();
        h.mem_available = Some(4 << 30);
        let t = target(1_000_000, 1);
        // 1M × (3,742 + 1,501) B + one worker ≈ 4.9 GiB > 4 GiB.
        assert_eq!(memory_needed(&t), 5_243_000_000 + WORKER_BASE_BYTES);
        let c = find(checks(&t, &h), "memory");
        assert_eq!(c.status, Status::Blocking);
        assert!(c.fix.unwrap().starts_with("at most 612474 connections"));

        h.mem_available = Some(6 << 30);
        assert_eq!(find(checks(&t, &h), "memory").status, Status::Advisory);
        h.mem_available = Some(8 << 30);
        assert_eq!(find(checks(&t, &h), "memory").status, Status::Ok);
    }

    #[test]
    fn a_local_bench_pays_both_kernel_ends() {
        let t = Target {
            peers: Peers::Local,
            ..target(19_000, 1)
        };
        assert_eq!(kernel_bytes_per_conn(&t), KERNEL_BYTES_BOTH_ENDS);
        assert_eq!(kernel_bytes_per_conn(&target(19_000, 1)), 3_742);
    }

    #[test]
    fn memlock_below_glommios_floor_blocks_and_registration_is_advisory() {
        let mut h = roomy();
        h.memlock = Some(Rlimit {
            soft: 64 * 1024,
            hard: 64 * 1024,
        });
        let c = find(checks(&target(1000, 1), &h), "memlock (RLIMIT_MEMLOCK)");
        assert_eq!(c.status, Status::Blocking);

        h.memlock = Some(Rlimit {
            soft: 8 << 20,
            hard: 8 << 20,
        });
        // 51 workers × 2 shards × 3 rings × 512 KiB = 153 MiB, one per-user total.
        let c = find(
            checks(&target(1_000_000, 51), &h),
            "memlock (RLIMIT_MEMLOCK)",
        );
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(
            c.fix.as_deref(),
            Some("LimitMEMLOCK=153M in the unit (limits.d: `tidegate - memlock 156672`)")
        );
        assert_eq!(
            find(checks(&target(1000, 1), &h), "memlock (RLIMIT_MEMLOCK)").status,
            Status::Ok
        );
        h.caps.ipc_lock = true;
        let c = find(
            checks(&target(1_000_000, 51), &h),
            "memlock (RLIMIT_MEMLOCK)",
        );
        assert_eq!(c.status, Status::Ok, "CAP_IPC_LOCK is not charged");
    }
}
