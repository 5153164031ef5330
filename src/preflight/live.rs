//! The host as it is now ([`Readings`]) and how it is read: sysctls under
//! /proc/sys, this process's limits, /proc/meminfo, its capabilities, and
//! whether it may create an io_uring. The parsers are pure and tested; what
//! is missing reads as `None`, and the checks decide what that means.

use std::path::Path;

/// CAP_IPC_LOCK and CAP_SYS_RESOURCE (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_RESOURCE: u32 = 24;

/// A soft and hard resource limit; `u64::MAX` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// What the process gets now (and its children inherit).
    pub soft: u64,
    /// How far an unprivileged process may raise `soft`.
    pub hard: u64,
}

/// A three-valued sysctl: (min, default, max) for buffers, (low, pressure,
/// high) in pages for `tcp_mem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triple {
    /// First value.
    pub low: u64,
    /// Second value.
    pub mid: u64,
    /// Third value.
    pub high: u64,
}

impl std::fmt::Display for Triple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.low, self.mid, self.high)
    }
}

/// `net.ipv4.ip_local_port_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First ephemeral port.
    pub first: u64,
    /// Last ephemeral port.
    pub last: u64,
}

/// What creating a one-entry io_uring from this process did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingProbe {
    /// A ring was created (and closed).
    Created,
    /// `io_uring_setup` failed with this errno.
    Failed {
        /// The errno.
        errno: i32,
    },
}

/// The capabilities that change what the limits mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// CAP_SYS_RESOURCE is in the bounding set: root or systemd here can
    /// raise a hard nofile limit (up to `fs.nr_open`).
    pub can_raise_nofile: bool,
    /// CAP_IPC_LOCK is effective: io_uring registered buffers are not
    /// charged to memlock for this process.
    pub ipc_lock: bool,
}

/// The host as it is now: sysctls, this process's limits, memory and
/// io_uring. `None` is a value that could not be read.
#[derive(Debug, Clone)]
pub struct Readings {
    /// `fs.nr_open`: the ceiling of any process's nofile limit.
    pub nr_open: Option<u64>,
    /// `fs.file-max`: open files, host-wide.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.core.netdev_max_backlog`.
    pub netdev_max_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub ip_local_port_range: Option<PortRange>,
    /// `net.ipv4.tcp_mem` (pages).
    pub tcp_mem: Option<Triple>,
    /// `net.ipv4.tcp_rmem` (bytes).
    pub tcp_rmem: Option<Triple>,
    /// `net.ipv4.tcp_wmem` (bytes).
    pub tcp_wmem: Option<Triple>,
    /// `net.ipv4.tcp_migrate_req` (absent before Linux 5.14).
    pub tcp_migrate_req: Option<u64>,
    /// `net.ipv4.tcp_ehash_entries`: buckets of this network namespace's
    /// established-connections hash (read-only; set at boot or per netns).
    pub tcp_ehash_entries: Option<u64>,
    /// RLIMIT_NOFILE of this process.
    pub nofile: Option<Rlimit>,
    /// RLIMIT_MEMLOCK of this process (bytes).
    pub memlock: Option<Rlimit>,
    /// MemTotal (bytes).
    pub mem_total: Option<u64>,
    /// MemAvailable (bytes).
    pub mem_available: Option<u64>,
    /// `kernel.io_uring_disabled` (absent before Linux 6.6).
    pub io_uring_disabled: Option<u64>,
    /// Whether this process could create a ring.
    pub ring_probe: RingProbe,
    /// Capabilities of this process.
    pub caps: Caps,
    /// Bytes per page (`tcp_mem` is in pages).
    pub page_size: u64,
    /// CPUs this process may run on (shards when `gateway.shards = 0`).
    pub cpus: u64,
}

/// The readings of this host and process.
pub fn read() -> Readings {
    let sys = |key: &str| std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok();
    let number = |key: &str| sys(key).and_then(|s| parse_numbers(&s).first().copied());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    Readings {
        nr_open: number("fs/nr_open"),
        file_max: number("fs/file-max"),
        somaxconn: number("net/core/somaxconn"),
        tcp_max_syn_backlog: number("net/ipv4/tcp_max_syn_backlog"),
        netdev_max_backlog: number("net/core/netdev_max_backlog"),
        ip_local_port_range: sys("net/ipv4/ip_local_port_range").and_then(|s| parse_range(&s)),
        tcp_mem: sys("net/ipv4/tcp_mem").and_then(|s| parse_triple(&s)),
        tcp_rmem: sys("net/ipv4/tcp_rmem").and_then(|s| parse_triple(&s)),
        tcp_wmem: sys("net/ipv4/tcp_wmem").and_then(|s| parse_triple(&s)),
        tcp_migrate_req: number("net/ipv4/tcp_migrate_req"),
        tcp_ehash_entries: number("net/ipv4/tcp_ehash_entries"),
        nofile: rlimit(libc::RLIMIT_NOFILE),
        memlock: rlimit(libc::RLIMIT_MEMLOCK),
        mem_total: meminfo_bytes(&meminfo, "MemTotal"),
        mem_available: meminfo_bytes(&meminfo, "MemAvailable"),
        io_uring_disabled: number("kernel/io_uring_disabled"),
        ring_probe: probe_ring(),
        caps: Caps {
            can_raise_nofile: has_cap(&status, "CapBnd", CAP_SYS_RESOURCE),
            ipc_lock: has_cap(&status, "CapEff", CAP_IPC_LOCK),
        },
        page_size,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<Rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return None;
    }
    // RLIM_INFINITY is u64::MAX on Linux, which is what Rlimit calls unlimited.
    Some(Rlimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Creates and closes a one-entry io_uring: the only sure way to know the
/// kernel, its sysctl and any seccomp filter all let this process have one.
fn probe_ring() -> RingProbe {
    // struct io_uring_params is 120 bytes; zeroed asks for no features.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes exactly one io_uring_params,
    // which `params` holds (120 bytes, 8-aligned).
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return RingProbe::Failed { errno };
    }
    // SAFETY: `fd` is the ring descriptor just returned to us.
    unsafe {
        libc::close(fd as libc::c_int);
    }
    RingProbe::Created
}

/// Whitespace-separated numbers (sysctl values hold one to three).
fn parse_numbers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .map_while(|w| w.parse().ok())
        .collect()
}

fn parse_triple(text: &str) -> Option<Triple> {
    match parse_numbers(text)[..] {
        [low, mid, high] => Some(Triple { low, mid, high }),
        _ => None,
    }
}

fn parse_range(text: &str) -> Option<PortRange> {
    match parse_numbers(text)[..] {
        [first, last] => Some(PortRange { first, last }),
        _ => None,
    }
}

/// A `/proc/meminfo` field in bytes (the file says kB and means KiB).
fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    })
}

/// Whether capability `bit` is set in the hex mask `field` of
/// `/proc/self/status` (CapEff, CapBnd, ...).
fn has_cap(status: &str, field: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_values_parse() {
        assert_eq!(parse_numbers("1048576\n"), [1_048_576]);
        assert_eq!(
            parse_triple("287898\t383866\t575796\n"),
            Some(Triple {
                low: 287_898,
                mid: 383_866,
                high: 575_796
            })
        );
        assert_eq!(parse_triple("1 2\n"), None);
        assert_eq!(
            parse_range("32768\t60999\n"),
            Some(PortRange {
                first: 32_768,
                last: 60_999
            })
        );
        assert_eq!(parse_numbers("9223372036854775807\n"), [i64::MAX as u64]);
    }

    #[test]
    fn meminfo_fields_are_bytes() {
        let text = "MemTotal:       24683656 kB\nMemFree:        21485760 kB\nMemAvailable:   24212880 kB\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(24_683_656 * 1024));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(24_212_880 * 1024));
        assert_eq!(meminfo_bytes(text, "Mem"), None);
        assert_eq!(meminfo_bytes(text, "SwapTotal"), None);
    }

    #[test]
    fn capability_bits_are_read_from_the_mask() {
        // Root in a container without CAP_SYS_RESOURCE (bit 24).
        let status = "Name:\tx\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
        assert!(!has_cap(status, "CapBnd", CAP_SYS_RESOURCE));
        assert!(has_cap(status, "CapEff", CAP_IPC_LOCK));
        let user = "CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n";
        assert!(has_cap(user, "CapBnd", CAP_SYS_RESOURCE));
        assert!(!has_cap(user, "CapEff", CAP_IPC_LOCK));
        assert!(!has_cap("", "CapEff", CAP_IPC_LOCK));
    }

    #[test]
    fn this_host_reads_without_panicking() {
        let r = read();
        assert!(r.page_size >= 4096);
        assert!(r.cpus >= 1);
        assert!(r.nofile.is_some(), "getrlimit always answers");
    }
}
