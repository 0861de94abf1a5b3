//! Principals: who may use the daemon, with which roles, vetted for which
//! tiers, with which API tokens and TOTP second factor; and the
//! authentication of every request (documented in `docs/api.md`).
//!
//! The directory lives in `<data dir>/principals.sqlite` (mode 0600) and is
//! mirrored in memory, so authenticating a request and answering policy's
//! [`Principals::facts`] never touch the disk. Writes go to SQLite first and
//! to memory second, under one mutex; they are rare.
//!
//! - On the Unix socket the caller is the peer's uid (`SO_PEERCRED`): the
//!   daemon's own uid is the owner, another uid the principal that names it.
//! - On TCP the caller is the bearer token: the daemon's token file (the
//!   owner) or a principal's token. Only SHA-256 hashes of tokens are kept,
//!   and they are compared in constant time.
//! - TOTP secrets are stored but never returned by a read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::{Extension, Json};
use flotilla_protocol::{ApiError, PrincipalFacts};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, UnixListener};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiJson, AppState};
use crate::compliance::record_admin;
use crate::paths::Paths;
use flotilla_protocol::audit::{AuditDraft, AuditKind};

/// The roles a principal may hold.
pub const ROLES: [&str; 3] = ["admin", "auditor", "user"];

/// Prefix of principals' API tokens.
pub const TOKEN_PREFIX: &str = "flt_";

/// TOTP: issuer shown by authenticator apps.
pub const TOTP_ISSUER: &str = "flotilla";

/// TOTP step in seconds.
pub const TOTP_STEP: u64 = 30;

/// Wrong TOTP codes allowed per principal within [`MFA_LOCKOUT`].
const MFA_MAX_FAILURES: u32 = 5;

/// How long wrong TOTP codes are remembered (and a locked principal waits).
const MFA_LOCKOUT: Duration = Duration::from_secs(300);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS principals (
    name            TEXT PRIMARY KEY,
    uid             INTEGER UNIQUE,
    roles           TEXT NOT NULL,
    vetted          TEXT NOT NULL,
    totp_secret     TEXT,
    totp_last_step  INTEGER,
    mfa_verified_ms INTEGER,
    created_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash       TEXT PRIMARY KEY,
    principal  TEXT NOT NULL REFERENCES principals(name),
    created_ms INTEGER NOT NULL
);
";

/// Who sent a request, as the middleware authenticated them (a request
/// extension: handlers take `Extension<Caller>`).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The principal's name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The other end of a connection, for the authentication middleware
/// (serve with `into_make_service_with_connect_info::<Peer>()`).
#[derive(Clone, Debug)]
pub enum Peer {
    /// A Unix-socket peer and its uid (`None` when the kernel did not tell).
    Unix {
        /// Peer uid from `SO_PEERCRED`.
        uid: Option<u32>,
    },
    /// A TCP peer.
    Tcp(std::net::SocketAddr),
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer::Unix {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

/// A principal as the API shows it (never with its TOTP secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrincipalView {
    /// Unique name.
    pub name: String,
    /// Local Unix user, when the principal is one.
    #[serde(default)]
    pub uid: Option<u32>,
    /// admin, auditor, user.
    pub roles: Vec<String>,
    /// Tiers the principal is vetted for.
    pub vetted: Vec<String>,
    /// Whether a TOTP secret is enrolled.
    pub mfa_enrolled: bool,
    /// Last successful TOTP login, ms since the epoch.
    #[serde(default)]
    pub mfa_verified_ms: Option<i64>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// API tokens issued.
    pub tokens: u32,
    /// Whether this is the daemon's owner (the uid it runs as).
    pub owner: bool,
}

/// `GET /v1/principals`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrincipalList {
    /// Every principal, by name.
    pub principals: Vec<PrincipalView>,
}

/// `POST /v1/principals`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrincipalRequest {
    /// Unique name, `[a-z0-9._-]`.
    pub name: String,
    /// Local Unix user who connects on the socket as this principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Roles (default `["user"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// `POST /v1/principals/{name}/vet`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VetRequest {
    /// The tier, `[a-z0-9-]`.
    pub tier: String,
    /// Take the tier away instead.
    #[serde(default)]
    pub revoke: bool,
}

/// `POST /v1/principals/{name}/tokens`: the token, shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenIssued {
    /// Whose token.
    pub principal: String,
    /// `flt_` + 64 hex digits.
    pub token: String,
}

/// `POST /v1/principals/{name}/mfa`: the secret, shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MfaEnrollment {
    /// Whose secret.
    pub principal: String,
    /// Base32 TOTP secret (SHA-1, 6 digits, 30 s).
    pub secret: String,
    /// `otpauth://` URL for authenticator apps.
    pub otpauth_url: String,
}

/// `POST /v1/auth/totp`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpLoginRequest {
    /// The 6-digit code.
    pub code: String,
}

/// Answer of `POST /v1/auth/totp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotpVerified {
    /// Who logged in.
    pub principal: String,
    /// Now, ms since the epoch.
    pub mfa_verified_ms: i64,
}

/// What went wrong with a principal operation.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalError {
    /// Invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// No such principal.
    #[error("{0}")]
    NotFound(String),
    /// Name or uid taken.
    #[error("{0}")]
    Conflict(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No or a wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A wrong or reused TOTP code.
    #[error("{0}")]
    MfaFailed(String),
    /// No TOTP secret enrolled.
    #[error("{0}")]
    MfaNotEnrolled(String),
    /// Too many wrong codes.
    #[error("{0}")]
    MfaLocked(String),
    /// The database or something else inside failed.
    #[error("{0}")]
    Internal(String),
}

impl PrincipalError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            PrincipalError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            PrincipalError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            PrincipalError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            PrincipalError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            PrincipalError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            PrincipalError::MfaFailed(_) => (StatusCode::UNAUTHORIZED, "mfa_failed"),
            PrincipalError::MfaNotEnrolled(_) => (StatusCode::BAD_REQUEST, "mfa_not_enrolled"),
            PrincipalError::MfaLocked(_) => (StatusCode::TOO_MANY_REQUESTS, "mfa_locked"),
            PrincipalError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "principals_error"),
        }
    }
}

impl IntoResponse for PrincipalError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "principal directory error");
        }
        (status, Json(ApiError::new(code, self.to_string()))).into_response()
    }
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> PrincipalError + '_ {
    move |e| PrincipalError::Internal(format!("principal database {}: {e}", path.display()))
}

/// One principal as stored.
#[derive(Clone, Debug)]
struct Record {
    name: String,
    uid: Option<u32>,
    roles: Vec<String>,
    vetted: Vec<String>,
    totp_secret: Option<String>,
    totp_last_step: Option<u64>,
    mfa_verified_ms: Option<i64>,
    created_ms: i64,
}

struct TokenEntry {
    hash: [u8; 32],
    principal: String,
}

struct Failures {
    count: u32,
    since: Instant,
}

struct Inner {
    conn: Connection,
    path: PathBuf,
    by_name: BTreeMap<String, Record>,
    tokens: Vec<TokenEntry>,
    daemon_token: Option<[u8; 32]>,
    owner: String,
    failures: HashMap<String, Failures>,
}

/// The principal directory. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Principals {
    inner: Arc<Mutex<Inner>>,
    owner_uid: u32,
    /// Where authentications are recorded (the daemon sets it once).
    audit: Arc<std::sync::OnceLock<(flotilla_store::Store, crate::compliance::AuthLog)>>,
}

impl std::fmt::Debug for Principals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principals")
            .field("owner_uid", &self.owner_uid)
            .finish_non_exhaustive()
    }
}

/// Whether `s` is a valid principal name: 1 to 64 of `[a-z0-9._-]`, starting
/// with a letter or digit.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Whether `s` is a valid tier: 1 to 64 of `[a-z0-9-]`, starting with a
/// letter or digit.
pub fn valid_tier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn totp_for(name: &str, secret: Vec<u8>) -> Result<totp_rs::Totp, PrincipalError> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(TOTP_STEP)
        .with_secret(secret)
        .with_account_name(name)
        .with_issuer(Some(TOTP_ISSUER))
        .build()
        .map_err(|e| PrincipalError::Internal(format!("TOTP for {name}: {e}")))
}

fn forbidden_role(caller: &Caller, role: &str, what: &str) -> PrincipalError {
    PrincipalError::Forbidden(format!(
        "{what} needs the {role} role; principal {} has roles [{}]; ask an admin",
        caller.name,
        caller.roles.join(", ")
    ))
}

fn require_role(caller: &Caller, role: &str, what: &str) -> Result<(), PrincipalError> {
    if caller.has_role(role) {
        Ok(())
    } else {
        Err(forbidden_role(caller, role, what))
    }
}

fn check_name(name: &str) -> Result<(), PrincipalError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(PrincipalError::BadRequest(format!(
            "principal name {name:?} is invalid: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

fn no_principal(name: &str) -> PrincipalError {
    PrincipalError::NotFound(format!(
        "no principal {name:?}; list them with `flotilla principal list`"
    ))
}

impl Inner {
    fn view(&self, r: &Record) -> PrincipalView {
        PrincipalView {
            name: r.name.clone(),
            uid: r.uid,
            roles: r.roles.clone(),
            vetted: r.vetted.clone(),
            mfa_enrolled: r.totp_secret.is_some(),
            mfa_verified_ms: r.mfa_verified_ms,
            created_ms: r.created_ms,
            tokens: self.tokens.iter().filter(|t| t.principal == r.name).count() as u32,
            owner: r.name == self.owner,
        }
    }

    fn record(&self, name: &str) -> Result<&Record, PrincipalError> {
        self.by_name.get(name).ok_or_else(|| no_principal(name))
    }

    fn insert(&mut self, r: Record) -> Result<(), PrincipalError> {
        self.conn
            .execute(
                "INSERT INTO principals (name, uid, roles, vetted, totp_secret, totp_last_step, mfa_verified_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL, NULL, ?5)",
                params![r.name, r.uid, r.roles.join(","), r.vetted.join(","), r.created_ms],
            )
            .map_err(db_err(&self.path))?;
        self.by_name.insert(r.name.clone(), r);
        Ok(())
    }

    fn load(&mut self) -> Result<(), PrincipalError> {
        let path = self.path.clone();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, uid, roles, vetted, totp_secret, totp_last_step, mfa_verified_ms, created_ms FROM principals",
            )
            .map_err(db_err(&path))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(Record {
                    name: row.get(0)?,
                    uid: row.get(1)?,
                    roles: split_list(&row.get::<_, String>(2)?),
                    vetted: split_list(&row.get::<_, String>(3)?),
                    totp_secret: row.get(4)?,
                    totp_last_step: row.get::<_, Option<i64>>(5)?.map(|s| s.max(0) as u64),
                    mfa_verified_ms: row.get(6)?,
                    created_ms: row.get(7)?,
                })
            })
            .map_err(db_err(&path))?;
        let mut by_name = BTreeMap::new();
        for r in rows {
            let r = r.map_err(db_err(&path))?;
            by_name.insert(r.name.clone(), r);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT hash, principal FROM tokens")
            .map_err(db_err(&path))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(db_err(&path))?;
        let mut tokens = Vec::new();
        for r in rows {
            let (hash, principal) = r.map_err(db_err(&path))?;
            let mut h = [0u8; 32];
            if hex::decode_to_slice(&hash, &mut h).is_ok() {
                tokens.push(TokenEntry { hash: h, principal });
            }
        }
        drop(stmt);
        self.by_name = by_name;
        self.tokens = tokens;
        Ok(())
    }
}

impl Principals {
    /// `<data dir>/principals.sqlite`.
    pub fn db_path(paths: &Paths) -> PathBuf {
        paths.data_dir.join("principals.sqlite")
    }

    /// Opens the daemon's directory and ensures its owner: the effective uid,
    /// named `$USER` when that is a valid name, else `uid<N>`.
    pub fn open_for_daemon(paths: &Paths) -> Result<Principals, PrincipalError> {
        let uid = nix::unistd::geteuid().as_raw();
        let user = std::env::var("USER").ok();
        Principals::open(&Principals::db_path(paths), uid, user.as_deref())
    }

    /// Records every authentication from now on in `store`'s audit log.
    pub fn set_audit(&self, store: flotilla_store::Store) {
        let _ = self
            .audit
            .set((store, crate::compliance::AuthLog::default()));
    }

    fn record_auth(
        &self,
        method: &'static str,
        peer: &str,
        principal: Option<&str>,
        failure: Option<&str>,
    ) {
        if let Some((store, log)) = self.audit.get() {
            log.record(store, method, peer, principal, failure);
        }
    }

    /// Opens (creating, mode 0600) the directory at `path` and ensures the
    /// owner principal for `owner_uid` exists with the admin role.
    pub fn open(
        path: &Path,
        owner_uid: u32,
        user: Option<&str>,
    ) -> Result<Principals, PrincipalError> {
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let io = |e: std::io::Error| {
                PrincipalError::Internal(format!("principal database {}: {e}", path.display()))
            };
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let conn = Connection::open(path).map_err(db_err(path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_err(path))?;
        conn.execute_batch(SCHEMA).map_err(db_err(path))?;
        let mut inner = Inner {
            conn,
            path: path.to_path_buf(),
            by_name: BTreeMap::new(),
            tokens: Vec::new(),
            daemon_token: None,
            owner: String::new(),
            failures: HashMap::new(),
        };
        inner.load()?;
        let existing = inner
            .by_name
            .values()
            .find(|r| r.uid == Some(owner_uid))
            .cloned();
        match existing {
            Some(mut r) => {
                if !r.roles.iter().any(|x| x == "admin") {
                    r.roles.insert(0, "admin".into());
                    inner
                        .conn
                        .execute(
                            "UPDATE principals SET roles = ?1 WHERE name = ?2",
                            params![r.roles.join(","), r.name],
                        )
                        .map_err(db_err(path))?;
                    inner.by_name.insert(r.name.clone(), r.clone());
                }
                inner.owner = r.name;
            }
            None => {
                let candidates = [
                    user.filter(|u| valid_name(u)).map(str::to_string),
                    Some(format!("uid{owner_uid}")),
                    Some(format!("uid{owner_uid}-owner")),
                ];
                let Some(name) = candidates
                    .into_iter()
                    .flatten()
                    .find(|n| !inner.by_name.contains_key(n))
                else {
                    return Err(PrincipalError::Conflict(format!(
                        "cannot name the owner (uid {owner_uid}): the names are taken in {}",
                        path.display()
                    )));
                };
                inner.insert(Record {
                    name: name.clone(),
                    uid: Some(owner_uid),
                    roles: vec!["admin".into()],
                    vetted: Vec::new(),
                    totp_secret: None,
                    totp_last_step: None,
                    mfa_verified_ms: None,
                    created_ms: now_ms(),
                })?;
                tracing::info!(owner = %name, uid = owner_uid, "created the owner principal");
                inner.owner = name;
            }
        }
        Ok(Principals {
            audit: Arc::new(std::sync::OnceLock::new()),
            inner: Arc::new(Mutex::new(inner)),
            owner_uid,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, PrincipalError> {
        self.inner.lock().map_err(|_| {
            PrincipalError::Internal(
                "the principal directory is unusable after a failure; restart the daemon".into(),
            )
        })
    }

    /// The owner's name.
    pub fn owner(&self) -> Option<String> {
        self.lock().ok().map(|i| i.owner.clone())
    }

    /// The uid the daemon runs as.
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// Makes the daemon's token (the `token` file) authenticate as the owner.
    pub fn set_daemon_token(&self, token: &str) {
        if let Ok(mut i) = self.lock() {
            i.daemon_token = Some(sha256(token.as_bytes()));
        }
    }

    /// What policy needs to know about `name`.
    pub fn facts(&self, name: &str) -> Option<PrincipalFacts> {
        let i = self.lock().ok()?;
        let r = i.by_name.get(name)?;
        Some(PrincipalFacts {
            name: r.name.clone(),
            roles: r.roles.clone(),
            vetted: r.vetted.clone(),
            mfa_verified_ms: r.mfa_verified_ms,
            mfa_enrolled: r.totp_secret.is_some(),
        })
    }

    /// One principal.
    pub fn view(&self, name: &str) -> Result<PrincipalView, PrincipalError> {
        let i = self.lock()?;
        let r = i.record(name)?;
        Ok(i.view(r))
    }

    /// Every principal, by name.
    pub fn list(&self) -> Result<Vec<PrincipalView>, PrincipalError> {
        let i = self.lock()?;
        Ok(i.by_name.values().map(|r| i.view(r)).collect())
    }

    /// The caller on the Unix socket with peer uid `uid`.
    pub fn caller_for_uid(&self, uid: u32) -> Result<Caller, PrincipalError> {
        let i = self.lock()?;
        let r = if uid == self.owner_uid {
            i.by_name.get(&i.owner)
        } else {
            i.by_name.values().find(|r| r.uid == Some(uid))
        };
        match r {
            Some(r) => Ok(Caller {
                name: r.name.clone(),
                roles: r.roles.clone(),
            }),
            None => Err(PrincipalError::Forbidden(format!(
                "uid {uid} is no flotilla principal; an admin runs `flotilla principal add NAME --uid {uid}`"
            ))),
        }
    }

    /// The caller holding bearer `token`, if any.
    pub fn caller_for_token(&self, token: &str) -> Result<Option<Caller>, PrincipalError> {
        let given = sha256(token.as_bytes());
        let i = self.lock()?;
        // Every hash is compared, in constant time, whatever matches.
        let mut found: Option<&str> = None;
        if let Some(d) = &i.daemon_token {
            if ct_eq(d, &given) {
                found = Some(&i.owner);
            }
        }
        for t in &i.tokens {
            if ct_eq(&t.hash, &given) {
                found = Some(&t.principal);
            }
        }
        Ok(found.and_then(|n| i.by_name.get(n)).map(|r| Caller {
            name: r.name.clone(),
            roles: r.roles.clone(),
        }))
    }

    /// Adds a principal (roles default to `user`).
    pub fn add(&self, req: CreatePrincipalRequest) -> Result<PrincipalView, PrincipalError> {
        check_name(&req.name)?;
        let mut roles: Vec<String> = Vec::new();
        for r in req.roles.unwrap_or_default() {
            if !ROLES.contains(&r.as_str()) {
                return Err(PrincipalError::BadRequest(format!(
                    "unknown role {r:?}; roles: admin, auditor, user"
                )));
            }
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
        if roles.is_empty() {
            roles.push("user".into());
        }
        let mut i = self.lock()?;
        if i.by_name.contains_key(&req.name) {
            return Err(PrincipalError::Conflict(format!(
                "principal {:?} exists already; see `flotilla principal list`",
                req.name
            )));
        }
        if let Some(uid) = req.uid {
            if let Some(other) = i.by_name.values().find(|r| r.uid == Some(uid)) {
                return Err(PrincipalError::Conflict(format!(
                    "uid {uid} is principal {:?} already; one principal per uid",
                    other.name
                )));
            }
        }
        let r = Record {
            name: req.name,
            uid: req.uid,
            roles,
            vetted: Vec::new(),
            totp_secret: None,
            totp_last_step: None,
            mfa_verified_ms: None,
            created_ms: now_ms(),
        };
        let view = i.view(&r);
        i.insert(r)?;
        Ok(view)
    }

    /// Vets `name` for `tier`, or takes the tier away.
    pub fn vet(
        &self,
        name: &str,
        tier: &str,
        revoke: bool,
    ) -> Result<PrincipalView, PrincipalError> {
        if !valid_tier(tier) {
            return Err(PrincipalError::BadRequest(format!(
                "tier {tier:?} is invalid: use 1 to 64 of a-z, 0-9, '-', e.g. high-autonomy, cyber, bio"
            )));
        }
        let mut i = self.lock()?;
        let mut r = i.record(name)?.clone();
        if revoke {
            r.vetted.retain(|t| t != tier);
        } else if !r.vetted.iter().any(|t| t == tier) {
            r.vetted.push(tier.to_string());
        }
        i.conn
            .execute(
                "UPDATE principals SET vetted = ?1 WHERE name = ?2",
                params![r.vetted.join(","), r.name],
            )
            .map_err(db_err(&i.path))?;
        let view = i.view(&r);
        i.by_name.insert(r.name.clone(), r);
        Ok(view)
    }

    /// Issues a new API token for `name`; only its hash is kept.
    pub fn issue_token(&self, name: &str) -> Result<TokenIssued, PrincipalError> {
        let mut i = self.lock()?;
        i.record(name)?;
        let bytes: [u8; 32] = rand::random();
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
        let hash = sha256(token.as_bytes());
        i.conn
            .execute(
                "INSERT INTO tokens (hash, principal, created_ms) VALUES (?1, ?2, ?3)",
                params![hex::encode(hash), name, now_ms()],
            )
            .map_err(db_err(&i.path))?;
        i.tokens.push(TokenEntry {
            hash,
            principal: name.to_string(),
        });
        Ok(TokenIssued {
            principal: name.to_string(),
            token,
        })
    }

    /// Whether `name` has a TOTP secret.
    pub fn mfa_enrolled(&self, name: &str) -> Result<bool, PrincipalError> {
        let i = self.lock()?;
        Ok(i.record(name)?.totp_secret.is_some())
    }

    /// Gives `name` a new TOTP secret (forgetting the old one and its last
    /// verification); returns it, once.
    pub fn enroll_totp(&self, name: &str) -> Result<MfaEnrollment, PrincipalError> {
        let mut i = self.lock()?;
        i.record(name)?;
        let bytes: [u8; 20] = rand::random();
        let totp = totp_for(name, bytes.to_vec())?;
        let secret = totp.secret().to_base32();
        let otpauth_url = totp
            .to_url()
            .map_err(|e| PrincipalError::Internal(format!("otpauth URL for {name}: {e}")))?;
        i.conn
            .execute(
                "UPDATE principals SET totp_secret = ?1, totp_last_step = NULL, mfa_verified_ms = NULL WHERE name = ?2",
                params![secret, name],
            )
            .map_err(db_err(&i.path))?;
        i.failures.remove(name);
        if let Some(r) = i.by_name.get_mut(name) {
            r.totp_secret = Some(secret.clone());
            r.totp_last_step = None;
            r.mfa_verified_ms = None;
        }
        Ok(MfaEnrollment {
            principal: name.to_string(),
            secret,
            otpauth_url,
        })
    }

    /// Checks `name`'s TOTP `code` at `now_ms` (one step of skew either
    /// way; a step once accepted is never accepted again) and records the
    /// verification.
    pub fn verify_totp(
        &self,
        name: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<TotpVerified, PrincipalError> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
            return Err(PrincipalError::BadRequest(
                "a TOTP code is the 6 digits your authenticator app shows for flotilla".into(),
            ));
        }
        let mut i = self.lock()?;
        let r = i.record(name)?.clone();
        let Some(secret) = &r.totp_secret else {
            return Err(PrincipalError::MfaNotEnrolled(format!(
                "principal {name} has no TOTP secret: run `flotilla principal mfa-enroll`, add the secret to an authenticator app, then `flotilla login --totp CODE`"
            )));
        };
        if let Some(f) = i.failures.get(name) {
            let elapsed = f.since.elapsed();
            if elapsed >= MFA_LOCKOUT {
                i.failures.remove(name);
            } else if f.count >= MFA_MAX_FAILURES {
                return Err(PrincipalError::MfaLocked(format!(
                    "{} wrong TOTP codes for principal {name}; wait {} s before trying again",
                    f.count,
                    (MFA_LOCKOUT - elapsed).as_secs().max(1)
                )));
            }
        }
        let bytes = totp_rs::Secret::try_from_base32(secret).map_err(|e| {
            PrincipalError::Internal(format!("stored TOTP secret of {name} is unreadable: {e}"))
        })?;
        let totp = totp_for(name, bytes.to_vec())?;
        let now_secs = (now_ms.max(0) / 1000) as u64;
        let Some(step) = totp.check(&code, now_secs) else {
            let f = i.failures.entry(name.to_string()).or_insert(Failures {
                count: 0,
                since: Instant::now(),
            });
            f.count += 1;
            return Err(PrincipalError::MfaFailed(format!(
                "the TOTP code is wrong for principal {name}: enter the current 6-digit code of the flotilla entry in your authenticator app (check the device's clock) with `flotilla login --totp CODE`; if the secret is lost, an admin re-enrolls you with `flotilla principal mfa-enroll {name}`"
            )));
        };
        if r.totp_last_step.is_some_and(|last| step <= last) {
            return Err(PrincipalError::MfaFailed(format!(
                "this TOTP code was used already (each code works once): wait for the next code (at most {TOTP_STEP} s) and run `flotilla login --totp CODE` again"
            )));
        }
        i.conn
            .execute(
                "UPDATE principals SET totp_last_step = ?1, mfa_verified_ms = ?2 WHERE name = ?3",
                params![step as i64, now_ms, name],
            )
            .map_err(db_err(&i.path))?;
        i.failures.remove(name);
        if let Some(r) = i.by_name.get_mut(name) {
            r.totp_last_step = Some(step);
            r.mfa_verified_ms = Some(now_ms);
        }
        Ok(TotpVerified {
            principal: name.to_string(),
            mfa_verified_ms: now_ms,
        })
    }
}

/// Authenticates every request but `GET /v1/health` and puts the [`Caller`]
/// in its extensions: Unix socket by peer uid, TCP (or unknown transport)
/// by bearer token.
pub async fn authenticate(State(p): State<Principals>, mut req: Request, next: Next) -> Response {
    if req.uri().path() == "/v1/health" {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let (method, from) = match &peer {
        Some(Peer::Unix { uid: Some(uid) }) => ("auth.peer", format!("unix uid {uid}")),
        Some(Peer::Unix { uid: None }) => ("auth.peer", "unix uid unknown".to_string()),
        Some(Peer::Tcp(addr)) => ("auth.token", format!("tcp {}", addr.ip())),
        None => ("auth.token", "unknown transport".to_string()),
    };
    let caller = match peer {
        Some(Peer::Unix { uid: Some(uid) }) => p.caller_for_uid(uid),
        Some(Peer::Unix { uid: None }) => Err(PrincipalError::Forbidden(
            "the daemon cannot read this connection's peer credentials (SO_PEERCRED), so it cannot tell who you are".into(),
        )),
        Some(Peer::Tcp(_)) | None => bearer_caller(&p, &req),
    };
    match caller {
        Ok(c) => {
            p.record_auth(method, &from, Some(&c.name), None);
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Err(e) => {
            p.record_auth(method, &from, None, Some(&e.to_string()));
            e.into_response()
        }
    }
}

fn bearer_caller(p: &Principals, req: &Request) -> Result<Caller, PrincipalError> {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = given else {
        return Err(PrincipalError::Unauthorized(
            "TCP clients need `Authorization: Bearer TOKEN`: the daemon's token (file `token` in its run folder) or a principal's token from `flotilla principal token NAME`".into(),
        ));
    };
    p.caller_for_token(token)?.ok_or_else(|| {
        PrincipalError::Unauthorized(
            "the bearer token is wrong: it is neither the daemon's token (file `token` in its run folder) nor a principal's token; an admin issues one with `flotilla principal token NAME`".into(),
        )
    })
}

/// Runs a directory operation off the async threads (it may fsync).
async fn blocking<T, F>(p: &Principals, f: F) -> Result<T, PrincipalError>
where
    T: Send + 'static,
    F: FnOnce(&Principals) -> Result<T, PrincipalError> + Send + 'static,
{
    let p = p.clone();
    tokio::task::spawn_blocking(move || f(&p))
        .await
        .map_err(|e| PrincipalError::Internal(format!("principal task failed: {e}")))?
}

/// The principal and authentication routes, with their descriptions (merged
/// into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(whoami))
        .routes(routes!(list_principals, add_principal))
        .routes(routes!(vet_principal))
        .routes(routes!(issue_token))
        .routes(routes!(enroll_mfa))
        .routes(routes!(login_totp))
}

/// The caller's own principal.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "auth",
    responses((status = 200, description = "The caller", body = PrincipalView))
)]
async fn whoami(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PrincipalView>, PrincipalError> {
    Ok(Json(st.principals.view(&caller.name)?))
}

/// Every principal, by name (admin).
#[utoipa::path(
    get,
    path = "/v1/principals",
    tag = "principals",
    responses(
        (status = 200, description = "The principals", body = PrincipalList),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError)
    )
)]
async fn list_principals(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<PrincipalList>, PrincipalError> {
    require_role(&caller, "admin", "listing principals")?;
    Ok(Json(PrincipalList {
        principals: st.principals.list()?,
    }))
}

/// Adds a principal (admin); roles default to `user`.
#[utoipa::path(
    post,
    path = "/v1/principals",
    tag = "principals",
    request_body = CreatePrincipalRequest,
    responses(
        (status = 201, description = "The new principal", body = PrincipalView),
        (status = 400, description = "`bad_request`: an invalid name or an unknown role", body = ApiError),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError),
        (status = 409, description = "`conflict`: the name or the uid is taken", body = ApiError)
    )
)]
async fn add_principal(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreatePrincipalRequest>,
) -> Result<(StatusCode, Json<PrincipalView>), PrincipalError> {
    let name = req.name.clone();
    let detail = serde_json::json!({ "roles": req.roles, "uid": req.uid });
    let result = match require_role(&caller, "admin", "adding a principal") {
        Ok(()) => blocking(&st.principals, move |p| p.add(req)).await,
        Err(e) => Err(e),
    };
    record_admin(
        st.fleet.store(),
        &caller,
        "principal.add",
        &name,
        Some(detail),
        &result,
    )
    .await;
    let view = result?;
    tracing::info!(by = %caller.name, principal = %name, roles = ?view.roles, uid = ?view.uid, "principal added");
    Ok((StatusCode::CREATED, Json(view)))
}

/// Vets a principal for a tier, or with `revoke` takes the tier away (admin).
#[utoipa::path(
    post,
    path = "/v1/principals/{name}/vet",
    tag = "principals",
    params(("name" = String, Path, description = "The principal's name")),
    request_body = VetRequest,
    responses(
        (status = 200, description = "The principal", body = PrincipalView),
        (status = 400, description = "`bad_request`: an invalid name or tier", body = ApiError),
        (status = 403, description = "`forbidden`: needs the admin role", body = ApiError),
        (status = 404, description = "`not_found`: no such principal", body = ApiError)
    )
)]
async fn vet_principal(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
    ApiJson(req): ApiJson<VetRequest>,
) -> Result<Json<PrincipalView>, PrincipalError> {
    let (n, tier, revoke) = (name.clone(), req.tier.clone(), req.revoke);
    let result = match require_role(&caller, "admin", "vetting a principal").and(check_name(&name))
    {
        Ok(()) => blocking(&st.principals, move |p| p.vet(&n, &tier, revoke)).await,
        Err(e) => Err(e),
    };
    let action = if req.revoke {
        "principal.unvet"
    } else {
        "principal.vet"
    };
    let detail = serde_json::json!({ "tier": req.tier });
    record_admin(
        st.fleet.store(),
        &caller,
        action,
        &name,
        Some(detail),
        &result,
    )
    .await;
    let view = result?;
    tracing::info!(by = %caller.name, principal = %name, tier = %req.tier, revoke, "principal vetting changed");
    Ok(Json(view))
}

/// Issues an API token (admin, or the principal itself); it is shown this
/// once.
#[utoipa::path(
    post,
    path = "/v1/principals/{name}/tokens",
    tag = "principals",
    params(("name" = String, Path, description = "The principal's name")),
    responses(
        (status = 201, description = "The token", body = TokenIssued),
        (status = 400, description = "`bad_request`: an invalid name", body = ApiError),
        (status = 403, description = "`forbidden`: another principal's token needs the admin role", body = ApiError),
        (status = 404, description = "`not_found`: no such principal", body = ApiError)
    )
)]
async fn issue_token(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> Result<(StatusCode, Json<TokenIssued>), PrincipalError> {
    let allowed = if caller.name != name {
        require_role(&caller, "admin", "issuing a token for another principal")
    } else {
        Ok(())
    };
    let n = name.clone();
    let result = match allowed.and(check_name(&name)) {
        Ok(()) => blocking(&st.principals, move |p| p.issue_token(&n)).await,
        Err(e) => Err(e),
    };
    record_admin(
        st.fleet.store(),
        &caller,
        "token.issue",
        &name,
        None,
        &result,
    )
    .await;
    let issued = result?;
    tracing::info!(by = %caller.name, principal = %name, "API token issued");
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Gives a principal a new TOTP secret, shown this once (admin, or the
/// principal itself when not enrolled yet).
#[utoipa::path(
    post,
    path = "/v1/principals/{name}/mfa",
    tag = "principals",
    params(("name" = String, Path, description = "The principal's name")),
    responses(
        (status = 201, description = "The secret and its otpauth URL", body = MfaEnrollment),
        (status = 400, description = "`bad_request`: an invalid name", body = ApiError),
        (status = 403, description = "`forbidden`: another principal, or replacing an enrolled secret, needs the admin role", body = ApiError),
        (status = 404, description = "`not_found`: no such principal", body = ApiError)
    )
)]
async fn enroll_mfa(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> Result<(StatusCode, Json<MfaEnrollment>), PrincipalError> {
    let checks = (|| {
        if caller.name != name {
            require_role(&caller, "admin", "enrolling another principal's TOTP")?;
        }
        check_name(&name)?;
        if !caller.has_role("admin") && st.principals.mfa_enrolled(&name)? {
            return Err(PrincipalError::Forbidden(format!(
                "principal {name} has a TOTP secret already; replacing it needs the admin role: an admin runs `flotilla principal mfa-enroll {name}`"
            )));
        }
        Ok(())
    })();
    let n = name.clone();
    let result = match checks {
        Ok(()) => blocking(&st.principals, move |p| p.enroll_totp(&n)).await,
        Err(e) => Err(e),
    };
    record_admin(
        st.fleet.store(),
        &caller,
        "mfa.enroll",
        &name,
        None,
        &result,
    )
    .await;
    let enrolled = result?;
    tracing::info!(by = %caller.name, principal = %name, "TOTP secret enrolled");
    Ok((StatusCode::CREATED, Json(enrolled)))
}

/// Checks the caller's current TOTP code and records the verification.
#[utoipa::path(
    post,
    path = "/v1/auth/totp",
    tag = "auth",
    request_body = TotpLoginRequest,
    responses(
        (status = 200, description = "The code is right", body = TotpVerified),
        (status = 400, description = "`bad_request` (not 6 digits) or `mfa_not_enrolled` (no TOTP secret)", body = ApiError),
        (status = 401, description = "`mfa_failed`: a wrong or already used code", body = ApiError),
        (status = 429, description = "`mfa_locked`: five wrong codes within five minutes", body = ApiError)
    )
)]
async fn login_totp(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TotpLoginRequest>,
) -> Result<Json<TotpVerified>, PrincipalError> {
    let name = caller.name.clone();
    let result = blocking(&st.principals, move |p| {
        p.verify_totp(&name, &req.code, now_ms())
    })
    .await;
    match &result {
        Ok(_) => tracing::info!(principal = %caller.name, "TOTP login"),
        Err(e) => tracing::warn!(principal = %caller.name, error = %e, "TOTP login refused"),
    }
    // Every TOTP attempt is an authentication of its own: recorded, and
    // committed before the answer.
    let mut draft = AuditDraft::new(
        AuditKind::Auth,
        "auth.totp",
        if result.is_ok() { "success" } else { "failure" },
    )
    .by(&caller.name);
    if let Err(e) = &result {
        draft = draft.because(e.to_string());
    }
    if let Err(e) = st.fleet.store().append_audit(vec![draft]).await {
        tracing::error!(error = %e, "TOTP login not recorded in the audit log");
    }
    Ok(Json(result?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::routing::get;
    use axum::Router;

    use super::*;

    fn open(dir: &Path) -> Principals {
        Principals::open(&dir.join("principals.sqlite"), 1000, Some("alice")).unwrap()
    }

    fn code_at(secret: &str, name: &str, secs: u64) -> String {
        let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
        totp_for(name, bytes.to_vec())
            .unwrap()
            .generate(secs)
            .to_string()
    }

    /// One HTTP/1.1 GET over a stream; returns (status, body).
    async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: f\r\nConnection: close\r\n{auth}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[tokio::test]
    async fn middleware_authenticates_socket_peers_by_uid_and_tcp_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // This process is not the owner here: its uid must be a principal.
        let p = Principals::open(
            &dir.path().join("p.sqlite"),
            me.wrapping_add(1),
            Some("own"),
        )
        .unwrap();
        let app = Router::new()
            .route(
                "/v1/whoami",
                get(|Extension(c): Extension<Caller>| async move { c.name }),
            )
            .route("/v1/health", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                p.clone(),
                authenticate,
            ));
        let sock = dir.path().join("s.sock");
        let unix = UnixListener::bind(&sock).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let a = app.clone();
        tokio::spawn(async move {
            axum::serve(unix, a.into_make_service_with_connect_info::<Peer>()).await
        });
        tokio::spawn(async move {
            axum::serve(tcp, app.into_make_service_with_connect_info::<Peer>()).await
        });
        let unix_get = |path: &'static str| {
            let sock = sock.clone();
            async move {
                http_get(
                    tokio::net::UnixStream::connect(&sock).await.unwrap(),
                    path,
                    None,
                )
                .await
            }
        };
        let (status, body) = unix_get("/v1/whoami").await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("\"forbidden\""), "{body}");
        assert!(
            body.contains(&format!("uid {me} is no flotilla principal")),
            "{body}"
        );
        assert!(
            body.contains(&format!("flotilla principal add NAME --uid {me}")),
            "{body}"
        );
        assert_eq!(unix_get("/v1/health").await.0, 200);
        p.add(CreatePrincipalRequest {
            name: "dave".into(),
            uid: Some(me),
            roles: None,
        })
        .unwrap();
        assert_eq!(unix_get("/v1/whoami").await, (200, "dave".to_string()));

        let tcp_get = |token: Option<String>| async move {
            http_get(
                tokio::net::TcpStream::connect(addr).await.unwrap(),
                "/v1/whoami",
                token.as_deref(),
            )
            .await
        };
        let (status, body) = tcp_get(None).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("Bearer"), "{body}");
        assert_eq!(tcp_get(Some("flt_wrong".into())).await.0, 401);
        let t = p.issue_token("dave").unwrap().token;
        assert_eq!(tcp_get(Some(t)).await, (200, "dave".to_string()));
        p.set_daemon_token("the-daemon-token-0123456789abcdef0123");
        assert_eq!(
            tcp_get(Some("the-daemon-token-0123456789abcdef0123".into())).await,
            (200, "own".to_string())
        );
    }

    #[test]
    fn owner_is_bootstrapped_once_as_admin_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        assert_eq!(p.owner().unwrap(), "alice");
        let c = p.caller_for_uid(1000).unwrap();
        assert_eq!(c.name, "alice");
        assert!(c.has_role("admin"));
        drop(p);
        // Reopened with another $USER: the uid still names the same owner.
        let p = Principals::open(&dir.path().join("principals.sqlite"), 1000, Some("bob")).unwrap();
        assert_eq!(p.owner().unwrap(), "alice");
        assert_eq!(p.list().unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("principals.sqlite"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn invalid_user_falls_back_to_uid_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = Principals::open(&dir.path().join("p.sqlite"), 42, Some("Not Valid")).unwrap();
        assert_eq!(p.owner().unwrap(), "uid42");
    }

    #[test]
    fn unknown_uid_is_forbidden_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let e = p.caller_for_uid(1001).unwrap_err();
        assert!(matches!(e, PrincipalError::Forbidden(_)));
        assert!(e
            .to_string()
            .contains("flotilla principal add NAME --uid 1001"));
        p.add(CreatePrincipalRequest {
            name: "bob".into(),
            uid: Some(1001),
            roles: None,
        })
        .unwrap();
        let c = p.caller_for_uid(1001).unwrap();
        assert_eq!(
            (c.name.as_str(), c.roles.clone()),
            ("bob", vec!["user".to_string()])
        );
    }

    #[test]
    fn add_validates_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let add = |name: &str, uid: Option<u32>, roles: Option<Vec<&str>>| {
            p.add(CreatePrincipalRequest {
                name: name.into(),
                uid,
                roles: roles.map(|r| r.into_iter().map(String::from).collect()),
            })
        };
        assert!(matches!(
            add("Bad Name", None, None),
            Err(PrincipalError::BadRequest(_))
        ));
        assert!(matches!(
            add("x", None, Some(vec!["root"])),
            Err(PrincipalError::BadRequest(_))
        ));
        add("ci.bot", None, Some(vec!["auditor", "user", "auditor"])).unwrap();
        assert!(matches!(
            add("ci.bot", None, None),
            Err(PrincipalError::Conflict(_))
        ));
        assert!(matches!(
            add("other", Some(1000), None),
            Err(PrincipalError::Conflict(_))
        ));
        let v = p.view("ci.bot").unwrap();
        assert_eq!(v.roles, vec!["auditor", "user"]);
    }

    #[test]
    fn tokens_authenticate_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        p.add(CreatePrincipalRequest {
            name: "bob".into(),
            ..Default::default()
        })
        .unwrap();
        let t = p.issue_token("bob").unwrap().token;
        assert!(t.starts_with("flt_") && t.len() == 4 + 64);
        assert_eq!(p.caller_for_token(&t).unwrap().unwrap().name, "bob");
        assert!(p.caller_for_token("flt_nope").unwrap().is_none());
        p.set_daemon_token("daemon-token-0123456789abcdef0123456789");
        assert_eq!(
            p.caller_for_token("daemon-token-0123456789abcdef0123456789")
                .unwrap()
                .unwrap()
                .name,
            "alice"
        );
        drop(p);
        let p = open(dir.path());
        assert_eq!(p.caller_for_token(&t).unwrap().unwrap().name, "bob");
        assert_eq!(p.view("bob").unwrap().tokens, 1);
        // Only the hash is stored.
        let raw = std::fs::read(dir.path().join("principals.sqlite")).unwrap();
        assert!(!raw.windows(t.len()).any(|w| w == t.as_bytes()));
    }

    #[test]
    fn vet_adds_once_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        p.vet("alice", "cyber", false).unwrap();
        p.vet("alice", "cyber", false).unwrap();
        p.vet("alice", "high-autonomy", false).unwrap();
        assert!(matches!(
            p.vet("alice", "Bad_Tier", false),
            Err(PrincipalError::BadRequest(_))
        ));
        assert!(matches!(
            p.vet("nobody", "cyber", false),
            Err(PrincipalError::NotFound(_))
        ));
        assert_eq!(
            p.facts("alice").unwrap().vetted,
            vec!["cyber", "high-autonomy"]
        );
        p.vet("alice", "cyber", true).unwrap();
        drop(p);
        let p = open(dir.path());
        assert_eq!(p.facts("alice").unwrap().vetted, vec!["high-autonomy"]);
    }

    #[test]
    fn totp_accepts_skew_refuses_reuse_and_wrong_codes_and_locks_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path());
        let now: i64 = 1_800_000_000_000;
        let e = p.verify_totp("alice", "123456", now).unwrap_err();
        assert!(matches!(e, PrincipalError::MfaNotEnrolled(_)));
        assert!(e.to_string().contains("flotilla principal mfa-enroll"));
        let en = p.enroll_totp("alice").unwrap();
        assert!(en.otpauth_url.starts_with("otpauth://totp/"));
        assert!(en.otpauth_url.contains("issuer=flotilla"));
        let facts = p.facts("alice").unwrap();
        assert!(facts.mfa_enrolled && facts.mfa_verified_ms.is_none());
        // The previous step's code is accepted (skew), once.
        let secs = (now / 1000) as u64;
        let prev = code_at(&en.secret, "alice", secs - 30);
        assert_eq!(
            p.verify_totp("alice", &prev, now).unwrap().mfa_verified_ms,
            now
        );
        let e = p.verify_totp("alice", &prev, now + 1).unwrap_err();
        assert!(matches!(e, PrincipalError::MfaFailed(_)));
        assert!(e.to_string().contains("used already"));
        // The current code is newer: accepted.
        let cur = code_at(&en.secret, "alice", secs);
        p.verify_totp("alice", &cur, now + 2).unwrap();
        assert_eq!(p.facts("alice").unwrap().mfa_verified_ms, Some(now + 2));
        // Two steps away is too far.
        let far = code_at(&en.secret, "alice", secs + 90);
        assert!(matches!(
            p.verify_totp("alice", &far, now + 3),
            Err(PrincipalError::MfaFailed(_))
        ));
        assert!(matches!(
            p.verify_totp("alice", "12x456", now),
            Err(PrincipalError::BadRequest(_))
        ));
        // Wrong codes lock the principal out for a while.
        let wrong = (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| {
                (-2i64..=2)
                    .all(|k| *c != code_at(&en.secret, "alice", (secs as i64 + 30 * k) as u64))
            })
            .unwrap();
        for _ in 0..4 {
            assert!(matches!(
                p.verify_totp("alice", &wrong, now + 4),
                Err(PrincipalError::MfaFailed(_))
            ));
        }
        let next = code_at(&en.secret, "alice", secs + 30);
        assert!(matches!(
            p.verify_totp("alice", &next, now + 30_000),
            Err(PrincipalError::MfaLocked(_))
        ));
        assert_eq!(p.facts("alice").unwrap().mfa_verified_ms, Some(now + 2));
        // Re-enrolling forgets the old secret and the verification.
        let en2 = p.enroll_totp("alice").unwrap();
        assert_ne!(en2.secret, en.secret);
        assert_eq!(p.facts("alice").unwrap().mfa_verified_ms, None);
        // The secret is in no view.
        let json = serde_json::to_string(&p.list().unwrap()).unwrap();
        assert!(!json.contains(&en2.secret));
    }
}
