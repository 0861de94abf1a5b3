//! `GET/POST /v1/secrets`, `DELETE /v1/secrets/{name}`: the vault's admin
//! surface. Values go in once (`POST`) and never come out: a listing has
//! names, hosts, grants and last use only.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use flotilla_protocol::{
    AddSecretRequest, ApiError, SecretGrantHolder, SecretInfo, SecretList, SecretRemoved,
};
use flotilla_vault::store::{default_env_name, Vault, VaultError};
use flotilla_vault::{HeaderTemplate, SecretSpec};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use crate::api::{ApiFailure, ApiJson, AppState};
use crate::compliance::record_admin;
use crate::principals::Caller;

/// The secret routes, with their descriptions (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list_secrets, add_secret))
        .routes(routes!(remove_secret))
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), ApiFailure> {
    if caller.has_role("admin") {
        Ok(())
    } else {
        Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{what} needs the admin role; {} has {}",
                caller.name,
                if caller.roles.is_empty() {
                    "none".to_owned()
                } else {
                    caller.roles.join(", ")
                }
            ),
        ))
    }
}

fn vault(st: &AppState) -> Result<Arc<Vault>, ApiFailure> {
    st.fleet.vault().map_err(|e| {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unavailable",
            format!("the vault cannot be used: {e}"),
        )
    })
}

fn vault_failure(e: VaultError) -> ApiFailure {
    match e {
        VaultError::Exists { .. } => ApiFailure::new(StatusCode::CONFLICT, "exists", e.to_string()),
        VaultError::Invalid { .. } => {
            ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
        }
        other => {
            tracing::error!(error = %other, "vault error");
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "vault_error",
                other.to_string(),
            )
        }
    }
}

/// Runs a vault operation off the async threads (SQLite, fsync).
async fn blocking<T, F>(vault: Arc<Vault>, f: F) -> Result<T, ApiFailure>
where
    T: Send + 'static,
    F: FnOnce(&Vault) -> Result<T, VaultError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&vault))
        .await
        .map_err(|e| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("vault task failed: {e}"),
            )
        })?
        .map_err(vault_failure)
}

/// `Name: value with {secret}` into a template.
fn parse_header(raw: &str) -> Result<HeaderTemplate, ApiFailure> {
    let Some((name, value)) = raw.split_once(':') else {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("header {raw:?} must look like 'Name: value with {{secret}}'"),
        ));
    };
    Ok(HeaderTemplate {
        name: name.trim().to_owned(),
        value: value.trim().to_owned(),
    })
}

/// Adds a secret (or, with `replace`, overwrites one). The value goes in
/// once and never comes out.
#[utoipa::path(
    post,
    path = "/v1/secrets",
    tag = "secrets",
    request_body = AddSecretRequest,
    responses(
        (status = 201, description = "The secret as listed (never its value)", body = SecretInfo),
        (status = 400, description = "`bad_request`: an invalid name, host, header, env or value", body = ApiError),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError),
        (status = 409, description = "`exists`: a secret of that name exists (pass `replace`)", body = ApiError),
        (status = 500, description = "`vault_error` or `internal`: the vault failed", body = ApiError),
        (status = 503, description = "`vault_unavailable`: the vault's key is missing or wrong", body = ApiError)
    )
)]
async fn add_secret(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AddSecretRequest>,
) -> Result<(StatusCode, Json<SecretInfo>), ApiFailure> {
    let name = req.name.clone();
    let detail = serde_json::json!({ "hosts": req.hosts, "replace": req.replace });
    let result = store_secret(&st, &caller, req).await;
    record_admin(
        st.fleet.store(),
        &caller,
        "secret.add",
        &name,
        Some(detail),
        &result,
    )
    .await;
    result
}

async fn store_secret(
    st: &AppState,
    caller: &Caller,
    req: AddSecretRequest,
) -> Result<(StatusCode, Json<SecretInfo>), ApiFailure> {
    admin_only(caller, "adding a secret")?;
    let vault = vault(st)?;
    let headers = req
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = SecretSpec {
        env: req
            .env
            .clone()
            .unwrap_or_else(|| default_env_name(&req.name)),
        name: req.name.clone(),
        hosts: req.hosts.clone(),
        headers,
        inject_query: req.inject_query,
        inject_body: req.inject_body,
        allow_http: req.allow_http,
    };
    let value = Zeroizing::new(req.value.into_bytes());
    let replace = req.replace;
    let stored = spec.clone();
    blocking(vault.clone(), move |v| v.add(&stored, &value, replace)).await?;
    tracing::info!(by = %caller.name, secret = %spec.name, hosts = ?spec.hosts, replace, "secret added");
    let name = spec.name.clone();
    let info = blocking(vault, move |v| v.list())
        .await?
        .into_iter()
        .find(|i| i.spec.name == name)
        .map(|i| view(i, st))
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the secret was stored but cannot be listed",
            )
        })?;
    Ok((StatusCode::CREATED, Json(info)))
}

fn view(info: flotilla_vault::store::SecretInfo, st: &AppState) -> SecretInfo {
    let grants = st
        .fleet
        .grant_holders()
        .into_iter()
        .filter(|(_, g)| g.secret == info.spec.name)
        .map(|(session, g)| SecretGrantHolder {
            session,
            expires_at_ms: g.expires_at_ms,
        })
        .collect();
    SecretInfo {
        name: info.spec.name,
        hosts: info.spec.hosts,
        headers: info
            .spec
            .headers
            .iter()
            .map(|h| format!("{}: {}", h.name, h.value))
            .collect(),
        env: info.spec.env,
        inject_query: info.spec.inject_query,
        inject_body: info.spec.inject_body,
        allow_http: info.spec.allow_http,
        created_ms: info.created_at_ms,
        last_used_ms: info.last_used_ms,
        uses: info.uses,
        grants,
    }
}

/// The secrets by name: hosts, headers, grants and last use, never values.
#[utoipa::path(
    get,
    path = "/v1/secrets",
    tag = "secrets",
    responses(
        (status = 200, description = "The secrets", body = SecretList),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError),
        (status = 500, description = "`vault_error` or `internal`: the vault failed", body = ApiError),
        (status = 503, description = "`vault_unavailable`: the vault's key is missing or wrong", body = ApiError)
    )
)]
async fn list_secrets(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SecretList>, ApiFailure> {
    admin_only(&caller, "listing secrets")?;
    let vault = vault(&st)?;
    let all = blocking(vault, |v| v.list()).await?;
    Ok(Json(SecretList {
        secrets: all.into_iter().map(|i| view(i, &st)).collect(),
    }))
}

/// Removes a secret.
#[utoipa::path(
    delete,
    path = "/v1/secrets/{name}",
    tag = "secrets",
    params(("name" = String, Path, description = "The secret's name")),
    responses(
        (status = 200, description = "The secret is gone", body = SecretRemoved),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError),
        (status = 404, description = "`not_found`: no secret of that name", body = ApiError),
        (status = 500, description = "`vault_error` or `internal`: the vault failed", body = ApiError),
        (status = 503, description = "`vault_unavailable`: the vault's key is missing or wrong", body = ApiError)
    )
)]
async fn remove_secret(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<SecretRemoved>, ApiFailure> {
    let result = delete_secret(&st, &caller, name.clone()).await;
    record_admin(
        st.fleet.store(),
        &caller,
        "secret.remove",
        &name,
        None,
        &result,
    )
    .await;
    result
}

async fn delete_secret(
    st: &AppState,
    caller: &Caller,
    name: String,
) -> Result<Json<SecretRemoved>, ApiFailure> {
    admin_only(caller, "removing a secret")?;
    let vault = vault(st)?;
    let n = name.clone();
    if blocking(vault, move |v| v.remove(&n)).await? {
        tracing::info!(by = %caller.name, secret = %name, "secret removed");
        Ok(Json(SecretRemoved { removed: name }))
    } else {
        Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no secret named {name:?} (flotilla secrets list shows them)"),
        ))
    }
}
