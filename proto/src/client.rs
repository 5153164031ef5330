//! Async (tokio) client for the v1 binary protocol: login, send, receive.
//! Used by the CLI's `tidegate client`, the end-to-end tests and bench.

use crate::{pb, AppCode, Cmd, DecodeError, Flags, Frame, Header, MsgType, DEFAULT_MAX_BODY};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not a v1 frame.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The server closed the connection.
    #[error("connection closed by server")]
    Closed,
    /// The server answered with ERROR.
    #[error("server error {code}: {message}")]
    Server {
        /// `ErrorCode` number.
        code: u32,
        /// Human-readable reason.
        message: String,
    },
    /// The server kicked this session out.
    #[error("kicked out (reason {reason}): {message}")]
    Kicked {
        /// `KickoutReason` number.
        reason: i32,
        /// Human-readable reason.
        message: String,
    },
}

/// One client connection.
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Frames that arrived while a request waited for its reply.
    queued: VecDeque<Frame>,
    next_seq: u32,
    appcode: AppCode,
}

impl Client {
    /// Connects without logging in.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::from_stream(TcpStream::connect(addr).await?)
    }

    /// Wraps an already connected stream (e.g. one bound to a chosen source
    /// address, as bench does to pass the per-address port limit).
    pub fn from_stream(stream: TcpStream) -> Result<Client, ClientError> {
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            rbuf: BytesMut::with_capacity(512),
            queued: VecDeque::new(),
            next_seq: 1,
            appcode: AppCode(0),
        })
    }

    /// Gives up the client's buffers and returns its socket, for holders of
    /// very many idle connections (bench's C1M run), where a 4 KiB read
    /// buffer per connection would outweigh the gateway under test. Frames
    /// already read but not yet taken are dropped.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Logs in with an app token; returns the server's `LoginOk`.
    pub async fn login(
        &mut self,
        appcode: AppCode,
        token: &str,
        device_id: &str,
        platform: &str,
    ) -> Result<pb::LoginOk, ClientError> {
        self.appcode = appcode;
        let seq = self.seq();
        let login = pb::Login {
            token: token.into(),
            device_id: device_id.into(),
            platform: platform.into(),
        };
        self.send(&Frame::new(Header::new(Cmd::Login, appcode, seq), &login))
            .await?;
        let reply = self.reply(Cmd::Login, seq).await?;
        Ok(reply.decode_body()?)
    }

    /// Sends a C2S payload; with `ack`, waits until logic confirms it is on the bus.
    pub async fn send_c2s(
        &mut self,
        msgtype: MsgType,
        content_type: &str,
        content: impl Into<Bytes>,
        ack: bool,
    ) -> Result<u32, ClientError> {
        let seq = self.seq();
        let mut header = Header::new(Cmd::C2s, self.appcode, seq);
        header.msgtype = msgtype;
        if ack {
            header.flags = Flags::ACK_REQUESTED;
        }
        let payload = pb::Payload {
            content_type: content_type.into(),
            content: content.into(),
        };
        self.send(&Frame::new(header, &payload)).await?;
        if ack {
            self.reply(Cmd::C2s, seq).await?;
        }
        Ok(seq)
    }

    /// Round-trips a KEEPALIVE.
    pub async fn keepalive(&mut self) -> Result<(), ClientError> {
        let seq = self.seq();
        self.send(&Frame::empty(Header::new(
            Cmd::Keepalive,
            self.appcode,
            seq,
        )))
        .await?;
        self.reply(Cmd::Keepalive, seq).await.map(drop)
    }

    /// Logs out and waits for the reply.
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        let seq = self.seq();
        self.send(&Frame::empty(Header::new(Cmd::Logout, self.appcode, seq)))
            .await?;
        self.reply(Cmd::Logout, seq).await.map(drop)
    }

    /// Acknowledges a push (S2C_ACK), for reach statistics.
    pub async fn ack_push(&mut self, msg_id: &str) -> Result<(), ClientError> {
        let seq = self.seq();
        let ack = pb::PushAck {
            msg_id: msg_id.into(),
        };
        self.send(&Frame::new(
            Header::new(Cmd::S2cAck, self.appcode, seq),
            &ack,
        ))
        .await
    }

    /// Reads the next page of the offline inbox after `after` (`""` = from
    /// the start); `limit` 0 = the server's page size.
    pub async fn pull_offline(
        &mut self,
        after: &str,
        limit: u32,
    ) -> Result<pb::OfflineBatch, ClientError> {
        let seq = self.seq();
        let pull = pb::OfflinePull {
            after: after.into(),
            limit,
        };
        self.send(&Frame::new(
            Header::new(Cmd::OfflinePull, self.appcode, seq),
            &pull,
        ))
        .await?;
        let reply = self.reply(Cmd::OfflineBatch, seq).await?;
        Ok(reply.decode_body()?)
    }

    /// Deletes the offline inbox up to and including `up_to` (a batch's
    /// cursor) and waits for the server's confirmation.
    pub async fn ack_offline(&mut self, up_to: &str) -> Result<(), ClientError> {
        let seq = self.seq();
        let mut header = Header::new(Cmd::OfflineAck, self.appcode, seq);
        header.flags = Flags::ACK_REQUESTED;
        let ack = pb::OfflineAck {
            up_to: up_to.into(),
        };
        self.send(&Frame::new(header, &ack)).await?;
        self.reply(Cmd::OfflineAck, seq).await.map(drop)
    }

    /// Next frame from the server, whatever it is.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        if let Some(f) = self.queued.pop_front() {
            return Ok(f);
        }
        self.read_frame().await
    }

    /// Next S2C push; other server-initiated frames become errors.
    pub async fn recv_push(&mut self) -> Result<pb::Push, ClientError> {
        let f = self.recv().await?;
        match f.header.cmd {
            Cmd::S2c => Ok(f.decode_body()?),
            _ => Err(unexpected(f)),
        }
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.stream.write_all(&frame.to_bytes()).await?;
        Ok(())
    }

    /// Writes raw bytes (for tests of hostile input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    fn seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Waits for the reply to `seq`, queueing anything else that arrives.
    async fn reply(&mut self, cmd: Cmd, seq: u32) -> Result<Frame, ClientError> {
        loop {
            let f = self.read_frame().await?;
            let h = f.header;
            if h.seq == seq && h.cmd == cmd && h.flags.contains(Flags::RESPONSE) {
                return Ok(f);
            }
            if h.seq == seq && h.cmd == Cmd::Error {
                return Err(unexpected(f));
            }
            if h.cmd == Cmd::Kickout {
                return Err(unexpected(f));
            }
            self.queued.push_back(f);
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        read_frame(&mut self.stream, &mut self.rbuf).await
    }

    /// Splits the connection into a reader and a writer that work at once,
    /// so a caller can keep several requests in flight (bench's C2S window)
    /// instead of waiting for each reply.
    pub fn into_split(self) -> (ClientReader, ClientWriter) {
        let (read, write) = self.stream.into_split();
        (
            ClientReader {
                read,
                rbuf: self.rbuf,
                queued: self.queued,
            },
            ClientWriter {
                write,
                next_seq: self.next_seq,
                appcode: self.appcode,
            },
        )
    }
}

/// The receiving half of a split [`Client`].
pub struct ClientReader {
    read: OwnedReadHalf,
    rbuf: BytesMut,
    queued: VecDeque<Frame>,
}

impl ClientReader {
    /// Next frame from the server, whatever it is. Cancel-safe: bytes read
    /// before a cancellation stay buffered for the next call.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        if let Some(f) = self.queued.pop_front() {
            return Ok(f);
        }
        read_frame(&mut self.read, &mut self.rbuf).await
    }
}

/// The sending half of a split [`Client`]; it numbers requests.
pub struct ClientWriter {
    write: OwnedWriteHalf,
    next_seq: u32,
    appcode: AppCode,
}

impl ClientWriter {
    /// Encodes a C2S frame into `out` without sending it, so a caller can
    /// write several in one syscall; returns its seq.
    pub fn encode_c2s(
        &mut self,
        msgtype: MsgType,
        payload: &pb::Payload,
        ack: bool,
        out: &mut BytesMut,
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let mut header = Header::new(Cmd::C2s, self.appcode, seq);
        header.msgtype = msgtype;
        if ack {
            header.flags = Flags::ACK_REQUESTED;
        }
        Frame::encode_msg(header, payload, out);
        seq
    }

    /// Writes already encoded frames.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write.write_all(bytes).await?;
        Ok(())
    }
}

/// Reads until `rbuf` holds a whole frame.
async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    rbuf: &mut BytesMut,
) -> Result<Frame, ClientError> {
    loop {
        // The client trusts a server frame up to 16× the default body limit:
        // pushes may carry larger content than a client may send.
        if let Some(f) = Frame::parse(rbuf, DEFAULT_MAX_BODY * 16)? {
            return Ok(f);
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// Turns a frame the caller did not expect into the error it stands for.
fn unexpected(f: Frame) -> ClientError {
    match f.header.cmd {
        Cmd::Error => match f.decode_body::<pb::Error>() {
            Ok(e) => ClientError::Server {
                code: e.code,
                message: e.message,
            },
            Err(e) => e.into(),
        },
        Cmd::Kickout => match f.decode_body::<pb::Kickout>() {
            Ok(k) => ClientError::Kicked {
                reason: k.reason,
                message: k.message,
            },
            Err(e) => e.into(),
        },
        other => ClientError::Server {
            code: 0,
            message: format!("unexpected {} frame", other.name()),
        },
    }
}
