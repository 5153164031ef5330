//! The network sysctls that shape performance at scale but never stop the
//! target: accept and SYN queues, the per-CPU input queue, ephemeral ports,
//! TCP buffer memory, and migrating queued connections between SO_REUSEPORT
//! listeners. Each check is a pure function of the target and the readings;
//! a value that cannot be read is advisory, like a value too small.

use super::{Check, Peers, PortRange, Readings, Status, Target, Triple};

/// The busiest listener's queues: the kernel default floor and the
/// conventional ceiling.
const QUEUE_FLOOR: u64 = 4096;
const QUEUE_CEILING: u64 = 65_535;
/// The kernel's default per-CPU input queue, and a ceiling past which
/// packets wait longer than they are worth.
const NETDEV_FLOOR: u64 = 1000;
const NETDEV_CEILING: u64 = 16_384;
/// An ephemeral range that keeps clear of Tidegate's own ports (7000-7180)
/// and the well-known ones.
const PORTS: PortRange = PortRange {
    first: 10_240,
    last: 65_535,
};
/// The smallest socket buffer worth having: one page.
const MIN_BUFFER: u64 = 4096;

/// The advisory-kind checks, in table order.
pub fn checks(t: &Target, r: &Readings) -> Vec<Check> {
    vec![
        somaxconn(t, r),
        syn_backlog(t, r),
        netdev_max_backlog(t, r),
        port_range(t, r),
        tcp_mem(t, r),
        buffer(t, r, Buffer::Read),
        buffer(t, r, Buffer::Write),
        migrate_req(t, r),
        ehash(t, r),
    ]
}

/// The established-connections hash should have a bucket per socket: the
/// kernel sizes it at boot from memory (262,144 on a 24 GiB host), and with
/// two million loopback sockets every packet's lookup walks a chain of ~8.
/// Advisory only: at 400,000 connections `__inet_lookup_established` was
/// the gate shards' top symbol in a broadcast, yet a 2M-bucket table made
/// no measurable difference there (9.36 s vs 9.26-9.52 s to the last).
fn ehash(t: &Target, r: &Readings) -> Check {
    let need = (t.connections * t.peers.ends()).next_power_of_two();
    let mut check = at_least(
        "net.ipv4.tcp_ehash_entries",
        r.tcp_ehash_entries,
        need,
        "buckets of the established-connections hash every TCP packet is looked up in; fewer than sockets makes each lookup walk a chain".into(),
    );
    // Read-only: sysctl -w cannot fix it.
    check.fix = check.fix.map(|_| {
        format!(
            "read-only: boot with thash_entries={need}, or run in a network namespace created after sysctl -w net.ipv4.tcp_child_ehash_entries={need}"
        )
    });
    check
}

/// A check of one number that should be at least `need`.
fn at_least(setting: &'static str, now: Option<u64>, need: u64, why: String) -> Check {
    let (now, status) = match now {
        None => ("unreadable".to_string(), Status::Advisory),
        Some(v) if v < need => (v.to_string(), Status::Advisory),
        Some(v) => (v.to_string(), Status::Ok),
    };
    Check {
        setting,
        now,
        recommended: need.to_string(),
        status,
        fix: (status != Status::Ok).then(|| format!("sysctl -w {setting}={need}")),
        why,
    }
}

/// The accept queue a listener should have: a sixteenth of the target
/// reconnecting at once (a restart's wave), between the floor and ceiling.
fn queue_for(t: &Target) -> u64 {
    (t.connections / 16)
        .next_power_of_two()
        .clamp(QUEUE_FLOOR, QUEUE_CEILING)
}

fn somaxconn(t: &Target, r: &Readings) -> Check {
    at_least(
        "net.core.somaxconn",
        r.somaxconn,
        queue_for(t),
        "caps every listen() backlog; a reconnect wave after a restart arrives faster than accept (glommio's and tokio's listeners ask for 1024 today, so past that it only serves listeners that ask for more)".into(),
    )
}

fn syn_backlog(t: &Target, r: &Readings) -> Check {
    at_least(
        "net.ipv4.tcp_max_syn_backlog",
        r.tcp_max_syn_backlog,
        queue_for(t),
        "half-open connections during a connect wave; past it SYN cookies drop TCP options (window scaling, SACK)".into(),
    )
}

fn netdev_max_backlog(t: &Target, r: &Readings) -> Check {
    let need = (t.connections / 64)
        .next_power_of_two()
        .clamp(NETDEV_FLOOR, NETDEV_CEILING);
    at_least(
        "net.core.netdev_max_backlog",
        r.netdev_max_backlog,
        need,
        "packets queued per CPU before the stack takes them (all loopback traffic passes here); a broadcast's ACKs and keepalives from many clients arrive in bursts and overflow is dropped".into(),
    )
}

fn port_range(t: &Target, r: &Readings) -> Check {
    const SETTING: &str = "net.ipv4.ip_local_port_range";
    let now = r
        .ip_local_port_range
        .map_or("unreadable".into(), |p| format!("{} {}", p.first, p.last));
    if t.peers == Peers::Remote {
        return Check {
            setting: SETTING,
            now,
            recommended: "any".into(),
            status: Status::Ok,
            fix: None,
            why: "accepted connections take no ephemeral port; only outbound ones do (logic links, Redis, a local load generator)".into(),
        };
    }
    let width = |p: PortRange| p.last.saturating_sub(p.first) + 1;
    // The kernel's port search slows sharply past half the range (ARCHITECTURE §7).
    let usable = width(PORTS) / 2;
    let why = format!(
        "a local load generator connects from many source addresses; past half the range per address connect() slows ~40×, so with {} {} it needs {} source addresses",
        PORTS.first,
        PORTS.last,
        t.connections.div_ceil(usable)
    );
    let narrow = r
        .ip_local_port_range
        .is_none_or(|p| p.first > PORTS.first || p.last < PORTS.last);
    Check {
        setting: SETTING,
        now,
        recommended: format!("{} {}", PORTS.first, PORTS.last),
        status: if narrow { Status::Advisory } else { Status::Ok },
        fix: narrow.then(|| format!("sysctl -w {SETTING}=\"{} {}\"", PORTS.first, PORTS.last)),
        why,
    }
}

/// `tcp_mem` for the target, in pages: pressure starts once every connection
/// holds a page of queued data on average; the hard limit is two.
fn tcp_mem_for(t: &Target) -> Triple {
    Triple {
        low: t.connections / 2,
        mid: t.connections,
        high: t.connections.saturating_mul(2),
    }
}

/// A triple raised to at least `need` in every place, never lowered.
fn raised(now: Triple, need: Triple) -> Triple {
    Triple {
        low: now.low.max(need.low),
        mid: now.mid.max(need.mid),
        high: now.high.max(need.high),
    }
}

fn tcp_mem(t: &Target, r: &Readings) -> Check {
    const SETTING: &str = "net.ipv4.tcp_mem";
    let need = tcp_mem_for(t);
    let why = "pages of socket buffers, all TCP sockets together (low, pressure, limit); past the limit sends and receives stall host-wide".to_string();
    let (now, status, fix) = match r.tcp_mem {
        None => ("unreadable".into(), Status::Advisory, None),
        Some(now) if now.mid < need.mid || now.high < need.high => (
            now.to_string(),
            Status::Advisory,
            Some(format!("sysctl -w {SETTING}=\"{}\"", raised(now, need))),
        ),
        Some(now) => (now.to_string(), Status::Ok, None),
    };
    Check {
        setting: SETTING,
        now,
        recommended: format!("at least {need}"),
        status,
        fix,
        why,
    }
}

/// Which buffer sysctl.
#[derive(Clone, Copy)]
enum Buffer {
    Read,
    Write,
}

/// The largest default buffer size that lets every connection fill its
/// read and its write buffer within `tcp_mem`'s limit: the power of two
/// under half the per-connection share, at least a page.
fn default_buffer_for(t: &Target, r: &Readings) -> u64 {
    let limit_pages = r.tcp_mem.map_or(0, |m| m.high).max(tcp_mem_for(t).high);
    let share = limit_pages.saturating_mul(r.page_size) / t.connections / 2;
    if share < MIN_BUFFER {
        MIN_BUFFER
    } else {
        1u64 << share.ilog2()
    }
}

fn buffer(t: &Target, r: &Readings, which: Buffer) -> Check {
    let (setting, now, why) = match which {
        Buffer::Read => (
            "net.ipv4.tcp_rmem",
            r.tcp_rmem,
            "the default is what a client may queue before the gateway reads (more while `delay` throttling pauses reading); autotuning grows busy sockets toward the max",
        ),
        Buffer::Write => (
            "net.ipv4.tcp_wmem",
            r.tcp_wmem,
            "the default is the send buffer a socket starts with (the kernel grows it from the congestion window); the gateway's own queue is gateway.max_outbound_frames",
        ),
    };
    let need = default_buffer_for(t, r);
    let (now_text, status, fix) = match now {
        None => ("unreadable".into(), Status::Advisory, None),
        Some(v) if v.mid > need => {
            let fixed = Triple {
                low: v.low.min(need),
                mid: need,
                high: v.high,
            };
            (
                v.to_string(),
                Status::Advisory,
                Some(format!("sysctl -w {setting}=\"{fixed}\"")),
            )
        }
        Some(v) => (v.to_string(), Status::Ok, None),
    };
    Check {
        setting,
        now: now_text,
        recommended: format!("default at most {need}"),
        status,
        fix,
        why: why.into(),
    }
}

fn migrate_req(t: &Target, r: &Readings) -> Check {
    const SETTING: &str = "net.ipv4.tcp_migrate_req";
    let why = "a worker near its descriptor limit, or draining, closes its SO_REUSEPORT listeners; with 1 the connections queued on them move to another listener instead of being reset";
    if t.listeners() <= 1 {
        return Check {
            setting: SETTING,
            now: r.tcp_migrate_req.map_or("absent".into(), |v| v.to_string()),
            recommended: "1 (no effect with one listener)".into(),
            status: Status::Ok,
            fix: None,
            why: why.into(),
        };
    }
    match r.tcp_migrate_req {
        None => Check {
            setting: SETTING,
            now: "absent".into(),
            recommended: "1".into(),
            status: Status::Advisory,
            fix: Some("a kernel with tcp_migrate_req (5.14 or later)".into()),
            why: why.into(),
        },
        Some(v) => at_least(SETTING, Some(v), 1, why.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{roomy, target};
    use super::*;

    fn find(t: &Target, r: &Readings, setting: &str) -> Check {
        checks(t, r)
            .into_iter()
            .find(|c| c.setting == setting)
            .unwrap()
    }

    #[test]
    fn queues_grow_with_the_target_between_floor_and_ceiling() {
        assert_eq!(queue_for(&target(1000, 1)), 4096);
        assert_eq!(queue_for(&target(100_000, 1)), 8192);
        assert_eq!(queue_for(&target(1_000_000, 1)), 65_535);
        let mut h = roomy();
        h.somaxconn = Some(4096);
        assert_eq!(
            find(&target(1000, 1), &h, "net.core.somaxconn").status,
            Status::Ok
        );
        let c = find(&target(1_000_000, 1), &h, "net.core.somaxconn");
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(c.fix.as_deref(), Some("sysctl -w net.core.somaxconn=65535"));
    }

    #[test]
    fn netdev_backlog_scales_to_sixteen_thousand() {
        let mut h = roomy();
        h.netdev_max_backlog = Some(1000);
        assert_eq!(
            find(&target(1000, 1), &h, "net.core.netdev_max_backlog").status,
            Status::Ok
        );
        let c = find(&target(1_000_000, 1), &h, "net.core.netdev_max_backlog");
        assert_eq!(c.recommended, "16384");
        assert_eq!(c.status, Status::Advisory);
    }

    #[test]
    fn ports_matter_only_with_a_local_load_generator() {
        let mut h = roomy();
        h.ip_local_port_range = Some(PortRange {
            first: 32_768,
            last: 60_999,
        });
        let remote = target(1_000_000, 1);
        assert_eq!(
            find(&remote, &h, "net.ipv4.ip_local_port_range").status,
            Status::Ok
        );
        let local = Target {
            peers: Peers::Local,
            ..remote
        };
        let c = find(&local, &h, "net.ipv4.ip_local_port_range");
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"")
        );
        // 1M / (55,296 / 2) per address.
        assert!(c.why.contains("needs 37 source addresses"), "{}", c.why);
    }

    #[test]
    fn tcp_mem_is_raised_never_lowered() {
        let mut h = roomy();
        h.tcp_mem = Some(Triple {
            low: 287_898,
            mid: 383_866,
            high: 575_796,
        });
        assert_eq!(
            find(&target(1000, 1), &h, "net.ipv4.tcp_mem").status,
            Status::Ok
        );
        let c = find(&target(1_000_000, 1), &h, "net.ipv4.tcp_mem");
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_mem=\"500000 1000000 2000000\"")
        );
        h.tcp_mem = Some(Triple {
            low: 900_000,
            mid: 1_000_000,
            high: 3_000_000,
        });
        let c = find(&target(1_000_000, 1), &h, "net.ipv4.tcp_mem");
        assert_eq!(c.status, Status::Ok);
    }

    #[test]
    fn default_buffers_shrink_to_fit_many_connections() {
        let mut h = roomy();
        h.tcp_mem = Some(Triple {
            low: 287_898,
            mid: 383_866,
            high: 575_796,
        });
        h.tcp_rmem = Some(Triple {
            low: 4096,
            mid: 131_072,
            high: 33_554_432,
        });
        // 2M pages × 4 KiB / 1M connections / 2 = 4 KiB each way.
        assert_eq!(default_buffer_for(&target(1_000_000, 1), &h), 4096);
        let c = find(&target(1_000_000, 1), &h, "net.ipv4.tcp_rmem");
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_rmem=\"4096 4096 33554432\"")
        );
        // 575,796 pages × 4 KiB / 1,000 / 2 ≈ 1.1 MiB: the defaults fit.
        assert_eq!(
            find(&target(1000, 1), &h, "net.ipv4.tcp_rmem").status,
            Status::Ok
        );
    }

    #[test]
    fn migration_matters_once_there_are_two_listeners() {
        let mut h = roomy();
        h.tcp_migrate_req = Some(0);
        let one = Target {
            shards: 1,
            ..target(1000, 1)
        };
        assert_eq!(
            find(&one, &h, "net.ipv4.tcp_migrate_req").status,
            Status::Ok
        );
        let c = find(&target(1000, 1), &h, "net.ipv4.tcp_migrate_req");
        assert_eq!(c.status, Status::Advisory);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_migrate_req=1")
        );
        h.tcp_migrate_req = None;
        let c = find(&target(1000, 4), &h, "net.ipv4.tcp_migrate_req");
        assert_eq!(c.status, Status::Advisory);
        assert!(c.fix.unwrap().contains("5.14"));
    }
}
