//! Memory readings from /proc: a process's resident set and the kernel's
//! TCP socket memory, the two numbers the idle scenario compares.

use anyhow::Context;
use serde::Serialize;

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the gateway running?)"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// CPU time `pid` has used, user + system, in seconds (/proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime and stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(ticks.len() == 2, "no utime/stime in /proc/{pid}/stat");
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks[0] + ticks[1]) as f64 / hz)
}

/// Resident set of `pid` and every process below it (a gateway supervisor
/// and its workers), bytes. Shared pages (the binary) count once per
/// process, as RSS does; per-connection deltas are unaffected.
pub fn tree_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let mut total = rss_bytes(pid)?;
    for child in children(pid) {
        // A worker may exit between listing and reading: skip it.
        total += tree_rss_bytes(child).unwrap_or(0);
    }
    Ok(total)
}

/// CPU time of `pid` and every process below it, seconds.
pub fn tree_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut total = cpu_seconds(pid)?;
    for child in children(pid) {
        total += tree_cpu_seconds(child).unwrap_or(0.0);
    }
    Ok(total)
}

/// When `pid` started, in clock ticks since boot (/proc/PID/stat field
/// 22): with the pid, names one process even after pids are reused.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // Fields after the name start at 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Direct children of `pid` (from every thread's `children` list).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Kernel-wide TCP socket counters from /proc/net/sockstat.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SockStat {
    /// Sockets in use.
    pub inuse: u64,
    /// Sockets allocated.
    pub alloc: u64,
    /// Buffer memory charged to TCP, bytes (`mem` pages × page size).
    pub mem_bytes: u64,
}

/// Reads /proc/net/sockstat.
pub fn sockstat() -> anyhow::Result<SockStat> {
    let text =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line")?;
    let mut s = SockStat::default();
    let fields: Vec<&str> = line.split_whitespace().collect();
    for pair in fields[1..].chunks(2) {
        if let [k, v] = pair {
            let v: u64 = v.parse().unwrap_or(0);
            match *k {
                "inuse" => s.inuse = v,
                "alloc" => s.alloc = v,
                "mem" => s.mem_bytes = v * 4096,
                _ => {}
            }
        }
    }
    Ok(s)
}

/// The kernel's whole slab (`Slab:` in /proc/meminfo), bytes: the
/// cross-check of [`tcp_slab_bytes`], which names only the socket caches.
pub fn meminfo_slab_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Bytes of slab memory of the caches that make up a TCP socket (TCP,
/// sock_inode_cache, …) from /proc/slabinfo; `None` if unreadable.
pub fn tcp_slab_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let caches = [
        "TCP",
        "sock_inode_cache",
        "dentry",
        "filp",
        "eventpoll_epi",
        "skbuff_head_cache",
    ];
    let total = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // name active_objs num_objs objsize ...
            if f.len() > 3 && caches.contains(&f[0]) {
                Some(f[2].parse::<u64>().ok()? * f[3].parse::<u64>().ok()?)
            } else {
                None
            }
        })
        .sum();
    Some(total)
}

/// File handles allocated on the whole host (the first field of
/// /proc/sys/fs/file-nr): every process's descriptors, sockets or not.
pub fn open_files() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/fs/file-nr").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss_and_sockstat() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        sockstat().unwrap();
        assert!(open_files().is_some_and(|n| n > 0));
    }

    #[test]
    fn reads_cpu_time_spent() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {}
        let used = cpu_seconds(std::process::id()).unwrap();
        assert!(used >= 0.01, "{used}");
    }

    #[test]
    fn a_tree_counts_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(children(me).contains(&child.id()));
        // Our own RSS moves with the other tests' threads, so compare with
        // the child's: a leaf's tree is itself, and ours includes it. The
        // child's RSS moves too while it execs and loads `sleep`: compare
        // only once two readings around the tree's agree.
        let mut settled = None;
        for _ in 0..100 {
            let before = rss_bytes(child.id()).unwrap();
            let tree = tree_rss_bytes(child.id()).unwrap();
            if rss_bytes(child.id()).unwrap() == before {
                settled = Some((before, tree));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (leaf, tree) = settled.expect("the child's RSS settles within 2 s");
        assert_eq!(tree, leaf);
        assert!(tree_rss_bytes(me).unwrap() >= leaf);
        let _ = child.kill();
        let _ = child.wait();
    }
}
