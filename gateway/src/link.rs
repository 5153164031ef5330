//! A shard's link to one logic instance: reconnect with backoff, HELLO,
//! batched writes, liveness pings. Frames are the client codec with
//! commands ≥ 0x8000 (ARCHITECTURE §2). The link runs over TCP, or over a
//! Unix socket when logic is on the same host (`tidegate up` does): no TCP
//! stack and no loopback softirq per frame.

use crate::metrics;
use crate::shard::Shard;
use crate::signal::Signal;
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpStream, UnixStream};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::task::Poll;
use std::time::{Duration, Instant};
use tidegate_proto::{pb, AppCode, Cmd, Frame, Header};

/// Frames queued for logic before senders are refused (bounds memory while
/// logic is slow; refused requests are answered BUSY/UNAVAILABLE).
const MAX_QUEUED: usize = 65_536;
/// Largest link frame body: deliveries carry many connection ids.
const MAX_LINK_BODY: u32 = 16 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(5);
const DEAD_AFTER: Duration = Duration::from_secs(15);

/// Where a logic instance takes gate links: `host:port`, or
/// `unix:/path/to/socket` for a logic instance on the same host
/// (`unix:@name`: an abstract socket, which leaves no file behind).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum LinkAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix stream socket.
    Unix(PathBuf),
}

impl FromStr for LinkAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<LinkAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, as in unix:/run/tidegate/link.sock".into());
            }
            return Ok(LinkAddr::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(LinkAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither host:port nor unix:/path"))
    }
}

impl TryFrom<String> for LinkAddr {
    type Error = String;

    fn try_from(s: String) -> Result<LinkAddr, String> {
        s.parse()
    }
}

impl fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkAddr::Tcp(a) => write!(f, "{a}"),
            LinkAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One shard's link to one logic address.
pub struct Link {
    addr: LinkAddr,
    out: RefCell<VecDeque<Bytes>>,
    wake: Signal,
    up: Cell<bool>,
    /// Set by the liveness check to make the link task reconnect.
    dead: Cell<bool>,
    ping_sent: Cell<Option<Instant>>,
    last_rx: Cell<Instant>,
    /// Requests sent on this link still awaiting logic's reply.
    pub inflight: Cell<u32>,
}

impl Link {
    /// A link that is not connected yet.
    pub fn new(addr: LinkAddr) -> Link {
        Link {
            addr,
            out: RefCell::new(VecDeque::new()),
            wake: Signal::default(),
            up: Cell::new(false),
            dead: Cell::new(false),
            ping_sent: Cell::new(None),
            last_rx: Cell::new(Instant::now()),
            inflight: Cell::new(0),
        }
    }

    /// Whether the link is connected and introduced.
    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Queues a frame for logic; false when the link is down or full.
    pub fn send(&self, frame: Bytes) -> bool {
        let mut out = self.out.borrow_mut();
        if !self.up.get() || out.len() >= MAX_QUEUED {
            return false;
        }
        out.push_back(frame);
        drop(out);
        self.wake.notify();
        true
    }

    /// Records a pong; returns the round trip.
    pub fn pong(&self) -> Option<Duration> {
        self.ping_sent.take().map(|t| t.elapsed())
    }

    /// Pings an idle link and declares it dead when logic stopped answering.
    pub fn check_liveness(&self) {
        if !self.up.get() {
            return;
        }
        if self.last_rx.get().elapsed() > DEAD_AFTER {
            self.dead.set(true);
            self.wake.notify();
            return;
        }
        let due = self.ping_sent.get().is_none() && self.last_rx.get().elapsed() >= PING_EVERY;
        if due {
            self.ping_sent.set(Some(Instant::now()));
            let ping = Frame::empty(Header::new(Cmd::LinkPing, AppCode(0), 0));
            self.send(ping.to_bytes());
        }
    }
}

/// Keeps `shard.links[idx]` connected for the life of the shard.
pub async fn run(shard: Rc<Shard>, idx: usize) {
    let link = shard.links[idx].clone();
    let mut backoff = BACKOFF_MIN;
    loop {
        let ended = match &link.addr {
            LinkAddr::Tcp(addr) => match TcpStream::connect(*addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    Ok(connected(&shard, &link, stream).await)
                }
                Err(e) => Err(e),
            },
            LinkAddr::Unix(path) => match connect_unix(path).await {
                Ok(stream) => Ok(connected(&shard, &link, stream).await),
                Err(e) => Err(e),
            },
        };
        match ended {
            Ok(why) => {
                backoff = BACKOFF_MIN;
                link.up.set(false);
                link.dead.set(false);
                link.ping_sent.set(None);
                link.out.borrow_mut().clear();
                // Replies to what was in flight will never come.
                link.inflight.set(0);
                metrics::link_event("disconnected");
                tracing::warn!(shard = shard.id, logic = %link.addr, "logic link down: {why}");
                shard.on_link_down();
            }
            Err(e) => {
                metrics::link_event("connect_failed");
                tracing::debug!(shard = shard.id, logic = %link.addr, "logic connect: {e}");
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Connects to logic's Unix socket. A path starting with `@` names an
/// abstract socket (Linux): nothing on the filesystem, gone with the
/// process that listens, even one killed with SIGKILL. glommio connects
/// only to filesystem paths, so the abstract connect is made with std (a
/// local Unix connect does not wait on the network) and handed over.
async fn connect_unix(path: &std::path::Path) -> glommio::Result<UnixStream, ()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let Some(name) = path.as_os_str().as_bytes().strip_prefix(b"@") else {
        return UnixStream::connect(path).await;
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    stream.set_nonblocking(true)?;
    // SAFETY: a connected stream socket this function owns, handed over once.
    Ok(unsafe { UnixStream::from_raw_fd(stream.into_raw_fd()) })
}

enum Event {
    Wake,
    Read,
    Eof,
}

/// Runs a connected link until it fails; returns why.
async fn connected<S>(shard: &Shard, link: &Link, mut stream: S) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    metrics::link_event("connected");
    tracing::info!(shard = shard.id, logic = %link.addr, "logic link up");
    let hello = pb::LinkHello {
        gate_id: shard.gate_id.to_string(),
        shard: shard.id,
        shards: u32::try_from(shard.cfg.shards).unwrap_or(u32::MAX),
        client_addr: shard.cfg.client_addr.to_string(),
        incarnation: crate::shard::incarnation(),
    };
    let hello = Frame::encode_msg_to_bytes(Header::new(Cmd::LinkHello, AppCode(0), 0), &hello);
    if let Err(e) = stream.write_all(&hello).await {
        return format!("hello: {e}");
    }
    link.last_rx.set(Instant::now());
    link.up.set(true);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    // Reads land here and are copied into `rbuf`: zeroing a fresh 64 KiB
    // of `rbuf` on every poll (a wake-up for an outgoing frame polls too)
    // cost more than copying the bytes actually read.
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if link.dead.get() {
            return format!("no frame from logic for {DEAD_AFTER:?}");
        }
        if let Err(e) = flush(link, &mut stream).await {
            return format!("write: {e}");
        }
        let event = std::future::poll_fn(|cx| {
            if link.wake.poll_wait(cx).is_ready() {
                return Poll::Ready(Ok(Event::Wake));
            }
            let r = Pin::new(&mut stream).poll_read(cx, &mut chunk);
            if let Poll::Ready(Ok(n)) = &r {
                rbuf.extend_from_slice(&chunk[..*n]);
            }
            match r {
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(Event::Eof)),
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(Event::Read)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match event {
            Ok(Event::Wake) => {}
            Ok(Event::Eof) => return "logic closed the link".into(),
            Err(e) => return format!("read: {e}"),
            Ok(Event::Read) => {
                link.last_rx.set(Instant::now());
                loop {
                    match Frame::parse(&mut rbuf, MAX_LINK_BODY) {
                        Ok(Some(frame)) => {
                            if let Err(e) = shard.on_link_frame(link, frame) {
                                metrics::link_event("bad_frame");
                                tracing::warn!(shard = shard.id, "bad frame from logic: {e}");
                            }
                        }
                        Ok(None) => break,
                        Err(e) if e.is_fatal() => {
                            return format!("undecodable bytes from logic: {e}")
                        }
                        Err(e) => {
                            metrics::link_event("bad_frame");
                            tracing::warn!(shard = shard.id, "bad frame from logic: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// Writes everything queued, many frames per write.
async fn flush(link: &Link, stream: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
    loop {
        let batch = {
            let mut out = link.out.borrow_mut();
            if out.is_empty() {
                return Ok(());
            }
            let mut batch = BytesMut::new();
            while let Some(f) = out.pop_front() {
                batch.extend_from_slice(&f);
                if batch.len() >= 256 * 1024 {
                    break;
                }
            }
            batch
        };
        stream.write_all(&batch).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses_are_host_port_or_unix_paths() {
        let tcp: LinkAddr = "127.0.0.1:7100".parse().unwrap();
        assert_eq!(tcp, LinkAddr::Tcp("127.0.0.1:7100".parse().unwrap()));
        let unix: LinkAddr = "unix:/run/tg/link.sock".parse().unwrap();
        assert_eq!(unix, LinkAddr::Unix("/run/tg/link.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/tg/link.sock");
        let abstract_name: LinkAddr = "unix:@tidegate-1".parse().unwrap();
        assert_eq!(abstract_name, LinkAddr::Unix("@tidegate-1".into()));
        assert!("unix:".parse::<LinkAddr>().is_err());
        let e = "logic-host".parse::<LinkAddr>().unwrap_err();
        assert!(e.contains("neither host:port nor unix:/path"), "{e}");
    }
}
