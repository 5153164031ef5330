//! The link server: gate shards connect here and speak the v1 codec with
//! link commands (≥ 0x8000). Heartbeats renew the gate's lease in the store
//! (ARCHITECTURE §4 keepalive, §5 case 4).
//!
//! Frames are spread over [`LANES`] ordered lanes per link by connection id:
//! frames of one connection stay in order (a session's close can never
//! overtake its login), while logins of different connections wait on the
//! store in parallel. Measured: one lane per link held logins to ~760/s on
//! the embedded store (each waited for its own commit). C2S frames skip the
//! lanes for one ordered pipeline per link that stores them in batches
//! (`c2s.rs`).

use crate::gates::{ShardAddr, LINK_QUEUE};
use crate::reach::{msgtype_of, Stage};
use crate::store::GateShardStatus;
use crate::{c2s, offline, presence, Logic};
use anyhow::Context;
use bytes::{Bytes, BytesMut};
use std::net::{IpAddr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use tidegate_proto::{pb, AppCode, Cmd, Flags, Frame, Header, MsgType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Largest link frame body accepted from a gate.
const MAX_LINK_BODY: u32 = 16 << 20;
/// Ordered lanes per link.
const LANES: usize = 64;
/// Frames queued per lane before the link reader waits (backpressure to the gate).
const LANE_QUEUE: usize = 1024;
/// C2S frames queued for the link's c2s pipeline while a batch is being
/// stored. More than a gate shard keeps in flight by default
/// (`gateway.flow.max_inflight_logic`, 10,000), so a C2S flood does not
/// stall the link reader, and the logins behind it, on every commit.
const C2S_QUEUE: usize = 4 * c2s::BATCH_MAX;

/// Where gate links arrive.
pub enum LinkListener {
    /// `logic.link_addr`.
    Tcp(TcpListener),
    /// `logic.link_unix`: gates on this host.
    Unix(UnixListener),
}

/// Accepts gate links forever, each served on its own task.
pub async fn serve(logic: Arc<Logic>, listener: LinkListener) {
    loop {
        let accepted = match &listener {
            LinkListener::Tcp(l) => l.accept().await.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                spawn_link(logic.clone(), rd, wr, peer.ip(), peer.to_string());
            }),
            // Gates on this host: addresses they advertise on `0.0.0.0`
            // are given as 127.0.0.1.
            LinkListener::Unix(l) => l.accept().await.map(|(stream, _)| {
                let (rd, wr) = stream.into_split();
                let ip = IpAddr::from([127, 0, 0, 1]);
                spawn_link(logic.clone(), rd, wr, ip, "unix socket".into());
            }),
        };
        if let Err(e) = accepted {
            tracing::warn!("link accept: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn spawn_link<R, W>(logic: Arc<Logic>, rd: R, wr: W, peer_ip: IpAddr, peer: String)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = handle(logic, rd, wr, peer_ip).await {
            tracing::info!(%peer, "gate link closed: {e}");
        }
    });
}

/// Binds the Unix link socket at `path`, replacing a socket file no live
/// process listens on (one left by an instance that died). A path starting
/// with `@` is an abstract socket (Linux): no file, gone with the process.
pub async fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    let named = || format!("logic.link_unix: cannot listen on {}", path.display());
    if let Some(name) = path.as_os_str().as_bytes().strip_prefix(b"@") {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).with_context(named)?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).with_context(named)?;
        listener.set_nonblocking(true).with_context(named)?;
        return UnixListener::from_std(listener).with_context(named);
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("{}: another process is listening on it", named());
        }
        std::fs::remove_file(path).with_context(named)?;
    }
    UnixListener::bind(path).with_context(named)
}

async fn handle<R, W>(logic: Arc<Logic>, mut rd: R, wr: W, peer_ip: IpAddr) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let hello = loop {
        if let Some(f) = Frame::parse(&mut buf, MAX_LINK_BODY)? {
            break f;
        }
        if rd.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed before HELLO");
        }
    };
    if hello.header.cmd != Cmd::LinkHello {
        anyhow::bail!("first frame is {}, not link_hello", hello.header.cmd.name());
    }
    let hello: pb::LinkHello = hello.decode_body()?;
    let gate = ShardAddr {
        gate_id: hello.gate_id.clone(),
        shard: hello.shard,
    };
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let writer = tokio::spawn(write_loop(wr, rx));
    let incarnation = hello.incarnation;
    let link_id = logic.gates.register(gate.clone(), incarnation, tx.clone());
    tracing::info!(gate = %gate.gate_id, shard = gate.shard, "gate shard linked");
    // A lease from the first moment, so a login on this shard never reads
    // as offline before the first heartbeat arrives.
    let first = pb::LinkHeartbeat {
        gate_id: hello.gate_id.clone(),
        shard: hello.shard,
        shards: hello.shards,
        client_addr: hello.client_addr.clone(),
        incarnation,
        ..Default::default()
    };
    renew(&logic, peer_ip, first).await;
    let welcome = pb::LinkWelcome {
        logic_id: logic.logic_id.clone(),
        heartbeat_ms: u32::try_from(logic.cfg.gate_lease_ms / 3).unwrap_or(u32::MAX),
    };
    let mut reply = Header::new(Cmd::LinkHello, AppCode(0), 0).reply();
    reply.flags = Flags::RESPONSE;
    let _ = tx.send(Frame::encode_msg_to_bytes(reply, &welcome)).await;

    let peer = Peer {
        gate: gate.clone(),
        incarnation,
        ip: peer_ip,
    };
    let result = read_loop(&logic, &peer, &mut rd, &mut buf, &tx).await;
    logic.gates.unregister(&gate, link_id);
    drop(tx);
    writer.abort();
    result
}

/// The gate shard at the other end of a link, as its HELLO introduced it.
#[derive(Clone)]
struct Peer {
    gate: ShardAddr,
    /// The gate process's incarnation; recorded with each login.
    incarnation: u64,
    /// Where the link comes from (advertised addresses of `0.0.0.0` binds).
    ip: IpAddr,
}

async fn read_loop(
    logic: &Arc<Logic>,
    peer: &Peer,
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    tx: &mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (lane_tx, lane_rx) = mpsc::channel(LANE_QUEUE);
        lanes.push(lane_tx);
        workers.spawn(lane(logic.clone(), peer.clone(), lane_rx, tx.clone()));
    }
    // C2S frames skip the lanes: one pipeline keeps their order and stores
    // them in batches (a connection's C2S never depends on its other frames:
    // the gate forwards C2S only once the login was answered).
    let (c2s_tx, c2s_rx) = mpsc::channel(C2S_QUEUE);
    workers.spawn(c2s::pipeline(logic.clone(), c2s_rx, tx.clone()));
    loop {
        while let Some(frame) = Frame::parse(buf, MAX_LINK_BODY)? {
            let h = frame.header;
            if h.cmd == Cmd::LinkC2s && !h.flags.contains(Flags::RESPONSE) {
                c2s_tx.send(frame).await?;
                continue;
            }
            let lane = lane_of(peek_conn(&frame.body));
            lanes[lane].send(frame).await?;
        }
        if let Some(done) = workers.try_join_next() {
            // A lane only ends on a malformed frame or a closed writer.
            done??;
        }
        if rd.read_buf(buf).await? == 0 {
            anyhow::bail!("gate closed the link");
        }
    }
}

/// Handles one lane's frames in order.
async fn lane(
    logic: Arc<Logic>,
    peer: Peer,
    mut frames: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    while let Some(frame) = frames.recv().await {
        if let Some(reply) = dispatch(&logic, &peer, frame).await? {
            tx.send(reply).await?;
        }
    }
    Ok(())
}

/// The lane of a connection. A conn id is `slot << 32 | generation`, and a
/// fresh slot's generation is 0, so `conn % LANES` put every new connection
/// in lane 0 (one login or C2S at a time per gate shard; measured: the
/// embedded login storm went from 1,320 to 7,573/s with both halves mixed).
fn lane_of(conn: u64) -> usize {
    ((conn >> 32 ^ conn) % LANES as u64) as usize
}

/// The `conn` of a link body without decoding it: every per-connection link
/// message has `conn` as field 1, which prost writes first. 0 if absent.
fn peek_conn(body: &[u8]) -> u64 {
    match body.split_first() {
        Some((&0x08, mut rest)) => prost::encoding::decode_varint(&mut rest).unwrap_or(0),
        _ => 0,
    }
}

/// Handles one frame from a gate; returns the reply to send, if any.
async fn dispatch(logic: &Logic, peer: &Peer, frame: Frame) -> anyhow::Result<Option<Bytes>> {
    let h = frame.header;
    let response = h.flags.contains(Flags::RESPONSE);
    let reply = match (h.cmd, response) {
        (Cmd::LinkLogin, false) => {
            let r = presence::login(
                logic,
                &peer.gate,
                peer.incarnation,
                h.appcode,
                frame.decode_body()?,
            )
            .await;
            Some(Frame::encode_msg_to_bytes(h.reply(), &r))
        }
        (Cmd::LinkSessionClosed, false) => {
            presence::closed(logic, &peer.gate, h.appcode, frame.decode_body()?).await;
            None
        }
        (Cmd::LinkForward, false) => {
            let r = offline::forward(logic, h.appcode, h.msgtype, frame.decode_body()?).await;
            Some(Frame::encode_msg_to_bytes(h.reply(), &r))
        }
        (Cmd::LinkS2cAck, false) => {
            let ack: pb::LinkS2cAck = frame.decode_body()?;
            // The app is the session's (the gate sets it); the msgtype is
            // the one we minted into the id. Foreign ids count under 0.
            let msgtype = msgtype_of(&ack.msg_id).unwrap_or(MsgType(0));
            logic.reach.add(h.appcode, msgtype, Stage::Acked, 1);
            None
        }
        (Cmd::LinkHeartbeat, false) => {
            renew(logic, peer.ip, frame.decode_body()?).await;
            None
        }
        (Cmd::LinkDeliver, true) => {
            let r: pb::LinkDeliverReply = frame.decode_body()?;
            logic
                .reach
                .add(h.appcode, h.msgtype, Stage::Written, r.delivered);
            // The push that sent it, if still waiting, learns which
            // connections were gone.
            logic.gates.resolve(h.seq, frame);
            None
        }
        (Cmd::LinkBroadcast, true) => {
            logic.gates.resolve(h.seq, frame);
            None
        }
        (Cmd::LinkPing, false) => Some(Frame::empty(h.reply()).to_bytes()),
        (Cmd::LinkPing, true) => None,
        (cmd, _) => {
            tracing::warn!(cmd = cmd.name(), response, "unexpected frame from gate");
            None
        }
    };
    Ok(reply)
}

/// Renews the gate's lease and directory entry from a heartbeat. A store
/// failure is logged and counted only: the next heartbeat retries, and the
/// lease outlives a few missed ones.
async fn renew(logic: &Logic, peer_ip: IpAddr, beat: pb::LinkHeartbeat) {
    let status = GateShardStatus {
        gate_id: beat.gate_id,
        shard: beat.shard,
        connections: beat.connections,
        draining: beat.draining,
        client_addr: advertised(&beat.client_addr, peer_ip),
        http_addr: advertised(&beat.http_addr, peer_ip),
        incarnation: beat.incarnation,
    };
    let result = match logic
        .store
        .renew_gate(&status, logic.cfg.gate_lease_ms)
        .await
    {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(gate = %status.gate_id, "gate lease renewal: {e}");
            "store_error"
        }
    };
    metrics::counter!("tidegate_logic_gate_renewals_total", "result" => result).increment(1);
}

/// The address clients should use: a listener bound to the unspecified IP
/// (`0.0.0.0:7000`) is reachable at the IP the gate's link comes from.
fn advertised(bound: &str, peer_ip: IpAddr) -> String {
    match bound.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => SocketAddr::new(peer_ip, a.port()).to_string(),
        _ => bound.to_string(),
    }
}

/// Writes queued frames, many per syscall: one blocking receive, then
/// whatever else is already queued (rumqttd's router pattern).
async fn write_loop(mut wr: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => batch.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&batch).await {
            tracing::info!("gate link write: {e}");
            return;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegate_proto::prost::Message;

    #[test]
    fn fresh_connections_spread_over_every_lane() {
        let lanes: std::collections::HashSet<usize> =
            (0..LANES as u64).map(|slot| lane_of(slot << 32)).collect();
        assert_eq!(lanes.len(), LANES);
    }

    #[test]
    fn peek_conn_reads_field_one() {
        for conn in [
            0u64,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX) << 32 | 7,
            u64::MAX,
        ] {
            let body = pb::LinkSessionClosed {
                conn,
                uid: "u".into(),
                epoch: 9,
            }
            .encode_to_vec();
            assert_eq!(peek_conn(&body), conn);
        }
        assert_eq!(peek_conn(&[]), 0);
        assert_eq!(peek_conn(&[0x08, 0xff]), 0, "truncated varint");
    }

    #[tokio::test]
    async fn a_stale_unix_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("link.sock");
        let first = bind_unix(&path).await.expect("fresh path");
        let e = bind_unix(&path).await.expect_err("a live listener owns it");
        assert!(
            format!("{e:#}").contains("another process is listening"),
            "{e:#}"
        );
        drop(first);
        assert!(path.exists(), "the dead listener's file stays behind");
        let _second = bind_unix(&path).await.expect("stale file replaced");
        UnixStream::connect(&path).await.expect("connectable");
    }

    #[tokio::test]
    async fn an_abstract_socket_leaves_no_file_and_is_refused_while_taken() {
        let name = format!("@tidegate-test-{}", std::process::id());
        let listener = bind_unix(Path::new(&name)).await.expect("abstract bind");
        assert!(!Path::new(&name).exists(), "no filesystem entry");
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        std::os::unix::net::UnixStream::connect_addr(&addr).expect("connectable");
        assert!(
            bind_unix(Path::new(&name)).await.is_err(),
            "taken while listening"
        );
        drop(listener);
        bind_unix(Path::new(&name)).await.expect("free once closed");
    }
}
