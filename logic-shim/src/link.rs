//! The link server: gate shards connect here and speak the v1 codec with
//! link commands (≥ 0x8000).
//!
//! Frames are spread over [`LANES`] ordered lanes per link by connection id:
//! frames of one connection stay in order (a session's close can never
//! overtake its login), while logins of different connections wait on the
//! store in parallel. Measured: one lane per link held logins to ~760/s on
//! the embedded store (each waited for its own commit).

use crate::gates::{ShardAddr, LINK_QUEUE};
use crate::{c2s, presence, Logic};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tidegate_proto::{pb, AppCode, Cmd, Flags, Frame, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest link frame body accepted from a gate.
const MAX_LINK_BODY: u32 = 16 << 20;
/// Ordered lanes per link.
const LANES: usize = 64;
/// Frames queued per lane before the link reader waits (backpressure to the gate).
const LANE_QUEUE: usize = 1024;

/// Accepts gate links forever.
pub async fn serve(logic: Arc<Logic>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let logic = logic.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(logic, stream).await {
                        tracing::info!(%peer, "gate link closed: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("link accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(logic: Arc<Logic>, stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, wr) = stream.into_split();
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
        gate_id: hello.gate_id,
        shard: hello.shard,
    };
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let writer = tokio::spawn(write_loop(wr, rx));
    let link_id = logic.gates.register(gate.clone(), tx.clone());
    tracing::info!(gate = %gate.gate_id, shard = gate.shard, "gate shard linked");
    let welcome = pb::LinkWelcome {
        logic_id: logic.logic_id.clone(),
    };
    let mut reply = Header::new(Cmd::LinkHello, AppCode(0), 0).reply();
    reply.flags = Flags::RESPONSE;
    let _ = tx.send(Frame::encode_msg_to_bytes(reply, &welcome)).await;

    let result = read_loop(&logic, &gate, &mut rd, &mut buf, &tx).await;
    logic.gates.unregister(&gate, link_id);
    drop(tx);
    writer.abort();
    result
}

async fn read_loop(
    logic: &Arc<Logic>,
    gate: &ShardAddr,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    tx: &mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (lane_tx, lane_rx) = mpsc::channel(LANE_QUEUE);
        lanes.push(lane_tx);
        workers.spawn(lane(logic.clone(), gate.clone(), lane_rx, tx.clone()));
    }
    loop {
        while let Some(frame) = Frame::parse(buf, MAX_LINK_BODY)? {
            let lane = (peek_conn(&frame.body) % LANES as u64) as usize;
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
    gate: ShardAddr,
    mut frames: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    while let Some(frame) = frames.recv().await {
        if let Some(reply) = dispatch(&logic, &gate, frame).await? {
            tx.send(reply).await?;
        }
    }
    Ok(())
}

/// The `conn` of a link body without decoding it: every per-connection link
/// message has `conn` as field 1, which prost writes first. 0 if absent.
fn peek_conn(body: &[u8]) -> u64 {
    if body.first() != Some(&0x08) {
        return 0;
    }
    let mut v = 0u64;
    for (i, b) in body[1..].iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return v;
        }
    }
    0
}

/// Handles one frame from a gate; returns the reply to send, if any.
async fn dispatch(logic: &Logic, gate: &ShardAddr, frame: Frame) -> anyhow::Result<Option<Bytes>> {
    let h = frame.header;
    let response = h.flags.contains(Flags::RESPONSE);
    let reply = match (h.cmd, response) {
        (Cmd::LinkLogin, false) => {
            let r = presence::login(logic, gate, h.appcode, frame.decode_body()?).await;
            Some(Frame::encode_msg_to_bytes(h.reply(), &r))
        }
        (Cmd::LinkSessionClosed, false) => {
            presence::closed(logic, gate, h.appcode, frame.decode_body()?).await;
            None
        }
        (Cmd::LinkC2s, false) => {
            let r = c2s::ingest(logic, h.appcode, h.msgtype, frame.decode_body()?).await;
            Some(Frame::encode_msg_to_bytes(h.reply(), &r))
        }
        (Cmd::LinkS2cAck, false) => {
            let _ack: pb::LinkS2cAck = frame.decode_body()?;
            let app = h.appcode.to_string();
            metrics::counter!("tidegate_logic_reach_acked_total", "app" => app).increment(1);
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

/// Writes queued frames, many per syscall: one blocking receive, then
/// whatever else is already queued (rumqttd's router pattern).
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
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
}
