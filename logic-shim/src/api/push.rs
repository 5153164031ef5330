//! `POST /v1/push`: JSON (ARCHITECTURE §4a) or, with `Content-Type:
//! application/x-protobuf`, a `PushRequest` answered by a `PushResponse`.
//! Both forms are validated into one [`Push`] by the same rules.

use super::{authorize, ApiError};
use crate::push::{self, Audience, OfflineStorage, Push, PushOutcome};
use crate::Logic;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use std::sync::Arc;
use tidegate_proto::prost::Message;
use tidegate_proto::{pb, AppCode, MsgType};

/// The protobuf media type.
const PROTOBUF: &str = "application/x-protobuf";

/// Push targets: one uid, `"all"`, or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Targets {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    app: u16,
    #[serde(default)]
    msgtype: u16,
    to: Targets,
    #[serde(default = "default_content_type")]
    content_type: String,
    content: Option<String>,
    content_b64: Option<String>,
    #[serde(default)]
    store_if_offline: bool,
    #[serde(default)]
    ttl_s: u64,
    #[serde(default)]
    ack: bool,
}

fn default_content_type() -> String {
    "application/octet-stream".into()
}

/// A push request in either encoding, before validation.
struct Raw {
    app: u32,
    msgtype: u32,
    to: Option<Vec<String>>,
    content_type: String,
    content: bytes::Bytes,
    store_if_offline: bool,
    ttl_s: u64,
}

pub(super) async fn push_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROTOBUF));
    let raw = if protobuf {
        from_protobuf(req).await?
    } else {
        let super::ApiJson(json) = super::ApiJson::<PushRequest>::from_request(req, &()).await?;
        from_json(json)?
    };
    let push = validate(&logic, &headers, raw)?;
    let outcome: PushOutcome = push::push(&logic, push).await?;
    Ok(if protobuf {
        let body = outcome.to_pb().encode_to_vec();
        ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
    } else {
        Json(outcome).into_response()
    })
}

async fn from_protobuf(req: Request) -> Result<Raw, ApiError> {
    let body = Bytes::from_request(req, &()).await.map_err(|r| {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(r.status(), code, r.body_text())
    })?;
    let p = pb::PushRequest::decode(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_protobuf",
            format!("PushRequest: {e}"),
        )
    })?;
    if p.all && !p.to.is_empty() {
        return Err(ApiError::bad_request(
            "set all or list uids in to, not both",
        ));
    }
    Ok(Raw {
        app: p.app,
        msgtype: p.msgtype,
        to: (!p.all).then_some(p.to),
        content_type: if p.content_type.is_empty() {
            default_content_type()
        } else {
            p.content_type
        },
        content: p.content,
        store_if_offline: p.store_if_offline,
        ttl_s: p.ttl_s,
    })
}

fn from_json(req: PushRequest) -> Result<Raw, ApiError> {
    let _ = req.ack; // Client acks are always counted (reach statistics).
    let content = match (req.content, req.content_b64) {
        (Some(text), None) => bytes::Bytes::from(text),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ApiError::bad_request(format!("content_b64 is not base64: {e}")))?
            .into(),
        (None, None) => return Err(ApiError::bad_request("give content (UTF-8) or content_b64")),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give content or content_b64, not both",
            ))
        }
    };
    let to = match req.to {
        Targets::One(uid) if uid == "all" => None,
        Targets::One(uid) => Some(vec![uid]),
        Targets::Many(uids) => Some(uids),
    };
    Ok(Raw {
        app: u32::from(req.app),
        msgtype: u32::from(req.msgtype),
        to,
        content_type: req.content_type,
        content,
        store_if_offline: req.store_if_offline,
        ttl_s: req.ttl_s,
    })
}

fn validate(logic: &Logic, headers: &HeaderMap, raw: Raw) -> Result<Push, ApiError> {
    let app = u16::try_from(raw.app)
        .map(AppCode)
        .map_err(|_| ApiError::bad_request(format!("app {} is not 0-65535", raw.app)))?;
    authorize(logic, headers, app)?;
    let msgtype = u16::try_from(raw.msgtype)
        .map(MsgType)
        .map_err(|_| ApiError::bad_request(format!("msgtype {} is not 0-65535", raw.msgtype)))?;
    let store_if_offline = offline_storage(logic, &raw)?;
    let to = match raw.to {
        None if store_if_offline.is_some() => return Err(ApiError::bad_request(
            "store_if_offline needs a list of users: a push to \"all\" reaches online users only",
        )),
        None => Audience::All,
        Some(to) => {
            if to.is_empty() {
                return Err(ApiError::bad_request("\"to\" names no user"));
            }
            if to.len() > logic.cfg.max_push_targets {
                return Err(ApiError::bad_request(format!(
                    "\"to\" names {} users; the limit is {} per call",
                    to.len(),
                    logic.cfg.max_push_targets
                )));
            }
            if to.iter().any(|u| u.is_empty() || u.len() > 256) {
                return Err(ApiError::bad_request("every uid must be 1 to 256 bytes"));
            }
            Audience::Users(to)
        }
    };
    Ok(Push {
        app,
        msgtype,
        to,
        content_type: raw.content_type,
        content: raw.content,
        store_if_offline,
    })
}

/// `store_if_offline` and `ttl_s` (0 = `logic.offline_ttl_s`), checked
/// against `logic.offline_max_ttl_s`.
fn offline_storage(logic: &Logic, raw: &Raw) -> Result<Option<OfflineStorage>, ApiError> {
    if !raw.store_if_offline {
        if raw.ttl_s != 0 {
            return Err(ApiError::bad_request(
                "ttl_s applies only with store_if_offline: true",
            ));
        }
        return Ok(None);
    }
    let ttl_s = match raw.ttl_s {
        0 => logic.cfg.offline_ttl_s,
        t if t > logic.cfg.offline_max_ttl_s => {
            return Err(ApiError::bad_request(format!(
                "ttl_s {t} is above the limit {} (logic.offline_max_ttl_s)",
                logic.cfg.offline_max_ttl_s
            )))
        }
        t => t,
    };
    Ok(Some(OfflineStorage {
        ttl: std::time::Duration::from_secs(ttl_s),
    }))
}
