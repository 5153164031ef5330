//! A shard: one glommio executor's share of the gateway. It owns its session
//! table, timing wheel and logic links; nothing here is shared with another
//! shard, so nothing needs a lock (STYLE §2). Connection tasks and link tasks
//! call into the shard; no `RefCell` borrow is held across an `.await`.

use crate::config::{GatewayConfig, SlowConsumer};
use crate::fdlimit::FdBudget;
use crate::flow::{Bucket, Flow, Verdict};
use crate::guard::Guard;
use crate::link::Link;
use crate::metrics::{self, ShardMetrics};
use crate::session::{error_frame, CloseReason, Ctx, Effects, Phase};
use crate::table::{Conn, SessionTable};
use crate::wheel::{Tick, Wheel};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidegate_proto::{pb, AppCode, Cmd, ConnId, DecodeError, ErrorCode, Flags, Frame, Header};

mod fanout;
mod parking;
pub use fanout::incarnation;
pub use parking::{run as run_parking, Resume};

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
    /// Lists, bans and per-IP caps of this gate process.
    pub guard: Arc<Guard>,
    /// The process's descriptor budget, shared by its shards.
    pub fds: Arc<FdBudget>,
    /// Open connections on this shard (reported in heartbeats).
    live: Cell<usize>,
    /// Set once draining starts (reported in heartbeats).
    draining: Cell<bool>,
    /// The guard's list version this shard last checked sessions against.
    lists_version: Cell<u64>,
    accept_bucket: Cell<Bucket>,
    /// Gate lease heartbeats (see `shard/fanout.rs`).
    heartbeat: fanout::HeartbeatClock,
    /// Idle connections without a task (see `shard/parking.rs`); `None`
    /// when `gateway.park_idle_s` is 0.
    parking: Option<parking::Parking>,
}

impl Shard {
    /// A shard with no connections yet.
    pub fn new(
        id: u32,
        gate_id: Rc<str>,
        cfg: GatewayConfig,
        guard: Arc<Guard>,
        fds: Arc<FdBudget>,
    ) -> Shard {
        let links = cfg
            .logic
            .iter()
            .map(|a| Rc::new(Link::new(a.clone())))
            .collect();
        let horizon = cfg.idle_timeout_s.max(cfg.auth_timeout_s) + 2;
        let parking = (cfg.park_idle_s > 0)
            .then(|| parking::Parking::new(id))
            .and_then(|p| {
                p.map_err(|e| {
                    tracing::warn!(shard = id, "cannot park idle connections: {e}");
                })
                .ok()
            });
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
            lists_version: Cell::new(guard.version()),
            guard,
            fds,
            live: Cell::new(0),
            draining: Cell::new(false),
            accept_bucket: Cell::new(Bucket::full(cfg.flow.accept_burst, 0)),
            heartbeat: Default::default(),
            parking,
            cfg,
        }
    }

    /// The shard's clock in milliseconds (wraps after 49 days; users of it
    /// subtract with wrapping arithmetic).
    pub fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    /// How long to wait before accepting the next connection (accept-rate
    /// shaping: the rest wait in the kernel's backlog).
    pub fn accept_delay(&self) -> Option<Duration> {
        let f = &self.cfg.flow;
        let mut b = self.accept_bucket.get();
        let r = b.take(self.now_ms(), f.accept_per_s, f.accept_burst, 1);
        self.accept_bucket.set(b);
        r.err()
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
    pub fn open(&self, peer: Option<std::net::SocketAddr>) -> (ConnId, Rc<Conn>) {
        let deadline = self.now() + self.cfg.auth_timeout_s;
        let flow = Flow::new(&self.cfg.flow, self.now_ms());
        let (id, conn) = self.table.borrow_mut().insert(
            |id| crate::session::Session::new(id, deadline),
            flow,
            peer.map(crate::table::PeerAddr::from),
        );
        self.wheel.borrow_mut().insert(id, deadline);
        self.metrics.accepted.increment(1);
        self.metrics.connections.increment(1.0);
        self.fds.acquire();
        self.live.set(self.live.get() + 1);
        (id, conn)
    }

    /// Unregisters a connection whose task ended, telling logic if it was
    /// logged in.
    pub fn release(&self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.table.borrow_mut().remove(id) else {
            return;
        };
        self.metrics.connections.decrement(1.0);
        self.fds.release();
        self.live.set(self.live.get() - 1);
        metrics::closed(reason.label());
        let session = conn.session.borrow();
        if let Some(notice) = session.closed_notice() {
            self.metrics.sessions.decrement(1.0);
            // If no link is up the notice is lost; logic's gate lease
            // (ARCHITECTURE §5) covers that case.
            self.send_to_logic(notice);
        }
    }

    /// Charges a frame of `len` bytes to the connection's rate limits.
    pub fn admit_frame(&self, conn: &Conn, len: usize) -> Verdict {
        let mut flow = conn.flow.get();
        let verdict = flow.admit(&self.cfg.flow, self.now_ms(), len);
        conn.flow.set(flow);
        if verdict != Verdict::Pass {
            metrics::throttled(match verdict {
                Verdict::Delay(_) => "delay",
                Verdict::Drop => "drop",
                Verdict::Error => "error",
                _ => "close",
            });
        }
        verdict
    }

    /// Answers a throttled frame with ERROR(throttled), closing if `close`.
    pub fn throttle(&self, conn: &Conn, request: &Header, close: bool) {
        metrics::error_sent(ErrorCode::Throttled.name());
        self.enqueue(
            conn,
            error_frame(
                request,
                ErrorCode::Throttled,
                "rate limit exceeded; slow down",
            ),
        );
        if close {
            self.close(conn, CloseReason::Throttled);
        }
    }

    /// Handles one frame from a client.
    pub fn handle_frame(&self, conn: &Conn, frame: &Frame, peer: &str) {
        self.metrics.frame_in(
            frame.header.cmd,
            tidegate_proto::HEADER_LEN + frame.body.len(),
        );
        let h = &frame.header;
        if h.cmd != Cmd::Keepalive {
            // Keepalives alone leave a connection idle: it may park.
            conn.activity.set(crate::table::Activity::Busy);
        }
        if h.cmd == Cmd::Login && self.guard.app_denied(h.appcode.0) {
            metrics::rejected("app_denied");
            metrics::error_sent(ErrorCode::Banned.name());
            self.enqueue(
                conn,
                error_frame(h, ErrorCode::Banned, "this app is not accepting logins"),
            );
            return;
        }
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
            self.close(conn, CloseReason::BadFrame(err.label()));
        }
    }

    /// Carries out a session's effects. `request` is the client frame that
    /// caused them, if any, for answering failures to reach logic.
    fn apply(&self, conn: &Conn, fx: Effects, request: Option<&Header>) {
        if let Some(frame) = fx.to_logic {
            let sent = if expects_reply(&frame) {
                self.send_request(frame)
            } else if self.send_to_logic(frame) {
                Ok(())
            } else {
                Err(ErrorCode::Unavailable)
            };
            if let (Err(code), Some(h)) = (sent, request) {
                // A LOGIN that never reached logic goes back to awaiting;
                // the client gets one ERROR, ours.
                let _ = conn.session.borrow_mut().on_login_lost();
                let message = match code {
                    ErrorCode::Busy => "gateway busy; retry with backoff",
                    _ => "logic unreachable; retry",
                };
                metrics::error_sent(code.name());
                self.enqueue(conn, error_frame(h, code, message));
            }
        }
        if let Some(reply) = fx.reply {
            self.enqueue(conn, reply);
        }
        if let Some(reason) = fx.close {
            self.close(conn, reason);
        }
    }

    /// Queues a frame for a client; a full queue applies the slow-consumer policy.
    pub fn enqueue(&self, conn: &Conn, frame: Bytes) {
        let mut out = conn.out.borrow_mut();
        if out.len() >= self.cfg.max_outbound_frames {
            // Only pushes are expendable: replies and ERRORs answer requests
            // the client waits for. A queue full of those still disconnects.
            let oldest_push = match self.cfg.flow.slow_consumer {
                SlowConsumer::DropOldest => out.iter().position(|f| frame_cmd(f) == Some(Cmd::S2c)),
                SlowConsumer::Disconnect => None,
            };
            match oldest_push {
                Some(i) => {
                    metrics::queue_drop("drop_oldest");
                    out.remove(i);
                }
                None => {
                    metrics::queue_drop("disconnect");
                    drop(out);
                    self.close(conn, CloseReason::SlowConsumer);
                    return;
                }
            }
        }
        if let Some(cmd) = frame_cmd(&frame) {
            self.metrics.frame_out(cmd, frame.len());
        }
        out.push_back(frame);
        drop(out);
        self.wake(conn);
    }

    /// Asks a connection to flush and close.
    pub fn close(&self, conn: &Conn, reason: CloseReason) {
        conn.close(reason);
        self.wake(conn);
    }

    /// Whether any logic link is up.
    pub fn logic_up(&self) -> bool {
        self.links.iter().any(|l| l.is_up())
    }

    /// Sends a frame over the next up link (round robin: logic is
    /// stateless, any instance serves any request). False if none is up.
    pub fn send_to_logic(&self, frame: Bytes) -> bool {
        self.pick_link(frame).is_some()
    }

    fn pick_link(&self, frame: Bytes) -> Option<&Link> {
        let n = self.links.len();
        let start = self.next_link.get();
        for i in 0..n {
            let link = &self.links[(start + i) % n];
            if link.is_up() && link.send(frame.clone()) {
                self.next_link.set((start + i + 1) % n);
                return Some(link);
            }
        }
        None
    }

    /// Sends a request logic will answer, unless too many already wait:
    /// then the client gets BUSY (load shedding) instead of an unbounded queue.
    fn send_request(&self, frame: Bytes) -> Result<(), ErrorCode> {
        let inflight: u32 = self.links.iter().map(|l| l.inflight.get()).sum();
        if inflight >= self.cfg.flow.max_inflight_logic {
            metrics::rejected("busy");
            return Err(ErrorCode::Busy);
        }
        let link = self.pick_link(frame).ok_or(ErrorCode::Unavailable)?;
        link.inflight.set(link.inflight.get() + 1);
        Ok(())
    }

    /// Handles a frame that logic sent over `link`.
    pub fn on_link_frame(&self, link: &Link, frame: Frame) -> Result<(), DecodeError> {
        let h = frame.header;
        let response = h.flags.contains(Flags::RESPONSE);
        if response && matches!(h.cmd, Cmd::LinkLogin | Cmd::LinkC2s | Cmd::LinkForward) {
            link.inflight.set(link.inflight.get().saturating_sub(1));
        }
        match (h.cmd, response) {
            (Cmd::LinkLogin, true) => self.on_login_reply(h.appcode, frame.decode_body()?),
            (Cmd::LinkC2s, true) => self.on_c2s_reply(&h, frame.decode_body()?),
            (Cmd::LinkForward, true) => self.on_forward_reply(frame.decode_body()?),
            (Cmd::LinkDeliver, false) => {
                let outcome = self.on_deliver(frame.decode_body()?);
                self.confirm_deliver(link, &h, outcome);
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

    fn on_login_reply(&self, appcode: AppCode, mut reply: pb::LinkLoginReply) {
        if let Some(pb::link_login_reply::Result::Accepted(ok)) = &reply.result {
            if self.guard.uid_denied(appcode.0, &ok.uid) {
                metrics::rejected("uid_denied");
                self.undo_login(appcode, reply.conn, ok.uid.clone(), ok.epoch);
                reply.result = Some(pb::link_login_reply::Result::Rejected(pb::Error {
                    code: ErrorCode::Banned.code(),
                    message: "this user is banned".into(),
                }));
            }
        }
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
                    self.undo_login(appcode, reply.conn, ok.uid, ok.epoch);
                }
            }
        }
    }

    /// Tells logic to remove a session it recorded but the gate will not keep.
    fn undo_login(&self, appcode: AppCode, conn: u64, uid: String, epoch: u64) {
        let notice = pb::LinkSessionClosed { conn, uid, epoch };
        let header = Header::new(Cmd::LinkSessionClosed, appcode, 0);
        self.send_to_logic(Frame::encode_msg_to_bytes(header, &notice));
    }

    /// Sends KICKOUT(`reason`) to a connection and closes it.
    fn kick(&self, conn: &Conn, reason: pb::KickoutReason, message: &str, close: CloseReason) {
        let body = pb::Kickout {
            reason: reason as i32,
            message: message.into(),
        };
        let h = Header::new(Cmd::Kickout, AppCode(0), 0);
        self.enqueue(conn, Frame::encode_msg_to_bytes(h, &body));
        self.close(conn, close);
    }

    /// Kicks every connection with KICKOUT(draining) so clients reconnect
    /// elsewhere; returns how many were open.
    pub fn kick_all_draining(&self) -> usize {
        self.draining.set(true);
        self.heartbeat_now();
        let conns: Vec<Rc<Conn>> = self.table.borrow().iter().cloned().collect();
        for conn in &conns {
            self.kick(
                conn,
                pb::KickoutReason::Draining,
                "gateway draining; reconnect",
                CloseReason::Draining,
            );
        }
        conns.len()
    }

    /// Whether any connection is still open.
    pub fn has_connections(&self) -> bool {
        self.live.get() > 0
    }

    /// After the lists changed, kicks sessions whose app or uid is now denied.
    fn recheck_lists(&self) {
        let version = self.guard.version();
        if version == self.lists_version.replace(version) {
            return;
        }
        let conns: Vec<Rc<Conn>> = self.table.borrow().iter().cloned().collect();
        for conn in conns {
            let denied = match conn.session.borrow().phase() {
                Phase::Active(a) => {
                    self.guard.app_denied(a.appcode.0) || self.guard.uid_denied(a.appcode.0, &a.uid)
                }
                _ => false,
            };
            if denied {
                metrics::rejected("banned_live");
                self.kick(
                    &conn,
                    pb::KickoutReason::Banned,
                    "banned",
                    CloseReason::Kicked,
                );
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

    /// Queues logic's answer to a forwarded request (OFFLINE_PULL …) to the
    /// connection, if it is still there and logged in.
    fn on_forward_reply(&self, reply: pb::LinkForwardReply) {
        if reply.frame.is_empty() {
            return;
        }
        let id = ConnId::from_u64(reply.conn);
        let table = self.table.borrow();
        if let Some(conn) = table.get(id).filter(|c| c.session.borrow().is_active()) {
            self.enqueue(conn, reply.frame);
        }
    }

    /// Queues the frame to each listed live session; returns what became of
    /// each: counts, plus the connections that are gone (presence naming
    /// them is stale) and those still logging in (presence is current).
    fn on_deliver(&self, deliver: pb::LinkDeliver) -> pb::LinkDeliverReply {
        let mut outcome = pb::LinkDeliverReply::default();
        if self.for_other_incarnation(deliver.incarnation) {
            outcome.stale = deliver.conns.len() as u64;
            outcome.gone = deliver.conns;
            return outcome;
        }
        let table = self.table.borrow();
        for raw in deliver.conns {
            let conn = table.get(ConnId::from_u64(raw));
            match conn.map(|c| (c, c.session.borrow().is_active())) {
                Some((conn, true)) => {
                    self.metrics.delivered.increment(1);
                    self.enqueue(conn, deliver.frame.clone());
                    outcome.delivered += 1;
                    continue;
                }
                Some((_, false)) => outcome.not_ready.push(raw),
                None => outcome.gone.push(raw),
            }
            self.metrics.stale_deliveries.increment(1);
            outcome.stale += 1;
        }
        outcome
    }

    fn on_kick(&self, appcode: AppCode, kick: pb::LinkKick) {
        if self.for_other_incarnation(kick.incarnation) {
            return;
        }
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
        self.close(&conn, CloseReason::Kicked);
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

    /// Expires sessions whose auth or idle deadline has passed, and applies
    /// list changes to live sessions.
    pub fn tick(&self) {
        self.recheck_lists();
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
                self.kick(
                    &conn,
                    pb::KickoutReason::IdleTimeout,
                    "no frame within the idle timeout",
                    CloseReason::IdleTimeout,
                );
            } else {
                let fx = conn.session.borrow_mut().on_auth_timeout();
                metrics::error_sent(ErrorCode::AuthTimeout.name());
                self.apply(&conn, fx, None);
            }
        }
    }
}

/// The command of an encoded frame.
fn frame_cmd(frame: &[u8]) -> Option<Cmd> {
    frame
        .get(4..6)
        .and_then(|b| Cmd::from_u16(u16::from_be_bytes([b[0], b[1]])))
}

/// Whether a link frame is a request logic answers (and so counts in flight).
fn expects_reply(frame: &Bytes) -> bool {
    matches!(
        frame_cmd(frame),
        Some(Cmd::LinkLogin | Cmd::LinkC2s | Cmd::LinkForward)
    )
}
