//! JSON bodies of the daemon's HTTP API (see `docs/api.md`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Event, SessionId, SessionLimits, SessionState};

/// `POST /v1/sessions`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// What the agent should do.
    pub task: String,
    /// Absolute path of an existing directory.
    pub workspace: String,
    /// Model spec; the daemon's configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model server endpoint; the provider's usual variable when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Budget overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Budget overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_secs: Option<u64>,
    /// The model's context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// The command-line policy layer: mode and rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<crate::SessionPermissions>,
    /// Run as this role of the daemon's config (`[roles.NAME]`): its model
    /// (unless `model` is given), endpoint and fallbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Secrets the session may use, in the CLI form
    /// `NAME[:ttl=2h][:host=H][:method=GET,POST][:path=/prefix]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// Makes the session a planner: it gets the fleet tools
    /// (`spawn_agent`, `wait_agents`...) and its workers these settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::FleetSpec>,
}

/// A secret as listed (`GET /v1/secrets`): never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// The name.
    pub name: String,
    /// Hosts it may be sent to.
    pub hosts: Vec<String>,
    /// Headers the proxy adds for those hosts, as `Name: value {secret}`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The variable holding the placeholder in a sandbox.
    pub env: String,
    /// Placeholders are also replaced in query strings.
    #[serde(default)]
    pub inject_query: bool,
    /// Placeholders are also replaced in request bodies.
    #[serde(default)]
    pub inject_body: bool,
    /// Plain `http://` is allowed.
    #[serde(default)]
    pub allow_http: bool,
    /// When it was added, ms since the epoch.
    pub created_ms: u64,
    /// Its last use through a proxy, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
    /// Uses so far.
    #[serde(default)]
    pub uses: u64,
    /// Live sessions holding a grant of it.
    #[serde(default)]
    pub grants: Vec<SecretGrantHolder>,
}

/// A live session holding a grant of a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretGrantHolder {
    /// The session.
    pub session: SessionId,
    /// When the grant stops working, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `GET /v1/secrets`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    /// Secrets by name.
    pub secrets: Vec<SecretInfo>,
}

/// `POST /v1/secrets`: add (or with `replace`, overwrite) a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddSecretRequest {
    /// `[a-z][a-z0-9_-]{0,63}`.
    pub name: String,
    /// Hosts: `example.com` or `*.example.com`.
    pub hosts: Vec<String>,
    /// Header templates, `Name: value with {secret}`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The sandbox variable; `NAME_TOKEN` upper-cased when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Replace placeholders in query strings too.
    #[serde(default)]
    pub inject_query: bool,
    /// Replace placeholders in request bodies too.
    #[serde(default)]
    pub inject_body: bool,
    /// Allow plain `http://`.
    #[serde(default)]
    pub allow_http: bool,
    /// Overwrite a secret of that name.
    #[serde(default)]
    pub replace: bool,
    /// The value. Sent once, over the daemon's socket; never returned.
    pub value: String,
}

impl std::fmt::Debug for AddSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddSecretRequest")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("headers", &self.headers)
            .field("env", &self.env)
            .field("replace", &self.replace)
            .field("value", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A model and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelRoute {
    /// `provider:model`.
    pub model: String,
    /// Its endpoint, when not the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// A call waiting for a person (`GET /v1/approvals`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalInfo {
    /// Id of the approval.
    pub approval_id: String,
    /// The session.
    pub session: SessionId,
    /// Who started the session.
    pub principal: String,
    /// Id of the call.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The call in one line.
    pub summary: String,
    /// Why it asks.
    pub reason: String,
    /// The allow rule `--always` adds unless another is given.
    pub suggested_rule: String,
    /// When it was asked, ms since the epoch.
    pub requested_ms: i64,
    /// In a fleet: the worker asking (its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// In a fleet: its planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<SessionId>,
    /// When nobody has answered by then (ms since the epoch), the fleet's
    /// escalation denies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalates_ms: Option<i64>,
}

/// `GET /v1/approvals`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalList {
    /// Pending approvals, oldest first.
    pub approvals: Vec<ApprovalInfo>,
}

/// `POST /v1/approvals/{id}/approve`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Also allow such calls from now on, in this layer: session, project or user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    /// The rule to add with `always` (default: the approval's suggested rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// `POST /v1/approvals/{id}/deny`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// Why; the model is told.
    pub reason: String,
}

/// One session as listed by `GET /v1/sessions` and `GET /v1/sessions/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// Id.
    pub id: SessionId,
    /// Current state.
    pub state: SessionState,
    /// Model spec.
    pub model: String,
    /// Workspace path.
    pub workspace: String,
    /// The task.
    pub task: String,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Time of the last event, ms since the epoch.
    pub updated_ms: i64,
    /// Model turns so far.
    pub turns: u32,
    /// Prompt tokens so far.
    pub prompt_tokens: u64,
    /// Completion tokens so far.
    pub completion_tokens: u64,
    /// Cost so far, US dollars (answers of models with a configured price).
    #[serde(default)]
    pub cost_usd: f64,
    /// Sequence number of the last event.
    pub last_seq: u64,
    /// Budgets.
    pub limits: SessionLimits,
    /// The final answer once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_answer: Option<String>,
    /// Why the session failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The role it runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// In a fleet: the agent that spawned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SessionId>,
    /// In a fleet: the planner at the top of its tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<SessionId>,
    /// In a fleet: the name its parent knows it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `[[machines]]` entry its local model was placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// `GET /v1/sessions`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// Sessions, newest first.
    pub sessions: Vec<SessionInfo>,
}

/// `GET /v1/sessions/{id}/events?after=N&limit=M`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Events with `seq > after`, in order.
    pub events: Vec<Event>,
    /// The cursor for the next page: pass it as `after`.
    pub next_after: u64,
    /// True when the session is in a terminal state and this page reached its last event.
    pub end: bool,
}

/// `GET /v1/daemon`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DaemonStatus {
    /// Process id.
    pub pid: u32,
    /// flotilla version.
    pub version: String,
    /// Start time, ms since the epoch.
    pub started_ms: i64,
    /// The home folder (config, data, socket).
    pub home: String,
    /// Unix socket path.
    pub socket: String,
    /// TCP address, when `--listen` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Database file.
    pub database: String,
    /// Sessions known.
    pub sessions_total: u64,
    /// Sessions whose agent loop is live in this daemon.
    pub sessions_active: u64,
    /// Resident memory in bytes, where the platform tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// `GET /v1/health`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always true.
    pub ok: bool,
}

/// Answer of `POST /v1/daemon/stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StopAccepted {
    /// Always true.
    pub stopping: bool,
}

/// Answer of `DELETE /v1/secrets/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretRemoved {
    /// The secret's name.
    pub removed: String,
}

/// Body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// The error.
    pub error: ApiErrorBody,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// Machine-readable code, e.g. `not_found`, `bad_request`.
    pub code: String,
    /// What failed, on what input, and what to do.
    pub message: String,
}

impl ApiError {
    /// Builds an error body.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            error: ApiErrorBody {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// What policy needs to know about a principal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalFacts {
    /// Name.
    pub name: String,
    /// admin, auditor, user.
    pub roles: Vec<String>,
    /// Tiers the principal is vetted for.
    pub vetted: Vec<String>,
    /// Last successful TOTP login, ms since the epoch.
    pub mfa_verified_ms: Option<i64>,
    /// Whether a TOTP secret is enrolled.
    pub mfa_enrolled: bool,
}
