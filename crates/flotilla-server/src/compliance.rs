//! The compliance API (`/v1/compliance/...`) and the daemon's own audit
//! records: authentication and admin actions.
//!
//! Who sees what: `admin` and `auditor` principals see every record; any
//! other principal sees the records of its own sessions and its own acts.
//! Checkpoints and `verify` need `admin` or `auditor`; retention cuts need
//! `admin`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use flotilla_protocol::audit::{
    AuditCheckpoint, AuditDraft, AuditKind, AuditPage, AuditQuery, AuditRecord, VerifyReport,
};
use flotilla_protocol::{ApiError, SessionId};
use flotilla_store::{Store, VerifyOptions};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiFailure, ApiJson, ApiQuery, AppState};
use crate::principals::Caller;

/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page.
pub const MAX_PAGE: u32 = 1000;

/// The compliance routes, with their descriptions (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(activities))
        .routes(routes!(verify))
        .routes(routes!(checkpoint))
        .routes(routes!(prune))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn bad(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn may_read_all(caller: &Caller) -> bool {
    caller.has_role("admin") || caller.has_role("auditor")
}

fn need(caller: &Caller, roles: &[&str], what: &str) -> Result<(), ApiFailure> {
    if roles.iter().any(|r| caller.has_role(r)) {
        return Ok(());
    }
    Err(ApiFailure::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "{what} needs the {} role; {} has {}",
            roles.join(" or "),
            caller.name,
            if caller.roles.is_empty() {
                "none".to_owned()
            } else {
                caller.roles.join(", ")
            }
        ),
    ))
}

/// Parses a point in time: RFC 3339 (`2026-11-23T10:00:00Z`), a date
/// (`2026-11-23`, midnight UTC), milliseconds since the epoch, or an age
/// (`90s`, `30m`, `12h`, `7d`: that long before `now_ms`).
pub fn parse_time_ms(raw: &str, now_ms: i64) -> Result<i64, String> {
    let s = raw.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("time {raw:?} is too large"));
    }
    if let Some(age) = flotilla_policy::config::parse_duration_ms(s) {
        return Ok(now_ms.saturating_sub(age));
    }
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, &date_fmt) {
        return Ok((d.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64);
    }
    Err(format!(
        "cannot read the time {raw:?}: use RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23), milliseconds since the epoch, or an age (30m, 12h, 7d)"
    ))
}

/// `GET /v1/compliance/activities` query string.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActivitiesParams {
    /// From this time (see [`parse_time_ms`]).
    pub since: Option<String>,
    /// Up to this time.
    pub until: Option<String>,
    /// Kinds, comma-separated: tool, policy, approval, secret, auth, admin, session, sandbox.
    pub kind: Option<String>,
    /// One session.
    pub session: Option<String>,
    /// One acting principal.
    pub principal: Option<String>,
    /// One action.
    pub action: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    /// `asc` (default) or `desc` (newest first).
    pub order: Option<String>,
}

impl ActivitiesParams {
    /// The store query these parameters ask for, before access rules.
    pub fn to_query(&self, now_ms: i64) -> Result<AuditQuery, String> {
        let time = |t: &Option<String>| t.as_deref().map(|s| parse_time_ms(s, now_ms)).transpose();
        let mut kinds = Vec::new();
        for k in self.kind.iter().flat_map(|k| k.split(',')) {
            let k = k.trim();
            if k.is_empty() {
                continue;
            }
            kinds.push(AuditKind::parse(k).ok_or_else(|| {
                format!(
                    "unknown kind {k:?}: use {}",
                    AuditKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })?);
        }
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<u64>()
                    .map_err(|_| format!("cursor {c:?} is not one this API gave out"))
            })
            .transpose()?;
        let descending = match self.order.as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(o) => return Err(format!("order {o:?} must be asc or desc")),
        };
        if let Some(s) = &self.session {
            SessionId::parse(s).map_err(|e| e.to_string())?;
        }
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!("limit must be 1 to {MAX_PAGE}"));
        }
        Ok(AuditQuery {
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
            kinds,
            session: self.session.clone(),
            action: self.action.clone(),
            principal: self.principal.clone(),
            visible_to: None,
            cursor,
            descending,
            limit,
        })
    }
}

/// Audit records, filtered, one page at a time. Principals without the
/// admin or auditor role see only their own sessions and their own acts.
#[utoipa::path(
    get,
    path = "/v1/compliance/activities",
    tag = "compliance",
    params(ActivitiesParams),
    responses(
        (status = 200, description = "A page of records in id order; `next_cursor` until the end", body = AuditPage),
        (status = 400, description = "`bad_request`: an unknown kind, a bad time, cursor, order or limit", body = ApiError),
        (status = 500, description = "`store_error`: the store failed", body = ApiError)
    )
)]
async fn activities(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(params): ApiQuery<ActivitiesParams>,
) -> Result<Json<AuditPage>, ApiFailure> {
    let mut query = params.to_query(now_ms()).map_err(bad)?;
    if !may_read_all(&caller) {
        query.visible_to = Some(caller.name.clone());
    }
    Ok(Json(st.fleet.store().audit_query(query).await?))
}

/// `POST /v1/compliance/verify` body.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Only this session.
    #[serde(default)]
    pub session: Option<String>,
    /// Checkpoints taken earlier, each of which must still hold.
    #[serde(default)]
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// Recomputes the audit chains, their links to events, the event chains,
/// and checks the checkpoints given.
#[utoipa::path(
    post,
    path = "/v1/compliance/verify",
    tag = "compliance",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "What was checked, and every break found (`ok` false)", body = VerifyReport),
        (status = 400, description = "`bad_request`: an invalid session id", body = ApiError),
        (status = 403, description = "`forbidden`: needs the admin or auditor role", body = ApiError),
        (status = 500, description = "`store_error`: the store failed", body = ApiError)
    )
)]
async fn verify(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyReport>, ApiFailure> {
    need(&caller, &["admin", "auditor"], "verifying the audit log")?;
    let session = req
        .session
        .as_deref()
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let report = st
        .fleet
        .store()
        .audit_verify(VerifyOptions {
            session,
            checkpoints: req.checkpoints,
        })
        .await?;
    Ok(Json(report))
}

/// Takes a checkpoint of both chains' heads (recorded in the daemon chain).
#[utoipa::path(
    post,
    path = "/v1/compliance/checkpoint",
    tag = "compliance",
    responses(
        (status = 200, description = "The checkpoint: keep it outside the daemon's disk", body = AuditCheckpoint),
        (status = 403, description = "`forbidden`: needs the admin or auditor role", body = ApiError),
        (status = 500, description = "`store_error`: the store failed", body = ApiError)
    )
)]
async fn checkpoint(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<AuditCheckpoint>, ApiFailure> {
    need(&caller, &["admin", "auditor"], "taking an audit checkpoint")?;
    Ok(Json(st.fleet.store().audit_checkpoint(&caller.name).await?))
}

/// `POST /v1/compliance/prune` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Remove records older than this (see [`parse_time_ms`]; `90d`: older
    /// than 90 days).
    pub before: String,
}

/// What a prune did.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct PruneResult {
    /// The cut record, absent when nothing was old enough.
    pub cut: Option<AuditRecord>,
}

/// Cuts records older than a time from both chains; the cut is itself a
/// record with the hashes it cut at.
#[utoipa::path(
    post,
    path = "/v1/compliance/prune",
    tag = "compliance",
    request_body = PruneRequest,
    responses(
        (status = 200, description = "The cut record, or null when nothing was that old", body = PruneResult),
        (status = 400, description = "`bad_request`: a bad time", body = ApiError),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError),
        (status = 500, description = "`store_error`: the store failed", body = ApiError)
    )
)]
async fn prune(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<PruneRequest>,
) -> Result<Json<PruneResult>, ApiFailure> {
    need(&caller, &["admin"], "cutting the audit log")?;
    let before = parse_time_ms(&req.before, now_ms()).map_err(bad)?;
    let cut = st.fleet.store().audit_prune(before, &caller.name).await?;
    Ok(Json(PruneResult { cut }))
}

/// Records an admin action on the daemon chain and waits for its commit,
/// so that a change is never answered before its record is on disk.
/// `result` is the action's outcome: `Err` records the refusal.
pub async fn record_admin<T, E: std::fmt::Display>(
    store: &Store,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: Option<serde_json::Value>,
    result: &Result<T, E>,
) {
    let mut draft = AuditDraft::new(
        AuditKind::Admin,
        action,
        if result.is_ok() { "ok" } else { "refused" },
    )
    .by(&caller.name)
    .on(target);
    if let Err(e) = result {
        draft = draft.because(e.to_string());
    }
    if let Some(d) = detail {
        draft = draft.with_detail(&d);
    }
    if let Err(e) = store.append_audit(vec![draft]).await {
        tracing::error!(error = %e, action, "admin action not recorded in the audit log");
    }
}

/// How long a successful authentication of the same principal, by the same
/// means, from the same peer, is not recorded again.
pub const AUTH_SUCCESS_WINDOW: Duration = Duration::from_secs(60);

/// Records authentications: every failure, and each success once per
/// principal, means and peer within [`AUTH_SUCCESS_WINDOW`] (a CLI polling
/// `ps` would otherwise write a record a second).
#[derive(Default)]
pub struct AuthLog {
    recent: Mutex<HashMap<(String, &'static str, String), Instant>>,
}

impl AuthLog {
    /// Records one authentication (never waits for the commit: this is on
    /// every request's path).
    pub fn record(
        &self,
        store: &Store,
        method: &'static str,
        peer: &str,
        principal: Option<&str>,
        failure: Option<&str>,
    ) {
        if let (Some(p), None) = (principal, failure) {
            let Ok(mut recent) = self.recent.lock() else {
                return;
            };
            let now = Instant::now();
            let key = (p.to_string(), method, peer.to_string());
            if recent
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < AUTH_SUCCESS_WINDOW)
            {
                return;
            }
            if recent.len() > 4096 {
                recent.retain(|_, t| now.duration_since(*t) < AUTH_SUCCESS_WINDOW);
            }
            recent.insert(key, now);
        }
        let mut draft = AuditDraft::new(
            AuditKind::Auth,
            method,
            if failure.is_some() {
                "failure"
            } else {
                "success"
            },
        )
        .on(peer);
        draft.principal = principal.map(str::to_string);
        if let Some(f) = failure {
            draft = draft.because(f);
        }
        store.record_audit(draft);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn times_in_every_form() {
        let now = 1_800_000_000_000;
        assert_eq!(
            parse_time_ms("1700000000000", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_time_ms("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_time_ms("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(
            parse_time_ms("2026-11-23T10:00:00Z", now).unwrap(),
            1_795_428_000_000
        );
        assert_eq!(
            parse_time_ms("2026-11-23T11:00:00+01:00", now).unwrap(),
            1_795_428_000_000
        );
        assert_eq!(parse_time_ms("2026-11-23", now).unwrap(), 1_795_392_000_000);
        let err = parse_time_ms("yesterday", now).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
        assert!(parse_time_ms("99999999999999999999999", now).is_err());
    }

    #[test]
    fn params_become_queries_or_clear_errors() {
        let p = ActivitiesParams {
            kind: Some("tool,policy".into()),
            order: Some("desc".into()),
            cursor: Some("42".into()),
            limit: Some(5),
            ..Default::default()
        };
        let q = p.to_query(0).unwrap();
        assert_eq!(q.kinds, vec![AuditKind::Tool, AuditKind::Policy]);
        assert!(q.descending);
        assert_eq!((q.cursor, q.limit), (Some(42), 5));
        for (p, needle) in [
            (
                ActivitiesParams {
                    kind: Some("tools".into()),
                    ..Default::default()
                },
                "unknown kind",
            ),
            (
                ActivitiesParams {
                    limit: Some(5000),
                    ..Default::default()
                },
                "limit",
            ),
            (
                ActivitiesParams {
                    cursor: Some("abc".into()),
                    ..Default::default()
                },
                "cursor",
            ),
            (
                ActivitiesParams {
                    order: Some("up".into()),
                    ..Default::default()
                },
                "order",
            ),
            (
                ActivitiesParams {
                    session: Some("../x".into()),
                    ..Default::default()
                },
                "",
            ),
        ] {
            let e = p.to_query(0).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
