//! `tidegate bench hiccup`: how long this host keeps a busy thread from its
//! CPU. One thread per CPU, pinned, alternates a spin of `--busy-us` with a
//! sleep of `--sleep-us`, like a loaded gate shard that parks between
//! batches; each wake-up later than asked is a stall, recorded in an
//! HdrHistogram per CPU. Run it alone to see whether a host is quiet enough
//! to benchmark on, or beside a scenario to see what the host did meanwhile.
//!
//! Why busy and not idle: a scheduler favours a thread that slept most of
//! the time, so an idle probe (jHiccup's) misses what a loaded thread
//! suffers. On this sandbox, a process at nice -10 whose CPU time grows
//! with every descriptor open on the host (README, "Unicast") delayed the
//! busy probe past 5 ms 22-33 times in 10 s with 190,000 extra descriptors
//! open, an idle probe not once.
//!
//! The report carries the host's open file handles (`/proc/sys/fs/file-nr`)
//! at start and end, since that count is what the stalls grew with here.

use crate::{procfs, report, Percentiles, Recorder};
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Stalls longer than this are counted apart (a 2 ms latency target's
/// worth of trouble and more).
const LONG_STALL: Duration = Duration::from_millis(5);

/// Arguments of `tidegate bench hiccup`.
#[derive(clap::Args, Debug, Clone)]
pub struct HiccupArgs {
    /// Seconds to measure (1 to 600).
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Microseconds each probe spins before it sleeps (0 to 100,000: 0 is an idle probe).
    #[arg(long, default_value_t = 700)]
    pub busy_us: u64,
    /// Microseconds each probe asks to sleep (10 to 100,000).
    #[arg(long, default_value_t = 300)]
    pub sleep_us: u64,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What one CPU's probe saw.
#[derive(Debug, Clone, Serialize)]
pub struct CpuStalls {
    /// The CPU the probe was pinned to.
    pub cpu: usize,
    /// How late each wake-up was, beyond the sleep asked for.
    pub stall: Percentiles,
    /// Wake-ups later than 1 ms.
    pub over_1ms: u64,
    /// Wake-ups later than 5 ms.
    pub over_5ms: u64,
}

/// The report of `bench hiccup`.
#[derive(Debug, Clone, Serialize)]
pub struct HiccupReport {
    /// Seconds measured.
    pub duration_s: u64,
    /// Spin per cycle, µs.
    pub busy_us: u64,
    /// Sleep asked per cycle, µs.
    pub sleep_us: u64,
    /// One entry per CPU this process may run on.
    pub per_cpu: Vec<CpuStalls>,
    /// Every CPU's stalls, histograms added.
    pub stall: Percentiles,
    /// Wake-ups later than 5 ms, all CPUs.
    pub stalls_over_5ms: u64,
    /// File handles open on the host at the start (`/proc/sys/fs/file-nr`).
    pub host_open_files_start: Option<u64>,
    /// The same at the end.
    pub host_open_files_end: Option<u64>,
}

/// Runs one pinned probe per allowed CPU for the duration.
pub fn run(args: HiccupArgs) -> anyhow::Result<HiccupReport> {
    report::ensure_range("--duration-s", args.duration_s, 1, 600)?;
    report::ensure_range("--busy-us", args.busy_us, 0, 100_000)?;
    report::ensure_range("--sleep-us", args.sleep_us, 10, 100_000)?;
    let cpus = allowed_cpus()?;
    let open_start = procfs::open_files();
    let cycle = Cycle {
        busy: Duration::from_micros(args.busy_us),
        sleep: Duration::from_micros(args.sleep_us),
        until: Instant::now() + Duration::from_secs(args.duration_s),
    };
    let probes: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            std::thread::Builder::new()
                .name(format!("bench-hiccup-{cpu}"))
                .spawn(move || probe(cpu, cycle))
                .context("starting a probe thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut all = Recorder::new();
    let mut per_cpu = Vec::with_capacity(probes.len());
    for p in probes {
        let seen = p
            .join()
            .map_err(|_| anyhow::anyhow!("a probe thread panicked"))??;
        all.merge(&seen.recorder);
        per_cpu.push(CpuStalls {
            cpu: seen.cpu,
            stall: seen.recorder.percentiles(),
            over_1ms: seen.over_1ms,
            over_5ms: seen.over_5ms,
        });
    }
    let r = HiccupReport {
        duration_s: args.duration_s,
        busy_us: args.busy_us,
        sleep_us: args.sleep_us,
        stalls_over_5ms: per_cpu.iter().map(|c| c.over_5ms).sum(),
        stall: all.percentiles(),
        per_cpu,
        host_open_files_start: open_start,
        host_open_files_end: procfs::open_files(),
    };
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

/// What every probe does, and until when.
#[derive(Debug, Clone, Copy)]
struct Cycle {
    busy: Duration,
    sleep: Duration,
    until: Instant,
}

/// One probe's findings.
struct Seen {
    cpu: usize,
    recorder: Recorder,
    over_1ms: u64,
    over_5ms: u64,
}

fn probe(cpu: usize, cycle: Cycle) -> anyhow::Result<Seen> {
    pin_to(cpu)?;
    let mut seen = Seen {
        cpu,
        recorder: Recorder::new(),
        over_1ms: 0,
        over_5ms: 0,
    };
    loop {
        let start = Instant::now();
        if start >= cycle.until {
            return Ok(seen);
        }
        while start.elapsed() < cycle.busy {
            std::hint::spin_loop();
        }
        let asleep = Instant::now();
        std::thread::sleep(cycle.sleep);
        let late = asleep.elapsed().saturating_sub(cycle.sleep);
        seen.recorder.record(late);
        seen.over_1ms += u64::from(late > Duration::from_millis(1));
        seen.over_5ms += u64::from(late > LONG_STALL);
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set lives across the call and its size is passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    // SAFETY: CPU_ISSET reads the set we own, for indices below its size.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    anyhow::ensure!(!cpus.is_empty(), "no CPU allowed to this process");
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: as in `allowed_cpus`; CPU_SET writes within the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set lives across the call and its size is passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_probes_every_cpu() {
        let r = run(HiccupArgs {
            duration_s: 1,
            busy_us: 200,
            sleep_us: 100,
            json: None,
        })
        .unwrap();
        assert_eq!(r.per_cpu.len(), allowed_cpus().unwrap().len());
        for c in &r.per_cpu {
            // ~3,000 cycles a second; a loaded CI host still gets hundreds.
            assert!(c.stall.count > 100, "{c:?}");
        }
        assert_eq!(
            r.stall.count,
            r.per_cpu.iter().map(|c| c.stall.count).sum::<u64>()
        );
        assert!(r.host_open_files_start.is_some_and(|n| n > 0));
    }

    #[test]
    fn out_of_range_arguments_are_refused() {
        for (d, b, s) in [
            (0, 700, 300),
            (601, 700, 300),
            (1, 100_001, 300),
            (1, 700, 5),
        ] {
            let args = HiccupArgs {
                duration_s: d,
                busy_us: b,
                sleep_us: s,
                json: None,
            };
            assert!(run(args).is_err(), "{d} {b} {s}");
        }
    }
}
