//! A shard: one glommio executor's share of the gateway. It owns its session
//! table, timing wheel and logic links; nothing here is shared with another
//! shard, so nothing needs a lock (STYLE §2). Connection tasks and link tasks
//! call into the shard; no `RefCell` borrow is held across an `.await`.

use crate::config::GatewayConfig;
use crate::link::Link;
use crate::metrics::{self, ShardMetrics};
use crate::session::{error_frame, CloseReason, Ctx, Effects, Phase};
use crate::table::{Conn, SessionTable};
use crate::wheel::{Tick, Wheel};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;
use tidegate_proto::{pb, AppCode, Cmd, ConnId, DecodeError, ErrorCode, Flags, Frame, Header};

mod fanout;

/// Size of the shard's shared read buffer: every connection reads into it
/// and keeps only the bytes of an incomplete frame, so idle connections hold
/// no read buffer (STYLE §6).
pub const READ_BUF: usize = 64 * 1024;

/// One executor's gateway state.
pub struct Shard {
    /// Index of this shard within the gate.
    pub id: u32,
    /// This gate's id.
    pub gate_id: Rc<str>,
    /// Settings.
    pub cfg: GatewayConfig,
    table: RefCell<SessionTable>,
    wheel: RefCell<Wheel>,
    /// One link per logic address.
    pub links: Vec<Rc<Link>>,
    next_link: Cell<usize>,
    started: Instant,
    /// Metric handles.
    pub metrics: ShardMetrics,
    /// Shared read buffer (see [`READ_BUF`]).
    pub read_buf: RefCell<Vec<u8>>,
    /// Gate lease heartbeats (see `shard/fanout.rs`).
    heartbeat: fanout::HeartbeatClock,
}

impl Shard {
    /// A shard with no connections yet.
    pub fn new(id: u32, gate_id: Rc<str>, cfg: GatewayConfig) -> Shard {
        let links = cfg.logic.iter().map(|a| Rc::new(Link::new(*a))).collect();
        let horizon = cfg.idle_timeout_s.max(cfg.auth_timeout_s) + 2;
        Shard {
            id,
            gate_id,
            table: RefCell::new(SessionTable::default()),
            wheel: RefCell::new(Wheel::new(horizon)),
            links,
            next_link: Cell::new(0),
            started: Instant::now(),
            metrics: ShardMetrics::new(id),
            read_buf: RefCell::new(vec![0; READ_BUF]),
            heartbeat: Default::default(),
            cfg,
        }
    }

    /// The shard's clock in whole seconds.
    pub fn now(&self) -> Tick {
        self.started.elapsed().as_secs() as Tick
    }

    fn ctx<'a>(&self, peer: &'a str) -> Ctx<'a> {
        Ctx {
            now: self.now(),
            logic_up: self.logic_up(),
            idle_timeout: self.cfg.idle_timeout_s,
            keepalive_s: self.cfg.keepalive_s,
            peer,
        }
    }

    /// Registers a new connection, armed with the auth deadline.
    pub fn open(&self) -> (ConnId, Rc<Conn>) {
        let deadline = self.now() + self.cfg.auth_timeout_s;
        let (id, conn) = self
            .table
            .borrow_mut()
            .insert(|id| crate::session::Session::new(id, deadline));
        self.wheel.borrow_mut().insert(id, deadline);
        self.metrics.accepted.increment(1);
        self.metrics.connections.increment(1.0);
        (id, conn)
    }

    /// Unregisters a connection whose task ended, telling logic if it was
    /// logged in.
    pub fn release(&self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.table.borrow_mut().remove(id) else {
            return;
        };
        self.metrics.connections.decrement(1.0);
        metrics::closed(reason.label());
        let session = conn.session.borrow();
        if let Some(notice) = session.closed_notice() {
            self.metrics.sessions.decrement(1.0);
            // If no link is up the notice is lost; logic's gate lease
            // (ARCHITECTURE §5) covers that case.
            self.send_to_logic(notice);
        }
    }

    /// Handles one frame from a client.
    pub fn handle_frame(&self, conn: &Conn, frame: &Frame, peer: &str) {
        metrics::frame_in(frame.header.cmd);
        let was_active = conn.session.borrow().is_active();
        let fx = conn.session.borrow_mut().handle_in(frame, self.ctx(peer));
        if was_active && fx.close == Some(CloseReason::Logout) {
            self.metrics.sessions.decrement(1.0);
            // The LOGOUT already notified logic; release must not again.
            conn.session.borrow_mut().forget_login();
        }
        self.apply(conn, fx, Some(&frame.header));
    }

    /// Answers bytes that are not a frame: an ERROR where the peer can read
    /// one, then close if the framing cannot be trusted any more.
    pub fn handle_decode_error(&self, conn: &Conn, err: &DecodeError) {
        metrics::decode_error(err.label());
        let header = Header::new(Cmd::Error, AppCode(0), 0);
        self.enqueue(conn, error_frame(&header, err.code(), &err.to_string()));
        metrics::error_sent(err.code().name());
        if err.is_fatal() {
            conn.close(CloseReason::BadFrame(err.label()));
        }
    }

    /// Carries out a session's effects. `request` is the client frame that
    /// caused them, if any, for answering failures to reach logic.
    fn apply(&self, conn: &Conn, fx: Effects, request: Option<&Header>) {
        if let Some(frame) = fx.to_logic {
            if !self.send_to_logic(frame) {
                if let Some(h) = request {
                    let lost = conn.session.borrow_mut().on_login_lost();
                    if lost.reply.is_none() {
                        self.enqueue(
                            conn,
                            error_frame(h, ErrorCode::Unavailable, "logic unreachable; retry"),
                        );
                    }
                    self.apply(conn, lost, None);
                }
            }
        }
        if let Some(reply) = fx.reply {
            self.enqueue(conn, reply);
        }
        if let Some(reason) = fx.close {
            conn.close(reason);
        }
    }

    /// Queues a frame for a client, closing it if it has fallen too far behind.
    pub fn enqueue(&self, conn: &Conn, frame: Bytes) {
        let mut out = conn.out.borrow_mut();
        if out.len() >= self.cfg.max_outbound_frames {
            drop(out);
            conn.close(CloseReason::SlowConsumer);
            return;
        }
        out.push_back(frame);
        drop(out);
        conn.wake.notify();
    }

    /// Whether any logic link is up.
    pub fn logic_up(&self) -> bool {
        self.links.iter().any(|l| l.is_up())
    }

    /// Sends a frame over the next up link (round robin: logic is
    /// stateless, any instance serves any request). False if none is up.
    pub fn send_to_logic(&self, frame: Bytes) -> bool {
        let n = self.links.len();
        let start = self.next_link.get();
        for i in 0..n {
            let link = &self.links[(start + i) % n];
            if link.is_up() && link.send(frame.clone()) {
                self.next_link.set((start + i + 1) % n);
                return true;
            }
        }
        false
    }

    /// Handles a frame that logic sent over `link`.
    pub fn on_link_frame(&self, link: &Link, frame: Frame) -> Result<(), DecodeError> {
        let h = frame.header;
        let response = h.flags.contains(Flags::RESPONSE);
        match (h.cmd, response) {
            (Cmd::LinkLogin, true) => self.on_login_reply(h.appcode, frame.decode_body()?),
            (Cmd::LinkC2s, true) => self.on_c2s_reply(&h, frame.decode_body()?),
            (Cmd::LinkDeliver, false) => {
                let (delivered, stale) = self.on_deliver(frame.decode_body()?);
                self.confirm_deliver(link, &h, delivered, stale);
            }
            (Cmd::LinkBroadcast, false) => self.on_broadcast(link, &h, frame.decode_body()?),
            (Cmd::LinkKick, false) => self.on_kick(h.appcode, frame.decode_body()?),
            (Cmd::LinkPing, false) => {
                link.send(Frame::empty(h.reply()).to_bytes());
            }
            (Cmd::LinkPing, true) => {
                if let Some(rtt) = link.pong() {
                    self.metrics.link_rtt.record(rtt.as_secs_f64());
                }
            }
            (Cmd::LinkHello, true) => {
                let w: pb::LinkWelcome = frame.decode_body()?;
                tracing::debug!(shard = self.id, logic = %w.logic_id, "link welcomed");
                self.on_welcome(link, &w);
            }
            (cmd, _) => {
                tracing::warn!(
                    shard = self.id,
                    cmd = cmd.name(),
                    response,
                    "unexpected link frame"
                );
                metrics::link_event("unexpected_frame");
            }
        }
        Ok(())
    }

    fn on_login_reply(&self, appcode: AppCode, reply: pb::LinkLoginReply) {
        let id = ConnId::from_u64(reply.conn);
        let conn = self.table.borrow().get(id).cloned();
        match conn {
            Some(conn) => {
                let fx = conn
                    .session
                    .borrow_mut()
                    .on_login_reply(reply, self.ctx(""));
                if conn.session.borrow().is_active() {
                    self.metrics.sessions.increment(1.0);
                }
                self.apply(&conn, fx, None);
            }
            None => {
                // The client left while logic was logging it in: undo the
                // presence logic just wrote (ARCHITECTURE §5, case 2).
                if let Some(pb::link_login_reply::Result::Accepted(ok)) = reply.result {
                    let notice = pb::LinkSessionClosed {
                        conn: reply.conn,
                        uid: ok.uid,
                        epoch: ok.epoch,
                    };
                    let header = Header::new(Cmd::LinkSessionClosed, appcode, 0);
                    self.send_to_logic(Frame::encode_msg_to_bytes(header, &notice));
                }
            }
        }
    }

    fn on_c2s_reply(&self, link_header: &Header, reply: pb::LinkC2sReply) {
        let id = ConnId::from_u64(reply.conn);
        let Some(conn) = self.table.borrow().get(id).cloned() else {
            return;
        };
        let client = Header {
            cmd: Cmd::C2s,
            flags: Flags::empty(),
            seq: reply.client_seq,
            ..*link_header
        };
        match reply.error {
            Some(err) if err.code != 0 => {
                let code = ErrorCode::from_u32(err.code).unwrap_or(ErrorCode::Internal);
                metrics::error_sent(code.name());
                self.enqueue(&conn, error_frame(&client, code, &err.message));
            }
            _ if reply.ack_requested => {
                self.enqueue(&conn, Frame::empty(client.reply()).to_bytes());
            }
            _ => {}
        }
    }

    /// Queues the frame to each listed live session; returns (delivered, stale).
    fn on_deliver(&self, deliver: pb::LinkDeliver) -> (u64, u64) {
        let table = self.table.borrow();
        let (mut delivered, mut stale) = (0, 0);
        for raw in deliver.conns {
            match table.get(ConnId::from_u64(raw)) {
                Some(conn) if conn.session.borrow().is_active() => {
                    self.metrics.delivered.increment(1);
                    self.enqueue(conn, deliver.frame.clone());
                    delivered += 1;
                }
                _ => {
                    self.metrics.stale_deliveries.increment(1);
                    stale += 1;
                }
            }
        }
        (delivered, stale)
    }

    fn on_kick(&self, appcode: AppCode, kick: pb::LinkKick) {
        let Some(conn) = self
            .table
            .borrow()
            .get(ConnId::from_u64(kick.conn))
            .cloned()
        else {
            return;
        };
        let body = kick.kickout.unwrap_or_default();
        let frame = Frame::encode_msg_to_bytes(Header::new(Cmd::Kickout, appcode, 0), &body);
        self.enqueue(&conn, frame);
        conn.close(CloseReason::Kicked);
    }

    /// A link went down: logins in flight on it will never be answered.
    pub fn on_link_down(&self) {
        let conns: Vec<Rc<Conn>> = self.table.borrow().iter().cloned().collect();
        for conn in conns {
            if !matches!(conn.session.borrow().phase(), Phase::LoggingIn { .. }) {
                continue;
            }
            let fx = conn.session.borrow_mut().on_login_lost();
            self.apply(&conn, fx, None);
        }
    }

    /// Expires sessions whose auth or idle deadline has passed.
    pub fn tick(&self) {
        let now = self.now();
        let mut due = Vec::new();
        self.wheel.borrow_mut().advance(now, &mut due);
        for id in due {
            let Some(conn) = self.table.borrow().get(id).cloned() else {
                continue;
            };
            let (deadline, active) = {
                let s = conn.session.borrow();
                (s.deadline, s.is_active())
            };
            if deadline > now {
                self.wheel.borrow_mut().insert(id, deadline);
            } else if active {
                let kick = pb::Kickout {
                    reason: pb::KickoutReason::IdleTimeout as i32,
                    message: "no frame within the idle timeout".into(),
                };
                let h = Header::new(Cmd::Kickout, AppCode(0), 0);
                self.enqueue(&conn, Frame::encode_msg_to_bytes(h, &kick));
                conn.close(CloseReason::IdleTimeout);
            } else {
                let h = Header::new(Cmd::Login, AppCode(0), 0);
                self.enqueue(
                    &conn,
                    error_frame(
                        &h,
                        ErrorCode::AuthTimeout,
                        "no LOGIN within the auth timeout",
                    ),
                );
                metrics::error_sent(ErrorCode::AuthTimeout.name());
                conn.close(CloseReason::AuthTimeout);
            }
        }
    }
}
