//! `GET /v1/approvals`, `POST /v1/approvals/{id}/approve|deny`: the queue of
//! calls waiting for a person.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use flotilla_protocol::{ApiError, ApprovalInfo, ApprovalList, ApproveRequest, DenyRequest};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiFailure, ApiJson, AppState};
use crate::principals::Caller;

/// The approval routes, with their descriptions (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list_approvals))
        .routes(routes!(approve))
        .routes(routes!(deny))
}

/// Pending approvals, oldest first: all of them for an admin, the caller's
/// own sessions' for anyone else.
#[utoipa::path(
    get,
    path = "/v1/approvals",
    tag = "approvals",
    responses((status = 200, description = "Pending approvals", body = ApprovalList))
)]
async fn list_approvals(
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

/// Approves a waiting call (the admin, or the principal who started the
/// session); with `always`, such calls are allowed from now on in that layer.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/approve",
    tag = "approvals",
    params(("id" = String, Path, description = "The approval's id")),
    request_body = ApproveRequest,
    responses(
        (status = 200, description = "The approval, answered", body = ApprovalInfo),
        (status = 400, description = "`bad_request`: an invalid layer or rule", body = ApiError),
        (status = 403, description = "`forbidden`: another principal's session", body = ApiError),
        (status = 404, description = "`not_found`: no such pending approval", body = ApiError)
    )
)]
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

/// Refuses a waiting call; the model is told the reason.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/deny",
    tag = "approvals",
    params(("id" = String, Path, description = "The approval's id")),
    request_body = DenyRequest,
    responses(
        (status = 200, description = "The approval, answered", body = ApprovalInfo),
        (status = 400, description = "`bad_request`: an empty reason", body = ApiError),
        (status = 403, description = "`forbidden`: another principal's session", body = ApiError),
        (status = 404, description = "`not_found`: no such pending approval", body = ApiError)
    )
)]
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
