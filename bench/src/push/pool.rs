//! Keep-alive HTTP/1.1 connections to the logic API for the open-loop
//! push, on hyper's connection API with no client layers on top. Why not
//! reqwest: profiled at 5,000 pushes/s, reqwest's request machinery (URL
//! handling, redirect policy, boxed pending futures, pool checkout) was a
//! quarter of bench's CPU, and bench shares the 2-core test machine with
//! the server it measures; every cycle it spends is taken from the server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections to one server, at most a fixed number; each carries one
/// request at a time and goes back to the pool when its answer has been
/// read. A request finding every connection busy waits for one (the wait
/// counts in its latency, which runs from its due instant) rather than
/// opening another: a pool that grew under a burst opened hundreds of
/// connections at once, overflowed the server's accept queue, and the
/// dropped SYNs came back a second later as one-second "push latencies"
/// that were bench's own doing.
pub(super) struct Pool {
    addr: SocketAddr,
    host: HeaderValue,
    auth: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// One permit per connection the pool may have.
    slots: Semaphore,
    timeout: Duration,
}

/// Why a request failed, as the report counts it.
pub(super) type Failure = String;

impl Pool {
    /// A pool of at most `max` connections for `POST`s to `addr` with the
    /// app's API key.
    pub(super) fn new(
        addr: SocketAddr,
        api_key: &str,
        max: usize,
        timeout: Duration,
    ) -> anyhow::Result<Pool> {
        Ok(Pool {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            auth: HeaderValue::from_str(&format!("Bearer {api_key}"))?,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(max),
            timeout,
        })
    }

    /// Opens `n` connections now, so the first scheduled requests do not
    /// pay for handshakes.
    pub(super) async fn warm(&self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            let c = tokio::time::timeout(self.timeout, self.connect())
                .await
                .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.addr))?
                .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", self.addr))?;
            self.put(c);
        }
        Ok(())
    }

    /// POSTs a JSON `body` to `path`; Ok on a 2xx answer, whose body is read
    /// (and dropped) so the connection can carry the next request.
    pub(super) async fn post_json(&self, path: &'static str, body: String) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, self.post(path, body)).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        }
    }

    async fn post(&self, path: &'static str, body: String) -> Result<(), Failure> {
        // Held until the exchange is over: the connection is busy till then.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Failure::from("other: pool closed"))?;
        let mut conn = match self.take() {
            Some(mut c) => match c.ready().await {
                Ok(()) => c,
                Err(_) => self.reconnect().await?,
            },
            None => self.reconnect().await?,
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("other: {e}"))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| format!("other: {e}"))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("other: {e}"))?;
        self.put(conn);
        if status.is_success() {
            Ok(())
        } else {
            Err(http_failure(status))
        }
    }

    /// An idle connection the server has not closed.
    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose answer was read. It may not be ready for
    /// the next request yet (its task finishes the exchange first), so the
    /// taker waits for `ready` instead of this dropping it.
    fn put(&self, c: SendRequest<Full<Bytes>>) {
        if !c.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }

    async fn reconnect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        self.connect().await.map_err(|e| format!("connect: {e}"))
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        // The connection task ends when `send` is dropped or the server closes.
        tokio::spawn(conn);
        Ok(send)
    }
}

fn http_failure(status: StatusCode) -> Failure {
    format!("http_{}", status.as_u16())
}
