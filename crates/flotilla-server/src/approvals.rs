//! `GET /v1/approvals`, `POST /v1/approvals/{id}/approve|deny`: the queue of
//! calls waiting for a person.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use flotilla_protocol::{ApprovalInfo, ApprovalList, ApproveRequest, DenyRequest};

use crate::api::{ApiFailure, ApiJson, AppState};
use crate::principals::Caller;

/// The approval routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
}

async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<ApprovalList> {
    let admin = caller.has_role("admin");
    Json(ApprovalList {
        approvals: st
            .fleet
            .approvals()
            .into_iter()
            .filter(|a| admin || a.principal == caller.name)
            .collect(),
    })
}

async fn approve(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ApproveRequest>,
) -> Result<Json<ApprovalInfo>, ApiFailure> {
    let info = st
        .fleet
        .approve(
            &id,
            &caller.name,
            caller.has_role("admin"),
            req.always.as_deref(),
            req.rule.as_deref(),
        )
        .await?;
    Ok(Json(info))
}

async fn deny(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DenyRequest>,
) -> Result<Json<ApprovalInfo>, ApiFailure> {
    let info = st
        .fleet
        .deny(&id, &caller.name, caller.has_role("admin"), &req.reason)
        .await?;
    Ok(Json(info))
}
