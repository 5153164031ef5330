//! The gate directory (`GET /v1/gate`, ARCHITECTURE §4 "directory"), reach
//! statistics (`GET /v1/stats/reach`) and the admin gate list
//! (`GET /v1/admin/gates`).

use super::{app_param, authorize, authorize_admin, param, ApiError};
use crate::store::GateInfo;
use crate::Logic;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use tidegate_proto::MsgType;

/// `GET /v1/gate?app=&uid=`: a live, non-draining gate chosen by power of
/// two choices on connection count. Needs no key: SDKs call it before
/// they log in, and it reveals only addresses clients connect to anyway.
/// The app must exist and the uid is required, so a later version can pin
/// users to gates without changing the API.
pub(super) async fn gate_handler(
    State(logic): State<Arc<Logic>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query?;
    let app = app_param(&pairs)?;
    if logic.app(app).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("app {app} is not configured"),
        ));
    }
    if param(&pairs, "uid").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("missing query parameter uid"));
    }
    let gates = logic.store.live_gates().await?;
    let candidates: Vec<&GateInfo> = gates.iter().filter(|g| !g.draining).collect();
    let chosen = two_choices(&candidates, random_u64()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_gate",
            "no live, non-draining gate; retry shortly",
        )
    })?;
    metrics::counter!("tidegate_logic_directory_answers_total").increment(1);
    Ok(Json(json!({
        "gate_id": chosen.gate_id,
        "tcp": chosen.client_addr,
        "http": (!chosen.http_addr.is_empty()).then_some(&chosen.http_addr),
    })))
}

/// Power of two choices: two distinct candidates picked by `r`, the one
/// with fewer connections wins. Spreads load nearly as well as "least
/// loaded" without every client herding onto the same gate between
/// heartbeats.
fn two_choices<'a>(candidates: &[&'a GateInfo], r: u64) -> Option<&'a GateInfo> {
    let n = candidates.len() as u64;
    match n {
        0 => None,
        1 => Some(candidates[0]),
        _ => {
            let a = (r % n) as usize;
            let b = ((a as u64 + 1 + (r >> 32) % (n - 1)) % n) as usize;
            let (x, y) = (candidates[a], candidates[b]);
            Some(if y.connections < x.connections { y } else { x })
        }
    }
}

/// A fresh random number from std's per-process random hasher keys.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// `GET /v1/stats/reach?app=&msgtype=`: reach totals over every logic
/// instance (the store's totals plus what this instance has not flushed
/// yet), and this instance's own counters.
pub(super) async fn reach_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query?;
    let app = app_param(&pairs)?;
    authorize(&logic, &headers, app)?;
    let msgtype = match param(&pairs, "msgtype") {
        None => return Err(ApiError::bad_request("missing query parameter msgtype")),
        Some(v) => MsgType(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("msgtype={v:?} is not 0-65535")))?,
        ),
    };
    let mut counts = logic.store.reach_totals(app, msgtype).await?;
    counts.add(&logic.reach.unflushed(app, msgtype));
    Ok(Json(json!({
        "app": app.0,
        "msgtype": msgtype.0,
        "counts": counts,
        "instance": {
            "id": logic.logic_id,
            "counts": logic.reach.local(app, msgtype),
        },
    })))
}

/// `GET /v1/admin/gates`: every live gate with its load (admin key).
pub(super) async fn admin_gates_handler(
    State(logic): State<Arc<Logic>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_admin(&logic, &headers)?;
    let gates: Vec<Value> = logic
        .store
        .live_gates()
        .await?
        .into_iter()
        .map(|g| {
            json!({
                "gate_id": g.gate_id,
                "tcp": g.client_addr,
                "http": g.http_addr,
                "connections": g.connections,
                "draining": g.draining,
                "lease_expires_ms": g.expires_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "gates": gates })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(id: &str, connections: u64) -> GateInfo {
        GateInfo {
            gate_id: id.into(),
            connections,
            draining: false,
            client_addr: String::new(),
            http_addr: String::new(),
            expires_ms: 0,
            incarnation: 1,
        }
    }

    #[test]
    fn two_choices_prefers_the_lighter_and_never_picks_the_heaviest_of_two() {
        let (a, b, c) = (gate("a", 10), gate("b", 1), gate("c", 5));
        assert!(two_choices(&[], 7).is_none());
        assert_eq!(two_choices(&[&a], 7).unwrap().gate_id, "a");
        for r in 0..64u64 {
            let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(two_choices(&[&a, &b], r).unwrap().gate_id, "b");
            assert_ne!(two_choices(&[&a, &b, &c], r).unwrap().gate_id, "a");
        }
    }
}
