//! The app-server HTTP API (ARCHITECTURE §4a): push, presence, c2s stream
//! reads, gate directory, reach statistics, admin, metrics and health.
//! Every error is a 4xx/5xx with a JSON body `{"code": "...", "message":
//! "..."}`, counted by code.

mod directory;
mod push;

use crate::store::timing::Op;
use crate::store::{c2s_stream_key, StoreError, StreamId};
use crate::Logic;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Serialize;
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
        .route("/v1/push", post(push::push_handler))
        .route("/v1/gate", get(directory::gate_handler))
        .route("/v1/stats/reach", get(directory::reach_handler))
        .route("/v1/admin/gates", get(directory::admin_gates_handler))
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

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Checks the bearer key is the admin key (`logic.admin_key`).
fn authorize_admin(logic: &Logic, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(admin) = logic.cfg.admin_key.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off; set logic.admin_key to enable it",
        ));
    };
    match bearer(headers) {
        // Length first, then bytes: no early exit on the first differing byte.
        Some(k)
            if k.len() == admin.len()
                && k.bytes()
                    .zip(admin.bytes())
                    .fold(0, |d, (a, b)| d | (a ^ b))
                    == 0 =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this is not the admin key",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <admin key>",
        )),
    }
}

/// Checks the bearer key belongs to `app`. A key never reaches another app.
fn authorize(logic: &Logic, headers: &HeaderMap, app: AppCode) -> Result<(), ApiError> {
    let key = bearer(headers).ok_or_else(|| {
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

/// The query pairs and app of an app-scoped GET, once its API key is
/// checked against that app.
fn app_query(
    logic: &Logic,
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<(Vec<(String, String)>, AppCode), ApiError> {
    let Query(pairs) = query?;
    let app = app_param(&pairs)?;
    authorize(logic, headers, app)?;
    Ok((pairs, app))
}

async fn presence_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (pairs, app) = app_query(&logic, &headers, query)?;
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
    let owned: Vec<String> = uids.iter().map(|u| u.to_string()).collect();
    let read = logic.store.sessions_many(app, &owned);
    let all = logic.store_timings.time(Op::SessionsMany, read).await?;
    let mut out = Vec::with_capacity(uids.len());
    for (uid, sessions) in uids.into_iter().zip(all) {
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
    let (pairs, app) = app_query(&logic, &headers, query)?;
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
