//! nginx + nchan's side of a peer run: Debian's nginx with
//! `libnginx-mod-nchan` started on a free loopback port with a generated
//! config, N EventSource (server-sent events) subscribers on one channel,
//! and fan-out by HTTP POSTs to the channel's publisher location, the
//! analogue of Tidegate's `POST /v1/push` `"to": "all"`.
//!
//! SSE is a text stream, so the stamped payload travels hex-encoded (twice
//! the bytes on the wire for nchan; the stamp and sizes are otherwise the
//! same as the other sides'). nginx runs one worker per CPU, as Tidegate
//! runs one shard per CPU; memory and CPU are the master's and workers'
//! together.

use super::fanout::{self, Subscriber};
use super::process::{self, Server};
use super::{measure_side, Plan, Sent, SideReport};
use crate::{sources, Recorder};
use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where Debian's package puts the module.
const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// How long nginx may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response head or SSE event this client accepts.
const MAX_MESSAGE: usize = 64 * 1024;

/// An nginx this run started; stopped (master and workers) when dropped.
pub struct Nchan {
    server: Server,
    /// Its HTTP listener.
    pub addr: SocketAddr,
    /// `nginx/1.22.1 + nchan` as the binary reports it.
    pub version: String,
    _dir: tempfile::TempDir,
}

impl Nchan {
    /// The nginx binary: `explicit`, else `nginx` on PATH or in /usr/sbin;
    /// the nchan module must be installed.
    pub fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
        let hint = "apt-get install -y nginx libnginx-mod-nchan (tests/run installs them when run as root)";
        anyhow::ensure!(Path::new(MODULE).is_file(), "{MODULE} not found: {hint}");
        match explicit {
            Some(p) => Ok(p.to_path_buf()),
            None => {
                process::find_program("nginx").with_context(|| format!("nginx not found: {hint}"))
            }
        }
    }

    /// Starts `bin` on a free loopback port and waits until it serves HTTP.
    pub async fn start(bin: &Path) -> anyhow::Result<Nchan> {
        let version = version_of(bin)?;
        let spawn = |port: u16, dir: &Path| {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config(port, dir)).context("writing nginx.conf")?;
            let mut cmd = Command::new(bin);
            cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
            Server::spawn_with_workers(cmd, &dir.join("nginx.log"))
        };
        let started = process::start_on_free_port("nginx", START_TIMEOUT, spawn, probe).await?;
        Ok(Nchan {
            server: started.server,
            addr: started.addr,
            version,
            _dir: started.dir,
        })
    }

    /// The master's process id (its workers are its children).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}

/// nginx's config: loopback only, in the foreground (bench owns the
/// process), one worker per CPU with as many connections as the
/// descriptor limit allows, every path in the run's temporary directory,
/// and one channel whose subscribers get only messages published after
/// they subscribed.
fn config(port: u16, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "# written by tidegate bench peers\n\
         load_module {MODULE};\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes auto;\n\
         worker_rlimit_nofile 20000;\n\
         pid {dir}/nginx.pid;\n\
         error_log stderr notice;\n\
         events {{\n  worker_connections 20000;\n  multi_accept on;\n}}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {dir}/body;\n\
         \x20 proxy_temp_path {dir}/proxy;\n\
         \x20 fastcgi_temp_path {dir}/fastcgi;\n\
         \x20 uwsgi_temp_path {dir}/uwsgi;\n\
         \x20 scgi_temp_path {dir}/scgi;\n\
         \x20 # Tidegate's gateway sets TCP_NODELAY too.\n\
         \x20 tcp_nodelay on;\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port} backlog=4096;\n\
         \x20   location = /probe {{ return 204; }}\n\
         \x20   location = /sub {{\n\
         \x20     nchan_subscriber eventsource;\n\
         \x20     nchan_channel_id fanout;\n\
         \x20     nchan_subscriber_first_message newest;\n\
         \x20   }}\n\
         \x20   location = /pub {{\n\
         \x20     nchan_publisher;\n\
         \x20     nchan_channel_id fanout;\n\
         \x20     nchan_message_buffer_length 16;\n\
         \x20     nchan_message_timeout 60s;\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n"
    )
}

/// `nginx/1.22.1 + nchan` from `bin -v` (which prints on stderr).
fn version_of(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("-v")
        .output()
        .with_context(|| format!("running {} -v", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix("nginx version: "))
        .map(|v| format!("{v} + nchan"))
        .with_context(|| format!("{} -v printed no version", bin.display()))
}

/// One keep-alive HTTP/1.1 connection speaking just enough of the protocol
/// for this run: a request, a response head, a Content-Length body.
struct Http {
    stream: TcpStream,
    buf: BytesMut,
}

/// A response head: status and body length.
struct Head {
    status: u16,
    content_length: Option<usize>,
}

impl Http {
    async fn connect(stream: TcpStream) -> std::io::Result<Http> {
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            buf: BytesMut::with_capacity(512),
        })
    }

    async fn send(&mut self, request: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads more bytes; an error when the server closed.
    async fn fill(&mut self) -> Result<(), String> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("closed".into()),
            Ok(_) if self.buf.len() > MAX_MESSAGE => Err("message too large".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    async fn head(&mut self) -> Result<Head, String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = self.buf.split_to(end + 4);
        parse_head(&head)
    }

    /// Reads and drops a `len`-byte body.
    async fn skip_body(&mut self, len: usize) -> Result<(), String> {
        while self.buf.len() < len {
            self.fill().await?;
        }
        self.buf.advance(len);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse().map_err(|_| "bad Content-Length"))
        .transpose()?;
    Ok(Head {
        status,
        content_length,
    })
}

/// An EventSource subscriber: its connection, past the response head.
pub struct SseSubscriber {
    http: Http,
}

impl SseSubscriber {
    /// Subscribes over `stream` and reads the 200 answer's head.
    async fn open(stream: TcpStream) -> Result<SseSubscriber, String> {
        let mut http = Http::connect(stream)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        http.send(b"GET /sub HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
            .await?;
        let head = http.head().await?;
        if head.status != 200 {
            return Err(format!("subscribe: HTTP {}", head.status));
        }
        Ok(SseSubscriber { http })
    }
}

impl Subscriber for SseSubscriber {
    async fn next_payload(&mut self) -> Result<Bytes, String> {
        loop {
            if let Some(end) = find(&self.http.buf, b"\n\n") {
                let event = self.http.buf.split_to(end + 2);
                // Comments (": hi") and events without data are not messages.
                if let Some(data) = sse_data(&event)? {
                    return Ok(data);
                }
                continue;
            }
            self.http.fill().await?;
        }
    }
}

/// The hex-decoded `data:` of one SSE event, if it has one.
fn sse_data(event: &[u8]) -> Result<Option<Bytes>, String> {
    let text = std::str::from_utf8(event).map_err(|_| "event is not UTF-8")?;
    let Some(hex) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
        return Ok(None);
    };
    hex_decode(hex.trim()).map(Some)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(hex: &str) -> Result<Bytes, String> {
    if hex.len() % 2 != 0 {
        return Err("odd-length hex payload".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| "payload is not hex".to_string())
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Bytes::from)
}

/// `GET /probe` answers 204: nginx serves HTTP.
async fn probe(addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut http = Http::connect(stream)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    http.send(b"GET /probe HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    match http.head().await?.status {
        204 => Ok(()),
        s => Err(format!("probe: HTTP {s}")),
    }
}

/// Connects subscriber `i` from its source address and subscribes it.
async fn subscriber(addr: SocketAddr, i: usize) -> Result<SseSubscriber, String> {
    let stream = sources::connect(addr, i)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    SseSubscriber::open(stream).await
}

/// POSTs messages `next..plan.messages` (shared with the other publishers)
/// over one keep-alive connection; each latency is POST → nginx's answer.
async fn publish(
    addr: SocketAddr,
    epoch: Instant,
    plan: Plan,
    next: Arc<AtomicU32>,
) -> anyhow::Result<Recorder> {
    let stream = TcpStream::connect(addr).await?;
    let mut http = Http::connect(stream).await?;
    let mut latency = Recorder::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index as usize >= plan.messages {
            return Ok(latency);
        }
        let body = hex_encode(&fanout::stamp(epoch, index, plan.payload_bytes));
        let request = format!(
            "POST /pub HTTP/1.1\r\nHost: bench\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t0 = Instant::now();
        http.send(request.as_bytes())
            .await
            .map_err(anyhow::Error::msg)?;
        let head = http.head().await.map_err(anyhow::Error::msg)?;
        // 201: a new message, 202: queued; either way nchan has taken it.
        anyhow::ensure!(
            matches!(head.status, 201 | 202),
            "publish: HTTP {}",
            head.status
        );
        let len = head
            .content_length
            .context("publish answer without Content-Length")?;
        http.skip_body(len).await.map_err(anyhow::Error::msg)?;
        latency.record(t0.elapsed());
    }
}

/// Measures the nginx at `addr` (master `pid`): idle memory with
/// `plan.connections` subscribers, then `plan.messages` publishes to all of
/// them, at most `plan.in_flight` unanswered (one connection each).
pub async fn measure(
    addr: SocketAddr,
    pid: Option<u32>,
    plan: &Plan,
    name: String,
) -> anyhow::Result<SideReport> {
    let open = move |i| subscriber(addr, i);
    let send = move |epoch: Instant, plan: Plan| async move {
        let next = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let mut publishers = tokio::task::JoinSet::new();
        for _ in 0..plan.in_flight {
            publishers.spawn(publish(addr, epoch, plan, next.clone()));
        }
        let mut latency = Recorder::new();
        while let Some(done) = publishers.join_next().await {
            latency.merge(&done??);
        }
        anyhow::Ok(Sent { started, latency })
    };
    measure_side(name, pid, plan, open, send).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_loopback_in_the_foreground_with_one_channel() {
        let c = config(4242, Path::new("/tmp/x"));
        assert!(c.contains("listen 127.0.0.1:4242 backlog=4096;"));
        assert!(c.contains("daemon off;"));
        assert!(c.contains(&format!("load_module {MODULE};")));
        assert!(c.contains("nchan_subscriber_first_message newest;"));
        assert!(c.contains("client_body_temp_path /tmp/x/body;"));
    }

    #[test]
    fn sse_events_carry_hex_payloads_and_comments_are_skipped() {
        let payload = fanout::stamp(Instant::now(), 7, 16);
        let event = format!("id: 1:0\ndata: {}\n\n", hex_encode(&payload));
        assert_eq!(sse_data(event.as_bytes()), Ok(Some(payload)));
        assert_eq!(sse_data(b": hi\n\n"), Ok(None));
        assert!(sse_data(b"data: abc\n\n").is_err(), "odd length");
        assert!(sse_data(b"data: zz\n\n").is_err(), "not hex");
        assert!(sse_data(&[0xff, b'\n', b'\n']).is_err(), "not UTF-8");
    }

    #[test]
    fn response_heads_parse_or_fail_cleanly() {
        let h = parse_head(b"HTTP/1.1 202 Accepted\r\nContent-Length: 101\r\n\r\n").unwrap();
        assert_eq!((h.status, h.content_length), (202, Some(101)));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert_eq!((h.status, h.content_length), (200, None));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }
}
