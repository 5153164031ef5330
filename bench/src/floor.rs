//! `tidegate bench floor`: what the kernel alone charges on this host for
//! the socket work the other scenarios time, with no gateway, no runtime and
//! no wake-up in between. Each process opens loopback TCP pairs (client
//! socket from the fleet's source addresses, accepted server end) in one
//! thread, times a login-sized request and reply on every pair, then, on a
//! common start, writes one small frame on every server end and reads it on
//! every client end: a broadcast with nothing but the two sockets' system
//! calls. CPU is the thread's own (`CLOCK_THREAD_CPUTIME_ID`); the
//! fan-out's wall time runs from the common start to the last process's
//! last read, on the monotonic clock every process shares.
//!
//! Why it exists: a target below this floor cannot be met by any server on
//! this host with its load generator beside it; the report says how far each
//! target is from it and how far Tidegate is.

use crate::procs::{self, Share, Workers};
use crate::receipts::mono_ns;
use crate::{report, sources};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

/// Descriptors per pair: both ends live in the measuring process.
const FDS_PER_PAIR: usize = 2;
/// A read that waits longer than this fails the run instead of hanging it.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame the scenario writes (one read takes it whole).
const MAX_BYTES: usize = 4096;

/// Arguments of `tidegate bench floor`.
#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback TCP pairs (each one client connection and its accepted end).
    #[arg(long, default_value_t = 9_000)]
    pub pairs: usize,
    /// Processes holding the pairs (default: as few as the open-files limit
    /// allows, two descriptors per pair).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Bytes of each request, reply and fan-out frame.
    #[arg(long, default_value_t = 64)]
    pub bytes: usize,
    /// Fan-out rounds (one frame per pair each).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of one `--procs` worker (internal).
#[derive(clap::Args, Debug, Clone)]
pub struct FloorWorkerArgs {
    /// First pair index of the share (picks its source addresses).
    #[arg(long)]
    pub first: usize,
    /// Pairs in the share.
    #[arg(long)]
    pub pairs: usize,
    /// Bytes per frame.
    #[arg(long)]
    pub bytes: usize,
    /// Fan-out rounds.
    #[arg(long)]
    pub rounds: usize,
}

/// What `bench floor` measured. Per-operation figures are CPU microseconds
/// of the measuring threads, summed over processes, divided by operations.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    /// Pairs opened.
    pub pairs: usize,
    /// Processes that held them.
    pub procs: usize,
    /// Bytes per frame.
    pub bytes: usize,
    /// Fan-out rounds.
    pub rounds: usize,
    /// CPUs the host offers (the bounds below divide by it).
    pub cpus: usize,
    /// socket + bind + connect + accept + TCP_NODELAY on both ends, per pair.
    pub connect_cpu_us: f64,
    /// A request client → server and a reply back, per pair (a login's socket work).
    pub roundtrip_cpu_us: f64,
    /// One frame written on a server end, per delivery.
    pub send_cpu_us: f64,
    /// The same frame read on its client end, per delivery.
    pub recv_cpu_us: f64,
    /// Fan-out: the common start to the last process's last read, seconds.
    pub fanout_s: f64,
    /// Deliveries over `fanout_s`.
    pub fanout_deliveries_per_s: f64,
    /// Logins per second the host could not exceed: `cpus` divided by
    /// connect + round trip CPU (no server, client or wake-up work at all).
    pub login_bound_per_s: f64,
    /// The shortest a broadcast to every pair could take: deliveries times
    /// send + receive CPU over `cpus`, seconds.
    pub broadcast_bound_s: f64,
    /// Fan-out frames not read back (0 unless the kernel dropped or stalled).
    pub short: u64,
}

/// One process's setup, as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupLine {
    /// Pairs opened.
    pub pairs: usize,
    /// Thread CPU of opening them, ns.
    pub connect_cpu_ns: u64,
    /// Thread CPU of the request/reply on every pair, ns.
    pub roundtrip_cpu_ns: u64,
}

/// One process's fan-out, as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutLine {
    /// Thread CPU of the writes, ns.
    pub send_cpu_ns: u64,
    /// Thread CPU of the reads, ns.
    pub recv_cpu_ns: u64,
    /// Its last read, CLOCK_MONOTONIC ns.
    pub done_ns: u64,
    /// Frames it did not read back.
    pub short: u64,
}

/// Runs the scenario.
pub async fn run(args: FloorArgs) -> anyhow::Result<FloorReport> {
    report::ensure_range("--pairs", args.pairs, 1, 1_200_000)?;
    report::ensure_range("--bytes", args.bytes, 1, MAX_BYTES)?;
    report::ensure_range("--rounds", args.rounds, 1, 100)?;
    let per_proc = procs::per_process_capacity() / FDS_PER_PAIR;
    let shares = match args.procs {
        Some(p) => {
            report::ensure_range("--procs", p, 1, 200)?;
            procs::shares(args.pairs, args.pairs.div_ceil(p))
        }
        None => procs::shares(args.pairs, per_proc),
    };
    report::ensure_range("--procs", shares.len(), 1, 200)?;
    anyhow::ensure!(
        shares.iter().all(|s| s.count <= per_proc),
        "{} pairs over {} processes need more descriptors than one may open; use more --procs",
        args.pairs,
        shares.len()
    );
    // Bounded: setup at tens of µs a pair on two cores, then the fan-out.
    let limit = Duration::from_secs(120) + Duration::from_micros(200 * args.pairs as u64);
    let r = report::within(limit, measure(&args, &shares)).await?;
    report::write_json(args.json.as_deref(), &r)?;
    Ok(r)
}

async fn measure(args: &FloorArgs, shares: &[Share]) -> anyhow::Result<FloorReport> {
    let (setups, fanouts, go) = if shares.len() == 1 {
        in_process(args).await?
    } else {
        in_workers(args, shares).await?
    };
    let ops = args.pairs as f64;
    let deliveries = ops * args.rounds as f64;
    // CPU ns summed over processes, as µs per operation.
    let per = |ns: u64, n: f64| ns as f64 / n / 1e3;
    let connect = per(setups.iter().map(|s| s.connect_cpu_ns).sum(), ops);
    let roundtrip = per(setups.iter().map(|s| s.roundtrip_cpu_ns).sum(), ops);
    let send = per(fanouts.iter().map(|f| f.send_cpu_ns).sum(), deliveries);
    let recv = per(fanouts.iter().map(|f| f.recv_cpu_ns).sum(), deliveries);
    let done = fanouts.iter().map(|f| f.done_ns).max().unwrap_or(go);
    let fanout_s = done.saturating_sub(go) as f64 / 1e9;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(FloorReport {
        pairs: args.pairs,
        procs: shares.len(),
        bytes: args.bytes,
        rounds: args.rounds,
        cpus,
        connect_cpu_us: connect,
        roundtrip_cpu_us: roundtrip,
        send_cpu_us: send,
        recv_cpu_us: recv,
        fanout_s,
        fanout_deliveries_per_s: deliveries / fanout_s.max(1e-9),
        login_bound_per_s: cpus as f64 * 1e6 / (connect + roundtrip).max(1e-9),
        broadcast_bound_s: ops * (send + recv) / 1e6 / cpus as f64,
        short: fanouts.iter().map(|f| f.short).sum(),
    })
}

type Measured = (Vec<SetupLine>, Vec<FanoutLine>, u64);

async fn in_process(args: &FloorArgs) -> anyhow::Result<Measured> {
    let (pairs, bytes, rounds) = (args.pairs, args.bytes, args.rounds);
    let (set, setup) = tokio::task::spawn_blocking(move || open(0, pairs, bytes)).await??;
    let go = mono_ns();
    let (set, fanout) = tokio::task::spawn_blocking(move || set.fan_out(bytes, rounds)).await??;
    drop(set);
    Ok((vec![setup], vec![fanout], go))
}

async fn in_workers(args: &FloorArgs, shares: &[Share]) -> anyhow::Result<Measured> {
    let mut workers = Workers::spawn(shares, |s| {
        [
            "bench",
            "floor-worker",
            "--first",
            &s.first.to_string(),
            "--pairs",
            &s.count.to_string(),
            "--bytes",
            &args.bytes.to_string(),
            "--rounds",
            &args.rounds.to_string(),
        ]
        .map(String::from)
        .to_vec()
    })?;
    // Every process opens its pairs first: the fan-out then runs against
    // all of them at once, as a broadcast to the whole host's sockets would.
    let setup_within = Duration::from_secs(60) + Duration::from_micros(200 * args.pairs as u64);
    let setups: Vec<SetupLine> = workers.next_reports(setup_within).await?;
    let go = mono_ns();
    for i in 0..workers.len() {
        workers.tell(i, "go").await?;
    }
    let fanouts: Vec<FanoutLine> = workers.next_reports(Duration::from_secs(120)).await?;
    workers.finish(Duration::from_secs(30)).await;
    Ok((setups, fanouts, go))
}

/// A `--procs` worker: opens its share, reports, fans out on "go", reports
/// again, and closes its sockets when released.
pub async fn worker(args: FloorWorkerArgs) -> anyhow::Result<()> {
    report::ensure_range("--bytes", args.bytes, 1, MAX_BYTES)?;
    let (first, pairs, bytes, rounds) = (args.first, args.pairs, args.bytes, args.rounds);
    let (set, setup) = tokio::task::spawn_blocking(move || open(first, pairs, bytes)).await??;
    println!("{}", serde_json::to_string(&setup)?);
    let within = Duration::from_secs(600);
    match procs::next_instruction(within).await?.as_deref() {
        Some("go") => {}
        Some(other) => anyhow::bail!("unexpected instruction {other:?}"),
        None => return Ok(()),
    }
    let (set, fanout) = tokio::task::spawn_blocking(move || set.fan_out(bytes, rounds)).await??;
    println!("{}", serde_json::to_string(&fanout)?);
    procs::until_released(Duration::from_secs(60)).await;
    drop(set);
    Ok(())
}

/// One process's pairs: client ends and their accepted server ends.
struct PairSet {
    clients: Vec<OwnedFd>,
    servers: Vec<OwnedFd>,
}

/// Opens pairs `first .. first + count` and times a request and reply on each.
fn open(first: usize, count: usize, bytes: usize) -> anyhow::Result<(PairSet, SetupLine)> {
    let listener = listen_loopback()?;
    let target = local_addr(listener.as_raw_fd())?;
    let mut set = PairSet {
        clients: Vec::with_capacity(count),
        servers: Vec::with_capacity(count),
    };
    let cpu0 = thread_cpu_ns();
    for i in first..first + count {
        let client = connect_from(sources::source_for(i), target)
            .with_context(|| format!("pair {i}: connect"))?;
        // SAFETY: accept on a listening socket we own; -1 or a new descriptor.
        let server = cvt(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })
        .with_context(|| format!("pair {i}: accept"))?;
        // SAFETY: a fresh descriptor nobody else owns.
        let server = unsafe { OwnedFd::from_raw_fd(server) };
        set_int(server.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        set.clients.push(client);
        set.servers.push(server);
    }
    let connect_cpu_ns = thread_cpu_ns() - cpu0;
    let frame = vec![b'x'; bytes];
    let mut buf = vec![0u8; MAX_BYTES];
    let cpu0 = thread_cpu_ns();
    for (c, s) in set.clients.iter().zip(&set.servers) {
        send_all(c, &frame)?;
        recv_exact(s, &mut buf[..bytes])?;
        send_all(s, &frame)?;
        recv_exact(c, &mut buf[..bytes])?;
    }
    let roundtrip_cpu_ns = thread_cpu_ns() - cpu0;
    let setup = SetupLine {
        pairs: count,
        connect_cpu_ns,
        roundtrip_cpu_ns,
    };
    Ok((set, setup))
}

impl PairSet {
    /// Writes one frame on every server end, then reads every client end;
    /// `rounds` times.
    fn fan_out(self, bytes: usize, rounds: usize) -> anyhow::Result<(PairSet, FanoutLine)> {
        let frame = vec![b'y'; bytes];
        let mut buf = vec![0u8; MAX_BYTES];
        let (mut send_cpu_ns, mut recv_cpu_ns, mut short) = (0, 0, 0);
        for _ in 0..rounds {
            let t = thread_cpu_ns();
            for s in &self.servers {
                send_all(s, &frame)?;
            }
            send_cpu_ns += thread_cpu_ns() - t;
            let t = thread_cpu_ns();
            for c in &self.clients {
                if recv_exact(c, &mut buf[..bytes]).is_err() {
                    short += 1;
                }
            }
            recv_cpu_ns += thread_cpu_ns() - t;
        }
        let line = FanoutLine {
            send_cpu_ns,
            recv_cpu_ns,
            done_ns: mono_ns(),
            short,
        };
        Ok((self, line))
    }
}

fn listen_loopback() -> anyhow::Result<OwnedFd> {
    let fd = new_socket()?;
    bind(fd.as_raw_fd(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    // SAFETY: listen on a bound socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 4096) }).context("listen")?;
    Ok(fd)
}

/// A blocking connect from `source` (port chosen at connect time, as
/// bench's clients do) with TCP_NODELAY and a receive timeout.
fn connect_from(source: IpAddr, target: SocketAddrV4) -> anyhow::Result<OwnedFd> {
    let IpAddr::V4(source) = source else {
        anyhow::bail!("IPv4 sources only");
    };
    let fd = new_socket()?;
    let raw = fd.as_raw_fd();
    sources::bind_address_no_port(&fd)?;
    bind(raw, SocketAddrV4::new(source, 0))?;
    // SAFETY: the kernel reads a sockaddr of the size given.
    with_sockaddr(target, |sa, len| unsafe { libc::connect(raw, sa, len) })?;
    set_int(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    set_opt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    Ok(fd)
}

fn new_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: socket returns -1 or a new descriptor.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
        .context("socket")?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn bind(fd: RawFd, a: SocketAddrV4) -> anyhow::Result<()> {
    // SAFETY: the kernel reads a sockaddr of the size given.
    with_sockaddr(a, |sa, len| unsafe { libc::bind(fd, sa, len) })
        .with_context(|| format!("bind {a}"))?;
    Ok(())
}

/// Calls `f` with `a` as a sockaddr and its length (for bind and connect).
fn with_sockaddr(
    a: SocketAddrV4,
    f: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> std::io::Result<libc::c_int> {
    let sa = sockaddr(a);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    cvt(f((&sa as *const libc::sockaddr_in).cast(), len))
}

fn local_addr(fd: RawFd) -> anyhow::Result<SocketAddrV4> {
    // SAFETY: an all-zero sockaddr_in is valid; getsockname fills it.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` has room for `len` bytes.
    cvt(unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) })?;
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    let addr = SocketAddr::from((ip, u16::from_be(sa.sin_port)));
    report::ensure_loopback(addr, "the floor's listener")?;
    Ok(SocketAddrV4::new(ip, addr.port()))
}

fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> anyhow::Result<()> {
    set_opt(fd, level, name, &value)
}

/// setsockopt with a plain value (`c_int`, `timeval`) of its own size.
fn set_opt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> anyhow::Result<()> {
    // SAFETY: `value` is valid for reads of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .context("setsockopt")?;
    Ok(())
}

fn send_all(fd: &OwnedFd, mut buf: &[u8]) -> anyhow::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        buf = &buf[cvt_size(n).context("send")?..];
    }
    Ok(())
}

fn recv_exact(fd: &OwnedFd, mut buf: &mut [u8]) -> anyhow::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match cvt_size(n).context("recv")? {
            0 => anyhow::bail!("peer closed"),
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

/// CPU time of the calling thread (user + system), ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> std::io::Result<usize> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_small_floor_run_moves_every_frame() {
        let args = FloorArgs {
            pairs: 200,
            procs: None,
            bytes: 64,
            rounds: 2,
            json: None,
        };
        let r = run(args).await.unwrap();
        assert_eq!((r.pairs, r.procs, r.short), (200, 1, 0));
        assert!(r.connect_cpu_us > 0.0 && r.send_cpu_us > 0.0 && r.recv_cpu_us > 0.0);
        assert!(r.fanout_s > 0.0 && r.login_bound_per_s.is_finite());
    }

    #[tokio::test]
    async fn out_of_range_arguments_are_refused() {
        let mut args = FloorArgs {
            pairs: 0,
            procs: None,
            bytes: 64,
            rounds: 1,
            json: None,
        };
        assert!(run(args.clone()).await.is_err());
        args.pairs = 10;
        args.bytes = MAX_BYTES + 1;
        assert!(run(args).await.is_err());
    }
}
