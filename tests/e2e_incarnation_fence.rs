//! The gateway's side of the gate incarnation, against the real `tidegate
//! gateway` binary linked to a scripted logic (this test plays logic on the
//! link): LINK_DELIVER and LINK_KICK carrying another process's incarnation
//! are dropped, so a delivery or kick meant for an earlier process with the
//! same gate id can never reach a new connection that reuses its conn id.

mod common;

use bytes::{Bytes, BytesMut};
use common::{metric, GatewayProc};
use std::time::Duration;
use tidegate_proto::client::ClientError;
use tidegate_proto::{pb, AppCode, Cmd, Flags, Frame, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// What the scripted logic learned, and how to make it send frames.
struct FakeLogic {
    /// The gate's `LinkHello.incarnation`.
    incarnation: u64,
    /// The conn id of the first login it accepted.
    conn: oneshot::Receiver<u64>,
    /// Frames to write to the gate.
    out: mpsc::UnboundedSender<Bytes>,
}

/// Accepts one gate link, welcomes it and accepts every LOGIN as `alice`.
async fn fake_logic(listener: TcpListener) -> FakeLogic {
    let (stream, _) = listener.accept().await.expect("gate links");
    let (mut rd, mut wr) = stream.into_split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::new();
    let hello = loop {
        if let Some(f) = Frame::parse(&mut buf, 1 << 20).expect("link frame") {
            break f;
        }
        assert!(
            rd.read_buf(&mut buf).await.expect("read") > 0,
            "link closed"
        );
    };
    assert_eq!(hello.header.cmd, Cmd::LinkHello);
    let hello: pb::LinkHello = hello.decode_body().expect("hello");
    assert_ne!(hello.incarnation, 0, "a gate always sends its incarnation");
    let welcome = pb::LinkWelcome {
        logic_id: "fake".into(),
        heartbeat_ms: 0,
    };
    let mut reply = Header::new(Cmd::LinkHello, AppCode(0), 0).reply();
    reply.flags = Flags::RESPONSE;
    out.send(Frame::encode_msg_to_bytes(reply, &welcome))
        .unwrap();

    let (conn_tx, conn) = oneshot::channel();
    let replies = out.clone();
    tokio::spawn(async move {
        let mut conn_tx = Some(conn_tx);
        loop {
            while let Ok(Some(f)) = Frame::parse(&mut buf, 1 << 20) {
                let h = f.header;
                if h.flags.contains(Flags::RESPONSE) {
                    continue;
                }
                match h.cmd {
                    Cmd::LinkLogin => {
                        let login: pb::LinkLogin = f.decode_body().expect("login");
                        let accepted = pb::LoginAccepted {
                            uid: "alice".into(),
                            epoch: 1,
                            keepalive_s: 0,
                        };
                        let r = pb::LinkLoginReply {
                            conn: login.conn,
                            result: Some(pb::link_login_reply::Result::Accepted(accepted)),
                        };
                        let _ = replies.send(Frame::encode_msg_to_bytes(h.reply(), &r));
                        if let Some(tx) = conn_tx.take() {
                            let _ = tx.send(login.conn);
                        }
                    }
                    Cmd::LinkPing => {
                        let _ = replies.send(Frame::empty(h.reply()).to_bytes());
                    }
                    _ => {}
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    FakeLogic {
        incarnation: hello.incarnation,
        conn,
        out,
    }
}

fn deliver(conn: u64, incarnation: u64, content: &str) -> Bytes {
    let push = pb::Push {
        msg_id: content.into(),
        content_type: "text/plain".into(),
        content: content.as_bytes().to_vec().into(),
        sent_at_ms: 0,
    };
    let client_frame = Frame::encode_msg_to_bytes(Header::new(Cmd::S2c, AppCode(1), 0), &push);
    let d = pb::LinkDeliver {
        conns: vec![conn],
        frame: client_frame,
        incarnation,
    };
    Frame::encode_msg_to_bytes(Header::new(Cmd::LinkDeliver, AppCode(1), 0), &d)
}

fn kick(conn: u64, incarnation: u64) -> Bytes {
    let k = pb::LinkKick {
        conn,
        kickout: Some(pb::Kickout {
            reason: pb::KickoutReason::OtherDevice as i32,
            message: "kicked".into(),
        }),
        incarnation,
    };
    Frame::encode_msg_to_bytes(Header::new(Cmd::LinkKick, AppCode(1), 0), &k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_drops_deliveries_and_kicks_for_another_incarnation() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = GatewayProc::start(addr, "");
    let logic = timeout(WAIT, fake_logic(listener)).await.expect("linked");
    let mut alice = gw.login("alice").await;
    let conn = timeout(WAIT, logic.conn).await.unwrap().unwrap();
    let (mine, other) = (logic.incarnation, logic.incarnation ^ 1);

    // One link, in order: the foreign frames are handled before the next.
    logic.out.send(deliver(conn, other, "wrong")).unwrap();
    logic.out.send(kick(conn, other)).unwrap();
    logic.out.send(deliver(conn, mine, "right")).unwrap();
    logic.out.send(deliver(conn, 0, "unchecked")).unwrap();
    let first = timeout(WAIT, alice.recv_push()).await.unwrap().unwrap();
    assert_eq!(&first.content[..], b"right", "not kicked, no foreign push");
    let second = timeout(WAIT, alice.recv_push()).await.unwrap().unwrap();
    assert_eq!(&second.content[..], b"unchecked", "0 = an older logic");

    logic.out.send(kick(conn, mine)).unwrap();
    match timeout(WAIT, alice.recv_push()).await.unwrap() {
        Err(ClientError::Kicked { .. }) => {}
        other => panic!("expected the kick, got {other:?}"),
    }

    let text = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = metric(
        &text,
        "tidegate_gateway_link_events_total",
        "event=\"other_incarnation\"",
    );
    assert_eq!(dropped, 2.0, "{text}");
}
