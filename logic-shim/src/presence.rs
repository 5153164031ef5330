//! Presence transitions driven by the gate links: login writes a session
//! under a fresh epoch, close removes it only if the epoch still matches
//! (ARCHITECTURE §5: a stale close never removes a newer login).

use crate::auth::AuthError;
use crate::gates::ShardAddr;
use crate::store::{NewSession, SessionKey};
use crate::Logic;
use tidegate_proto::{pb, AppCode, ErrorCode};

/// Verifies a forwarded LOGIN and records the session.
pub async fn login(
    logic: &Logic,
    gate: &ShardAddr,
    app: AppCode,
    req: pb::LinkLogin,
) -> pb::LinkLoginReply {
    let result = match try_login(logic, gate, app, req.conn, req.login.unwrap_or_default()).await {
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
    };
    let record = logic
        .store
        .add_session(app, &claims.sub, new)
        .await
        .map_err(|e| {
            tracing::warn!("login: store: {e}");
            (
                ErrorCode::Unavailable,
                "presence store unavailable; retry".to_string(),
            )
        })?;
    Ok(pb::LoginAccepted {
        uid: claims.sub,
        epoch: record.epoch,
        // 0: the gateway advertises its own configured interval.
        keepalive_s: 0,
    })
}

/// Removes a closed session from presence (fenced by its epoch).
pub async fn closed(logic: &Logic, gate: &ShardAddr, app: AppCode, msg: pb::LinkSessionClosed) {
    let key = SessionKey {
        gate_id: gate.gate_id.clone(),
        shard: gate.shard,
        conn: msg.conn,
    };
    match logic
        .store
        .remove_session(app, &msg.uid, &key, msg.epoch)
        .await
    {
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
