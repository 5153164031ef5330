//! One client session's protocol state machine. It does no I/O (as emqx's
//! `emqx_channel`): the connection task decodes a frame, calls
//! [`Session::handle_in`], and carries out the returned [`Effects`]. So
//! session logic is tested by feeding frames, with no sockets.
//!
//! Memory: a `Session` is at most 56 bytes (asserted below); the uid is the only heap
//! allocation, made at login.

use crate::wheel::Tick;
use bytes::Bytes;
use tidegate_proto::{pb, AppCode, Cmd, ConnId, ErrorCode, Flags, Frame, Header};

/// The AUTH_TIMEOUT error's text, to the timed-out LOGIN and to anything
/// sent while the connection closes.
const AUTH_TIMEOUT_MESSAGE: &str = "no LOGIN within the auth timeout";

/// Where a session is in its life.
#[derive(Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; must send LOGIN before the auth deadline.
    AwaitingLogin,
    /// LOGIN forwarded to logic; waiting for its verdict.
    LoggingIn {
        /// The client's LOGIN seq, echoed in the reply.
        seq: u32,
        /// The app the client logs in to.
        appcode: AppCode,
    },
    /// Logged in.
    Active(Active),
    /// The auth timeout passed first; the connection is closing. A login
    /// logic accepts now is undone, never activated.
    TimedOut {
        /// The app of the login that was at logic, if any.
        appcode: AppCode,
    },
}

/// A logged-in session's identity.
#[derive(Debug, PartialEq, Eq)]
pub struct Active {
    /// Tenant.
    pub appcode: AppCode,
    /// User id within the app.
    pub uid: Box<str>,
    /// Presence fencing token from logic.
    pub epoch: u64,
}

/// Why a connection ended; each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the socket.
    ClientClosed,
    /// The client logged out.
    Logout,
    /// The client's bytes were not v1 frames.
    BadFrame(&'static str),
    /// No LOGIN within the auth timeout.
    AuthTimeout,
    /// No frame within the idle timeout.
    IdleTimeout,
    /// Logic kicked the session (another device, ban, admin).
    Kicked,
    /// The client did not read its queued frames fast enough.
    SlowConsumer,
    /// The client kept exceeding its rate limits.
    Throttled,
    /// The gateway is draining.
    Draining,
    /// A socket error.
    Io,
}

impl CloseReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Logout => "logout",
            CloseReason::BadFrame(l) => l,
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Kicked => "kicked",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Throttled => "throttled",
            CloseReason::Draining => "draining",
            CloseReason::Io => "io_error",
        }
    }
}

/// What the shard must do after a session handled an event.
#[derive(Debug, Default)]
pub struct Effects {
    /// A frame to write to the client.
    pub reply: Option<Bytes>,
    /// A frame to send to logic.
    pub to_logic: Option<Bytes>,
    /// Close the connection after writing `reply`.
    pub close: Option<CloseReason>,
}

impl Effects {
    fn reply(frame: Bytes) -> Effects {
        Effects {
            reply: Some(frame),
            ..Effects::default()
        }
    }

    fn logic(frame: Bytes) -> Effects {
        Effects {
            to_logic: Some(frame),
            ..Effects::default()
        }
    }
}

/// What the session needs to know about its shard when it handles a frame.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The shard's clock.
    pub now: Tick,
    /// Whether any logic link is up.
    pub logic_up: bool,
    /// Seconds of silence before an active session is closed.
    pub idle_timeout: u32,
    /// Keepalive interval advertised when logic leaves it to the gateway.
    pub keepalive_s: u32,
    /// The client's address, passed to logic on login.
    pub peer: &'a str,
}

/// One connection's session.
#[derive(Debug)]
pub struct Session {
    conn: ConnId,
    phase: Phase,
    /// The auth deadline before login, the idle deadline after; the wheel
    /// checks it lazily.
    pub deadline: Tick,
}

impl Session {
    /// A fresh connection that must log in by `auth_deadline`.
    pub fn new(conn: ConnId, auth_deadline: Tick) -> Session {
        Session {
            conn,
            phase: Phase::AwaitingLogin,
            deadline: auth_deadline,
        }
    }

    /// The connection this session belongs to.
    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Handles one frame from the client.
    pub fn handle_in(&mut self, frame: &Frame, ctx: Ctx<'_>) -> Effects {
        let h = &frame.header;
        if let Phase::Active(_) = self.phase {
            self.deadline = ctx.now.saturating_add(ctx.idle_timeout);
        }
        match (h.cmd, &self.phase) {
            (Cmd::Keepalive, _) => Effects::reply(Frame::empty(h.reply()).to_bytes()),
            (_, Phase::TimedOut { .. }) => {
                error_reply(h, ErrorCode::AuthTimeout, AUTH_TIMEOUT_MESSAGE)
            }
            (Cmd::Login, Phase::AwaitingLogin) => self.login(frame, ctx),
            (Cmd::Login, _) => error_reply(h, ErrorCode::AlreadyLoggedIn, "already logged in"),
            (Cmd::C2s, Phase::Active(a)) => {
                let fwd = pb::LinkC2s {
                    conn: self.conn.to_u64(),
                    uid: a.uid.to_string(),
                    payload: frame.body.clone(),
                    client_seq: h.seq,
                    ack_requested: h.flags.contains(Flags::ACK_REQUESTED),
                };
                Effects::logic(link_frame(Cmd::LinkC2s, h, a.appcode, &fwd))
            }
            (Cmd::S2cAck, Phase::Active(a)) => match frame.decode_body::<pb::PushAck>() {
                Ok(ack) => {
                    let fwd = pb::LinkS2cAck {
                        conn: self.conn.to_u64(),
                        uid: a.uid.to_string(),
                        msg_id: ack.msg_id,
                    };
                    Effects::logic(link_frame(Cmd::LinkS2cAck, h, a.appcode, &fwd))
                }
                Err(e) => error_reply(h, ErrorCode::BadBody, &e.to_string()),
            },
            (Cmd::OfflinePull | Cmd::OfflineAck, Phase::Active(a)) => {
                let fwd = pb::LinkForward {
                    conn: self.conn.to_u64(),
                    uid: a.uid.to_string(),
                    cmd: u32::from(h.cmd.code()),
                    seq: h.seq,
                    body: frame.body.clone(),
                    ack_requested: h.flags.contains(Flags::ACK_REQUESTED),
                };
                Effects::logic(link_frame(Cmd::LinkForward, h, a.appcode, &fwd))
            }
            (Cmd::Logout, Phase::Active(_)) => Effects {
                reply: Some(Frame::empty(h.reply()).to_bytes()),
                to_logic: self.closed_notice(),
                close: Some(CloseReason::Logout),
            },
            (Cmd::C2s | Cmd::S2cAck | Cmd::Logout | Cmd::OfflinePull | Cmd::OfflineAck, _) => {
                error_reply(h, ErrorCode::NotLoggedIn, "log in first")
            }
            (cmd, _) => error_reply(
                h,
                ErrorCode::UnknownCmd,
                &format!("{} is not a command a client may send here", cmd.name()),
            ),
        }
    }

    fn login(&mut self, frame: &Frame, ctx: Ctx<'_>) -> Effects {
        let h = &frame.header;
        let login = match frame.decode_body::<pb::Login>() {
            Ok(l) => l,
            Err(e) => return error_reply(h, ErrorCode::BadBody, &e.to_string()),
        };
        if !ctx.logic_up {
            return error_reply(
                h,
                ErrorCode::Unavailable,
                "no logic service reachable; retry",
            );
        }
        self.phase = Phase::LoggingIn {
            seq: h.seq,
            appcode: h.appcode,
        };
        let fwd = pb::LinkLogin {
            conn: self.conn.to_u64(),
            login: Some(login),
            peer_addr: ctx.peer.to_string(),
        };
        Effects::logic(link_frame(Cmd::LinkLogin, h, h.appcode, &fwd))
    }

    /// The auth deadline passed before a login completed: answers
    /// AUTH_TIMEOUT and closes. A login still at logic is undone when its
    /// reply comes (see [`Phase::TimedOut`]).
    pub fn on_auth_timeout(&mut self) -> Effects {
        let h = match self.phase {
            Phase::LoggingIn { seq, appcode } => Header::new(Cmd::Login, appcode, seq),
            _ => Header::new(Cmd::Login, AppCode(0), 0),
        };
        self.phase = Phase::TimedOut { appcode: h.appcode };
        Effects {
            reply: Some(error_frame(
                &h,
                ErrorCode::AuthTimeout,
                AUTH_TIMEOUT_MESSAGE,
            )),
            close: Some(CloseReason::AuthTimeout),
            ..Effects::default()
        }
    }

    /// Handles logic's verdict on this session's LOGIN. A reply that arrives
    /// when the session is not logging in (a duplicate) is ignored; one that
    /// accepts a login the auth timeout already gave up on is undone.
    pub fn on_login_reply(&mut self, reply: pb::LinkLoginReply, ctx: Ctx<'_>) -> Effects {
        if let Phase::TimedOut { appcode } = self.phase {
            let Some(pb::link_login_reply::Result::Accepted(ok)) = reply.result else {
                return Effects::default();
            };
            return Effects::logic(session_closed(appcode, self.conn, ok.uid, ok.epoch));
        }
        let Phase::LoggingIn { seq, appcode } = self.phase else {
            return Effects::default();
        };
        let header = Header::new(Cmd::Login, appcode, seq);
        match reply.result {
            Some(pb::link_login_reply::Result::Accepted(ok)) => {
                let body = pb::LoginOk {
                    uid: ok.uid.clone(),
                    // The presence epoch: unique per user and increasing,
                    // unlike the shard-local connection id.
                    session_id: ok.epoch,
                    keepalive_s: if ok.keepalive_s == 0 {
                        ctx.keepalive_s
                    } else {
                        ok.keepalive_s
                    },
                    server_time_ms: tidegate_proto::now_ms(),
                };
                self.phase = Phase::Active(Active {
                    appcode,
                    uid: ok.uid.into_boxed_str(),
                    epoch: ok.epoch,
                });
                self.deadline = ctx.now.saturating_add(ctx.idle_timeout);
                Effects::reply(Frame::encode_msg_to_bytes(header.reply(), &body))
            }
            Some(pb::link_login_reply::Result::Rejected(err)) => {
                self.phase = Phase::AwaitingLogin;
                Effects::reply(Frame::encode_msg_to_bytes(
                    Header {
                        cmd: Cmd::Error,
                        ..header
                    },
                    &err,
                ))
            }
            None => {
                self.phase = Phase::AwaitingLogin;
                error_reply(
                    &header,
                    ErrorCode::Internal,
                    "logic sent an empty login reply",
                )
            }
        }
    }

    /// Logic lost the link this session's LOGIN went over: fail it so the
    /// client retries, rather than leaving it to the auth timeout.
    pub fn on_login_lost(&mut self) -> Effects {
        let Phase::LoggingIn { seq, appcode } = self.phase else {
            return Effects::default();
        };
        self.phase = Phase::AwaitingLogin;
        let header = Header::new(Cmd::Login, appcode, seq);
        error_reply(&header, ErrorCode::Unavailable, "logic link lost; retry")
    }

    /// The LINK_SESSION_CLOSED notice logic needs when this session ends, if
    /// it was logged in.
    pub fn closed_notice(&self) -> Option<Bytes> {
        let Phase::Active(a) = &self.phase else {
            return None;
        };
        Some(session_closed(
            a.appcode,
            self.conn,
            a.uid.to_string(),
            a.epoch,
        ))
    }

    /// Drops the login after LOGOUT told logic, so closing the connection
    /// does not tell it again.
    pub fn forget_login(&mut self) {
        self.phase = Phase::AwaitingLogin;
    }

    /// Whether deliveries may be written to this session.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active(_))
    }
}

/// LINK_SESSION_CLOSED: logic removes this login from presence (fenced by
/// its epoch, so a newer login of the same user is never touched).
fn session_closed(appcode: AppCode, conn: ConnId, uid: String, epoch: u64) -> Bytes {
    let notice = pb::LinkSessionClosed {
        conn: conn.to_u64(),
        uid,
        epoch,
    };
    Frame::encode_msg_to_bytes(Header::new(Cmd::LinkSessionClosed, appcode, 0), &notice)
}

/// Encodes a link frame that carries a client request's msgtype and seq.
/// The appcode is the session's, never the frame's: a client logged in to
/// one app must not reach another app's bus by editing its header.
fn link_frame(
    cmd: Cmd,
    client: &Header,
    appcode: AppCode,
    msg: &impl tidegate_proto::prost::Message,
) -> Bytes {
    let header = Header {
        cmd,
        flags: Flags::empty(),
        appcode,
        ..*client
    };
    Frame::encode_msg_to_bytes(header, msg)
}

/// An ERROR frame answering the request `h`.
pub fn error_frame(h: &Header, code: ErrorCode, message: &str) -> Bytes {
    Frame::error_reply(h, code, message)
}

fn error_reply(h: &Header, code: ErrorCode, message: &str) -> Effects {
    Effects::reply(error_frame(h, code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tidegate_proto::DEFAULT_MAX_BODY;

    const CTX: Ctx<'static> = Ctx {
        now: 10,
        logic_up: true,
        idle_timeout: 90,
        keepalive_s: 30,
        peer: "127.0.0.1:5555",
    };

    fn conn() -> ConnId {
        ConnId {
            slot: 3,
            generation: 9,
        }
    }

    fn parse(b: &Bytes) -> Frame {
        Frame::parse(&mut BytesMut::from(&b[..]), DEFAULT_MAX_BODY)
            .unwrap()
            .unwrap()
    }

    fn login_frame(seq: u32) -> Frame {
        let body = pb::Login {
            token: "t".into(),
            device_id: "d".into(),
            platform: "ios".into(),
        };
        Frame::new(Header::new(Cmd::Login, AppCode(1), seq), &body)
    }

    fn logged_in() -> Session {
        let mut s = Session::new(conn(), 5);
        s.handle_in(&login_frame(1), CTX);
        let fx = s.on_login_reply(accepted("alice", 4), CTX);
        assert_eq!(parse(&fx.reply.unwrap()).header.cmd, Cmd::Login);
        s
    }

    fn error_code(b: &Bytes) -> u32 {
        let f = parse(b);
        assert_eq!(f.header.cmd, Cmd::Error);
        f.decode_body::<pb::Error>().unwrap().code
    }

    #[test]
    fn session_fits_its_budget() {
        assert!(
            std::mem::size_of::<Session>() <= 56,
            "{}",
            std::mem::size_of::<Session>()
        );
    }

    fn accepted(uid: &str, epoch: u64) -> pb::LinkLoginReply {
        pb::LinkLoginReply {
            conn: conn().to_u64(),
            result: Some(pb::link_login_reply::Result::Accepted(pb::LoginAccepted {
                uid: uid.into(),
                epoch,
                keepalive_s: 30,
            })),
        }
    }

    fn rejected(message: &str) -> pb::LinkLoginReply {
        pb::LinkLoginReply {
            conn: conn().to_u64(),
            result: Some(pb::link_login_reply::Result::Rejected(pb::Error {
                code: ErrorCode::AuthFailed.code(),
                message: message.into(),
            })),
        }
    }

    #[test]
    fn a_login_accepted_after_the_auth_timeout_is_undone_not_activated() {
        let mut s = Session::new(conn(), 5);
        s.handle_in(&login_frame(7), CTX);
        let fx = s.on_auth_timeout();
        assert_eq!(fx.close, Some(CloseReason::AuthTimeout));
        let err = parse(&fx.reply.unwrap());
        assert_eq!(
            err.header.seq, 7,
            "the error answers the LOGIN that was pending"
        );
        assert_eq!(
            err.decode_body::<pb::Error>().unwrap().code,
            ErrorCode::AuthTimeout.code()
        );
        // logic's verdict arrives while the connection is closing
        let fx = s.on_login_reply(accepted("alice", 4), CTX);
        assert!(
            !s.is_active(),
            "a timed-out connection never becomes active"
        );
        assert!(
            fx.reply.is_none(),
            "no LoginOk after the AUTH_TIMEOUT error"
        );
        let undo = parse(&fx.to_logic.expect("presence undone"));
        assert_eq!(undo.header.cmd, Cmd::LinkSessionClosed);
        assert_eq!(undo.header.appcode, AppCode(1));
        let body: pb::LinkSessionClosed = undo.decode_body().unwrap();
        assert_eq!((body.uid.as_str(), body.epoch), ("alice", 4));
        assert!(
            s.closed_notice().is_none(),
            "closing does not tell logic twice"
        );
    }

    #[test]
    fn a_rejection_after_the_auth_timeout_needs_nothing() {
        let mut s = Session::new(conn(), 5);
        s.handle_in(&login_frame(2), CTX);
        s.on_auth_timeout();
        let fx = s.on_login_reply(rejected("no"), CTX);
        assert!(fx.reply.is_none() && fx.to_logic.is_none() && fx.close.is_none());
        // and frames racing the close are refused, not forwarded
        let fx = s.handle_in(&login_frame(3), CTX);
        assert!(fx.to_logic.is_none());
        assert_eq!(
            error_code(&fx.reply.unwrap()),
            ErrorCode::AuthTimeout.code()
        );
    }

    #[test]
    fn login_is_forwarded_then_activated() {
        let mut s = Session::new(conn(), 5);
        let fx = s.handle_in(&login_frame(7), CTX);
        let fwd = parse(&fx.to_logic.unwrap());
        assert_eq!(fwd.header.cmd, Cmd::LinkLogin);
        assert_eq!(fwd.header.seq, 7);
        let body: pb::LinkLogin = fwd.decode_body().unwrap();
        assert_eq!(body.conn, conn().to_u64());
        assert_eq!(body.peer_addr, "127.0.0.1:5555");
        assert_eq!(
            s.phase(),
            &Phase::LoggingIn {
                seq: 7,
                appcode: AppCode(1)
            }
        );
        let s = logged_in();
        assert!(s.is_active());
        assert_eq!(s.deadline, 100);
    }

    #[test]
    fn login_without_logic_is_unavailable() {
        let mut s = Session::new(conn(), 5);
        let ctx = Ctx {
            logic_up: false,
            ..CTX
        };
        let fx = s.handle_in(&login_frame(1), ctx);
        assert_eq!(
            error_code(&fx.reply.unwrap()),
            ErrorCode::Unavailable.code()
        );
        assert_eq!(s.phase(), &Phase::AwaitingLogin);
    }

    #[test]
    fn rejected_login_returns_to_awaiting() {
        let mut s = Session::new(conn(), 5);
        s.handle_in(&login_frame(1), CTX);
        let fx = s.on_login_reply(rejected("expired"), CTX);
        assert_eq!(error_code(&fx.reply.unwrap()), ErrorCode::AuthFailed.code());
        assert_eq!(s.phase(), &Phase::AwaitingLogin);
    }

    #[test]
    fn commands_before_login_are_refused() {
        let mut s = Session::new(conn(), 5);
        let c2s = Frame::empty(Header::new(Cmd::C2s, AppCode(1), 2));
        let fx = s.handle_in(&c2s, CTX);
        assert_eq!(
            error_code(&fx.reply.unwrap()),
            ErrorCode::NotLoggedIn.code()
        );
        assert!(fx.to_logic.is_none());
    }

    #[test]
    fn keepalive_is_answered_locally() {
        let mut s = logged_in();
        let ka = Frame::empty(Header::new(Cmd::Keepalive, AppCode(1), 3));
        let fx = s.handle_in(&ka, Ctx { now: 50, ..CTX });
        let r = parse(&fx.reply.unwrap());
        assert!(r.header.flags.contains(Flags::RESPONSE));
        assert_eq!(r.header.seq, 3);
        assert!(fx.to_logic.is_none());
        assert_eq!(s.deadline, 140, "activity extends the idle deadline");
    }

    #[test]
    fn c2s_is_forwarded_with_the_raw_payload() {
        let mut s = logged_in();
        let payload = pb::Payload {
            content_type: "application/json".into(),
            content: Bytes::from_static(b"{}"),
        };
        let mut h = Header::new(Cmd::C2s, AppCode(1), 4);
        h.flags = Flags::ACK_REQUESTED;
        h.msgtype = tidegate_proto::MsgType(7);
        let f = Frame::new(h, &payload);
        let fx = s.handle_in(&f, CTX);
        let fwd = parse(&fx.to_logic.unwrap());
        assert_eq!(fwd.header.msgtype.0, 7);
        let body: pb::LinkC2s = fwd.decode_body().unwrap();
        assert_eq!(body.uid, "alice");
        assert!(body.ack_requested);
        assert_eq!(body.payload, f.body);
    }

    #[test]
    fn offline_requests_are_forwarded_as_sent_and_need_a_login() {
        let pull = pb::OfflinePull {
            after: "1-0".into(),
            limit: 5,
        };
        let mut h = Header::new(Cmd::OfflinePull, AppCode(2), 9);
        h.flags = Flags::ACK_REQUESTED;
        let f = Frame::new(h, &pull);
        let fx = logged_in().handle_in(&f, CTX);
        let fwd = parse(&fx.to_logic.unwrap());
        assert_eq!(fwd.header.cmd, Cmd::LinkForward);
        assert_eq!(fwd.header.appcode, AppCode(1), "the session's app");
        let body: pb::LinkForward = fwd.decode_body().unwrap();
        assert_eq!(
            (body.uid.as_str(), body.cmd, body.seq, body.ack_requested),
            ("alice", 0x0030, 9, true)
        );
        assert_eq!(body.body, f.body);

        let mut fresh = Session::new(conn(), 5);
        let fx = fresh.handle_in(
            &Frame::empty(Header::new(Cmd::OfflineAck, AppCode(1), 1)),
            CTX,
        );
        assert_eq!(
            error_code(&fx.reply.unwrap()),
            ErrorCode::NotLoggedIn.code()
        );
        assert!(fx.to_logic.is_none());
    }

    #[test]
    fn c2s_carries_the_session_app_not_the_header_app() {
        let mut s = logged_in();
        let h = Header::new(Cmd::C2s, AppCode(2), 4);
        let fx = s.handle_in(&Frame::empty(h), CTX);
        assert_eq!(parse(&fx.to_logic.unwrap()).header.appcode, AppCode(1));
    }

    #[test]
    fn logout_replies_notifies_logic_and_closes() {
        let mut s = logged_in();
        let fx = s.handle_in(&Frame::empty(Header::new(Cmd::Logout, AppCode(1), 5)), CTX);
        assert!(fx.reply.is_some());
        let notice: pb::LinkSessionClosed = parse(&fx.to_logic.unwrap()).decode_body().unwrap();
        assert_eq!(notice.epoch, 4);
        assert_eq!(fx.close, Some(CloseReason::Logout));
    }

    #[test]
    fn clients_may_not_send_server_or_link_commands() {
        let mut s = logged_in();
        for cmd in [Cmd::S2c, Cmd::Kickout, Cmd::Error, Cmd::LinkDeliver] {
            let fx = s.handle_in(&Frame::empty(Header::new(cmd, AppCode(1), 1)), CTX);
            assert_eq!(error_code(&fx.reply.unwrap()), ErrorCode::UnknownCmd.code());
            assert!(fx.to_logic.is_none());
        }
    }

    #[test]
    fn second_login_is_refused() {
        let mut s = logged_in();
        let fx = s.handle_in(&login_frame(9), CTX);
        assert_eq!(
            error_code(&fx.reply.unwrap()),
            ErrorCode::AlreadyLoggedIn.code()
        );
    }
}
