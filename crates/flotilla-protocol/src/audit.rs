//! The audit vocabulary: activity records, the chains they form, and how a
//! session event becomes a record.
//!
//! Every record is one thing that happened: who (`principal`), where
//! (`session`, `agent`), what (`kind`, `action`, `target`), how it ended
//! (`outcome`, `reason`). Records live in two SHA-256 chains: `sessions`
//! (derived from session events, in the same transaction that appends the
//! event, and linked to it by the event's hash) and `daemon` (authentication
//! and admin actions). Each record holds the hash of the one before it in its
//! chain; [`record_hash`] is the whole rule, so an export can be re-verified
//! by anyone.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::{EventKind, ToolCall};

/// Version tag inside every canonical record encoding.
pub const AUDIT_ENCODING_VERSION: u32 = 1;

/// What a record is about (the `--kind` filter).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A tool call ran (or was interrupted).
    Tool,
    /// Policy decided a tool call.
    Policy,
    /// An approval was asked for, given or refused.
    Approval,
    /// A secret was granted, used or blocked.
    Secret,
    /// A request to the daemon was authenticated, or refused.
    Auth,
    /// An admin action: principals, vetting, secrets, config, retention.
    Admin,
    /// A session started, resumed, was cancelled or ended.
    Session,
    /// A session's sandbox came up (confined, degraded or unconfined).
    Sandbox,
}

impl AuditKind {
    /// Every kind, in documentation order.
    pub const ALL: [AuditKind; 8] = [
        AuditKind::Tool,
        AuditKind::Policy,
        AuditKind::Approval,
        AuditKind::Secret,
        AuditKind::Auth,
        AuditKind::Admin,
        AuditKind::Session,
        AuditKind::Sandbox,
    ];

    /// `tool`, `policy`...
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Tool => "tool",
            AuditKind::Policy => "policy",
            AuditKind::Approval => "approval",
            AuditKind::Secret => "secret",
            AuditKind::Auth => "auth",
            AuditKind::Admin => "admin",
            AuditKind::Session => "session",
            AuditKind::Sandbox => "sandbox",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two chains.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AuditChain {
    /// Records derived from session events.
    Sessions,
    /// Daemon-level records: authentication and admin actions.
    Daemon,
}

impl AuditChain {
    /// Both chains.
    pub const ALL: [AuditChain; 2] = [AuditChain::Sessions, AuditChain::Daemon];

    /// `sessions` or `daemon`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditChain::Sessions => "sessions",
            AuditChain::Daemon => "daemon",
        }
    }

    /// The chain named `s`.
    pub fn parse(s: &str) -> Option<AuditChain> {
        AuditChain::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for AuditChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record before it is placed in a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    /// Who acted.
    pub principal: Option<String>,
    /// The session it happened in.
    pub session: Option<String>,
    /// The agent of the session (its role), where there is one.
    pub agent: Option<String>,
    /// What it is about.
    pub kind: AuditKind,
    /// What was done: a tool name, `session.start`, `principal.add`...
    pub action: String,
    /// What it was done to: a command, a path, a host, a principal...
    pub target: Option<String>,
    /// How it ended: `ok`, `error`, `allow`, `deny`, `approved`, `failure`...
    pub outcome: String,
    /// Why, in words.
    pub reason: Option<String>,
    /// Further facts as compact JSON text (hashed as written).
    pub detail: Option<String>,
}

impl AuditDraft {
    /// A draft with the required fields; the rest empty.
    pub fn new(kind: AuditKind, action: impl Into<String>, outcome: impl Into<String>) -> Self {
        AuditDraft {
            principal: None,
            session: None,
            agent: None,
            kind,
            action: action.into(),
            target: None,
            outcome: outcome.into(),
            reason: None,
            detail: None,
        }
    }

    /// Sets the acting principal.
    pub fn by(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// Sets the target.
    pub fn on(mut self, target: impl Into<String>) -> Self {
        self.target = Some(clip(&target.into(), MAX_TARGET));
        self
    }

    /// Sets the reason.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(clip(&reason.into(), MAX_REASON));
        self
    }

    /// Sets the detail (serialized compactly).
    pub fn with_detail(mut self, detail: &serde_json::Value) -> Self {
        self.detail = Some(detail.to_string());
        self
    }
}

/// One record as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Position in the whole log (both chains): the pagination cursor.
    pub id: u64,
    /// The chain it belongs to.
    pub chain: AuditChain,
    /// Position in its chain, from 1, without gaps (until a retention cut).
    pub seq: u64,
    /// When, ms since the Unix epoch (never decreasing along the log).
    pub ts_ms: i64,
    /// Who acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The agent (role) of the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What it is about.
    pub kind: AuditKind,
    /// What was done.
    pub action: String,
    /// What it was done to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How it ended.
    pub outcome: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Further facts, compact JSON text exactly as hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The session event the record was derived from (`sessions` chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_seq: Option<u64>,
    /// That event's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_hash: Option<String>,
    /// Hash of the previous record of the chain.
    pub prev_hash: String,
    /// SHA-256 (hex) of this record's canonical encoding.
    pub hash: String,
}

impl AuditRecord {
    /// Recomputes this record's hash from its fields.
    pub fn computed_hash(&self) -> String {
        record_hash(&RecordFields {
            id: self.id,
            chain: self.chain,
            seq: self.seq,
            ts_ms: self.ts_ms,
            prev: &self.prev_hash,
            principal: self.principal.as_deref(),
            session: self.session.as_deref(),
            agent: self.agent.as_deref(),
            kind: self.kind,
            action: &self.action,
            target: self.target.as_deref(),
            outcome: &self.outcome,
            reason: self.reason.as_deref(),
            detail: self.detail.as_deref(),
            event_seq: self.event_seq,
            event_hash: self.event_hash.as_deref(),
        })
    }
}

/// The hashed fields of a record, borrowed; serialized in this order.
#[derive(Serialize)]
pub struct RecordFields<'a> {
    /// Position in the whole log.
    pub id: u64,
    /// Chain.
    pub chain: AuditChain,
    /// Position in the chain.
    pub seq: u64,
    /// Time.
    pub ts_ms: i64,
    /// Previous record's hash.
    pub prev: &'a str,
    /// Who.
    pub principal: Option<&'a str>,
    /// Session.
    pub session: Option<&'a str>,
    /// Agent.
    pub agent: Option<&'a str>,
    /// Kind.
    pub kind: AuditKind,
    /// Action.
    pub action: &'a str,
    /// Target.
    pub target: Option<&'a str>,
    /// Outcome.
    pub outcome: &'a str,
    /// Reason.
    pub reason: Option<&'a str>,
    /// Detail (JSON text).
    pub detail: Option<&'a str>,
    /// Source event.
    pub event_seq: Option<u64>,
    /// Source event's hash.
    pub event_hash: Option<&'a str>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    v: u32,
    #[serde(flatten)]
    fields: &'a RecordFields<'a>,
}

/// SHA-256 (hex) of a record's canonical encoding: compact JSON of
/// `{"v":1, "id", "chain", "seq", "ts_ms", "prev", "principal", "session",
/// "agent", "kind", "action", "target", "outcome", "reason", "detail",
/// "event_seq", "event_hash"}` in that order, absent values as `null`.
pub fn record_hash(fields: &RecordFields<'_>) -> String {
    crate::digest_hex(&record_digest(fields, &mut Vec::with_capacity(512)))
}

/// The SHA-256 digest of a record's canonical encoding, built in `buf`
/// (cleared first): a caller hashing many records reuses one buffer, and
/// the hasher sees one long update instead of one per JSON token.
pub fn record_digest(fields: &RecordFields<'_>, buf: &mut Vec<u8>) -> [u8; 32] {
    buf.clear();
    // Serializing plain strings and integers into memory cannot fail.
    let _ = serde_json::to_writer(
        &mut *buf,
        &Canonical {
            v: AUDIT_ENCODING_VERSION,
            fields,
        },
    );
    Sha256::digest(buf.as_slice()).into()
}

/// Longest target kept (characters).
pub const MAX_TARGET: usize = 512;
/// Longest reason kept (characters).
pub const MAX_REASON: usize = 1024;

/// `s` cut to at most `max` characters, with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// A tool call as the audit log names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// The tool.
    pub tool: String,
    /// What it acts on: the command, path, URL or pattern of its arguments.
    pub target: Option<String>,
}

impl CallInfo {
    /// Reads the target out of the call's arguments.
    pub fn of(call: &ToolCall) -> CallInfo {
        let target = serde_json::from_str::<serde_json::Value>(&call.arguments)
            .ok()
            .and_then(|v| {
                [
                    "command",
                    "path",
                    "file_path",
                    "url",
                    "pattern",
                    "query",
                    "name",
                ]
                .iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_string))
            })
            .map(|t| clip(&t, MAX_TARGET));
        CallInfo {
            tool: call.name.clone(),
            target,
        }
    }
}

/// What the audit log knows of a session when it derives a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionContext {
    /// The principal who started it.
    pub principal: Option<String>,
    /// Its role.
    pub agent: Option<String>,
}

/// Whether events of this kind become audit records.
pub fn is_audited(event: &EventKind) -> bool {
    match event {
        EventKind::SessionCreated { .. }
        | EventKind::SessionResumed { .. }
        | EventKind::CancelRequested { .. }
        | EventKind::SandboxReady { .. }
        | EventKind::PolicyDecided { .. }
        | EventKind::ToolFinished { .. }
        | EventKind::ToolInterrupted { .. }
        | EventKind::ApprovalRequested { .. }
        | EventKind::ApprovalGiven { .. }
        | EventKind::ApprovalRefused { .. }
        | EventKind::SecretsGranted { .. }
        | EventKind::SecretUsed { .. } => true,
        EventKind::StateChanged { state, .. } => state.is_terminal(),
        EventKind::ModelRequested { .. }
        | EventKind::ModelFailed { .. }
        | EventKind::ModelResponded { .. }
        | EventKind::ToolProposed { .. }
        | EventKind::ToolStarted { .. }
        | EventKind::ContextCompacted { .. }
        | EventKind::MessageReceived { .. }
        | EventKind::FinalAnswer { .. } => false,
    }
}

/// Names of the event kinds that become records (see [`is_audited`]);
/// `state_changed` only when the state is terminal.
pub const AUDITED_EVENT_NAMES: [&str; 13] = [
    "session_created",
    "session_resumed",
    "cancel_requested",
    "sandbox_ready",
    "policy_decided",
    "tool_finished",
    "tool_interrupted",
    "approval_requested",
    "approval_given",
    "approval_refused",
    "secrets_granted",
    "secret_used",
    "state_changed",
];

/// The record a session event becomes, if any. `call` names the tool call
/// an event refers to by id (from the session's `tool_proposed` events).
pub fn draft_for_event(
    event: &EventKind,
    session: &str,
    ctx: &SessionContext,
    call: &dyn Fn(&str) -> Option<CallInfo>,
) -> Option<AuditDraft> {
    if !is_audited(event) {
        return None;
    }
    let base = |kind: AuditKind, action: &str, outcome: &str| AuditDraft {
        principal: ctx.principal.clone(),
        session: Some(session.to_string()),
        agent: ctx.agent.clone(),
        ..AuditDraft::new(kind, action, outcome)
    };
    let call_of = |id: &str| {
        call(id).unwrap_or(CallInfo {
            tool: "unknown".into(),
            target: None,
        })
    };
    let json = |v: serde_json::Value| Some(v.to_string());
    let draft = match event {
        EventKind::SessionCreated {
            task,
            model,
            workspace,
            role,
            machine,
            ..
        } => {
            let mut d = base(AuditKind::Session, "session.start", "ok").on(task.clone());
            d.detail = json(serde_json::json!({
                "model": model, "workspace": workspace, "role": role, "machine": machine,
            }));
            d
        }
        EventKind::SessionResumed { interrupted_tools } => {
            let mut d = base(AuditKind::Session, "session.resume", "ok");
            d.detail = json(serde_json::json!({ "interrupted_tools": interrupted_tools }));
            d
        }
        EventKind::CancelRequested { by } => AuditDraft {
            principal: Some(by.clone()),
            ..base(AuditKind::Session, "session.cancel", "requested")
        },
        EventKind::StateChanged { state, reason } => {
            let mut d = base(
                AuditKind::Session,
                &format!("session.{}", state.as_str()),
                state.as_str(),
            );
            if let Some(r) = reason {
                d = d.because(r.clone());
            }
            d
        }
        EventKind::SandboxReady {
            confined,
            summary,
            degraded,
        } => {
            let outcome = match (confined, degraded.is_empty()) {
                (true, true) => "confined",
                (_, false) => "degraded",
                (false, true) => "unconfined",
            };
            let mut d = base(AuditKind::Sandbox, "sandbox.ready", outcome).on(summary.clone());
            if !degraded.is_empty() {
                d = d.because(degraded.join("; "));
            }
            d
        }
        EventKind::PolicyDecided {
            call_id,
            decision,
            reason,
            rule,
            layer,
        } => {
            let info = call_of(call_id);
            let mut d = base(AuditKind::Policy, &info.tool, decision.as_str()).because(reason);
            d.target = info.target;
            d.detail = json(serde_json::json!({
                "call_id": call_id, "rule": rule, "layer": layer,
            }));
            d
        }
        EventKind::ToolFinished {
            call_id,
            is_error,
            duration_ms,
            ..
        } => {
            let info = call_of(call_id);
            let mut d = base(
                AuditKind::Tool,
                &info.tool,
                if *is_error { "error" } else { "ok" },
            );
            d.target = info.target;
            d.detail = json(serde_json::json!({
                "call_id": call_id, "duration_ms": duration_ms,
            }));
            d
        }
        EventKind::ToolInterrupted { call_id, reason } => {
            let info = call_of(call_id);
            let mut d = base(AuditKind::Tool, &info.tool, "interrupted").because(reason);
            d.target = info.target;
            d.detail = json(serde_json::json!({ "call_id": call_id }));
            d
        }
        EventKind::ApprovalRequested {
            approval_id,
            call_id,
            tool,
            summary,
            reason,
            ..
        } => {
            let mut d = base(AuditKind::Approval, tool, "requested")
                .on(summary)
                .because(reason);
            d.detail = json(serde_json::json!({
                "approval_id": approval_id, "call_id": call_id,
            }));
            d
        }
        EventKind::ApprovalGiven {
            approval_id,
            by,
            always_rule,
            always_layer,
        } => {
            let mut d = AuditDraft {
                principal: Some(by.clone()),
                ..base(AuditKind::Approval, "approval.give", "approved")
            }
            .on(approval_id);
            if let (Some(rule), Some(layer)) = (always_rule, always_layer) {
                d = d.because(format!("always: added {rule} to the {layer} rules"));
            }
            d.detail = json(serde_json::json!({
                "approval_id": approval_id, "always_rule": always_rule, "always_layer": always_layer,
            }));
            d
        }
        EventKind::ApprovalRefused {
            approval_id,
            by,
            reason,
        } => AuditDraft {
            principal: Some(by.clone()),
            ..base(AuditKind::Approval, "approval.refuse", "refused")
                .on(approval_id)
                .because(reason)
        },
        EventKind::SecretsGranted { grants } => {
            let names: Vec<&str> = grants.iter().map(|g| g.secret.as_str()).collect();
            let mut d = base(AuditKind::Secret, "secret.grant", "granted").on(names.join(","));
            let summary: Vec<serde_json::Value> = grants
                .iter()
                .map(|g| {
                    serde_json::json!({
                        "secret": g.secret, "hosts": g.hosts, "methods": g.methods,
                        "path_prefixes": g.path_prefixes, "expires_at_ms": g.expires_at_ms,
                    })
                })
                .collect();
            d.detail = json(serde_json::Value::Array(summary));
            d
        }
        EventKind::SecretUsed { record } => {
            let mut d = base(
                AuditKind::Secret,
                "secret.use",
                if record.allowed { "allowed" } else { "blocked" },
            )
            .on(format!(
                "{} {} {}{}",
                record.secret, record.method, record.host, record.path
            ))
            .because(record.reason.clone());
            d.detail = json(serde_json::json!({
                "secret": record.secret, "host": record.host, "method": record.method, "path": record.path,
            }));
            d
        }
        _ => return None,
    };
    Some(draft)
}

/// A filter over the audit log (`flotilla audit`, `GET /v1/compliance/activities`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Records at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Records at or before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// Only these kinds (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<AuditKind>,
    /// Only this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only this action (`shell`, `session.start`, `principal.add`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Only records whose acting principal is this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Only what this principal may see: its own sessions and its own
    /// actions (set by the daemon for principals that are neither `admin`
    /// nor `auditor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_to: Option<String>,
    /// Cursor: records after this id (before it, with `descending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// Newest first.
    #[serde(default)]
    pub descending: bool,
    /// Page size.
    pub limit: u32,
}

/// One page of records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The records, in id order (descending with `order=desc`).
    pub activities: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The head of one chain at a moment: what a checkpoint holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainHead {
    /// The chain.
    pub chain: AuditChain,
    /// Sequence number of its last record (0: empty).
    pub seq: u64,
    /// Hash of that record (the genesis hash when empty).
    pub hash: String,
}

/// A checkpoint: the heads of both chains and the size of the event log.
/// Kept outside the database, it makes truncation of the tail detectable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditCheckpoint {
    /// When it was taken.
    pub ts_ms: i64,
    /// Chain heads.
    pub chains: Vec<ChainHead>,
    /// Session events in the log at that moment.
    pub events: u64,
}

/// The first problem `verify` found in one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditBreak {
    /// Where: `chain sessions`, `chain daemon`, `session s…`, `checkpoint`...
    pub place: String,
    /// The record id, where one is at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The sequence number at fault (chain or session seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What is wrong.
    pub detail: String,
}

/// What `verify` checked of one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainVerdict {
    /// The chain.
    pub chain: AuditChain,
    /// Records checked.
    pub records: u64,
    /// First sequence number present (above 1 after a retention cut).
    pub first_seq: u64,
    /// The head.
    pub head: ChainHead,
}

/// The result of `flotilla audit verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// True when nothing is broken.
    pub ok: bool,
    /// Each chain checked (both, or none with `--session`).
    pub chains: Vec<ChainVerdict>,
    /// Sessions whose event chains were recomputed.
    pub sessions: u64,
    /// Events whose hashes were recomputed.
    pub events: u64,
    /// Records whose link to their event was checked.
    pub links: u64,
    /// Every break found (the first per place).
    pub broken: Vec<AuditBreak>,
    /// Milliseconds it took.
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{PolicyVerdict, SessionState};

    #[test]
    fn kinds_and_chains_round_trip() {
        for k in AuditKind::ALL {
            assert_eq!(AuditKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        for c in AuditChain::ALL {
            assert_eq!(AuditChain::parse(c.as_str()), Some(c));
        }
        assert_eq!(AuditKind::parse("nope"), None);
    }

    #[test]
    fn audited_names_match_the_predicate() {
        let names: std::collections::BTreeSet<&str> = AUDITED_EVENT_NAMES.into_iter().collect();
        assert_eq!(names.len(), AUDITED_EVENT_NAMES.len());
        let ev = EventKind::ToolStarted {
            call_id: "c".into(),
        };
        assert!(!is_audited(&ev) && !names.contains(ev.name()));
        let ev = EventKind::StateChanged {
            state: SessionState::Running,
            reason: None,
        };
        assert!(!is_audited(&ev));
        let ev = EventKind::StateChanged {
            state: SessionState::Cancelled,
            reason: Some("by alice".into()),
        };
        assert!(is_audited(&ev) && names.contains(ev.name()));
    }

    #[test]
    fn hash_covers_every_field() {
        let rec = AuditRecord {
            id: 7,
            chain: AuditChain::Sessions,
            seq: 3,
            ts_ms: 1000,
            principal: Some("alice".into()),
            session: Some("s1".into()),
            agent: None,
            kind: AuditKind::Tool,
            action: "shell".into(),
            target: Some("ls".into()),
            outcome: "ok".into(),
            reason: None,
            detail: Some("{\"a\":1}".into()),
            event_seq: Some(9),
            event_hash: Some("ab".into()),
            prev_hash: "00".into(),
            hash: String::new(),
        };
        let h = rec.computed_hash();
        assert_eq!(h.len(), 64);
        let variants: Vec<AuditRecord> = vec![
            AuditRecord {
                id: 8,
                ..rec.clone()
            },
            AuditRecord {
                seq: 4,
                ..rec.clone()
            },
            AuditRecord {
                ts_ms: 1001,
                ..rec.clone()
            },
            AuditRecord {
                principal: Some("bob".into()),
                ..rec.clone()
            },
            AuditRecord {
                principal: None,
                ..rec.clone()
            },
            AuditRecord {
                agent: Some("worker".into()),
                ..rec.clone()
            },
            AuditRecord {
                kind: AuditKind::Policy,
                ..rec.clone()
            },
            AuditRecord {
                action: "read_file".into(),
                ..rec.clone()
            },
            AuditRecord {
                target: None,
                ..rec.clone()
            },
            AuditRecord {
                outcome: "error".into(),
                ..rec.clone()
            },
            AuditRecord {
                reason: Some("x".into()),
                ..rec.clone()
            },
            AuditRecord {
                detail: Some("{\"a\": 1}".into()),
                ..rec.clone()
            },
            AuditRecord {
                event_seq: Some(10),
                ..rec.clone()
            },
            AuditRecord {
                event_hash: Some("ac".into()),
                ..rec.clone()
            },
            AuditRecord {
                prev_hash: "01".into(),
                ..rec.clone()
            },
            AuditRecord {
                chain: AuditChain::Daemon,
                ..rec.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.computed_hash(), h, "{v:?}");
        }
        // A field's value cannot slide into its neighbour.
        let a = AuditRecord {
            target: Some("a\",\"outcome\":\"x".into()),
            ..rec.clone()
        };
        assert_ne!(a.computed_hash(), h);
    }

    #[test]
    fn events_become_records() {
        let ctx = SessionContext {
            principal: Some("alice".into()),
            agent: Some("worker".into()),
        };
        let calls = |id: &str| {
            (id == "c1").then(|| {
                CallInfo::of(&ToolCall {
                    id: "c1".into(),
                    name: "shell".into(),
                    arguments: r#"{"command":"git push origin main"}"#.into(),
                })
            })
        };
        let d = draft_for_event(
            &EventKind::PolicyDecided {
                call_id: "c1".into(),
                decision: PolicyVerdict::Ask,
                reason: "asks: Shell(git push *)".into(),
                rule: Some("Shell(git push *)".into()),
                layer: Some("project".into()),
            },
            "s1",
            &ctx,
            &calls,
        )
        .unwrap();
        assert_eq!(d.kind, AuditKind::Policy);
        assert_eq!(d.action, "shell");
        assert_eq!(d.target.as_deref(), Some("git push origin main"));
        assert_eq!(d.outcome, "ask");
        assert_eq!(d.principal.as_deref(), Some("alice"));
        assert_eq!(d.agent.as_deref(), Some("worker"));
        let detail: serde_json::Value = serde_json::from_str(d.detail.as_deref().unwrap()).unwrap();
        assert_eq!(detail["rule"], "Shell(git push *)");
        assert_eq!(detail["layer"], "project");

        // The approver, not the session's owner, is the actor.
        let d = draft_for_event(
            &EventKind::ApprovalGiven {
                approval_id: "a1".into(),
                by: "bob".into(),
                always_rule: None,
                always_layer: None,
            },
            "s1",
            &ctx,
            &calls,
        )
        .unwrap();
        assert_eq!(d.principal.as_deref(), Some("bob"));
        assert_eq!(d.outcome, "approved");

        let d = draft_for_event(
            &EventKind::SandboxReady {
                confined: false,
                summary: "landlock+seccomp".into(),
                degraded: vec!["no user namespaces".into()],
            },
            "s1",
            &ctx,
            &calls,
        )
        .unwrap();
        assert_eq!(
            (d.kind, d.outcome.as_str()),
            (AuditKind::Sandbox, "degraded")
        );
        assert_eq!(d.reason.as_deref(), Some("no user namespaces"));

        // An unknown call id still records, as tool "unknown".
        let d = draft_for_event(
            &EventKind::ToolFinished {
                call_id: "zz".into(),
                output: "x".into(),
                is_error: true,
                duration_ms: 5,
            },
            "s1",
            &ctx,
            &calls,
        )
        .unwrap();
        assert_eq!(
            (d.action.as_str(), d.outcome.as_str()),
            ("unknown", "error")
        );
        assert!(draft_for_event(
            &EventKind::ToolStarted {
                call_id: "c1".into()
            },
            "s1",
            &ctx,
            &calls
        )
        .is_none());
    }

    #[test]
    fn clip_cuts_on_char_boundaries() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hé", 2), "hé");
        assert_eq!(clip("", 0), "");
    }
}
