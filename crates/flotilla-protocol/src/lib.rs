//! The vocabulary of flotilla: ids, events, session states, tool calls and
//! the JSON types of the daemon's API.
//!
//! This crate does no I/O and imports nothing of ours. Every other crate
//! speaks through these types, so a change here is a change of the wire and
//! disk format: events are hashed over their canonical encoding
//! ([`canonical_event_bytes`]), and an event written by one version must stay
//! readable by the next.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

pub mod api;
pub mod audit;
pub mod workflow;

pub use api::*;
pub use workflow::{Over, Parallel, Workflow, WorkflowBudget, WorkflowStep};

/// The hash that the first event of every chain points back to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Version tag inside every canonical event encoding.
pub const EVENT_ENCODING_VERSION: u32 = 1;

/// Identifier of one agent session, e.g. `s7k2m9x4q1ab`.
///
/// Ids are short so people can type them: a letter `s` followed by 11
/// characters of `[a-z0-9]` (about 57 bits of randomness).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct SessionId(String);

/// Why a string is not a valid id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid session id {input:?}: expected 1 to 64 characters of a-z, 0-9, '-' or '_'")]
pub struct InvalidId {
    /// The rejected input.
    pub input: String,
}

impl SessionId {
    /// A new random id.
    pub fn generate() -> Self {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut id = String::with_capacity(12);
        id.push('s');
        for _ in 0..11 {
            id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
        }
        SessionId(id)
    }

    /// Parses an id typed by a person or sent over the API.
    pub fn parse(input: &str) -> Result<Self, InvalidId> {
        let ok = !input.is_empty()
            && input.len() <= 64
            && input
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(SessionId(input.to_owned()))
        } else {
            Err(InvalidId {
                input: input.chars().take(80).collect(),
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The life cycle of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// The agent loop is working (or will resume working after a restart).
    Running,
    /// Waiting for a human or a parent agent to answer an approval request.
    WaitingApproval,
    /// The agent finished with a final answer.
    Completed,
    /// The session stopped on an error it could not recover from, or a budget.
    Failed,
    /// Somebody cancelled it.
    Cancelled,
}

impl SessionState {
    /// Whether no further events will follow (besides none at all).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionState::Completed | SessionState::Failed | SessionState::Cancelled
        )
    }

    /// The state's name as used in the API and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Running => "running",
            SessionState::WaitingApproval => "waiting_approval",
            SessionState::Completed => "completed",
            SessionState::Failed => "failed",
            SessionState::Cancelled => "cancelled",
        }
    }

    /// Parses [`SessionState::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => SessionState::Running,
            "waiting_approval" => SessionState::WaitingApproval,
            "completed" => SessionState::Completed,
            "failed" => SessionState::Failed,
            "cancelled" => SessionState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Budgets of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionLimits {
    /// Model turns before the session fails with "max turns reached".
    pub max_turns: u32,
    /// Active wall time (time the machine was awake) before the session fails.
    pub wall_time_secs: u64,
    /// The model's context window in tokens; compaction starts near it.
    pub context_window: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_turns: 100,
            wall_time_secs: 4 * 3600,
            context_window: 32_768,
        }
    }
}

/// One tool call as the model proposed it.
///
/// `arguments` is kept verbatim, even when it is not valid JSON, so that the
/// log shows exactly what the model sent and the model can be told what was
/// wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    /// The model's id for the call, echoed back with the result.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The raw JSON text of the arguments.
    pub arguments: String,
}

/// Token counts reported by a model server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// What policy said about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyVerdict {
    /// The call runs.
    Allow,
    /// A person must approve it first.
    Ask,
    /// It does not run; the model is told why.
    Deny,
}

impl PolicyVerdict {
    /// `allow`, `ask` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVerdict::Allow => "allow",
            PolicyVerdict::Ask => "ask",
            PolicyVerdict::Deny => "deny",
        }
    }
}

/// A planner's fleet: what its workers get unless `spawn_agent` narrows
/// it, and the limits of the whole tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Model spec of the workers (`--workers`); the planner's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_model: Option<String>,
    /// Endpoint of the workers' model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_base_url: Option<String>,
    /// Workers running at once in the whole tree (`--max-workers`).
    #[serde(default = "FleetSpec::default_max_workers")]
    pub max_workers: u32,
    /// Levels of agents below the planner.
    #[serde(default = "FleetSpec::default_max_depth")]
    pub max_depth: u32,
    /// Workers spawned in the whole tree over the run.
    #[serde(default = "FleetSpec::default_max_total")]
    pub max_total: u32,
    /// Seconds a worker's approval waits for a person before the fleet's
    /// escalation denies it (so nothing hangs silently).
    #[serde(default = "FleetSpec::default_approval_timeout")]
    pub approval_timeout_secs: u64,
    /// Tokens (prompt and completion) the whole tree may use; past it, the
    /// planner and every worker are cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// US dollars the whole tree may spend (answers of priced models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Set by the daemon when the fleet starts: `DEV:INODE` of the
    /// workspace's `.git/config` (the file agents cannot write), so that the
    /// daemon's git later refuses a repository an agent made or swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_config: Option<String>,
    /// A declarative fleet (`run --workflow FILE.toml`): the root runs these
    /// steps itself instead of asking a model what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
}

impl FleetSpec {
    fn default_max_workers() -> u32 {
        16
    }
    fn default_max_depth() -> u32 {
        2
    }
    fn default_max_total() -> u32 {
        1000
    }
    fn default_approval_timeout() -> u64 {
        600
    }
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            worker_model: None,
            worker_base_url: None,
            max_workers: Self::default_max_workers(),
            max_depth: Self::default_max_depth(),
            max_total: Self::default_max_total(),
            approval_timeout_secs: Self::default_approval_timeout(),
            max_tokens: None,
            max_cost_usd: None,
            repo_config: None,
            workflow: None,
        }
    }
}

/// Where an agent sits in a fleet. A planner (the root) carries the spec;
/// a worker carries its parent, its root and its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetLink {
    /// Set on the root: the fleet's settings and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<FleetSpec>,
    /// Set on a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
}

/// A worker's place in its fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParentLink {
    /// The agent that spawned it.
    pub parent: SessionId,
    /// The planner at the top of the tree.
    pub root: SessionId,
    /// Levels below the planner (its workers are 1).
    pub depth: u32,
    /// The name its parent knows it by, unique in the tree (`w3`).
    pub name: String,
    /// Its git branch (`flotilla/<root>/<name>`), when it has a worktree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit its worktree started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// The command-line policy layer of a session: what `flotilla run --mode
/// --allow --ask --deny` gave. Rules are in the Claude Code dialect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionPermissions {
    /// plan, ask, accept-edits, auto or bypass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Allow rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Ask rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ask: Vec<String>,
    /// Deny rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl SessionPermissions {
    /// Nothing given.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.allow.is_empty() && self.ask.is_empty() && self.deny.is_empty()
    }
}

/// One secret a session may use (`flotilla run --grant`), with the
/// placeholder its sandbox sees instead of the value. The value itself is
/// never in an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretGrant {
    /// The secret's name.
    pub secret: String,
    /// Hosts it may be sent to: `example.com` or `*.example.com`.
    pub hosts: Vec<String>,
    /// Methods allowed (upper case); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes allowed; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// When it stops working, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// What the sandbox sees instead of the value (`flotilla-ph-...`).
    pub placeholder: String,
    /// The environment variable holding the placeholder.
    pub env: String,
}

/// One use (or blocked use) of a secret at the egress proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretUse {
    /// When, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The secret's name.
    pub secret: String,
    /// The request's host.
    pub host: String,
    /// The request's method.
    pub method: String,
    /// The request's path (never the query string: it may hold values).
    pub path: String,
    /// Whether the secret was sent.
    pub allowed: bool,
    /// Why (for a block: what refused it).
    pub reason: String,
}

/// Everything that can happen to a session. Each variant is one event kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The first event of every session.
    SessionCreated {
        /// The task as the user gave it.
        task: String,
        /// Model spec, e.g. `openai:gpt-4o-mini`.
        model: String,
        /// Absolute path of the workspace.
        workspace: String,
        /// Endpoint of the model server, when not the provider's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_url: Option<String>,
        /// Budgets.
        limits: SessionLimits,
        /// The principal who started the session (authenticated by the daemon).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        /// The command-line policy layer of the session (`--mode`, `--allow`...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        permissions: Option<SessionPermissions>,
        /// The role the session runs as (`[roles.NAME]` of the config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        /// Models tried in order when the session's model fails.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fallbacks: Vec<crate::api::ModelRoute>,
        /// The machine (`[[machines]]`) the session's local model was
        /// placed on; its endpoint is `base_url`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine: Option<String>,
        /// Its place in a fleet: a planner's spec, or a worker's parent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fleet: Option<Box<FleetLink>>,
    },
    /// The session moved to a new state.
    StateChanged {
        /// The new state.
        state: SessionState,
        /// Why, in words, when there is something to say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The daemon picked the session up again after a restart.
    SessionResumed {
        /// How many started tools were found unfinished and marked interrupted.
        interrupted_tools: u32,
    },
    /// A request is about to be sent to the model.
    ModelRequested {
        /// Turn number, from 1.
        turn: u32,
        /// Messages in the request.
        messages: u32,
        /// Rough size of the prompt in tokens (4 bytes a token).
        estimated_tokens: u64,
    },
    /// A model request failed; it will be retried or the session fails.
    ModelFailed {
        /// Turn number.
        turn: u32,
        /// Attempt number, from 1.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Delay before the next attempt, if there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    /// The model answered.
    ModelResponded {
        /// Turn number.
        turn: u32,
        /// Text of the answer (may be empty when there are tool calls).
        text: String,
        /// Tool calls proposed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        /// Tokens used.
        usage: Usage,
        /// `stop`, `tool_calls`, `length`...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        finish_reason: Option<String>,
        /// The model that answered, when a fallback did rather than the
        /// session's model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// What the answer cost, US dollars, when the model's price is
        /// configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        /// Milliseconds from request to the end of the reply.
        latency_ms: u64,
    },
    /// A tool call is about to be checked and run.
    ToolProposed {
        /// The call.
        call: ToolCall,
    },
    /// The tool is running. Durable before the tool starts.
    ToolStarted {
        /// Id of the call.
        call_id: String,
    },
    /// The tool returned (or failed to run).
    ToolFinished {
        /// Id of the call.
        call_id: String,
        /// Output as shown to the model (capped).
        output: String,
        /// Whether the result is an error.
        is_error: bool,
        /// Milliseconds the tool ran.
        duration_ms: u64,
    },
    /// The tool started but the daemon stopped before it finished.
    ToolInterrupted {
        /// Id of the call.
        call_id: String,
        /// Why.
        reason: String,
    },
    /// Older turns were replaced by a summary to fit the context window.
    ContextCompacted {
        /// The summary that replaces the events up to `through_seq`.
        summary: String,
        /// Last sequence number the summary covers.
        through_seq: u64,
        /// Estimated prompt tokens before compaction.
        tokens_before: u64,
    },
    /// The session's command sandbox is ready (at start and at every resume):
    /// which layers confine its commands, and how it is weaker than asked.
    SandboxReady {
        /// Commands run in their own namespaces (false: degraded or unconfined).
        confined: bool,
        /// One line: network and layers.
        summary: String,
        /// Every way the sandbox is weaker than configured, with the cause.
        degraded: Vec<String>,
    },
    /// Policy decided a proposed call (every call but `finish`).
    PolicyDecided {
        /// Id of the call.
        call_id: String,
        /// allow, ask or deny.
        decision: PolicyVerdict,
        /// Why, in words a person can act on.
        reason: String,
        /// The rule that decided, as written (`Shell(git push *)`), if a rule did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// The layer of that rule or setting: admin, cli, project, user, session, mode, gate, tier.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<String>,
    },
    /// A call waits for a person's answer; the session is `waiting_approval`.
    ApprovalRequested {
        /// Id of the approval (what `flotilla approve` takes).
        approval_id: String,
        /// Id of the call.
        call_id: String,
        /// Tool of the call.
        tool: String,
        /// The call in one line (`Shell: git push origin main`).
        summary: String,
        /// Why it asks.
        reason: String,
        /// The allow rule `--always` would add.
        suggested_rule: String,
    },
    /// A person approved the call.
    ApprovalGiven {
        /// Id of the approval.
        approval_id: String,
        /// The principal who answered.
        by: String,
        /// The allow rule added for later calls, with `--always`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        always_rule: Option<String>,
        /// Where that rule was written: session, project or user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        always_layer: Option<String>,
    },
    /// A person refused the call; the model is told the reason.
    ApprovalRefused {
        /// Id of the approval.
        approval_id: String,
        /// The principal who answered (or `escalation` after a timeout).
        by: String,
        /// The reason, passed to the model.
        reason: String,
    },
    /// A cancel was asked for.
    CancelRequested {
        /// Who asked.
        by: String,
    },
    /// A message for the agent from outside its loop (its planner's
    /// `send_message`): the model sees it as a user message at its next
    /// turn.
    MessageReceived {
        /// Who sent it (`planner NAME (SESSION)`).
        from: String,
        /// The message.
        text: String,
    },
    /// The agent's final answer.
    FinalAnswer {
        /// The answer.
        text: String,
    },
    /// The secrets the session may use, checked against the vault when the
    /// session was created (right after `SessionCreated`).
    SecretsGranted {
        /// The grants, with their placeholders.
        grants: Vec<SecretGrant>,
    },
    /// A secret was used, or a use was blocked, at the session's egress proxy.
    SecretUsed {
        /// What happened.
        #[serde(rename = "use")]
        record: SecretUse,
    },
}

impl EventKind {
    /// The `type` tag of the event, e.g. `tool_started`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::SessionCreated { .. } => "session_created",
            EventKind::StateChanged { .. } => "state_changed",
            EventKind::SessionResumed { .. } => "session_resumed",
            EventKind::ModelRequested { .. } => "model_requested",
            EventKind::ModelFailed { .. } => "model_failed",
            EventKind::ModelResponded { .. } => "model_responded",
            EventKind::ToolProposed { .. } => "tool_proposed",
            EventKind::ToolStarted { .. } => "tool_started",
            EventKind::ToolFinished { .. } => "tool_finished",
            EventKind::ToolInterrupted { .. } => "tool_interrupted",
            EventKind::ContextCompacted { .. } => "context_compacted",
            EventKind::SandboxReady { .. } => "sandbox_ready",
            EventKind::PolicyDecided { .. } => "policy_decided",
            EventKind::ApprovalRequested { .. } => "approval_requested",
            EventKind::ApprovalGiven { .. } => "approval_given",
            EventKind::ApprovalRefused { .. } => "approval_refused",
            EventKind::CancelRequested { .. } => "cancel_requested",
            EventKind::MessageReceived { .. } => "message_received",
            EventKind::FinalAnswer { .. } => "final_answer",
            EventKind::SecretsGranted { .. } => "secrets_granted",
            EventKind::SecretUsed { .. } => "secret_used",
        }
    }
}

/// One event of a session's log, as stored and as served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// The session.
    pub session: SessionId,
    /// Sequence number in the session, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when it was appended.
    pub ts_ms: i64,
    /// Hash of the previous event ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) of this event's canonical encoding.
    pub hash: String,
    /// What happened.
    pub event: EventKind,
}

#[derive(Serialize)]
struct CanonicalEvent<'a> {
    v: u32,
    session: &'a str,
    seq: u64,
    ts_ms: i64,
    prev: &'a str,
    event: &'a EventKind,
}

/// The canonical encoding of an event: the bytes that are hashed and stored.
///
/// It is compact JSON with a fixed field order. Every field of every event
/// is a typed value (no free-form maps), so the encoding is deterministic.
pub fn canonical_event_bytes(
    session: &SessionId,
    seq: u64,
    ts_ms: i64,
    prev_hash: &str,
    event: &EventKind,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&CanonicalEvent {
        v: EVENT_ENCODING_VERSION,
        session: session.as_str(),
        seq,
        ts_ms,
        prev: prev_hash,
        event,
    })
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    digest_hex(&Sha256::digest(bytes).into())
}

/// Lowercase hex of a SHA-256 digest. `hex::encode` goes through a
/// per-character iterator; this table write is several times faster, which
/// matters to `audit verify` (a million hashes a second).
pub fn digest_hex(digest: &[u8; 32]) -> String {
    let buf = digest_hex_bytes(digest);
    // Hex digits are ASCII: the conversion cannot fail.
    String::from_utf8(buf.to_vec()).unwrap_or_default()
}

/// Lowercase hex of a SHA-256 digest, on the stack.
pub fn digest_hex_bytes(digest: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        buf[2 * i] = DIGITS[(b >> 4) as usize];
        buf[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    buf
}

/// Whether `bytes` hash (SHA-256) to the lowercase hex `expected`, without
/// allocating.
pub fn sha256_matches(bytes: &[u8], expected: &str) -> bool {
    digest_hex_bytes(&Sha256::digest(bytes).into()) == expected.as_bytes()
}

#[derive(Deserialize)]
struct CanonicalEventOwned {
    v: u32,
    session: SessionId,
    seq: u64,
    ts_ms: i64,
    prev: String,
    event: EventKind,
}

#[derive(Deserialize)]
struct CanonicalHeader<'a> {
    v: u32,
    #[serde(borrow)]
    session: std::borrow::Cow<'a, str>,
    seq: u64,
    ts_ms: i64,
    #[serde(borrow)]
    prev: std::borrow::Cow<'a, str>,
    event: EventKind,
}

/// The position fields of a stored event, and the event, decoded without
/// hashing the bytes or copying what can be borrowed: what chain
/// verification needs.
#[derive(Debug, PartialEq)]
pub struct EventHeader<'a> {
    /// The session.
    pub session: std::borrow::Cow<'a, str>,
    /// Sequence number.
    pub seq: u64,
    /// Append time.
    pub ts_ms: i64,
    /// The previous event's hash.
    pub prev_hash: std::borrow::Cow<'a, str>,
    /// What happened.
    pub event: EventKind,
}

/// Decodes canonical bytes as [`decode_canonical_event`] does (the version
/// and the event must be ones this build knows), but leaves the hashing to
/// the caller, who already has one to compare.
pub fn decode_event_header(bytes: &[u8]) -> Result<EventHeader<'_>, DecodeError> {
    let raw: CanonicalHeader<'_> = serde_json::from_slice(bytes)?;
    if raw.v != EVENT_ENCODING_VERSION {
        return Err(DecodeError::Version(raw.v));
    }
    Ok(EventHeader {
        session: raw.session,
        seq: raw.seq,
        ts_ms: raw.ts_ms,
        prev_hash: raw.prev,
        event: raw.event,
    })
}

/// Why stored bytes are not a valid canonical event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the expected shape.
    #[error("not a flotilla event: {0}")]
    Json(#[from] serde_json::Error),
    /// A version this build does not know.
    #[error(
        "event encoding version {0} is newer than this flotilla understands (1); upgrade flotilla"
    )]
    Version(u32),
}

/// Decodes canonical bytes back into an [`Event`], recomputing its hash.
pub fn decode_canonical_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let raw: CanonicalEventOwned = serde_json::from_slice(bytes)?;
    if raw.v != EVENT_ENCODING_VERSION {
        return Err(DecodeError::Version(raw.v));
    }
    Ok(Event {
        session: raw.session,
        seq: raw.seq,
        ts_ms: raw.ts_ms,
        prev_hash: raw.prev,
        hash: sha256_hex(bytes),
        event: raw.event,
    })
}

/// A model spec such as `openai:gpt-4o-mini`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The provider, e.g. `openai`.
    pub provider: String,
    /// The model name the provider understands.
    pub model: String,
}

/// Why a model spec could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid model spec {input:?}: expected PROVIDER:MODEL, e.g. openai:gpt-4o-mini (providers: {known})")]
pub struct InvalidModelSpec {
    /// The rejected input.
    pub input: String,
    /// Providers this build knows.
    pub known: &'static str,
}

/// Providers this build can talk to.
pub const KNOWN_PROVIDERS: &str = "openai,anthropic,bedrock,local";

impl ModelSpec {
    /// Parses `PROVIDER:MODEL`.
    pub fn parse(input: &str) -> Result<Self, InvalidModelSpec> {
        let err = || InvalidModelSpec {
            input: input.to_owned(),
            known: KNOWN_PROVIDERS,
        };
        let (provider, model) = input.split_once(':').ok_or_else(err)?;
        if model.trim().is_empty() || !KNOWN_PROVIDERS.split(',').any(|p| p == provider) {
            return Err(err());
        }
        Ok(ModelSpec {
            provider: provider.to_owned(),
            model: model.to_owned(),
        })
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = SessionId::generate();
        assert_eq!(id.as_str().len(), 12);
        assert_eq!(SessionId::parse(id.as_str()), Ok(id));
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse("../etc").is_err());
        assert!(SessionId::parse("ABC").is_err());
    }

    #[test]
    fn canonical_encoding_is_stable_and_decodes() {
        let id = SessionId::parse("sabc").unwrap();
        let ev = EventKind::ToolProposed {
            call: ToolCall {
                id: "c1".into(),
                name: "shell".into(),
                arguments: "{\"cmd\": 1".into(),
            },
        };
        let a = canonical_event_bytes(&id, 3, 7, GENESIS_HASH, &ev).unwrap();
        let b = canonical_event_bytes(&id, 3, 7, GENESIS_HASH, &ev).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a.clone()).unwrap();
        assert!(
            text.starts_with("{\"v\":1,\"session\":\"sabc\",\"seq\":3,"),
            "{text}"
        );
        let back = decode_canonical_event(&a).unwrap();
        assert_eq!(back.event, ev);
        assert_eq!(back.hash, sha256_hex(&a));
        assert_eq!(back.seq, 3);
    }

    #[test]
    fn headers_and_hex_agree_with_the_full_decode() {
        let id = SessionId::parse("sabc").unwrap();
        let ev = EventKind::ToolProposed {
            call: ToolCall {
                id: "c\"1".into(),
                name: "shell".into(),
                arguments: "{\"cmd\": \"a\\nb\"}".into(),
            },
        };
        let prev = sha256_hex(b"before");
        let bytes = canonical_event_bytes(&id, 9, 11, &prev, &ev).unwrap();
        let h = decode_event_header(&bytes).unwrap();
        assert_eq!(
            h,
            EventHeader {
                session: "sabc".into(),
                seq: 9,
                ts_ms: 11,
                prev_hash: prev.as_str().into(),
                event: ev,
            }
        );
        // The fast hex is the hex crate's, digit for digit.
        for input in [&b""[..], b"a", &bytes] {
            let d: [u8; 32] = Sha256::digest(input).into();
            assert_eq!(digest_hex(&d), hex::encode(d));
            assert!(sha256_matches(input, &hex::encode(d)));
            assert!(!sha256_matches(input, &hex::encode(d).to_uppercase()));
            assert!(!sha256_matches(input, GENESIS_HASH));
        }
        // A newer version, a missing event and broken JSON are refused.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let newer = text.replacen("\"v\":1", "\"v\":2", 1);
        assert!(matches!(
            decode_event_header(newer.as_bytes()),
            Err(DecodeError::Version(2))
        ));
        let cut = text.split(",\"event\"").next().unwrap().to_string() + "}";
        assert!(decode_event_header(cut.as_bytes()).is_err());
        assert!(decode_event_header(&bytes[..bytes.len() - 1]).is_err());
        // So is an event this build does not know: the daemon could not
        // load it, so verification must not vouch for it.
        let unknown = text.replacen("\"tool_proposed\"", "\"no_such_event\"", 1);
        assert_ne!(unknown, text);
        assert!(decode_event_header(unknown.as_bytes()).is_err());
        assert!(decode_canonical_event(unknown.as_bytes()).is_err());
    }

    #[test]
    fn model_specs() {
        let s = ModelSpec::parse("openai:qwen3:8b").unwrap();
        assert_eq!(s.model, "qwen3:8b");
        assert!(ModelSpec::parse("gpt-4o").is_err());
        assert!(ModelSpec::parse("openai:").is_err());
        assert!(ModelSpec::parse("bogus:x").is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [
            SessionState::Running,
            SessionState::WaitingApproval,
            SessionState::Completed,
            SessionState::Failed,
            SessionState::Cancelled,
        ] {
            assert_eq!(SessionState::parse(s.as_str()), Some(s));
        }
    }
}

/// A tool as offered to the model: name, description and JSON Schema of the arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}
