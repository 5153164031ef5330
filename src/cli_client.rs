//! `tidegate client`: log in over the binary protocol, read the offline
//! inbox, then print what arrives, acknowledging pushes and keeping the
//! session alive.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use tidegate_proto::client::{Client, ClientError};
use tidegate_proto::{pb, AppCode, Cmd, MsgType};

/// Arguments of `tidegate client`.
#[derive(Args)]
pub struct ClientArgs {
    /// Gateway client address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// App code.
    #[arg(long, default_value_t = 1)]
    app: u16,
    /// Token from `tidegate token`.
    #[arg(long)]
    token: String,
    /// Device id.
    #[arg(long, default_value = "cli")]
    device: String,
    /// Platform.
    #[arg(long, default_value = "cli")]
    platform: String,
    /// Send this text as one C2S message (acknowledged) after login.
    #[arg(long)]
    c2s: Option<String>,
    /// Msgtype of the C2S message.
    #[arg(long, default_value_t = 0)]
    msgtype: u16,
    /// Exit after this many pushes (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// Runs the client until interrupted, `--count` pushes, or the server closes.
pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(session(args))
}

async fn session(args: ClientArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(args.addr)
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let ok = client
        .login(AppCode(args.app), &args.token, &args.device, &args.platform)
        .await
        .context("login")?;
    println!(
        "logged in as {} (app {}, session {}, keepalive {}s)",
        ok.uid, args.app, ok.session_id, ok.keepalive_s
    );
    if let Some(text) = &args.c2s {
        client
            .send_c2s(
                MsgType(args.msgtype),
                "text/plain",
                text.clone().into_bytes(),
                true,
            )
            .await
            .context("sending c2s")?;
        println!("c2s sent and acknowledged");
    }
    let mut received = drain_offline(&mut client).await?;
    let keepalive = Duration::from_secs(u64::from(ok.keepalive_s.max(1)));
    loop {
        if args.count.is_some_and(|n| received >= n) {
            return Ok(());
        }
        let frame = tokio::select! {
            f = client.recv() => f,
            _ = tokio::time::sleep(keepalive) => {
                // recv() is cancel-safe: bytes read so far stay buffered.
                client.keepalive().await.context("keepalive")?;
                continue;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let frame = match frame {
            Ok(f) => f,
            Err(ClientError::Closed) => anyhow::bail!("server closed the connection"),
            Err(e) => return Err(e.into()),
        };
        match frame.header.cmd {
            Cmd::S2c => {
                let push: pb::Push = frame.decode_body()?;
                print_push("push", &push, frame.header.msgtype.0);
                client.ack_push(&push.msg_id).await?;
                received += 1;
            }
            Cmd::Kickout => {
                let k: pb::Kickout = frame.decode_body()?;
                anyhow::bail!("kicked out (reason {}): {}", k.reason, k.message);
            }
            Cmd::Error => {
                let e: pb::Error = frame.decode_body()?;
                println!("error {}: {}", e.code, e.message);
            }
            other => println!("frame {} seq {}", other.name(), frame.header.seq),
        }
    }
}

/// Prints and deletes every message of the offline inbox, page by page
/// (each page acknowledged once printed); returns how many there were.
async fn drain_offline(client: &mut Client) -> anyhow::Result<u64> {
    let mut cursor = String::new();
    let mut count = 0;
    loop {
        let batch = client
            .pull_offline(&cursor, 0)
            .await
            .context("pulling the offline inbox")?;
        for m in &batch.messages {
            if let Some(push) = &m.push {
                let msgtype = u16::try_from(m.msgtype).unwrap_or(u16::MAX);
                print_push("offline push", push, msgtype);
                count += 1;
            }
        }
        if batch.cursor.is_empty() {
            return Ok(count);
        }
        client
            .ack_offline(&batch.cursor)
            .await
            .context("acknowledging the offline inbox")?;
        if !batch.more {
            return Ok(count);
        }
        cursor = batch.cursor;
    }
}

fn print_push(what: &str, push: &pb::Push, msgtype: u16) {
    println!(
        "{what} {} msgtype {msgtype} [{}] {}",
        push.msg_id,
        push.content_type,
        String::from_utf8_lossy(&push.content)
    );
}
