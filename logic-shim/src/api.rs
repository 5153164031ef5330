//! The app-server HTTP API (ARCHITECTURE §4a): push, presence, c2s stream
//! reads, metrics and health. Every error is a 4xx/5xx with a JSON body
//! `{"code": "...", "message": "..."}`, counted by code.

use crate::push::{self, Push};
use crate::store::{c2s_stream_key, StoreError, StreamId};
use crate::Logic;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tidegate_proto::{AppCode, MsgType};

/// Most uids one presence query may name.
const MAX_PRESENCE_UIDS: usize = 1000;
/// Most entries one stream read returns.
const MAX_STREAM_READ: usize = 1000;

/// Builds the router.
pub fn router(logic: Arc<Logic>) -> Router {
    let limit = logic.cfg.max_http_body;
    Router::new()
        .route("/v1/push", post(push_handler))
        .route("/v1/presence", get(presence_handler))
        .route("/v1/streams/c2s", get(stream_handler))
        .route(
            "/metrics",
            get(|State(l): State<Arc<Logic>>| async move { l.prom.render() }),
        )
        .route("/healthz", get(health_handler))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see the README's HTTP API",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(logic)
}

/// An API failure: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("tidegate_logic_http_errors_total", "code" => self.code).increment(1);
        let body = Json(json!({"code": self.code, "message": self.message}));
        (self.status, body).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::BadInput(m) => ApiError::bad_request(m),
            StoreError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{m}; retry"),
            ),
            StoreError::Corrupt(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_json",
        };
        ApiError::new(r.status(), code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }
}

/// `Json` whose rejections are our JSON errors.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// Checks the bearer key belongs to `app`. A key never reaches another app.
fn authorize(logic: &Logic, headers: &HeaderMap, app: AppCode) -> Result<(), ApiError> {
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <app API key>",
            )
        })?;
    match logic.auth.app_for_api_key(key) {
        Some(a) if a == app => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key is not for app {app}"),
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown API key",
        )),
    }
}

/// Push targets: one uid, or a list.
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

async fn push_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<Json<push::PushOutcome>, ApiError> {
    let app = AppCode(req.app);
    authorize(&logic, &headers, app)?;
    if req.store_if_offline || req.ttl_s != 0 {
        return Err(ApiError::bad_request(
            "store_if_offline and ttl_s need offline storage, which this build does not have yet; omit them",
        ));
    }
    let _ = req.ack; // Client acks are always counted (tidegate_logic_reach_acked_total).
    let to = match req.to {
        Targets::One(uid) if uid == "all" => {
            return Err(ApiError::bad_request(
                "broadcast (\"to\": \"all\") is not available in this build yet",
            ))
        }
        Targets::One(uid) => vec![uid],
        Targets::Many(uids) => uids,
    };
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
    let push = Push {
        app,
        msgtype: MsgType(req.msgtype),
        to,
        content_type: req.content_type,
        content,
    };
    Ok(Json(push::push(&logic, push).await?))
}

#[derive(Serialize)]
struct Device {
    device: String,
    platform: String,
    gate_id: String,
    shard: u32,
    epoch: u64,
    since_ms: u64,
}

#[derive(Serialize)]
struct UserPresence {
    uid: String,
    online: bool,
    devices: Vec<Device>,
}

/// Parses `app` from query pairs.
fn app_param(pairs: &[(String, String)]) -> Result<AppCode, ApiError> {
    let v =
        param(pairs, "app").ok_or_else(|| ApiError::bad_request("missing query parameter app"))?;
    v.parse()
        .map(AppCode)
        .map_err(|_| ApiError::bad_request(format!("app={v:?} is not an app code (0-65535)")))
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn presence_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(pairs) = query?;
    let app = app_param(&pairs)?;
    authorize(&logic, &headers, app)?;
    let uids: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "uid")
        .map(|(_, v)| v.as_str())
        .collect();
    if uids.is_empty() || uids.len() > MAX_PRESENCE_UIDS {
        return Err(ApiError::bad_request(format!(
            "give 1 to {MAX_PRESENCE_UIDS} uid parameters"
        )));
    }
    let mut out = Vec::with_capacity(uids.len());
    for uid in uids {
        let sessions = logic.store.sessions(app, uid).await?;
        out.push(UserPresence {
            uid: uid.to_string(),
            online: !sessions.is_empty(),
            devices: sessions
                .into_iter()
                .map(|s| Device {
                    device: s.device,
                    platform: s.platform,
                    gate_id: s.gate_id,
                    shard: s.shard,
                    epoch: s.epoch,
                    since_ms: s.since_ms,
                })
                .collect(),
        });
    }
    Ok(Json(json!({ "presence": out })))
}

async fn stream_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(pairs) = query?;
    let app = app_param(&pairs)?;
    authorize(&logic, &headers, app)?;
    let msgtype = match param(&pairs, "msgtype") {
        None => MsgType(0),
        Some(v) => MsgType(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("msgtype={v:?} is not 0-65535")))?,
        ),
    };
    let after = param(&pairs, "after")
        .map(str::parse::<StreamId>)
        .transpose()?;
    let limit = match param(&pairs, "limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_STREAM_READ).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be 1 to {MAX_STREAM_READ}"))
            })?,
    };
    let entries = logic.store.read_c2s(app, msgtype, after, limit).await?;
    let last_id = entries.last().map(|e| e.id.to_string());
    let b64 = base64::engine::general_purpose::STANDARD;
    let entries: Vec<_> = entries
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id.to_string(),
                "uid": e.entry.uid,
                "content_type": e.entry.content_type,
                "content": std::str::from_utf8(&e.entry.content).ok(),
                "content_b64": b64.encode(&e.entry.content),
                "at_ms": e.entry.at_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "stream": c2s_stream_key(app, msgtype),
        "entries": entries,
        "last_id": last_id,
    })))
}

async fn health_handler(State(logic): State<Arc<Logic>>) -> Response {
    match logic.store.ping().await {
        Ok(()) => Json(json!({"status": "ok", "store": logic.store.backend()})).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}
