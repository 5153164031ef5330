//! Presence transitions driven by the gate links: login writes a session
//! under a fresh epoch and applies the app's device policy in the same
//! atomic step (the sessions it replaces get KICKOUT), close removes it only
//! if the epoch still matches (ARCHITECTURE §5: a stale close never removes
//! a newer login).

use crate::auth::AuthError;
use crate::gates::ShardAddr;
use crate::store::timing::Op;
use crate::store::{NewSession, SessionKey, SessionRecord};
use crate::Logic;
use tidegate_proto::{pb, AppCode, Cmd, ErrorCode, Frame, Header};

/// Verifies a forwarded LOGIN and records the session.
pub async fn login(
    logic: &Logic,
    gate: &ShardAddr,
    incarnation: u64,
    app: AppCode,
    req: pb::LinkLogin,
) -> pb::LinkLoginReply {
    let login = req.login.unwrap_or_default();
    let result = match try_login(logic, gate, incarnation, app, req.conn, login).await {
        Ok(ok) => {
            metrics::counter!("tidegate_logic_logins_total", "result" => "ok").increment(1);
            pb::link_login_reply::Result::Accepted(ok)
        }
        Err((code, message)) => {
            metrics::counter!("tidegate_logic_logins_total", "result" => code.name()).increment(1);
            pb::link_login_reply::Result::Rejected(pb::Error {
                code: code.code(),
                message,
            })
        }
    };
    pb::LinkLoginReply {
        conn: req.conn,
        result: Some(result),
    }
}

async fn try_login(
    logic: &Logic,
    gate: &ShardAddr,
    incarnation: u64,
    app: AppCode,
    conn: u64,
    login: pb::Login,
) -> Result<pb::LoginAccepted, (ErrorCode, String)> {
    let claims = logic
        .auth
        .verify(app, &login.token, &login.device_id)
        .map_err(|e| {
            let code = match e {
                AuthError::UnknownApp(_) => ErrorCode::UnknownApp,
                _ => ErrorCode::AuthFailed,
            };
            (code, e.to_string())
        })?;
    let new = NewSession {
        key: SessionKey {
            gate_id: gate.gate_id.clone(),
            shard: gate.shard,
            conn,
        },
        device: login.device_id,
        platform: login.platform,
        since_ms: tidegate_proto::now_ms(),
        incarnation,
    };
    let policy = logic.app(app).map(|a| a.device_policy).unwrap_or_default();
    let outcome = logic
        .store_timings
        .time(
            Op::AddSession,
            logic.store.add_session(app, &claims.sub, new, policy),
        )
        .await
        .map_err(|e| {
            tracing::warn!("login: store: {e}");
            (
                ErrorCode::Unavailable,
                "presence store unavailable; retry".to_string(),
            )
        })?;
    for old in &outcome.kicked {
        kick_other_device(logic, app, old);
    }
    Ok(pb::LoginAccepted {
        uid: claims.sub,
        epoch: outcome.record.epoch,
        // 0: the gateway advertises its own configured interval.
        keepalive_s: 0,
    })
}

/// Sends KICKOUT(OTHER_DEVICE) to a session the device policy replaced. It
/// is already gone from presence; the gate's close notice that follows finds
/// nothing to remove (fenced by epoch). A gate that is not linked here is
/// not reachable by any kick from us: its session stays open until the
/// client leaves, but it no longer receives pushes.
fn kick_other_device(logic: &Logic, app: AppCode, old: &SessionRecord) {
    let kick = pb::LinkKick {
        conn: old.conn,
        kickout: Some(pb::Kickout {
            reason: pb::KickoutReason::OtherDevice as i32,
            message: "logged in on another device".into(),
        }),
        incarnation: old.incarnation,
    };
    let frame = Frame::encode_msg_to_bytes(Header::new(Cmd::LinkKick, app, 0), &kick);
    let sent = logic
        .gates
        .send_to_incarnation(&old.gate_id, old.shard, old.incarnation, frame);
    let result = if sent { "sent" } else { "unreachable" };
    metrics::counter!("tidegate_logic_device_kicks_total", "result" => result).increment(1);
}

/// Removes a closed session from presence (fenced by its epoch).
pub async fn closed(logic: &Logic, gate: &ShardAddr, app: AppCode, msg: pb::LinkSessionClosed) {
    let key = SessionKey {
        gate_id: gate.gate_id.clone(),
        shard: gate.shard,
        conn: msg.conn,
    };
    let removal = logic.store.remove_session(app, &msg.uid, &key, msg.epoch);
    match logic.store_timings.time(Op::RemoveSession, removal).await {
        Ok(removed) => {
            let result = if removed { "removed" } else { "stale" };
            metrics::counter!("tidegate_logic_session_closes_total", "result" => result)
                .increment(1);
        }
        Err(e) => {
            // The gate lease (issue 6) cleans what is lost here.
            metrics::counter!("tidegate_logic_session_closes_total", "result" => "store_error")
                .increment(1);
            tracing::warn!("session close: store: {e}");
        }
    }
}

/// Removes a session a gate reported it no longer holds (ARCHITECTURE §5
/// case 2), fenced by its epoch so a newer login is never touched. A store
/// failure is counted only: the next delivery to it reports it again.
pub async fn drop_stale(logic: &Logic, app: AppCode, uid: &str, key: &SessionKey, epoch: u64) {
    let removal = logic.store.remove_session(app, uid, key, epoch);
    let result = match logic.store_timings.time(Op::RemoveSession, removal).await {
        Ok(true) => "removed",
        Ok(false) => "already_gone",
        Err(e) => {
            tracing::warn!(app = %app, uid, session = %key, "stale session: store: {e}");
            "store_error"
        }
    };
    metrics::counter!("tidegate_logic_stale_sessions_total", "result" => result).increment(1);
}
