//! A client connection's task: read into the shard's shared buffer, decode,
//! hand frames to the session, write queued frames in batches.
//!
//! Bytes of an incomplete frame are the only per-connection read state; when
//! every frame has been consumed the connection holds no read buffer.

use crate::flow::Verdict;
use crate::session::CloseReason;
use crate::shard::Resume;
use crate::shard::Shard;
use crate::table::{Activity, Conn};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use tidegate_proto::{Cmd, ConnId, Frame, HEADER_LEN};

/// Serves one accepted connection until it closes or parks.
///
/// Plain functions returning an `async move` block rather than `async fn`s:
/// an async fn copies its arguments into its state on first poll, which
/// stored the 120-byte stream twice in every connection's task.
pub fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: Option<SocketAddr>,
) -> impl std::future::Future<Output = ()> {
    let _ = stream.set_nodelay(true);
    let (id, conn) = shard.open(peer);
    resume(shard, id, conn, stream, None)
}

/// Serves a connection: a new one (`half_done` empty) or a parked one
/// again, starting with what the parking task left half done (boxed: rare,
/// and the task of every connection would otherwise hold room for it).
#[allow(clippy::manual_async_fn)] // an async fn would copy the stream (see `serve`)
pub fn resume(
    shard: Rc<Shard>,
    id: ConnId,
    conn: Rc<Conn>,
    mut stream: TcpStream,
    half_done: Option<Box<Resume>>,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Parked: the connection lives on in the table and the park set;
        // this task's stream closes only its own copy of the socket.
        if let End::Closed(reason) = drive(&shard, &conn, &mut stream, half_done).await {
            finish(&shard, id, &conn, reason);
        }
    }
}

fn finish(shard: &Shard, id: ConnId, conn: &Conn, reason: CloseReason) {
    shard.release(id, reason);
    if let Some(ip) = conn.peer.map(|p| p.ip()) {
        // The accept loop admitted this IP; misbehaviour counts towards a ban.
        shard.guard.release(ip);
        if matches!(reason, CloseReason::BadFrame(_) | CloseReason::Throttled) {
            shard.guard.violation(ip, reason.label());
        }
    }
}

/// How a connection's task ended.
enum End {
    Closed(CloseReason),
    /// Handed to the shard's park set (`shard/parking.rs`).
    Parked,
}

enum Event {
    Wake,
    Read(usize),
    Eof,
}

async fn drive(
    shard: &Shard,
    conn: &Conn,
    stream: &mut TcpStream,
    half_done: Option<Box<Resume>>,
) -> End {
    let (mut pending, unsent) = half_done.map_or_else(Default::default, |r| (r.pending, r.unsent));
    // A batch the parking task wrote in part is finished first.
    if !unsent.is_empty() && boxed(flush(shard, conn, stream, unsent)).await.is_err() {
        return End::Closed(CloseReason::Io);
    }
    // Bytes read while parked are handled before reading more.
    let mut next = (!pending.is_empty()).then_some(Event::Read(0));
    loop {
        // Writing and rate-limit delays are boxed: an async fn is as large
        // as its largest state, and an idle connection (the common case,
        // a million of them) should only pay for the read wait below.
        // Measured: 816 bytes per connection future before boxing.
        if !conn.out.borrow().is_empty()
            && boxed(flush(shard, conn, stream, Bytes::new()))
                .await
                .is_err()
        {
            return End::Closed(CloseReason::Io);
        }
        if let Some(reason) = conn.closing.get() {
            return End::Closed(reason);
        }
        let event = match next.take() {
            Some(event) => Ok(event),
            None => {
                std::future::poll_fn(|cx| {
                    if conn.wake.poll_wait(cx).is_ready() {
                        return Poll::Ready(Ok(Event::Wake));
                    }
                    // The borrow ends inside this poll: no borrow lives across an await.
                    let mut buf = shard.read_buf.borrow_mut();
                    match Pin::new(&mut *stream).poll_read(cx, &mut buf[..]) {
                        Poll::Ready(Ok(0)) => Poll::Ready(Ok(Event::Eof)),
                        Poll::Ready(Ok(n)) => {
                            pending.extend_from_slice(&buf[..n]);
                            Poll::Ready(Ok(Event::Read(n)))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
            }
        };
        match event {
            Ok(Event::Wake) => {
                if conn.activity.get() == Activity::ParkRequested {
                    if shard.park(conn, stream, &pending) {
                        return End::Parked;
                    }
                    // Not parkable now (bytes or frames in flight): the
                    // next sweep asks again.
                    conn.activity.set(Activity::Quiet);
                }
            }
            Ok(Event::Eof) => return End::Closed(CloseReason::ClientClosed),
            Err(_) => return End::Closed(CloseReason::Io),
            Ok(Event::Read(n)) => {
                shard.metrics.bytes_in.increment(n as u64);
                if let Some(stalled) = decode_all(shard, conn, &mut pending) {
                    let delayed =
                        boxed(ride_out_delays(shard, conn, stream, &mut pending, stalled));
                    if delayed.await.is_err() {
                        return End::Closed(CloseReason::Io);
                    }
                }
                if pending.is_empty() {
                    // Give the allocation back: an idle connection holds no buffer.
                    pending = BytesMut::new();
                }
            }
        }
    }
}

/// Moves a future to the heap from a plain function, so the caller's state
/// machine holds a pointer, not room for the future (rustc reserves room for
/// a future built inline in an async fn even when it is boxed there).
fn boxed<'a, T>(
    f: impl std::future::Future<Output = T> + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>> {
    Box::pin(f)
}

/// Over the rate limit with action "delay": answers what is queued, stops
/// reading until the bucket refills, then goes on decoding.
async fn ride_out_delays(
    shard: &Shard,
    conn: &Conn,
    stream: &mut TcpStream,
    pending: &mut BytesMut,
    first: (Frame, std::time::Duration),
) -> std::io::Result<()> {
    let mut stalled = Some(first);
    while let Some((frame, wait)) = stalled {
        flush(shard, conn, stream, Bytes::new()).await?;
        glommio::timer::sleep(wait).await;
        if let Verdict::Delay(w) = shard.admit_frame(conn, frame_len(&frame)) {
            stalled = Some((frame, w));
            continue;
        }
        handle(shard, conn, &frame);
        stalled = decode_all(shard, conn, pending);
    }
    Ok(())
}

/// Hands every complete frame in `pending` to the session, within the
/// connection's rate limits. Returns a frame that must wait, and how long.
pub fn decode_all(
    shard: &Shard,
    conn: &Conn,
    pending: &mut BytesMut,
) -> Option<(Frame, std::time::Duration)> {
    while conn.closing.get().is_none() {
        match Frame::parse(pending, shard.cfg.max_body) {
            Ok(Some(frame)) => match shard.admit_frame(conn, frame_len(&frame)) {
                Verdict::Pass => handle(shard, conn, &frame),
                Verdict::Delay(wait) => return Some((frame, wait)),
                Verdict::Drop => {}
                Verdict::Error => shard.throttle(conn, &frame.header, false),
                Verdict::Close => shard.throttle(conn, &frame.header, true),
            },
            Ok(None) => return None,
            Err(e) => {
                shard.handle_decode_error(conn, &e);
                if e.is_fatal() {
                    pending.clear();
                    return None;
                }
            }
        }
    }
    None
}

fn frame_len(frame: &Frame) -> usize {
    HEADER_LEN + frame.body.len()
}

fn handle(shard: &Shard, conn: &Conn, frame: &Frame) {
    // Only LOGIN needs the address; don't format it per frame.
    let peer = match (frame.header.cmd, conn.peer) {
        (Cmd::Login, Some(p)) => p.to_string(),
        _ => String::new(),
    };
    shard.handle_frame(conn, frame, &peer);
}

/// Writes `head`, then every queued frame, batching several into one write.
async fn flush(
    shard: &Shard,
    conn: &Conn,
    stream: &mut TcpStream,
    mut head: Bytes,
) -> std::io::Result<()> {
    loop {
        let batch = if !head.is_empty() {
            std::mem::take(&mut head)
        } else {
            let mut out = conn.out.borrow_mut();
            match out.len() {
                0 => {
                    if out.capacity() > 16 {
                        // Release a burst's queue memory once drained.
                        *out = VecDeque::new();
                    }
                    return Ok(());
                }
                1 => out.pop_front().expect("len is 1"),
                _ => {
                    let mut b = BytesMut::new();
                    while let Some(f) = out.pop_front() {
                        b.extend_from_slice(&f);
                        if b.len() >= 64 * 1024 {
                            break;
                        }
                    }
                    b.freeze()
                }
            }
        };
        // A client that stops reading must not pin this task in a write
        // forever: a close request (slow consumer, kick, drain) wins.
        let write = async { stream.write_all(&batch).await.map(|()| true) };
        let closing = async { Ok(closing_requested(conn).await) };
        if !futures_lite::future::or(write, closing).await? {
            return Ok(());
        }
        shard.metrics.bytes_out.increment(batch.len() as u64);
    }
}

/// Completes (with `false`) once the connection is asked to close.
async fn closing_requested(conn: &Conn) -> bool {
    std::future::poll_fn(|cx| loop {
        if conn.closing.get().is_some() {
            return Poll::Ready(false);
        }
        // Other wake-ups (more frames queued) are consumed here; the flush
        // loop drains the whole queue after this write anyway.
        if conn.wake.poll_wait(cx).is_pending() {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use crate::guard::Guard;
    use std::sync::Arc;

    fn size_of_future<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The task of an idle connection is this future plus glommio's task
    /// header: it is most of the gateway's per-connection memory.
    #[test]
    fn connection_future_fits_its_budget() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(64 * 1024)
            .make()
            .unwrap()
            .run(async {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let stream = glommio::net::TcpStream::connect(addr).await.unwrap();
                let guard = Arc::new(Guard::new(Default::default()).unwrap());
                let fds = Arc::new(crate::fdlimit::FdBudget::new(1024, 16, 16));
                let shard = Rc::new(Shard::new(
                    0,
                    Rc::from("g"),
                    GatewayConfig::default(),
                    guard,
                    fds,
                ));
                let fut = serve(shard, stream, None);
                let size = size_of_future(&fut);
                // Measured 816 before the boxing and capture changes above.
                assert!(size <= 448, "serve future is {size} bytes");
            });
    }
}
