//! The gateway's admin HTTP API (admin port): metrics, health, and live
//! edits of the black/white lists and temporary bans. Errors are JSON
//! `{"code", "message"}` like the logic API's.

use crate::guard::{ListKind, ListSpec};
use crate::metrics::Admin;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;

/// Builds the admin router.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move { a.prom.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/admin/lists", get(get_lists))
        .route(
            "/admin/lists/{kind}",
            axum::routing::put(put_entry).delete(delete_entry),
        )
        .route("/admin/bans/{ip}", delete(delete_ban))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(Arc::new(admin))
}

/// An admin API failure, answered as JSON `{code, message}`.
struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        metrics::counter!("tidegate_gateway_admin_errors_total", "code" => self.code).increment(1);
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> AdminError {
    AdminError {
        status,
        code,
        message: message.into(),
    }
}

fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(key) = &admin.admin_key else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <gateway.admin_key>",
        ))
    }
}

fn kind(s: &str) -> Result<ListKind, AdminError> {
    serde_json::from_value(json!(s)).map_err(|_| {
        error(
            StatusCode::NOT_FOUND,
            "unknown_list",
            format!("{s:?} is not a list; use deny_ips, allow_ips, deny_apps or deny_uids"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    value: String,
}

fn entry(body: Result<Json<Entry>, JsonRejection>) -> Result<String, AdminError> {
    body.map(|Json(e)| e.value).map_err(|r| {
        error(
            r.status(),
            "bad_json",
            format!("{}; send {{\"value\": \"...\"}}", r.body_text()),
        )
    })
}

async fn get_lists(
    State(a): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    authorize(&a, &headers)?;
    let (file, api): (ListSpec, ListSpec) = a.guard.specs();
    let bans: Vec<_> = a
        .guard
        .bans()
        .into_iter()
        .map(|(ip, s)| json!({"ip": ip.to_string(), "seconds_left": s}))
        .collect();
    Ok(Json(json!({"file": file, "api": api, "bans": bans})))
}

/// The list and value of a PUT/DELETE, once the caller is authorized.
fn list_request(
    a: &Admin,
    headers: &HeaderMap,
    list: &str,
    body: Result<Json<Entry>, JsonRejection>,
) -> Result<(ListKind, String), AdminError> {
    authorize(a, headers)?;
    Ok((kind(list)?, entry(body)?))
}

async fn put_entry(
    State(a): State<Arc<Admin>>,
    Path(list): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Entry>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let (kind, value) = list_request(&a, &headers, &list, body)?;
    a.guard
        .add(kind, &value)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_entry", e.0))?;
    Ok(Json(json!({"list": list, "value": value, "added": true})))
}

async fn delete_entry(
    State(a): State<Arc<Admin>>,
    Path(list): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Entry>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let (kind, value) = list_request(&a, &headers, &list, body)?;
    let removed = a
        .guard
        .remove(kind, &value)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_entry", e.0))?;
    Ok(Json(
        json!({"list": list, "value": value, "removed": removed}),
    ))
}

async fn delete_ban(
    State(a): State<Arc<Admin>>,
    Path(ip): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    authorize(&a, &headers)?;
    let addr: IpAddr = ip.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_ip",
            format!("{ip:?} is not an IP address"),
        )
    })?;
    Ok(Json(json!({"ip": ip, "removed": a.guard.unban(addr)})))
}
